#!/usr/bin/env python3
"""The project's own Dockerfile rules, for machines without hadolint (stdlib only).

    python3 docker/lint.py [DOCKERFILE...]    (default: docker/*.Dockerfile and docker/local/*.Dockerfile)

Every Dockerfile:
  - FROM images have a tag (or come from an ARG whose default has one), never `:latest`;
  - no ADD (COPY is explicit, ADD fetches URLs and unpacks archives);
  - `apt-get install` runs with -y and --no-install-recommends, after `apt-get update`
    in the same RUN, and removes /var/lib/apt/lists; no `apt-get upgrade`, no sudo;
  - pip never gets --trusted-host or an index URL with credentials written into the file;
  - CMD, ENTRYPOINT and HEALTHCHECK in exec (JSON) form; WORKDIR absolute.
The Assay images (docker/*.Dockerfile) also:
  - take their base image from a build arg (air-gapped builds point it elsewhere);
  - are multi-stage, and the final stage installs nothing: it only copies from the
    build stages (no RUN, no build tools, no package manager run there);
  - the final stage copies nothing from docker/build-inputs and declares no ARG;
  - no ENV or ARG, in any stage, is named like a secret (PASSWORD, TOKEN, SECRET,
    API_KEY, CREDENTIAL) or holds a URL with a user:password part;
  - the final stage runs as a numeric non-root USER and has a HEALTHCHECK.
Exit status 1 when a rule fails; each failure is printed as FILE:LINE: message.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|TOKEN|SECRET|API_KEY|CREDENTIAL", re.I)
URL_WITH_CREDENTIALS = re.compile(r"://[^/\s:@]+:[^/\s@]+@")


@dataclass
class Instruction:
    line: int
    keyword: str
    args: str


@dataclass
class Stage:
    base: str
    name: str | None
    line: int
    instructions: list[Instruction] = field(default_factory=list)


def parse(path: Path) -> tuple[list[Instruction], list[Stage]]:
    """Instructions with their first line number (continuations joined, comments dropped) and stages."""
    instructions: list[Instruction] = []
    buf: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # a comment line inside a continued instruction
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf.append(stripped[:-1])
            continue
        buf.append(stripped)
        text = " ".join(buf)
        buf = []
        keyword, _, args = text.partition(" ")
        instructions.append(Instruction(start, keyword.upper(), args.strip()))
    stages: list[Stage] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].lower() == "as" else None
            stages.append(Stage(words[0], name, ins.line))
        elif stages:
            stages[-1].instructions.append(ins)
    return instructions, stages


def lint(path: Path, assay_image: bool) -> list[str]:
    problems: list[str] = []

    def bad(line: int, message: str) -> None:
        problems.append(f"{path}:{line}: {message}")

    instructions, stages = parse(path)
    if not stages:
        return [f"{path}:1: no FROM"]
    arg_defaults: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "FROM":
            break
        if ins.keyword == "ARG":
            name, _, default = ins.args.partition("=")
            arg_defaults[name.strip()] = default.strip()
    stage_names = {s.name for s in stages if s.name}

    for st in stages:
        ref = st.base
        m = re.fullmatch(r"\$\{?(\w+)\}?", ref)
        if m:
            ref = arg_defaults.get(m.group(1), "")
            if not ref:
                bad(st.line, f"FROM ${m.group(1)}: the build arg has no default image")
                continue
        elif assay_image and st is stages[0] and ref not in stage_names:
            bad(st.line, f"FROM {ref}: the base image must come from a build arg (air-gapped builds)")
        if ref in stage_names or ref == "scratch":
            continue
        image = ref.rsplit("/", 1)[-1]
        if "@" not in image and (":" not in image or image.endswith(":latest")):
            bad(st.line, f"FROM {ref}: pin a tag other than latest")

    for ins in instructions:
        kw, args = ins.keyword, ins.args
        if kw == "ADD":
            bad(ins.line, "use COPY, not ADD")
        if kw == "RUN":
            if re.search(r"\bsudo\b", args):
                bad(ins.line, "no sudo in a Dockerfile")
            if re.search(r"apt-get\s+(dist-)?upgrade", args):
                bad(ins.line, "no apt-get upgrade: rebuild on a newer base image")
            if re.search(r"apt-get\s+install", args):
                if not re.search(r"apt-get\s+update", args):
                    bad(ins.line, "apt-get install without apt-get update in the same RUN")
                if "--no-install-recommends" not in args:
                    bad(ins.line, "apt-get install without --no-install-recommends")
                if not re.search(r"apt-get\s+install\s+(-\S+\s+)*-y\b|apt-get\s+install\s+.*\s-y\b", args):
                    bad(ins.line, "apt-get install without -y")
                if "/var/lib/apt/lists" not in args:
                    bad(ins.line, "apt-get install without removing /var/lib/apt/lists")
            if re.search(r"pip3?\s+install\b.*--trusted-host", args):
                bad(ins.line, "pip --trusted-host in the Dockerfile (pass PIP_TRUSTED_HOST as a build arg)")
        if URL_WITH_CREDENTIALS.search(args):
            bad(ins.line, "a URL with credentials written into the Dockerfile")
        if kw in {"CMD", "ENTRYPOINT"} and not _exec_form(args):
            bad(ins.line, f"{kw} in shell form: use the exec (JSON) form")
        if kw == "HEALTHCHECK" and args.upper() != "NONE":
            cmd = re.split(r"\bCMD\b", args, maxsplit=1)
            if len(cmd) != 2 or not _exec_form(cmd[1].strip()):
                bad(ins.line, "HEALTHCHECK CMD in shell form: use the exec (JSON) form")
        if kw == "WORKDIR" and not args.startswith(("/", "$")):
            bad(ins.line, f"WORKDIR {args}: use an absolute path")
        if kw in {"ENV", "ARG"}:
            for name in _declared_names(kw, args):
                if SECRET_NAME.search(name) and assay_image:
                    bad(ins.line, f"{kw} {name}: secrets never go into ENV or ARG (they stay in the image)")

    if assay_image:
        final = stages[-1]
        if len(stages) < 2:
            bad(final.line, "single stage: build in a build stage, copy the result into the final one")
        users = [i for i in final.instructions if i.keyword == "USER"]
        if not users:
            bad(final.line, "final stage has no USER: it would run as root")
        else:
            user = users[-1].args.split(":")[0]
            if not user.isdigit() or user == "0":
                bad(users[-1].line, f"USER {users[-1].args}: use a numeric non-root uid")
        if not any(i.keyword == "HEALTHCHECK" for i in final.instructions):
            bad(final.line, "final stage has no HEALTHCHECK")
        for ins in final.instructions:
            if ins.keyword == "RUN":
                bad(ins.line, "RUN in the final stage: install in a build stage and COPY --from it")
            if ins.keyword == "ARG":
                bad(ins.line, "ARG in the final stage: build args belong to the build stages")
            if ins.keyword in {"COPY", "ADD"} and "build-inputs" in ins.args:
                bad(ins.line, "the final stage copies build inputs (wheels, CA bundle, model cache)")
        # The final stage's own base: a stage chain that leads back to the runtime base,
        # never to a stage that ran pip, apt or a compiler.
        by_name = {s.name: s for s in stages if s.name}
        chain, base = [], final.base
        while base in by_name:
            chain.append(by_name[base])
            base = by_name[base].base
        for st in chain:
            for ins in st.instructions:
                if ins.keyword == "RUN" and re.search(r"\b(pip3?|uv|apt-get|gcc|make)\s", ins.args):
                    bad(
                        final.line,
                        f"final stage is built on stage {st.name!r}, which installs packages "
                        f"(line {ins.line}): base it on the runtime stage and COPY --from the build",
                    )
                    break
    return problems


def _exec_form(args: str) -> bool:
    try:
        value = json.loads(args)
    except ValueError:
        return False
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _declared_names(keyword: str, args: str) -> list[str]:
    if keyword == "ARG":
        return [args.split("=", 1)[0].strip()]
    # ENV A=1 B="x y"   or the legacy   ENV A value
    if "=" not in args.split(" ", 1)[0]:
        return [args.split(" ", 1)[0]]
    return re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=", args)


def main(argv: list[str]) -> int:
    default = sorted(HERE.glob("*.Dockerfile")) + sorted(HERE.glob("local/*.Dockerfile"))
    paths = [Path(a) for a in argv] or default
    status = 0
    for path in paths:
        assay_image = path.resolve().parent == HERE
        problems = lint(path, assay_image)
        for p in problems:
            print(p)
        rel = path.resolve().relative_to(HERE.parent) if path.resolve().is_relative_to(HERE.parent) else path
        print(f"{'ok  ' if not problems else 'FAIL'} lint {rel}")
        status |= bool(problems)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
