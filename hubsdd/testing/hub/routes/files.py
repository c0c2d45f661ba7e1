"""Downloads: ``/resolve`` with the headers the client relies on, and the CDN origin.

Regular files are served by ``/resolve`` itself, with ``X-Repo-Commit``, ``ETag`` and byte ranges.
LFS files are served the way the real Hub serves them: ``/resolve`` answers with a redirect to a
signed URL on a *different origin* (a second listening port standing in for the CDN), so the client
drops the ``Authorization`` header exactly as it does in production.
"""

from __future__ import annotations
from typing import TYPE_CHECKING

import hmac
import re
import time
from pathlib import Path

from ..protocol import SHA256_RE, HubHTTPError
from .auth import repo_access

if TYPE_CHECKING:
    from .plumbing import RequestPlumbing as Request


def resolve(req: Request) -> None:
    """GET/HEAD a file at a revision. Regular files are served here; LFS files redirect to a
    signed URL on the CDN origin with the metadata headers on the redirect itself."""
    meta, user = repo_access(req, req.repo_type, req.repo_id)
    sha, files = req.storage.files_at(req.repo_type, req.repo_id, req.rev)
    entry = files.get(req.file_path)
    gated = meta.get("gated_users")
    if gated is not None and user not in gated and not req.hub.can_write(user, req.repo_id) \
            and req.file_path not in ("README.md", ".gitattributes", "config.json"):
        # As on the Hub: a gated repository's card and config are public, its weights are not.
        raise HubHTTPError(401 if user is None else 403,
                           f"Access to model {req.repo_id} is restricted. You must have access to it and be "
                           "authenticated to access it. Please log in.", code="GatedRepo")
    if entry is None:
        # X-Repo-Commit lets the client cache the non-existence for this commit.
        raise HubHTTPError(404, f"Entry not found: {req.file_path}", code="EntryNotFound",
                           headers={"X-Repo-Commit": sha})
    common = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes", "Access-Control-Expose-Headers": "*"}
    if entry["type"] == "lfs":
        location = req.hub.signed_cdn_url(entry["sha256"], req.file_path.rsplit("/", 1)[-1])
        req._send(302, b"", {**common, "Location": location, "ETag": f'"{entry["oid"]}"',
                              "X-Linked-Etag": f'"{entry["sha256"]}"', "X-Linked-Size": str(entry["size"])})
        return
    serve_file(req, req.storage.entry_path(entry), f'"{entry["oid"]}"', common)


def serve_file(req: Request, path: Path, etag: str, headers: dict) -> None:
    size = path.stat().st_size
    start, end, status = 0, size - 1, 200
    rng = req.headers.get("Range")
    if rng:
        m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", rng)
        if not m or (m.group(1) == "" and m.group(2) == ""):
            raise HubHTTPError(416, f"Invalid range {rng!r}", headers={"Content-Range": f"bytes */{size}"})
        if m.group(1) == "":  # suffix: the last N bytes
            start = max(size - int(m.group(2)), 0)
        else:
            start = int(m.group(1))
            if m.group(2):
                end = min(int(m.group(2)), size - 1)
        if start >= size or start > end:
            raise HubHTTPError(416, f"Range {rng!r} not satisfiable for {size} bytes",
                               headers={"Content-Range": f"bytes */{size}"})
        status = 206
        headers = {**headers, "Content-Range": f"bytes {start}-{end}/{size}"}
    length = end - start + 1 if size else 0
    req._answer_gate()
    req.send_response(status)
    for k, v in {**headers, "ETag": etag, "Content-Length": str(length),
                 "Content-Type": "application/octet-stream", "X-Request-Id": req._request_id}.items():
        req.send_header(k, v)
    req.end_headers()
    req._status = status
    if req.command == "HEAD" or not length:
        return
    with open(path, "rb") as fh:
        fh.seek(start)
        remaining = length
        while remaining:
            chunk = fh.read(min(remaining, 1 << 20))
            if not chunk:
                break
            req.wfile.write(chunk)
            remaining -= len(chunk)


def cdn(req: Request) -> None:
    """The CDN origin: signed, expiring URLs to LFS objects; no Authorization involved."""
    s = req.segments
    if req.command not in ("GET", "HEAD") or len(s) != 2 or s[0] != "lfs" or not SHA256_RE.match(s[1]):
        raise HubHTTPError(404, "not found")
    oid, exp = s[1], req.query.get("exp", "0")
    if not hmac.compare_digest(req.hub.sign("cdn", oid, exp), req.query.get("sig", "")) or not exp.isdigit():
        raise HubHTTPError(403, "invalid signature")
    if int(exp) < time.time():
        raise HubHTTPError(403, "signed URL expired")
    path = req.storage.lfs_path(oid)
    if not path.exists():
        raise HubHTTPError(404, "object not found")
    name = req.query.get("filename") or oid
    serve_file(req, path, f'"{oid}"', {"Accept-Ranges": "bytes",
                                        "Content-Disposition": f'inline; filename="{name}"'})
