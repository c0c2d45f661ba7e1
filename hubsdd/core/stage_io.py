"""What a stage sees and returns: the contract between a stage and the pipeline that runs it.

A stage is a function ``(StageContext) -> StageOutput``. It reads its recipe section
(``ctx.section``) and its inputs' records (``ctx.input("prune")``, a :class:`StageResult`), writes
into ``ctx.out_dir`` and returns its records (the models of :mod:`hubsdd.core.outputs`). Stages import
this module, never the runner (:mod:`hubsdd.pipeline.runner`) nor each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import StageError
from .outputs import MODELS
from .records import Typed

if TYPE_CHECKING:
    from .recipe import Recipe


@dataclass
class StageResult:
    """A finished stage as later stages see it: its folder and its stage.json."""

    name: str
    dir: Path
    data: dict

    @property
    def fingerprint(self) -> str:
        return self.data["fingerprint"]

    @property
    def typed(self) -> "Typed":
        """``outputs`` and ``metrics`` as the stage's models (:data:`hubsdd.core.outputs.MODELS`), validated."""
        outputs_model, metrics_model = MODELS[self.name]
        try:
            return Typed(name=self.name, outputs=outputs_model.model_validate(self.outputs),
                         metrics=metrics_model.model_validate(self.metrics))
        except ValueError as exc:
            raise StageError(f"{self.dir / 'stage.json'}: not the record this version of hubsdd writes ({exc})",
                             fix=f"redo that stage: `hubsdd run <recipe> --force {self.name}`") from None

    @property
    def outputs(self) -> dict:
        return self.data.get("outputs", {})

    @property
    def metrics(self) -> dict:
        return self.data.get("metrics", {})

    def path(self, key: str) -> Path:
        """An output path: stage outputs store paths relative to the stage folder (or absolute)."""
        value = self.outputs.get(key)
        if value is None:
            raise StageError(f"stage {self.name!r} recorded no output {key!r}", fix=f"rerun it: remove {self.dir}")
        return self.resolve(value)

    def resolve(self, value: str) -> Path:
        """A path recorded anywhere in ``outputs`` (nested too): relative to the stage folder."""
        p = Path(value)
        return p if p.is_absolute() else self.dir / p


@dataclass
class StageOutput:
    """What a stage entry returns: ``outputs`` (paths relative to out_dir, ids) and ``metrics``, the
    stage's models from :data:`hubsdd.core.outputs.MODELS`."""

    outputs: Any = field(default_factory=dict)
    metrics: Any = field(default_factory=dict)


@dataclass
class StageContext:
    recipe: "Recipe"
    name: str
    run_dir: Path
    out_dir: Path
    work_dir: Path
    inputs: dict[str, StageResult]
    fingerprint: str

    @property
    def section(self) -> Any:
        return getattr(self.recipe, self.name)

    def input(self, name: str) -> StageResult:
        if name not in self.inputs:
            raise StageError(
                f"stage {self.name!r} needs the output of stage {name!r}, which has not run",
                fix=f"run `hubsdd run <recipe> --until {name}` first",
            )
        return self.inputs[name]


def checkpoint_dirs(results: dict[str, StageResult]) -> dict[str, Path]:
    """Every model checkpoint the finished stages made, by the name recipes and cards use for it:
    ``base``, ``pruned``, each fine-tuned variant, ``merge`` (in that order)."""
    found: dict[str, Path] = {}
    if "base" in results:
        found["base"] = results["base"].path("model_dir")
    if "prune" in results:
        found["pruned"] = results["prune"].path("model_dir")
    if "finetune" in results:
        ft = results["finetune"]
        for name, info in (ft.outputs.get("variants") or {}).items():
            found[name] = ft.resolve(info["model_dir"])
    if "merge" in results:
        found["merge"] = results["merge"].path("model_dir")
    return found
