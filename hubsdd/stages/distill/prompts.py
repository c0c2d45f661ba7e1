"""What the teacher is asked: the rewrite prompt templates, and the user turn a student sees.

The teacher is shown the instruction and the original response as a reference, and asked for its
own answer (``hubsdd/stages/distill/templates/distill_*.md.j2``, or a Jinja file the recipe names).
"""

from __future__ import annotations

import hashlib
import importlib.resources
from dataclasses import dataclass
from pathlib import Path

from ...core.chat import DATA_COLUMNS, chat_example, user_message  # noqa: F401  (the same user turn and examples)
from ...core.errors import StageError

BUILTIN_TEMPLATES = {"general": "distill_general.md.j2", "math": "distill_math.md.j2"}


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def render(self, instruction: str, input: str, reference: str) -> str:
        import jinja2

        env = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                                 keep_trailing_newline=False)
        try:
            return env.from_string(self.text).render(instruction=instruction, input=input, reference=reference).strip()
        except jinja2.TemplateError as exc:
            raise StageError(f"distill.template: cannot render {self.name}: {exc}",
                             fix="the template may use only `instruction`, `input` and `reference`") from None


def load_template(value: str, base_dir: Path | None = None) -> PromptTemplate:
    """'general' / 'math' from the packaged templates, else a Jinja file (recipe-relative or package:)."""
    from ...core.recipe import resolve_path

    if value in BUILTIN_TEMPLATES:
        text = importlib.resources.files(f"{__package__}.templates").joinpath(BUILTIN_TEMPLATES[value]).read_text(encoding="utf-8")
        return PromptTemplate(value, text)
    try:
        path = resolve_path(value, base_dir or Path.cwd())
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise StageError(f"distill.template: {value!r} is neither 'general', 'math' nor a readable file ({exc})",
                         fix="use 'general' or 'math', or a path (relative to the recipe) to a Jinja template") from None
    return PromptTemplate(Path(value).name, text)

