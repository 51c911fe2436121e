"""Process set-up: settings parsed once from one variable per field, no import-time side effects,
the offline environment set before any model library loads, and no Celery result backend."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from evaluators.errors import ConfigError
from evaluators.runtime import OFFLINE_ENVIRONMENT, THREADING_ENVIRONMENT, configure_process
from evaluators.settings import AssaySettings, EvaluatorSettings, SettingsAccessor, evaluator_settings
from service.settings import ServiceSettings
from workers.settings import TracingSettings, WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
SETTINGS: tuple[type[AssaySettings], ...] = (
    EvaluatorSettings,
    WorkerSettings,
    ServiceSettings,
    TracingSettings,
)


def _run(code: str, env: dict[str, str]) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter at the repository root; it prints one JSON object."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _bare_env(tmp_path: Path) -> dict[str, str]:
    """This process's environment without what ``configure_process`` sets."""
    env = {k: v for k, v in os.environ.items() if k not in {*OFFLINE_ENVIRONMENT, *THREADING_ENVIRONMENT}}
    return {**env, "ASSAY_DATA_DIR": str(tmp_path / "data")}


# ------------------------------------------------------------------ settings


def _env_names(cls: type[AssaySettings]) -> list[str]:
    prefix = cls.model_config["env_prefix"]
    # The standard OTEL_* variables are read under their own names (validation aliases).
    return [
        (f.validation_alias if isinstance(f.validation_alias, str) else f"{prefix}{name}").upper()
        for name, f in cls.model_fields.items()
    ]


def test_every_variable_feeds_one_field() -> None:
    names = [n for cls in SETTINGS for n in _env_names(cls)]
    assert sorted({n for n in names if names.count(n) > 1}) == []
    # The two that used to feed two fields each now live in the evaluators' settings only.
    assert "ASSAY_DEVICE" in _env_names(EvaluatorSettings)
    assert "ASSAY_POLICY_DIR" in _env_names(EvaluatorSettings)


@pytest.mark.parametrize("cls", SETTINGS, ids=lambda c: c.__name__)
def test_every_field_is_described(cls: type[AssaySettings]) -> None:
    missing = [name for name, f in cls.model_fields.items() if not f.description]
    assert missing == []


def test_values_come_from_the_environment_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASSAY_MODEL_QUEUES", "llama-8b=gpu, tiny = cpu2 ,")
    monkeypatch.setenv("ASSAY_QUANTIZE_INT8", "yes")
    monkeypatch.setenv("ASSAY_BATCH_WAIT_MS", "2.5")
    monkeypatch.setenv("ASSAY_DATA_DIR", "~/assay-data")
    monkeypatch.setenv("ASSAY_EMBEDDED_WORKER", "off")
    monkeypatch.setenv("ASSAY_PORT", "8123")
    worker = WorkerSettings()
    assert worker.model_queues == {"llama-8b": "gpu", "tiny": "cpu2"}
    assert worker.queue_for("tiny") == "cpu2"
    assert worker.queue_for("smollm2") == "cpu"
    assert worker.queues() == ["cpu", "cpu2", "gpu"]
    assert worker.quantize_int8 is True
    assert worker.batch_wait_ms == 2.5
    assert worker.data_dir == Path.home() / "assay-data"
    service = ServiceSettings()
    assert (service.port, service.embedded_worker) == (8123, False)


@pytest.mark.parametrize(
    ("name", "value"),
    [("ASSAY_MAX_BATCH_SIZE", "many"), ("ASSAY_COMPILE", "perhaps"), ("ASSAY_MODEL_QUEUES", "gpu")],
)
def test_an_invalid_value_is_a_config_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        SettingsAccessor(WorkerSettings)()


def test_settings_parse_once_until_reset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    accessor = SettingsAccessor(EvaluatorSettings)
    monkeypatch.setenv("ASSAY_MODEL_DIR", str(tmp_path / "a"))
    first = accessor()
    monkeypatch.setenv("ASSAY_MODEL_DIR", str(tmp_path / "b"))
    assert accessor() is first
    accessor.reset()
    assert accessor().model_dir == tmp_path / "b"


def test_override_lasts_for_the_block() -> None:
    before = evaluator_settings()
    other = before.model_copy(update={"device": "cpu-for-this-test"})
    with evaluator_settings.override(other):
        assert evaluator_settings() is other
    assert evaluator_settings() is before


# ------------------------------------------------------------------ process environment


def test_configure_process_sets_offline_defaults_and_keeps_explicit_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in OFFLINE_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    configure_process()
    configure_process()  # idempotent
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert os.environ["TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS"] == ""
    assert os.environ["TOKENIZERS_PARALLELISM"] == "true"


