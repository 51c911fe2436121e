"""The rules of suite items that JSON Schema can state, for ``Suite.model_json_schema()``.

``SuiteItem``'s validators say: exactly one of prompt, messages or template; a
template holds {group} and names a dimension, which needs groups unless it has
built-in ones; dimension and groups only with a template; messages hold a user
turn; groups, context and tags are non-blank and unique. Stating them lets the
API's inline suites (``POST /v1/audits``) and editors check a suite before
sending it. Unique item ids and one group set per dimension span items, which
JSON Schema cannot say; the server still checks them (422).
"""

from __future__ import annotations

import re
from typing import Any

from evaluators.contracts import GROUP_PLACEHOLDER
from evaluators.fairness import DEFAULT_GROUPS

_NULL = {"type": "null"}
# A character str.strip() keeps: Python's whitespace spelled out, as regex engines disagree on
# \s (ECMA's lacks \x1c-\x1f and \x85, and adds \ufeff).
NOT_BLANK = "[^\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"


def _entries(least: int = 0) -> dict[str, Any]:
    """Non-blank, unique strings (``_non_empty_unique``), at least ``least`` of them."""
    entries = {"type": "array", "uniqueItems": True, "items": {"type": "string", "pattern": NOT_BLANK}}
    return entries | ({"minItems": least} if least else {})


_SOURCES = ("prompt", "messages", "template")


def _only(source: str, schema: dict[str, Any], *, template: bool = False) -> dict[str, Any]:
    others = {s: _NULL for s in _SOURCES if s != source}
    if not template:
        others |= {"dimension": _NULL, "groups": _NULL}
    return {"required": [source], "properties": {source: schema, **others}}


_TEMPLATE = _only("template", {"type": "string", "pattern": re.escape(GROUP_PLACEHOLDER)}, template=True)
_TEMPLATE["required"] = ["template", "dimension"]
_TEMPLATE["properties"]["dimension"] = {"type": "string"}
# Without groups, the dimension must have built-in ones.
_TEMPLATE["anyOf"] = [
    {"required": ["groups"], "properties": {"groups": {"type": "array"}}},
    {"properties": {"dimension": {"enum": sorted(DEFAULT_GROUPS)}}},
]

ITEM_RULES: dict[str, Any] = {
    "oneOf": [
        _only("prompt", {"type": "string"}),
        _only("messages", {"type": "array", "contains": {"properties": {"role": {"const": "user"}}}}),
        _TEMPLATE,
    ],
    "properties": {
        "groups": {"anyOf": [_entries(2), _NULL]},
        "context": {"anyOf": [_entries(1), _NULL]},
        "tags": _entries(),
    },
}
