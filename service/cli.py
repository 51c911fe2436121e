"""The ``assay`` command line: serve, validate policies, manage models."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from evaluators.errors import AssayError, FileValidationError
from evaluators.runtime import configure_process


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app
    from service.settings import service_settings

    settings = service_settings()
    host = args.host or settings.host
    port = args.port or settings.port
    app = create_app(settings)
    # log_config=None: uvicorn's records go through Assay's handler (JSON lines, request ids);
    # access lines come from service/observability.py, without query strings.
    config = uvicorn.Config(
        app, host=host, port=port, log_level=settings.log_level.lower(), access_log=False, log_config=None
    )
    server = uvicorn.Server(config)
    server.run()
    # uvicorn reports a failed lifespan startup by not starting; say so in the exit code.
    return 0 if server.started else 3


def _cmd_policy_validate(args: argparse.Namespace) -> int:
    from evaluators.engine import PolicyEngine
    from evaluators.policy import load_policy_file

    failed = False
    for file in args.files:
        try:
            lp = load_policy_file(Path(file))
            if not args.no_models:
                PolicyEngine.build(lp)
        except FileValidationError as exc:
            failed = True
            for problem in exc.problems:
                print(f"error: {problem}", file=sys.stderr)
            continue
        print(f"ok: {file} (policy {lp.name} {lp.policy.version}, sha256 {lp.sha256[:12]})")
    return 1 if failed else 0


def _cmd_policy_schema(args: argparse.Namespace) -> int:
    from evaluators.policy import policy_json_schema

    text = json.dumps(policy_json_schema(), indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    return 0


def _cmd_train_toxicity(args: argparse.Namespace) -> int:
    from evaluators.training import train_toxicity

    report = train_toxicity(
        Path(args.data),
        Path(args.out),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        max_length=args.max_length,
        max_rows=args.max_rows,
        seed=args.seed,
        device=args.device,
        progress=lambda msg: print(msg, file=sys.stderr),
    )
    print(
        json.dumps(
            report.to_dict(),
            indent=2,
            default=str,
        )
    )
    return 0


def _cmd_models_prepare(args: argparse.Namespace) -> int:
    """Convert the generator model once into the cache, so workers start in about a second."""
    from evaluators.settings import evaluator_settings
    from workers.generation import resolve_model

    cache = Path(args.cache_dir) if args.cache_dir else evaluator_settings().model_dir
    for model_id in args.models:
        resolved = resolve_model(model_id, cache)
        print(f"ok: {model_id} -> {resolved.path} ({resolved.source})")
    return 0


def _cmd_models_build(args: argparse.Namespace) -> int:
    """Build (or reuse from the cache) the default models the shipped policies use."""
    import time

    from evaluators.build import build, built_path, recipes

    if args.list:
        for name, recipe in recipes().items():
            entry = built_path(name)
            print(f"{name}\t{'built' if entry else 'not built'}\t{entry or ''}\t{recipe.description}")
        return 0
    started = time.monotonic()

    def progress(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    results = build(args.names or None, force=args.force, progress=progress)
    for r in results:
        state = "cached" if r.cached else f"built in {r.seconds:.0f} s"
        print(f"ok: {r.name} -> {r.path} ({state})")
    return 0


def _cmd_audit_run(args: argparse.Namespace) -> int:
    from service.audit_cli import cmd_audit_run

    return cmd_audit_run(args)


def _cmd_audit_report(args: argparse.Namespace) -> int:
    from service.audit_cli import cmd_audit_report

    return cmd_audit_report(args)


def _cmd_calibrate(args: argparse.Namespace) -> int:
    """Fit thresholds on labelled examples; write a new policy version. Exit 1 when a target is missed."""
    from evaluators.calibration.fitting import parse_target
    from evaluators.calibration.labelled import read_labelled_csv
    from evaluators.calibration.report import format_table
    from evaluators.calibration.rewrite import default_output, write_calibrated
    from evaluators.calibration.run import calibrate
    from evaluators.policy import PolicyStore, load_policy_dir, load_policy_file

    target = parse_target(args.target)
    path = Path(args.policy)
    if path.suffix in (".yaml", ".yml") or path.exists():
        loaded = load_policy_file(path)
    else:
        from evaluators.settings import evaluator_settings

        loaded = PolicyStore(load_policy_dir(evaluator_settings().policy_dir)).get(args.policy)
    data = read_labelled_csv(Path(args.data))
    out = Path(args.out) if args.out else default_output(loaded.path)
    result = calibrate(
        loaded,
        data,
        target,
        min_per_class=args.min_per_class,
        folds=args.folds,
        seed=args.seed,
        progress=lambda msg: print(msg, file=sys.stderr),
    )
    written = write_calibrated(result, out, version=args.version, overwrite=args.force)
    print(format_table(result))
    print(
        f"wrote {out} (policy {written.name} {written.policy.version}, sha256 {written.sha256[:12]}); "
        f"it validates. Deploy it in place of {loaded.path}: one policy folder cannot hold two "
        f"policies named {written.name!r}."
    )
    return 0 if result.reached else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="assay", description="Assay: evaluation and guardrails for LLMs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP API")
    serve.add_argument("--host", default=None, help="interface (default ASSAY_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default ASSAY_PORT or 8000)")
    serve.set_defaults(func=_cmd_serve)

    policy = sub.add_parser("policy", help="policy files").add_subparsers(
        dest="policy_command", required=True
    )
    validate = policy.add_parser("validate", help="validate policy files (schema and models)")
    validate.add_argument("files", nargs="+", help="policy YAML files")
    validate.add_argument("--no-models", action="store_true", help="check the schema only, load no models")
    validate.set_defaults(func=_cmd_policy_validate)
    schema = policy.add_parser("schema", help="print the policy JSON Schema")
    schema.add_argument("-o", "--output", help="write to this file instead of stdout")
    schema.set_defaults(func=_cmd_policy_schema)

    models = sub.add_parser("models", help="models").add_subparsers(dest="models_command", required=True)
    train = models.add_parser(
        "train-toxicity",
        help="fine-tune the bundled MiniLM on a Jigsaw-format CSV into a Detoxify checkpoint folder",
    )
    train.add_argument("--data", required=True, help="CSV with comment_text and the six Jigsaw label columns")
    train.add_argument("--out", required=True, help="output checkpoint folder")
    train.add_argument("--epochs", type=int, default=1)
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--lr", type=float, default=5e-5)
    train.add_argument("--max-length", type=int, default=128)
    train.add_argument("--max-rows", type=int, default=None)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="auto")
    train.set_defaults(func=_cmd_train_toxicity)
    prepare = models.add_parser("prepare", help="convert generator models into the local cache (offline)")
    prepare.add_argument("models", nargs="*", default=["smollm2"], help="model ids (default: smollm2)")
    prepare.add_argument("--cache-dir", default=None, help="cache folder (default ASSAY_MODEL_DIR)")
    prepare.set_defaults(func=_cmd_models_prepare)
    build_cmd = models.add_parser(
        "build",
        help="build the default models (abuse classifier, entailment model) from the carried data; "
        "cached by a hash of data, code and configuration",
    )
    build_cmd.add_argument("names", nargs="*", help="models to build (default: all)")
    build_cmd.add_argument("--force", action="store_true", help="rebuild even when a cached build exists")
    build_cmd.add_argument(
        "--list", action="store_true", help="list the default models and whether they are built"
    )
    build_cmd.set_defaults(func=_cmd_models_build)

    audit = sub.add_parser("audit", help="pre-release audit runs").add_subparsers(
        dest="audit_command", required=True
    )
    run = audit.add_parser("run", help="run a suite through a model under a policy; exit 1 when a gate fails")
    run.add_argument("--suite", required=True, help="a shipped suite name or a suite file (.yaml/.jsonl)")
    run.add_argument("--model", default=None, help="model id (default smollm2)")
    run.add_argument("--policy", default="default", help="policy name")
    run.add_argument("--samples", type=int, default=1, help="generations per prompt")
    run.add_argument("--params", default=None, help="generation parameters as JSON, e.g. '{\"seed\": 1}'")
    run.add_argument("--server", default=None, help="API URL; without it the run is embedded")
    run.add_argument("--out", default="reports", help="folder for the JSON, HTML and JUnit reports")
    run.set_defaults(func=_cmd_audit_run)
    report = audit.add_parser("report", help="fetch the reports of an earlier run")
    report.add_argument("id", help="audit run id")
    report.add_argument("--server", default=None, help="API URL; without it the local store is read")
    report.add_argument("--out", default="reports", help="folder for the report files")
    report.set_defaults(func=_cmd_audit_report)

    from service.drift_cli import add_parser as add_drift_parser

    add_drift_parser(sub)

    from service.keys_cli import add_parser as add_keys_parser

    add_keys_parser(sub)

    calibrate = sub.add_parser(
        "calibrate",
        help="fit a policy's thresholds on labelled examples and write a new policy version",
        description=(
            "DATA is a CSV with a text column, an optional stage column (input/output, default output) "
            "and 0/1 columns named check.label (e.g. toxicity.toxicity, pii.PERSON). Exits 1 when a "
            "target cannot be reached (that threshold is kept), 2 on bad input."
        ),
    )
    calibrate.add_argument("--policy", required=True, help="policy name (in ASSAY_POLICY_DIR) or YAML file")
    calibrate.add_argument("--data", required=True, help="labelled CSV")
    calibrate.add_argument(
        "--target", required=True, help="precision=P, recall=R, f1 or fbeta=B (e.g. precision=0.9)"
    )
    calibrate.add_argument(
        "--out", default=None, help="new policy file (default: NAME-calibrated.yaml beside it)"
    )
    calibrate.add_argument("--version", default=None, help="new version (default: VERSION+cal1, +cal2...)")
    calibrate.add_argument("--force", action="store_true", help="overwrite --out when it exists")
    calibrate.add_argument(
        "--min-per-class",
        type=int,
        default=5,
        help="fewest positives and negatives to fit a label (default 5)",
    )
    calibrate.add_argument("--folds", type=int, default=5, help="cross-validation folds for held-out figures")
    calibrate.add_argument("--seed", type=int, default=0, help="seed of the fold split")
    calibrate.set_defaults(func=_cmd_calibrate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Offline and threading defaults, before any command imports a model library.
    configure_process()
    parser = build_parser()
    args = parser.parse_args(argv)
    from evaluators.logs import configure_logging
    from evaluators.settings import evaluator_settings

    configure_logging(
        logging.DEBUG if args.verbose else logging.INFO,
        json_lines=evaluator_settings().log_format == "json",
    )
    try:
        return int(args.func(args))
    except FileValidationError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    except AssayError as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
