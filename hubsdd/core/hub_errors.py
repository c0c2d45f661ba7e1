"""Errors of the Hugging Face Hub client, turned into hubsdd errors that say what to do.

Two ladders, one module: :func:`hub_errors` for talking to a repository by its id (publish, pull:
401/403/404 become AuthError/HubError with the command that fixes them), and :func:`reading_errors`
for a recipe field that names a Hub repository (``base.model``, ``distill.data.dataset``): there
the message names the YAML field, and the error type is the stage's own (ModelLoadError, DataError).

Messages come from the server's error text and the URL, never from request headers, so a token
cannot leak into them.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from .errors import AuthError, HubError, HubsddError


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT.rstrip("/")


@contextlib.contextmanager
def reading_errors(error: type[HubsddError], *, repo_id: str, revision: str | None, id_field: str,
                   revision_field: str, local_fix: str, kind: str = "repository") -> Iterator[None]:
    """Raise ``error`` naming ``id_field``/``revision_field`` when reading ``repo_id`` fails."""
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, OfflineModeIsEnabled,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    try:
        yield
    except OfflineModeIsEnabled:
        raise
    except GatedRepoError:  # a subclass of RepositoryNotFoundError: first
        raise error(f"{id_field}: {repo_id} is gated",
                    fix=f"accept its {'license' if kind == 'model' else 'conditions'} on the Hub, then set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise error(f"{id_field}: {repo_id!r} was not found on the Hub (or it is private)",
                    fix=f"check the id, log in with `hf auth login` / set HF_TOKEN for a private {kind}, or "
                        f"{local_fix}") from None
    except RevisionNotFoundError:
        raise error(f"{revision_field}: {revision!r} is not a branch, tag or commit of {repo_id}",
                    fix=f"use a branch, tag or commit sha of that {kind}") from None
    except (HfHubHTTPError, OSError) as exc:
        raise error(f"{id_field}: cannot reach the Hub for {repo_id!r}: {exc}",
                    fix=f"check the network and HF_ENDPOINT, or {local_fix}") from None


@contextlib.contextmanager
def hub_errors(action: str, repo_id: str | None = None) -> Iterator[None]:
    """Turn huggingface_hub/httpx errors into hubsdd errors that say what to do.

    Messages come from the server's error text and the URL, never from request headers, so the
    token cannot leak into them."""
    import httpx2
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    ns = repo_id.split("/")[0] if repo_id else None
    try:
        try:
            yield
        except RuntimeError as exc:
            # The client wraps a failed LFS upload ("Error while uploading ..."): judge the cause.
            if isinstance(exc.__cause__, (HfHubHTTPError, httpx2.TransportError)):
                raise exc.__cause__ from None
            raise
    except HubsddError:
        raise
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        server = (getattr(exc, "server_message", None) or "").strip() or str(exc).strip().splitlines()[0]
        if status == 401 and not isinstance(exc, RepositoryNotFoundError):
            raise AuthError(f"{action}: the Hub refused the token (401: {server})",
                            fix="log in with `hf auth login` or set HF_TOKEN to a valid token with write access") from None
        if status == 403:
            raise AuthError(f"{action}: the token's user may not write to the namespace {ns!r} (403: {server})",
                            fix=f"use a token of a member of {ns!r} with write access, choose a repository under "
                                "your own namespace, or publish as a pull request with `--pr`") from None
        if isinstance(exc, RevisionNotFoundError):
            raise HubError(f"{action}: revision not found in {repo_id} ({server})",
                           fix="use an existing branch, tag or commit sha") from None
        if isinstance(exc, RepositoryNotFoundError):
            raise HubError(f"{action}: {repo_id} was not found on the Hub, or the token cannot see it",
                           fix="check the repository id; for a private repository log in with `hf auth login` "
                               "or set HF_TOKEN") from None
        raise HubError(f"{action}: the Hub answered {status}: {server}",
                       fix="retry; a rerun resumes without duplicating commits or re-sending uploaded files") from None
    except (httpx2.TransportError, OfflineModeIsEnabled, LocalEntryNotFoundError) as exc:
        raise HubError(f"{action}: cannot reach the Hub at {endpoint()} ({type(exc).__name__}: {exc})",
                       fix="check the network connection and HF_ENDPOINT, then rerun: a rerun resumes without "
                           "duplicating commits or re-sending uploaded files") from None
    except ValueError as exc:  # e.g. create_commit's own README metadata check
        raise HubError(f"{action}: {exc}") from None
    except (OSError, RuntimeError) as exc:  # hf_xet and other transports raise their own errors
        xet = "xet" in str(exc).lower()
        raise HubError(f"{action}: {type(exc).__name__}: {str(exc).strip()[:500]}",
                       fix="set HF_HUB_DISABLE_XET=1: this Hub endpoint does not speak Xet storage" if xet
                       else "retry; a rerun resumes without duplicating commits or re-sending uploaded files") from None
