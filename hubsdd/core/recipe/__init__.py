"""The recipe: one pydantic model per YAML section, validated once at load.

Every section exists from the start, including those whose stages come later, so a recipe written
today stays valid. Unknown keys are errors (``extra="forbid"``). Validators raise ``ValueError`` so
pydantic reports the YAML path; :mod:`hubsdd.core.recipe.file` reads the file into plain data with line
numbers, :func:`parse_recipe` validates it and turns every problem into one :class:`~hubsdd.core.errors.RecipeError`.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from ..errors import RecipeError
from .file import (  # noqa: F401  (check_package_path, shown: part of this module's API)
    check_package_path, problems_from_validation, read_recipe_file, read_recipe_text, resolve_path, shown, where,
)
from .distributed import DistributedSettings  # noqa: F401
from .publish import CardSection, PublishSection  # noqa: F401
from .sections import (  # noqa: F401  (the sections are part of this module's API)
    HUB_ID_RE, SEED_MAX, BaseSection, CalibrationData, ColumnMap, DataSource, DistillSection,
    EvaluateSection, FidelitySettings, FinetuneSection, GenerationSettings, GKDSettings, KDSettings, LoraSettings,
    MergeSection, PruneSection, Section, SpeculativeSettings, TeacherLogitsSettings, VariantSection,
)


# --------------------------------------------------------------------------- recipe


class Recipe(Section):
    name: str = Field(..., description="Run name: runs/<name>/ holds the artifacts.")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="A global seed every stage's fingerprint includes.")
    runs_dir: str = Field("runs", description="Where run directories live (relative to the working directory).")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where every stage runs: auto = the GPU when torch sees one, else the CPU. "
        "`accelerate launch` gives each process its own GPU.")
    base: BaseSection
    prune: PruneSection
    distill: DistillSection | None = None
    finetune: FinetuneSection | None = None
    merge: MergeSection | None = None
    evaluate: EvaluateSection | None = None
    card: CardSection = CardSection()
    publish: PublishSection = PublishSection()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", v):
            raise ValueError("use letters, digits, '.', '-' and '_' only (it names a folder)")
        return v

    @model_validator(mode="after")
    def _cross_section(self) -> "Recipe":
        if self.finetune is not None:
            needs_distilled = [v.data for v in self.finetune.variants.values() if v.data != "original"]
            if needs_distilled and self.distill is None:
                raise ValueError(f"finetune: a variant uses `data: {needs_distilled[0]}` but there is no `distill` section")
            if self.distill is None:
                raise ValueError("finetune: needs a `distill` section for its training data")
            if self.finetune.kd.teacher_logits == "cache":
                stored = self.distill.teacher_logits.data if self.distill.teacher_logits else []
                missing = sorted({v.data for v in self.finetune.variants.values() if v.loss == "kd"} - set(stored))
                if missing:
                    raise ValueError(f"finetune.kd.teacher_logits: cache needs the teacher's log-probabilities on "
                                     f"the {' and '.join(missing)} responses: add them to distill.teacher_logits.data "
                                     "(or use auto or live)")
        if self.merge is not None:
            if self.finetune is None:
                raise ValueError("merge: needs a `finetune` section")
            unknown = [m for m in self.merge.models if m not in self.finetune.variants]
            if unknown:
                raise ValueError(f"merge.models: {shown(unknown, 200)} are not finetune variants {list(self.finetune.variants)}")
        # Names of checkpoints are known from the recipe: a typo must not wait for the last stage.
        made = ["pruned", *(self.finetune.variants if self.finetune else ())] + (["merge"] if self.merge else [])
        if self.publish.release not in ("auto", *made):
            raise ValueError(f"publish.release: {shown(self.publish.release)} is not a checkpoint this recipe makes; "
                             f"use auto or one of: {', '.join(made)}")
        if self.evaluate is not None and self.evaluate.models is not None:
            unknown = [m for m in self.evaluate.models if m not in ("base", *made)]
            if unknown:
                raise ValueError(f"evaluate.models: {shown(unknown, 200)} are not checkpoints this recipe makes "
                                 f"(base, {', '.join(made)})")
        return self

    # Where the file came from; set by load_recipe. Relative paths in the recipe resolve against it.
    _source_path: Path | None = None
    _source_text: str | None = None
    _lines: dict[tuple, int] = {}  # YAML path -> line, for messages naming a field

    @property
    def source_dir(self) -> Path:
        return self._source_path.parent if self._source_path else Path.cwd()

    @property
    def run_dir(self) -> Path:
        runs = Path(self.runs_dir)
        if not runs.is_absolute():
            runs = Path.cwd() / runs
        return runs / self.name

    def where(self, *loc: str | int) -> str:
        """``prune.blocks (line 9)``: a field of this recipe as messages name it."""
        return where(tuple(loc), self._lines or {})

    def resolve_path(self, value: str) -> Path:
        """A recipe path: 'package:<pkg>/<rest>' inside an installed package, else relative to the recipe."""
        return resolve_path(value, self.source_dir)

    def section_dict(self, name: str) -> Any:
        section = getattr(self, name)
        return None if section is None else section.model_dump(mode="json")

    def text(self) -> str:
        """The recipe as written (for the card and the release), or a YAML dump."""
        if self._source_text is not None:
            return self._source_text
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False)

    def sha256(self) -> str:
        return hashlib.sha256(self.text().encode()).hexdigest()


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


# --------------------------------------------------------------------------- loading


def parse_recipe(text: str, source: str = "<recipe>", source_path: Path | None = None) -> Recipe:
    """Validate recipe text. Raises RecipeError with one ``path.to.field (line N): ...`` line per problem."""
    from pydantic import ValidationError

    data, lines = read_recipe_text(text, source)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(source, problems_from_validation(exc, lines, Recipe)) from None
    recipe._source_path = source_path
    recipe._source_text = text
    recipe._lines = lines
    return recipe


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file. Raises RecipeError naming the file, YAML path and line."""
    path = Path(path)
    return parse_recipe(read_recipe_file(path), str(path), path.resolve())


# --------------------------------------------------------------------------- reference


def reference_markdown() -> str:
    """The recipe reference, one table per section, generated from these models (the README holds
    it between ``<!-- recipe-reference -->`` markers; ``tests/test_readme.py`` fails when stale)."""
    from .reference import reference_tables

    return reference_tables(Recipe, Section)
