"""Write a finished run's reports to files: JSON, HTML and JUnit XML (``assay audit`` and CI)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evaluators.audit.junit import render_junit
from evaluators.audit.record import render_json
from evaluators.audit.render import render_html


def write_reports(record: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write the three report files of ``record`` into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"audit-{record['id']}"
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.html", out_dir / f"{stem}.junit.xml"]
    paths[0].write_text(json.dumps(render_json(record), indent=2), encoding="utf-8")
    paths[1].write_text(render_html(record), encoding="utf-8")
    paths[2].write_text(render_junit(record), encoding="utf-8")
    return paths
