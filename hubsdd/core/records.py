"""The base of every stage record (:mod:`hubsdd.core.outputs`, :mod:`hubsdd.core.evaluate_outputs`) and the
typed view of a finished stage. Its own module so that the record models of a stage's package
(evaluate) and the table of all of them (:data:`hubsdd.core.outputs.MODELS`) import it, not each other.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Typed(BaseModel):
    """A finished stage as its readers see it: typed ``outputs`` and ``metrics``."""

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=())

    name: str
    outputs: Any
    metrics: Any
