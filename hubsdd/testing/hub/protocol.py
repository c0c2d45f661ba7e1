"""What storage and routes share about the Hub's wire protocol: names, limits, error answers.

An error answer is a :class:`HubHTTPError` raised anywhere below a route; the request plumbing
turns it into the status, the ``X-Error-Message`` header and, when set, the ``X-Error-Code``
header that huggingface_hub maps to its typed exceptions (``RepoNotFound``, ``RevisionNotFound``,
``EntryNotFound``, ``GatedRepo``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any

HOST = "127.0.0.1"
REPO_TYPES = ("model", "dataset", "space")
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
PLURAL_TO_TYPE = {"models": "model", "datasets": "dataset", "spaces": "space"}
NAME_RE = re.compile(r"^[A-Za-z0-9][\w.\-]{0,95}$")
SHA1_RE = re.compile(r"^[0-9a-f]{40}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
HEX_PREFIX_RE = re.compile(r"^[0-9a-f]{7,40}$")
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024  # the Hub stores files above 10 MB in LFS whatever their name
TREE_PAGE_SIZE = 1000
COMMITS_PAGE_SIZE = 50
SIGNED_URL_TTL = 3600


class HubHTTPError(Exception):
    """An error answer: status, message (also sent as X-Error-Message) and optional X-Error-Code."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


def repo_not_found(status: int = 404) -> HubHTTPError:
    return HubHTTPError(status, "Repository not found", code="RepoNotFound")


def revision_not_found(revision: str) -> HubHTTPError:
    return HubHTTPError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")


def check_repo_id(ns: str, name: str) -> str:
    """``ns/name`` when both parts are valid Hub names; a 400 otherwise."""
    if not (NAME_RE.match(ns) and NAME_RE.match(name)):
        raise HubHTTPError(400, f"Invalid repository id {ns}/{name}")
    return f"{ns}/{name}"


def sign(secret: bytes, *parts: str) -> str:
    """The HMAC that makes upload and CDN URLs unforgeable by anyone without the server's secret."""
    return hmac.new(secret, "\n".join(parts).encode(), hashlib.sha256).hexdigest()


def header_value(value: Any) -> str:
    """Header values must be one latin-1 line: messages (YAML errors...) are flattened and cut."""
    text = " ".join(str(value).split()) if any(c in str(value) for c in "\r\n\t") else str(value)
    return text.encode("ascii", "replace").decode()[:1000]


def truthy(value: str | None) -> bool:
    return str(value).lower() in ("1", "true", "yes")
