"""JSON Schema a model states beyond its fields, for pydantic and the OpenAPI document alike.

Some rules live in validators ("exactly one of prompt or messages"); a client
generated from the schema cannot know them unless the schema says so.
``schema_extra`` returns a pydantic ``json_schema_extra`` callable that
deep-merges ``extra`` into a model's schema: pydantic applies it to
``model_json_schema()``, and ``service/openapi.py`` applies it to the
component Litestar generates, so both documents state the same rules.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

SchemaExtra = Callable[[dict[str, Any], type], None]


# Keys that say what type a value is: a property that states any of them is retyped, not
# narrowed (pydantic writes a union as anyOf, Litestar as oneOf; both are replaced).
_TYPE_KEYS = frozenset({"type", "anyOf", "oneOf", "allOf", "items", "$ref", "enum", "const"})


def merge(schema: dict[str, Any], extra: dict[str, Any], *, retype: bool = False) -> None:
    """Merge ``extra`` into ``schema``: mappings key by key, anything else replaced.

    Under ``properties``, a property that states its type replaces the generated one.
    """
    if retype and _TYPE_KEYS & extra.keys():
        for key in _TYPE_KEYS:
            schema.pop(key, None)
    for key, value in extra.items():
        current = schema.get(key)
        if key == "properties" and isinstance(value, dict) and isinstance(current, dict):
            for name, prop in value.items():
                if isinstance(prop, dict) and isinstance(current.get(name), dict):
                    merge(current[name], prop, retype=True)
                else:
                    current[name] = copy.deepcopy(prop)
        elif isinstance(value, dict) and isinstance(current, dict):
            merge(current, value)
        else:
            # A copy: the constants extras are built from must not change with a document.
            schema[key] = copy.deepcopy(value)


def schema_extra(*extras: dict[str, Any]) -> SchemaExtra:
    """A ``json_schema_extra`` that merges ``extras`` in order (a subclass passes its base's too)."""

    def apply(schema: dict[str, Any], model: type) -> None:
        for extra in extras:
            merge(schema, extra)

    return apply


def json_integer(value: Any) -> Any:
    """A before-validator for int fields: what JSON Schema calls an integer, 3 and 3.0, never
    true, "3" or 3.5 (pydantic's lax int takes true and "3"; its strict int refuses 3.0).

    Use as ``field_validator(..., mode="before")(json_integer)``: the field keeps its int
    schema and constraints. Float fields use ``strict=True`` (a number, not a bool or string).
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be an integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("must be an integer")
        return int(value)
    return value
