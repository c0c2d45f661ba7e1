"""The recipe's ``card`` and ``publish`` sections (the rest: :mod:`hubsdd.core.recipe.sections`); import
them from :mod:`hubsdd.core.recipe`."""

from __future__ import annotations

from pydantic import Field, field_validator

from .sections import LANGUAGE_RE, TAG_RE, Section, _check_hub_id, _check_license, _check_text, shown


# --------------------------------------------------------------------------- card / publish


class CardSection(Section):
    model_name: str | None = Field(None, description="The card's title and model-index name; default: the "
                                   "model repository's name.")
    language: list[str] = Field(default_factory=lambda: ["en"])
    tags: list[str] = Field(default_factory=list)
    license: str | None = Field(None, description="Overrides the license inherited from the base model.")
    description: str | None = Field(None, description="A paragraph under the title (markdown; HTML is "
                                    "shown as text).")

    @field_validator("model_name")
    @classmethod
    def _model_name(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("an empty name; leave it out to use the repository's name")
        return _check_text(v, limit=96, one_line=True)

    @field_validator("language")
    @classmethod
    def _languages(cls, v: list[str]) -> list[str]:
        bad = [x for x in v if not LANGUAGE_RE.match(x)]
        if bad:
            raise ValueError(f"{shown(bad, 120)} are not language codes (ISO 639, e.g. en, fr, zh-Hant)")
        return v

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: list[str]) -> list[str]:
        bad = [x for x in v if not TAG_RE.match(x)]
        if bad:
            raise ValueError(f"{shown(bad, 120)}: a tag is a letter or digit, then letters, digits and . _ - : + / "
                             "(at most 80)")
        return v

    @field_validator("license")
    @classmethod
    def _license(cls, v: str | None) -> str | None:
        return _check_license(v)

    @field_validator("description")
    @classmethod
    def _description(cls, v: str | None) -> str | None:
        return _check_text(v, limit=5000, one_line=False)


class PublishSection(Section):
    model_repo: str | None = None
    dataset_repo: str | None = None
    release: str = Field(
        "auto",
        description="Which checkpoint to publish: pruned, merge, a variant name, or auto: the best of "
        "them on the *dev* items (`evaluate.dev`), never the test items the card reports — the one "
        "significantly above every other (paired 95% interval), else, among those no other beats "
        "significantly, the one closest to the base model (lowest KL, then highest top-1 agreement); "
        "the card states the rule and its figures. Without dev items: merge, else sdd, else the first "
        "variant, else pruned.",
    )
    private: bool = False
    create_pr: bool = False
    revision: str | None = None
    max_shard_size: str = "2GB"
    commit_message: str | None = None
    push_dataset: bool = True
    signing: "SigningSection" = Field(default_factory=lambda: SigningSection())

    @field_validator("commit_message")
    @classmethod
    def _commit_message(cls, v: str | None) -> str | None:
        return _check_text(v, limit=500, one_line=True)

    @field_validator("model_repo", "dataset_repo")
    @classmethod
    def _hub_ids(cls, v: str | None) -> str | None:
        return _check_hub_id(v)


from .signing import SigningSection  # noqa: E402 - it builds on Section

PublishSection.model_rebuild()
