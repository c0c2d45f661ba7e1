"""Who is asking, and may they: bearer tokens, trusted-publishing tokens, repository permissions.

Authentication: ``tokens`` maps a bearer token to a user name. Writes need a token whose user owns
the repository's namespace (the part before ``/``; ``orgs`` may add members to a namespace);
opening a pull request needs any valid token that can read the repository, as on the Hub. Private
repositories answer 401 (no token) or 404 (someone else's token) with ``X-Error-Code: RepoNotFound``.
A token exchanged through ``/oauth/token`` (trusted publishing, see :mod:`..oidc`) writes to the one
repository it was issued for.
"""

from __future__ import annotations

import hashlib

from ..oidc import ExchangeRefused
from ..protocol import URL_PREFIX, HubHTTPError, repo_not_found
from .plumbing import RequestPlumbing


class AuthRoutes(RequestPlumbing):
    """Permission checks used by every route, plus ``/api/whoami-v2`` and ``/oauth/token``."""

    def _user(self) -> str | None:
        """The token's user, None without a token; an unknown token is refused everywhere (as on the Hub)."""
        auth = self.headers.get("Authorization", "")
        if not auth:
            return None
        scheme, _, token = auth.partition(" ")
        token = token.strip()
        user = self.hub.tokens.get(token) if scheme.lower() == "bearer" else None
        if user is None and scheme.lower() == "bearer":
            try:
                grant = self.hub.trusted.lookup(token)
            except ExchangeRefused as exc:
                raise HubHTTPError(401, exc.description) from None
            if grant is not None:
                self.scope, user = grant["resource"], grant["user"]
        if user is None:
            raise HubHTTPError(401, "Invalid credentials in Authorization header")
        return user

    def _check_scope(self, repo_type: str, repo_id: str) -> None:
        """A trusted-publishing token writes to the one repository it was exchanged for."""
        resource = f"{URL_PREFIX[repo_type]}{repo_id}"
        if self.scope is not None and self.scope != resource:
            raise HubHTTPError(403, f"This token is scoped to {self.scope} and cannot write to {resource}")

    def _require_user(self) -> str:
        user = self._user()
        if user is None:
            raise HubHTTPError(401, "Authentication required: send a token as 'Authorization: Bearer <token>'")
        return user

    def _repo(self, repo_type: str, repo_id: str, *, write: bool = False, pr: bool = False) -> tuple[dict, str | None]:
        """Check the repository exists and the caller may read it (and write, or open a PR)."""
        user = self._user()
        meta = self.storage.repo_meta(repo_type, repo_id)
        if meta is None:
            if write or pr:
                self._require_user()
            raise repo_not_found()
        if meta["private"] and not self.hub.can_write(user, repo_id):
            raise repo_not_found(401 if user is None else 404)
        if write or pr:
            user = self._require_user()
            self._check_scope(repo_type, repo_id)
            if write and not self.hub.can_write(user, repo_id):
                ns = repo_id.split("/")[0]
                raise HubHTTPError(403, f"You don't have the rights to write to {repo_id}: user {user!r} is not "
                                        f"a member of namespace {ns!r}")
        return meta, user

    def _whoami(self) -> None:
        user = self._require_user()
        orgs = [{"type": "org", "name": org, "roleInOrg": "write"} for org, members in self.hub.orgs.items()
                if user in members]
        self._json({"type": "user", "id": hashlib.sha1(user.encode()).hexdigest()[:24], "name": user,
                    "fullname": user, "email": None, "emailVerified": False, "isPro": False, "orgs": orgs,
                    "auth": {"type": "access_token", "accessToken": {"displayName": "test-token", "role": "write"}}})

    def _oauth_token(self) -> None:
        """RFC 8693 token exchange of a CI OIDC id token (trusted publishing, see hubsdd.testing.hub.oidc)."""
        try:
            self._json(self.hub.trusted.exchange(self._json_body()))
        except ExchangeRefused as exc:
            self._json({"error": exc.error, "error_description": exc.description}, exc.status,
                       {"X-Error-Message": exc.description})
