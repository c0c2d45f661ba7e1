"""Uploads before the commit: ``preupload`` (regular or LFS, and the remote oid so unchanged files
are skipped), the LFS batch API (upload and verify actions), and the signed PUT of one LFS object.

An uploaded object is written to a temporary file and enters the LFS store only once its sha256 and
size match what the batch request announced; a dropped or corrupted upload leaves nothing behind.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import json
import os
from typing import Any, TYPE_CHECKING

from ..protocol import LFS_SIZE_THRESHOLD, REPO_TYPES, SHA256_RE, HubHTTPError, repo_not_found, truthy
from .auth import repo_access
from .repos import repo_url

if TYPE_CHECKING:
    from .plumbing import RequestPlumbing as Request


def lfs_patterns(req: Request, files: dict[str, dict]) -> list[str]:
    attrs = files.get(".gitattributes")
    if attrs is None:
        return []
    out = []
    for line in req.storage.entry_bytes(attrs).decode("utf-8", "replace").splitlines():
        parts = line.split()
        if len(parts) >= 2 and not parts[0].startswith("#") and "filter=lfs" in parts[1:]:
            out.append(parts[0])
    return out


def matches(path: str, pattern: str) -> bool:
    if "/" not in pattern.rstrip("/"):
        return fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern)
    return fnmatch.fnmatchcase(path, pattern.replace("**/", "*"))


def preupload(req: Request) -> None:
    create_pr = truthy(req.query.get("create_pr"))
    repo_access(req, req.repo_type, req.repo_id, write=not create_pr, pr=create_pr)
    body = req._json_body()
    sha, files = req.storage.files_at(req.repo_type, req.repo_id, req.rev)
    patterns = lfs_patterns(req, files)
    ignore = [ln.strip() for ln in (body.get("gitIgnore") or "").splitlines()
              if ln.strip() and not ln.startswith("#")]
    out = []
    for f in body.get("files") or []:
        path, size = f["path"], int(f.get("size") or 0)
        sample = base64.b64decode(f.get("sample") or "")
        lfs = size >= LFS_SIZE_THRESHOLD or b"\0" in sample or any(matches(path, p) for p in patterns)
        item: dict[str, Any] = {"path": path, "uploadMode": "lfs" if lfs else "regular",
                                "shouldIgnore": any(matches(path, p) for p in ignore)}
        remote = files.get(path)
        if remote is not None:
            # What the client compares with its local oid: sha256 for LFS, the git blob sha1 otherwise.
            item["oid"] = remote["sha256"] if remote["type"] == "lfs" else remote["oid"]
        out.append(item)
    req._json({"files": out, "commitOid": sha})


def lfs_batch(req: Request) -> None:
    body = req._json_body()
    operation = body.get("operation")
    if operation == "upload":
        repo_access(req, req.repo_type, req.repo_id, pr=True)
    else:
        repo_access(req, req.repo_type, req.repo_id)
    objects = []
    for obj in body.get("objects") or []:
        oid, size = str(obj.get("oid", "")), obj.get("size")
        if not SHA256_RE.match(oid) or not isinstance(size, int) or size < 0:
            objects.append({"oid": oid, "size": size if isinstance(size, int) else 0,
                            "error": {"code": 422, "message": "oid must be a sha256 hex digest and size an int"}})
            continue
        item: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
        present = req.storage.repo_has_lfs(req.repo_type, req.repo_id, oid)
        if operation == "upload":
            if not present:  # no "actions" tells the client the object is already there
                sig = req.hub.sign(req.repo_type, req.repo_id, oid, str(size))
                href = (f"{req.hub.url}/_lfs/upload/{req.repo_type}/{req.repo_id}/{oid}"
                        f"?size={size}&sig={sig}")
                verify = f"{repo_url(req)}.git/info/lfs/objects/verify"
                item["actions"] = {"upload": {"href": href}, "verify": {"href": verify, "header": {}}}
        else:
            if not present:
                item["error"] = {"code": 404, "message": "Object does not exist"}
            else:
                item["actions"] = {"download": {"href": req.hub.signed_cdn_url(oid, os.path.basename(oid))}}
        objects.append(item)
    req._send(200, json.dumps({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}).encode(),
               content_type="application/vnd.git-lfs+json")


def lfs_upload(req: Request) -> None:
    """PUT of one LFS object to the URL the batch answer signed; the sha256 is checked here."""
    if req.repo_type not in REPO_TYPES or not SHA256_RE.match(req.oid):
        raise HubHTTPError(400, "bad upload URL")
    size = req.query.get("size", "")
    expected = req.hub.sign(req.repo_type, req.repo_id, req.oid, size)
    if not hmac.compare_digest(expected, req.query.get("sig", "")):
        raise HubHTTPError(403, "invalid upload signature")
    if req.storage.repo_meta(req.repo_type, req.repo_id) is None:
        raise repo_not_found()
    tmp = req.storage.tmp_file()
    h, n = hashlib.sha256(), 0
    try:
        with open(tmp, "wb") as fh:
            for chunk in req._iter_body():
                h.update(chunk)
                n += len(chunk)
                fh.write(chunk)
        if h.hexdigest() != req.oid or str(n) != size:
            raise HubHTTPError(400, f"uploaded content does not match oid {req.oid} / size {size} "
                                    f"(got sha256 {h.hexdigest()}, {n} bytes)")
        with req.storage.lock:
            req.storage.install_lfs(tmp, req.oid)
            req.storage.add_repo_lfs(req.repo_type, req.repo_id, req.oid)
    finally:
        tmp.unlink(missing_ok=True)
    req._send(200, b"", {"ETag": f'"{req.oid}"'})


def lfs_verify(req: Request) -> None:
    repo_access(req, req.repo_type, req.repo_id, pr=True)
    body = req._json_body()
    oid, size = str(body.get("oid", "")), body.get("size")
    if not SHA256_RE.match(oid) or not req.storage.repo_has_lfs(req.repo_type, req.repo_id, oid):
        raise HubHTTPError(404, f"LFS object {oid} not found")
    actual = req.storage.lfs_path(oid).stat().st_size
    if size is not None and int(size) != actual:
        raise HubHTTPError(422, f"LFS object {oid} has size {actual}, not {size}")
    req._json({"success": True})
