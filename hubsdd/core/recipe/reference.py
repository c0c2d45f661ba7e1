"""The recipe reference in the README: one markdown table per section, generated from the models
of :mod:`hubsdd.core.recipe` (``scripts/update_readme.py`` writes it; ``tests/test_readme.py`` checks it)."""

from __future__ import annotations

import json
import typing
from typing import Any, Literal

from pydantic import BaseModel


def _type_name(annotation: Any) -> str:
    import typing

    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        parts = [_type_name(a) for a in args if a is not type(None)]
        return " \\| ".join(parts) + (" \\| null" if type(None) in args else "")
    if origin in (list, tuple):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"map of {_type_name(args[1])}" if len(args) == 2 else "map"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: Any) -> str:
    from pydantic_core import PydanticUndefined

    if field.is_required():
        return "**required**"
    value = field.default_factory() if field.default_factory is not None else field.default
    if value is PydanticUndefined:
        return ""
    if isinstance(value, BaseModel):
        return "(defaults)"
    if isinstance(value, dict) and value and all(isinstance(v, BaseModel) for v in value.values()):
        value = {k: v.model_dump(exclude_defaults=True) for k, v in value.items()}
    return f"`{json.dumps(value)}`" if value is not None else "`null`"


def reference_tables(root: type[BaseModel], base: type[BaseModel]) -> str:
    """One markdown table per model reachable from ``root``, in the order first met."""

    seen: list[type[BaseModel]] = []

    def collect(model: type[BaseModel]) -> None:
        if model in seen:
            return
        seen.append(model)
        for field in model.model_fields.values():
            stack = [field.annotation]
            while stack:
                ann = stack.pop()
                if isinstance(ann, type) and issubclass(ann, BaseModel):
                    collect(ann)
                stack.extend(typing.get_args(ann))

    collect(root)
    out = []
    for model in seen:
        doc = (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        out.append(f"#### {model.__name__}\n")
        if doc and model is not base:
            out.append(f"{doc}\n")
        out.append("| key | type | default | meaning |\n|---|---|---|---|")
        for name, field in model.model_fields.items():
            desc = (field.description or "").replace("|", "\\|").replace("\n", " ")
            out.append(f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | {desc} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"
