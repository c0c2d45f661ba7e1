"""Who is asking, and may they: bearer tokens, trusted-publishing tokens, repository permissions.

Authentication: ``tokens`` maps a bearer token to a user name. Writes need a token whose user owns
the repository's namespace (the part before ``/``; ``orgs`` may add members to a namespace);
opening a pull request needs any valid token that can read the repository, as on the Hub. Private
repositories answer 401 (no token) or 404 (someone else's token) with ``X-Error-Code: RepoNotFound``.
A token exchanged through ``/oauth/token`` (trusted publishing, see :mod:`..oidc`) writes to the one
repository it was issued for.
"""

from __future__ import annotations
from typing import TYPE_CHECKING

import hashlib

from ..oidc import ExchangeRefused
from ..protocol import URL_PREFIX, HubHTTPError, repo_not_found

if TYPE_CHECKING:
    from .plumbing import RequestPlumbing as Request


def current_user(req: Request) -> str | None:
    """The token's user, None without a token; an unknown token is refused everywhere (as on the Hub)."""
    auth = req.headers.get("Authorization", "")
    if not auth:
        return None
    scheme, _, token = auth.partition(" ")
    token = token.strip()
    user = req.hub.tokens.get(token) if scheme.lower() == "bearer" else None
    if user is None and scheme.lower() == "bearer":
        try:
            grant = req.hub.trusted.lookup(token)
        except ExchangeRefused as exc:
            raise HubHTTPError(401, exc.description) from None
        if grant is not None:
            req.scope, user = grant["resource"], grant["user"]
    if user is None:
        raise HubHTTPError(401, "Invalid credentials in Authorization header")
    return user


def check_scope(req: Request, repo_type: str, repo_id: str) -> None:
    """A trusted-publishing token writes to the one repository it was exchanged for."""
    resource = f"{URL_PREFIX[repo_type]}{repo_id}"
    if req.scope is not None and req.scope != resource:
        raise HubHTTPError(403, f"This token is scoped to {req.scope} and cannot write to {resource}")


def require_user(req: Request) -> str:
    user = current_user(req)
    if user is None:
        raise HubHTTPError(401, "Authentication required: send a token as 'Authorization: Bearer <token>'")
    return user


def repo_access(req: Request, repo_type: str, repo_id: str, *, write: bool = False, pr: bool = False) -> tuple[dict, str | None]:
    """Check the repository exists and the caller may read it (and write, or open a PR)."""
    user = current_user(req)
    meta = req.storage.repo_meta(repo_type, repo_id)
    if meta is None:
        if write or pr:
            require_user(req)
        raise repo_not_found()
    if meta["private"] and not req.hub.can_write(user, repo_id):
        raise repo_not_found(401 if user is None else 404)
    if write or pr:
        user = require_user(req)
        check_scope(req, repo_type, repo_id)
        if write and not req.hub.can_write(user, repo_id):
            ns = repo_id.split("/")[0]
            raise HubHTTPError(403, f"You don't have the rights to write to {repo_id}: user {user!r} is not "
                                    f"a member of namespace {ns!r}")
    return meta, user


def whoami(req: Request) -> None:
    user = require_user(req)
    orgs = [{"type": "org", "name": org, "roleInOrg": "write"} for org, members in req.hub.orgs.items()
            if user in members]
    req._json({"type": "user", "id": hashlib.sha1(user.encode()).hexdigest()[:24], "name": user,
                "fullname": user, "email": None, "emailVerified": False, "isPro": False, "orgs": orgs,
                "auth": {"type": "access_token", "accessToken": {"displayName": "test-token", "role": "write"}}})


def oauth_token(req: Request) -> None:
    """RFC 8693 token exchange of a CI OIDC id token (trusted publishing, see hubsdd.testing.hub.oidc)."""
    try:
        req._json(req.hub.trusted.exchange(req._json_body()))
    except ExchangeRefused as exc:
        req._json({"error": exc.error, "error_description": exc.description}, exc.status,
                   {"X-Error-Message": exc.description})
