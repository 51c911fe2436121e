"""The audit run record as JUnit XML, so CI shows each gate as a test case.

Built with ElementTree rather than a template: it escapes every attribute and
text node, and what it writes is always well-formed XML.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

from evaluators.audit.charts import fmt, fmt_ci, is_rate


def render_junit(run: Mapping[str, Any]) -> str:
    """One ``<testcase>`` per gate under one ``<testsuite>``; failed gates carry ``<failure>``."""
    gates = run.get("gates") or []
    suite = run.get("suite") or {}
    failures = sum(not g.get("passed") for g in gates)
    ts = ET.Element(
        "testsuite",
        {
            "name": f"assay audit {suite.get('name', '')}".strip(),
            "tests": str(len(gates)),
            "failures": str(failures),
            "errors": "0",
            "skipped": "0",
            "timestamp": str(run.get("finished_at") or run.get("created_at") or ""),
        },
    )
    props = ET.SubElement(ts, "properties")
    for name, value in (
        ("run_id", run.get("id")),
        ("verdict", run.get("verdict")),
        ("suite_sha256", suite.get("sha256")),
        ("model", (run.get("model") or {}).get("id")),
        ("policy", (run.get("policy") or {}).get("name")),
        ("policy_sha256", (run.get("policy") or {}).get("sha256")),
    ):
        ET.SubElement(props, "property", {"name": name, "value": "" if value is None else str(value)})
    classname = f"assay.gates.{suite.get('name', 'suite')}"
    for g in gates:
        case = ET.SubElement(
            ts, "testcase", {"classname": classname, "name": str(g.get("gate")), "time": "0"}
        )
        rate = is_rate(str(g.get("metric")))
        detail = (
            f"measured {fmt(g.get('value'), rate)} (95% CI {fmt_ci(g.get('ci'), rate)}, n={g.get('n')}); "
            f"gate: {g.get('gate')}"
        )
        if not g.get("passed"):
            failure = ET.SubElement(
                case, "failure", {"message": str(g.get("reason") or "gate failed"), "type": "gate"}
            )
            failure.text = detail
        else:
            out = ET.SubElement(case, "system-out")
            out.text = detail + (f"\n{g['reason']}" if g.get("reason") else "")
    if run.get("warnings"):
        ET.SubElement(ts, "system-out").text = "\n".join(str(w) for w in run["warnings"])
    ET.indent(ts)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(ts, encoding="unicode") + "\n"
