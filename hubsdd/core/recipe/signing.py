"""The recipe's ``publish.signing`` section: how a release is signed (OpenSSF model-signing).

The private key itself never appears in a recipe: ``key_env`` names the environment variable that
holds the key (its PEM text, or the path of a PEM file), so neither the key nor its path reaches the
run directory, the published recipe, a log or the card.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from .sections import Section

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class SigningSection(Section):
    """Sign the model release with OpenSSF model-signing; `hubsdd pull` verifies the signature."""

    method: Literal["none", "key", "sigstore"] = Field(
        "none",
        description="none; key: an elliptic-curve private key (P-256/384/521, PEM) from `key_env`; sigstore: "
        "keyless, from the ambient OIDC credentials of a GitHub Actions job (`permissions: id-token: write`).",
    )
    key_env: str = Field(
        "HUBSDD_SIGNING_KEY",
        description="method key: the environment variable holding the private key's PEM text or its file's path "
        "(never the recipe: it is published). `hubsdd publish --signing-key PATH` overrides it.",
    )
    password_env: str | None = Field(None, description="method key: the environment variable holding the key's "
                                     "password, if it is encrypted.")

    @field_validator("key_env", "password_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and not ENV_NAME_RE.match(v):
            raise ValueError("expected the NAME of an environment variable (letters, digits, _); put the key or "
                             "its path in that variable, never in the recipe, which is published with the model")
        return v

    @model_validator(mode="after")
    def _password_needs_key(self) -> "SigningSection":
        if self.password_env and self.method != "key":
            raise ValueError("password_env only applies to method: key")
        return self
