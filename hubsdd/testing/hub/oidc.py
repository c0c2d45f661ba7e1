"""Trusted publishing for the test Hub: the OAuth token exchange huggingface_hub calls in CI.

On the Hub, a repository's owner registers a CI workflow as a *trusted publisher*; the workflow's
job gets an OIDC id token (a JWT signed by the CI provider, ``aud`` = the Hub's URL, claims naming
the repository and workflow) and huggingface_hub (>= 1.19, ``HF_OIDC_RESOURCE`` set) posts it to
``/oauth/token`` (RFC 8693 token exchange) for a short-lived token scoped to *one* repository.

Here the CI provider is the test: :meth:`TrustedPublishing.mint_id_token` signs JWTs with a key
only this server knows (HS256 instead of the provider's RS256 keys: the exchange is what is under
test, not JOSE), :meth:`add_publisher` registers which claims a repository accepts, and
:meth:`exchange` verifies signature, audience, expiry and claims before issuing a token; the server
lets that token write to that one repository and nowhere else (:meth:`lookup`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
EXCHANGED_TTL = 3600


class ExchangeRefused(Exception):
    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Publisher:
    user: str  # who the exchanged token acts as (the repository's owner)
    claims: dict[str, str]  # claims the id token must carry, e.g. {"repository": "org/project"}


@dataclass
class TrustedPublishing:
    audience: str = ""
    key: bytes = field(default_factory=lambda: os.urandom(32))
    publishers: dict[str, Publisher] = field(default_factory=dict)  # resource -> publisher
    issued: dict[str, dict[str, Any]] = field(default_factory=dict)  # token -> {user, resource, expires_at}
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add_publisher(self, resource: str, user: str, **claims: str) -> None:
        """Let id tokens carrying ``claims`` publish to ``resource`` (``ns/name``,
        ``datasets/ns/name``) as ``user``."""
        self.publishers[resource] = Publisher(user, dict(claims))

    def mint_id_token(self, claims: dict[str, Any], *, ttl: int = 300, audience: str | None = None) -> str:
        """What the CI provider would hand the job: a signed JWT with ``aud`` and ``exp``."""
        now = int(time.time())
        payload = {"iss": "https://token.actions.githubusercontent.com", "aud": audience or self.audience,
                   "iat": now, "exp": now + ttl, **claims}
        head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        body = _b64(json.dumps(payload).encode())
        sig = _b64(hmac.new(self.key, f"{head}.{body}".encode(), hashlib.sha256).digest())
        return f"{head}.{body}.{sig}"

    def _verify(self, token: str) -> dict[str, Any]:
        try:
            head, body, sig = token.split(".")
            expected = _b64(hmac.new(self.key, f"{head}.{body}".encode(), hashlib.sha256).digest())
            header, claims = json.loads(_unb64(head)), json.loads(_unb64(body))
        except (ValueError, json.JSONDecodeError):
            raise ExchangeRefused(400, "invalid_request", "subject_token is not a JWT") from None
        if header.get("alg") != "HS256" or not hmac.compare_digest(sig, expected):
            raise ExchangeRefused(401, "invalid_grant", "the id token's signature is not valid")
        if claims.get("aud") != self.audience:
            raise ExchangeRefused(401, "invalid_grant", f"the id token's audience {claims.get('aud')!r} is not "
                                                        f"{self.audience!r}")
        if not isinstance(claims.get("exp"), int) or claims["exp"] < time.time():
            raise ExchangeRefused(401, "invalid_grant", "the id token has expired")
        return claims

    def exchange(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("grant_type") != TOKEN_EXCHANGE_GRANT or body.get("subject_token_type") != ID_TOKEN_TYPE:
            raise ExchangeRefused(400, "unsupported_grant_type", "expected an RFC 8693 exchange of an id_token")
        resource = body.get("resource")
        if not isinstance(resource, str) or not resource:
            raise ExchangeRefused(400, "invalid_request", "resource is required")
        claims = self._verify(str(body.get("subject_token") or ""))
        publisher = self.publishers.get(resource)
        if publisher is None:
            raise ExchangeRefused(403, "access_denied", f"no trusted publisher is configured for {resource}")
        wrong = {k: claims.get(k) for k, v in publisher.claims.items() if claims.get(k) != v}
        if wrong:
            raise ExchangeRefused(403, "access_denied",
                                  f"this workflow is not a trusted publisher of {resource} (claims {wrong} do not match)")
        token = "hf_oidc_" + secrets.token_hex(16)
        with self._lock:
            self.issued[token] = {"user": publisher.user, "resource": resource,
                                  "expires_at": time.time() + EXCHANGED_TTL}
        return {"access_token": token, "token_type": "bearer", "expires_in": EXCHANGED_TTL,
                "issued_token_type": "urn:ietf:params:oauth:token-type:access_token", "scope": resource}

    def lookup(self, token: str) -> dict[str, Any] | None:
        """The issued token's grant (user, resource), None for another kind of token; expired ones
        are refused as invalid."""
        with self._lock:
            grant = self.issued.get(token)
        if grant is None:
            return None
        if grant["expires_at"] < time.time():
            raise ExchangeRefused(401, "invalid_token", "the exchanged token has expired")
        return grant
