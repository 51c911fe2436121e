"""Request bodies validated as their models say, strictness included.

Litestar's pydantic plugin calls ``model_validate(value, strict=False)``, and
an explicit ``strict=False`` overrides ``Field(strict=True)``: a JSON ``true``
became a temperature of 1.0 and ``"5"`` a top_k of 5, though the contracts
(and the OpenAPI document) say numbers. Passing ``strict=None`` lets each
model and field decide.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from litestar.plugins.pydantic import PydanticInitPlugin
from litestar.plugins.pydantic.plugins.init import _dec_pydantic_v2


class ModelStrictness(PydanticInitPlugin):
    """Litestar's pydantic plugin, decoding request bodies with the models' own strictness."""

    @classmethod
    def decoders(
        cls, validate_strict: bool = False
    ) -> list[tuple[Callable[[Any], bool], Callable[[Any, Any], Any]]]:
        out = []
        for predicate, decoder in super().decoders(validate_strict):
            if isinstance(decoder, partial) and decoder.func is _dec_pydantic_v2:
                # None: the model's and fields' own strict settings apply.
                decoder = partial(_dec_pydantic_v2, strict=None)  # type: ignore[arg-type]
            out.append((predicate, decoder))
        return out
