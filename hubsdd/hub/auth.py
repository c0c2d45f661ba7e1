"""The token each push uses: one from the environment or the ``hf`` login, or, under trusted
publishing, one exchanged per repository. Tokens are never logged, written or put in a message."""

from __future__ import annotations

from ..core.errors import AuthError
from .release import URL_PREFIX


def single_token(token: str | None) -> str:
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise AuthError("no Hugging Face token found",
                        fix="log in with `hf auth login`, set HF_TOKEN, or in CI use trusted publishing "
                            "(HF_OIDC_RESOURCE with an OIDC id token)")
    return token


OIDC_ENV = "HF_OIDC_RESOURCE"


def oidc_resource(repo_id: str, repo_type: str) -> str:
    """How the Hub names a repository as a trusted-publishing resource: ``ns/name`` for a model,
    ``datasets/ns/name`` for a dataset."""
    return f"{URL_PREFIX[repo_type]}{repo_id}"


def repo_tokens(repos: dict[str, tuple[str, str]], token: str | None = None) -> dict[str, str]:
    """A token per repository to push (``{key: (repo_id, repo_type)}``), all obtained before anything
    is pushed, so a refused token changes nothing on the Hub.

    With trusted publishing on (``HF_OIDC_RESOURCE`` set, as in a GitHub Actions job with
    ``id-token: write``), huggingface_hub exchanges the CI's OIDC id token for a short-lived token
    scoped to *one* repository; hubsdd asks for one per repository it pushes, each scoped to that
    repository (the repositories must exist, each with this workflow configured as a trusted
    publisher). Otherwise one token (the argument, ``HF_TOKEN`` or the ``hf auth login`` store) serves
    every repository."""
    import os

    from huggingface_hub import get_token
    from huggingface_hub.errors import HfHubHTTPError, OIDCError

    if token or not os.environ.get(OIDC_ENV):
        one = single_token(token)
        return {key: one for key in repos}
    configured = os.environ[OIDC_ENV]
    out = {}
    try:
        for key, (repo_id, repo_type) in repos.items():
            resource = oidc_resource(repo_id, repo_type)
            os.environ[OIDC_ENV] = resource
            try:
                exchanged = get_token()
            except OIDCError as exc:
                raise AuthError(f"trusted publishing: no OIDC id token to exchange for {resource}: {exc}",
                                fix="run in GitHub Actions with `permissions: id-token: write` (or set "
                                    "HF_OIDC_ID_TOKEN), or unset HF_OIDC_RESOURCE and set an HF_TOKEN secret") from None
            except HfHubHTTPError as exc:
                server = (getattr(exc, "server_message", None) or "").strip() or str(exc).strip().splitlines()[0]
                raise AuthError(f"trusted publishing: the Hub refused to exchange the OIDC token for {resource} "
                                f"({server})",
                                fix=f"create {repo_type} repository {repo_id} and add this workflow as a trusted "
                                    "publisher in its settings on the Hub; or unset HF_OIDC_RESOURCE and set an "
                                    "HF_TOKEN secret") from None
            if not exchanged:
                raise AuthError(f"trusted publishing: no token for {resource}", fix="check HF_OIDC_RESOURCE")
            out[key] = exchanged
    finally:
        os.environ[OIDC_ENV] = configured
    return out