def test_threading_defaults_yield_to_the_operator_and_to_benchmarks(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OMP_WAIT_POLICY", *THREADING_ENVIRONMENT):
        monkeypatch.delenv(name, raising=False)
    configure_process(threading=False)  # a benchmark: OpenMP's own waiting, as a user's process
    assert "GOMP_SPINCOUNT" not in os.environ
    configure_process()
    assert os.environ["GOMP_SPINCOUNT"] == "10000"
    monkeypatch.delenv("GOMP_SPINCOUNT")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # the operator's choice is kept whole
    configure_process()
    assert "GOMP_SPINCOUNT" not in os.environ and os.environ["OMP_WAIT_POLICY"] == "PASSIVE"


def test_imports_change_nothing_and_configure_makes_the_hub_offline(tmp_path: Path) -> None:
    seen = _run(
        """
        import json, os, sys
        import evaluators, evaluators.checks.pii, evaluators.engine, service.app, workers.pipeline
        from evaluators.runtime import OFFLINE_ENVIRONMENT, configure_process
        after_import = {k: os.environ.get(k) for k in OFFLINE_ENVIRONMENT}
        configure_process()
        import huggingface_hub.constants as hub
        print(json.dumps({"after_import": after_import, "hub_offline": hub.HF_HUB_OFFLINE,
                          "data_dir": os.path.exists(os.environ["ASSAY_DATA_DIR"])}))
        """,
        _bare_env(tmp_path),
    )
    assert seen["after_import"] == dict.fromkeys(OFFLINE_ENVIRONMENT)
    assert seen["hub_offline"] is True
    assert seen["data_dir"] is False


def test_worker_start_configures_the_process_before_torch_loads(tmp_path: Path) -> None:
    seen = _run(
        """
        import json, os, sys
        import workers.celery_app as c  # what `celery -A workers.celery_app worker` imports first
        at_app = {"offline": os.environ.get("HF_HUB_OFFLINE"), "omp": os.environ.get("GOMP_SPINCOUNT"),
                  "torch": "torch" in sys.modules, "transformers": "transformers" in sys.modules}
        broker = os.path.join(os.environ["ASSAY_DATA_DIR"], "broker")
        folders_at_import = os.path.exists(broker)
        c.app.conf.task_default_queue  # first use
        import workers.tasks
        print(json.dumps({
            "at_app": at_app, "folders_at_import": folders_at_import,
            "folders_on_use": sorted(os.listdir(broker)),
            "backend": type(c.app.backend).__name__, "ignore_result": c.app.conf.task_ignore_result,
            "tasks": sorted(t for t in c.app.tasks if t.startswith("assay.")),
        }))
        """,
        _bare_env(tmp_path),
    )
    assert seen["at_app"] == {"offline": "1", "omp": "10000", "torch": False, "transformers": False}
    assert seen["folders_at_import"] is False
    assert seen["folders_on_use"] == ["control", "processed", "queue"]
    # Outcomes live in the job store: Celery keeps no results anywhere.
    assert seen["backend"] == "DisabledBackend"
    assert seen["ignore_result"] is True
    assert seen["tasks"] == [
        "assay.audit.chunk", "assay.audit.start", "assay.audit.sweep", "assay.generate", "assay.jobs.sweep",
    ]  # fmt: skip


# ------------------------------------------------------------------ dev tooling


def test_benchmarks_and_devstack_import_no_test_code() -> None:
    offenders = []
    for path in sorted([*(ROOT / "bench").rglob("*.py"), *(ROOT / "devstack").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] == "tests"]
    assert offenders == []


def test_a_thread_gives_its_openmp_threads_back(tmp_path: Path) -> None:
    # libgomp keeps a pool per thread that ran a parallel region; too many throttle every
    # team (evaluators/runtime.py). Releasing must end this thread's pool threads.
    seen = _run(
        """
        import json, os, threading
        from evaluators.runtime import configure_process, release_openmp_threads
        configure_process()
        before_torch = release_openmp_threads()
        import torch
        torch.set_num_threads(2)
        counts = {}
        def work():
            x = torch.randn(512, 512)
            for _ in range(5):
                x @ x  # a parallel region: this thread gets a pool of OpenMP threads
            counts["with_pool"] = len(os.listdir("/proc/self/task"))
            counts["released"] = release_openmp_threads()
            for _ in range(200):  # the pool's threads exit on their own schedule
                if len(os.listdir("/proc/self/task")) < counts["with_pool"]:
                    break
                threading.Event().wait(0.01)
            counts["after"] = len(os.listdir("/proc/self/task"))
            x @ x  # and torch still works, with a new pool
        t = threading.Thread(target=work)
        t.start(); t.join()
        print(json.dumps({"before_torch": before_torch, **counts}))
        """,
        _bare_env(tmp_path),
    )
    assert seen["before_torch"] is False
    assert seen["released"] is True
    assert int(str(seen["after"])) < int(str(seen["with_pool"]))
