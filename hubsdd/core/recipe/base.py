"""The base of every recipe section (:class:`Section`): unknown keys refused, numbers read as
numbers. Its own module so that section modules (:mod:`hubsdd.core.recipe.sections`,
:mod:`hubsdd.core.recipe.distributed`, ...) can import it without importing each other."""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


def _numbers_only(annotation: Any) -> bool:
    args = [a for a in (typing.get_args(annotation) or (annotation,)) if a is not type(None)]
    return bool(args) and all(a in (int, float) for a in args)


def _is_map(annotation: Any) -> bool:  # dict[str, int], dict[...] | None
    return typing.get_origin(annotation) is dict or any(_is_map(a) for a in typing.get_args(annotation))


class Section(BaseModel):
    # Infinity and NaN pass `gt`/`le` bounds in surprising ways (`epochs: .inf` is > 0): refuse them.
    model_config = ConfigDict(extra="forbid", frozen=False, protected_namespaces=(), allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _plain_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic reads True as 1; YAML reads yes/no/on/off as booleans, so `blocks: yes` would remove one layer.
        annotation = cls.model_fields[info.field_name].annotation if info.field_name in cls.model_fields else None
        if isinstance(value, bool) and _numbers_only(annotation):
            raise ValueError(f"expected a number, got {str(value).lower()} (YAML reads true/false, yes/no and "
                             "on/off as booleans)")
        # No setting needs more than 64 bits; a 5000-digit integer cannot even be printed in a message.
        items = value if isinstance(value, list) else list(value.values()) if isinstance(value, dict) and \
            _is_map(annotation) else [value]
        if any(isinstance(v, int) and not -2**63 <= v < 2**64 for v in items):
            raise ValueError("a number this large (over 64 bits) is not a setting")
        return value
