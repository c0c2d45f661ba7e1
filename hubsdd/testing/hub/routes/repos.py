"""The repository API: create, delete, settings, info, file listings, card validation."""

from __future__ import annotations

import hashlib
import json
from typing import Any, TYPE_CHECKING
from urllib.parse import parse_qs, quote, urlsplit

from ..protocol import REPO_TYPES, URL_PREFIX, HubHTTPError, check_repo_id, truthy
from ..validation import card_data, validate_card_metadata
from .auth import check_scope, repo_access, require_user

if TYPE_CHECKING:
    from .plumbing import RequestPlumbing as Request


def repo_url(req: Request, repo_type: str | None = None, repo_id: str | None = None) -> str:
    rt = repo_type or req.repo_type
    return f"{req.hub.url}/{URL_PREFIX[rt]}{repo_id or req.repo_id}"


def validate_yaml(req: Request) -> None:
    body = req._json_body()
    content = body.get("content")
    if not isinstance(content, str):
        raise HubHTTPError(400, '"content" must be a string')
    errors, warnings = validate_card_metadata(content, body.get("repoType") or "model")
    payload = {"errors": [{"message": e} for e in errors], "warnings": [{"message": w} for w in warnings]}
    if errors:
        req._json(payload, 400, {"X-Error-Message": "; ".join(errors)})
    else:
        req._json(payload)


def create_repo(req: Request) -> None:
    user = require_user(req)
    body = req._json_body()
    name, org = body.get("name"), body.get("organization") or user
    repo_type = body.get("type") or "model"
    if repo_type not in REPO_TYPES:
        raise HubHTTPError(400, f"Invalid repo type {repo_type!r}")
    repo_id = check_repo_id(org, str(name))
    check_scope(req, repo_type, repo_id)
    if not req.hub.can_write(user, repo_id):
        raise HubHTTPError(403, f"You don't have the rights to create a {repo_type} under the namespace {org!r}")
    private = body.get("visibility") == "private" or bool(body.get("private"))
    url = repo_url(req, repo_type, repo_id)
    if not req.storage.create_repo(repo_type, repo_id, user, private):
        req._json({"error": f"You already created this {repo_type} repo", "url": url}, 409,
                   {"X-Error-Message": f"You already created this {repo_type} repo"})
        return
    req._json({"url": url, "name": repo_id, "id": hashlib.sha1(url.encode()).hexdigest()[:24]})


def delete_repo(req: Request) -> None:
    user = require_user(req)
    body = req._json_body()
    repo_type = body.get("type") or "model"
    repo_id = check_repo_id(body.get("organization") or user, str(body.get("name")))
    req.repo_type, req.repo_id = repo_type, repo_id
    repo_access(req, repo_type, repo_id, write=True)
    req.storage.delete_repo(repo_type, repo_id)
    req._json({})


def settings(req: Request) -> None:
    repo_access(req, req.repo_type, req.repo_id, write=True)
    body = req._json_body()
    if "private" in body:
        req.storage.set_private(req.repo_type, req.repo_id, bool(body["private"]))
    req._json({})


def repo_info(req: Request) -> None:
    meta, _ = repo_access(req, req.repo_type, req.repo_id)
    sha, files = req.storage.files_at(req.repo_type, req.repo_id, req.rev or "main")
    head = req.storage.get_commit(req.repo_type, req.repo_id, sha)
    blobs = truthy(req.query.get("blobs"))
    siblings = []
    for path in sorted(files):
        e = files[path]
        sib: dict[str, Any] = {"rfilename": path}
        if blobs:
            sib.update(size=e["size"], blobId=e["oid"])
            if e["type"] == "lfs":
                sib["lfs"] = {"size": e["size"], "sha256": e["sha256"], "pointerSize": e["pointerSize"]}
        siblings.append(sib)
    info: dict[str, Any] = {
        "_id": hashlib.sha1(f"{req.repo_type}/{req.repo_id}".encode()).hexdigest()[:24],
        "id": req.repo_id, "author": req.repo_id.split("/")[0], "sha": sha, "private": meta["private"],
        "gated": "manual" if meta.get("gated_users") is not None else False, "disabled": False, "downloads": 0, "likes": 0, "createdAt": meta["createdAt"],
        "lastModified": head["date"], "siblings": siblings,
        "usedStorage": sum(e["size"] for e in files.values()),
    }
    readme = files.get("README.md")
    data = card_data(req.storage.entry_bytes(readme).decode("utf-8", "replace")) if readme else None
    if data is not None:
        info["cardData"] = data
    tags = list((data or {}).get("tags") or []) if isinstance((data or {}).get("tags"), list) else []
    info["tags"] = tags
    if req.repo_type == "model":
        info["modelId"] = req.repo_id
        if data:
            for key in ("pipeline_tag", "library_name"):
                if isinstance(data.get(key), str):
                    info[key] = data[key]
            if data.get("model-index") is not None:
                info["model-index"] = data["model-index"]
        if "config.json" in files:
            try:
                info["config"] = json.loads(req.storage.entry_bytes(files["config.json"]))
            except (ValueError, UnicodeDecodeError):
                pass
    req._json(info)


# -- tree / paths-info


def entry_json(req: Request, path: str, e: dict) -> dict:
    out: dict[str, Any] = {"type": "file", "oid": e["oid"], "size": e["size"], "path": path}
    if e["type"] == "lfs":
        out["lfs"] = {"oid": e["sha256"], "size": e["size"], "pointerSize": e["pointerSize"]}
    return out


def folder_oid(files: dict[str, dict], folder: str) -> str:
    prefix = folder + "/"
    listing = sorted((p, e["oid"]) for p, e in files.items() if p.startswith(prefix))
    return hashlib.sha1(json.dumps(listing).encode()).hexdigest()


def last_commit(req: Request, sha: str, path: str, is_dir: bool) -> dict:
    """The newest first-parent commit that changed ``path`` (what `expand=True` adds)."""
    def view(files: dict) -> Any:
        if is_dir:
            return sorted((p, e["oid"]) for p, e in files.items() if p.startswith(path + "/"))
        return (files.get(path) or {}).get("oid")

    cur = req.storage.get_commit(req.repo_type, req.repo_id, sha)
    while cur["parents"]:
        parent = req.storage.get_commit(req.repo_type, req.repo_id, cur["parents"][0])
        if view(parent["files"]) != view(cur["files"]):
            break
        cur = parent
    return {"id": cur["id"], "title": cur["title"], "date": cur["date"]}


def tree(req: Request) -> None:
    repo_access(req, req.repo_type, req.repo_id)
    sha, files = req.storage.files_at(req.repo_type, req.repo_id, req.rev)
    base = req.file_path
    recursive = truthy(req.query.get("recursive"))
    expand = truthy(req.query.get("expand"))
    prefix = base + "/" if base else ""
    if base and base in files:
        raise HubHTTPError(400, f"{base!r} is a file, not a folder")
    under = {p: e for p, e in files.items() if p.startswith(prefix)}
    if base and not under:
        raise HubHTTPError(404, f"{base} does not exist on {req.rev}", code="EntryNotFound",
                           headers={"X-Repo-Commit": sha})
    entries: dict[str, dict] = {}
    for path, e in under.items():
        rel = path[len(prefix):].split("/")
        for depth in range(1, len(rel)):  # the folders on the way
            folder = prefix + "/".join(rel[:depth])
            if (recursive or depth == 1) and folder not in entries:
                entries[folder] = {"type": "directory", "oid": folder_oid(files, folder), "size": 0,
                                   "path": folder}
        if recursive or len(rel) == 1:
            entries[path] = entry_json(req, path, e)
    ordered = [entries[k] for k in sorted(entries, key=lambda p: (entries[p]["type"] != "directory", p))]
    # The Hub caps pages at 1000 entries (50 with expand); the cap is configurable to test paging.
    page_size = min(req.hub.tree_page_size, 50) if expand else req.hub.tree_page_size
    if req.query.get("limit", "").isdigit():
        page_size = max(1, min(page_size, int(req.query["limit"])))
    start = int(req.query.get("cursor") or 0)
    page = ordered[start:start + page_size]
    if expand:
        for item in page:
            item["lastCommit"] = last_commit(req, sha, item["path"], item["type"] == "directory")
    headers = {}
    if start + page_size < len(ordered):
        q = {k: v for k, v in req.query.items() if k != "cursor"}
        q["cursor"] = str(start + page_size)
        qs = "&".join(f"{quote(k)}={quote(v)}" for k, v in q.items())
        headers["Link"] = f'<{req.hub.url}{urlsplit(req.path).path}?{qs}>; rel="next"'
    req._json(page, headers=headers)


def paths_info(req: Request) -> None:
    repo_access(req, req.repo_type, req.repo_id)
    ctype = req.headers.get("Content-Type", "")
    raw = req._body()
    if "json" in ctype:
        body = json.loads(raw or b"{}")
        paths, expand = body.get("paths") or [], bool(body.get("expand"))
    else:  # the client posts form data: paths=a&paths=b&expand=False
        form = parse_qs(raw.decode(), keep_blank_values=True)
        paths, expand = form.get("paths", []), truthy((form.get("expand") or ["false"])[-1])
    if isinstance(paths, str):
        paths = [paths]
    sha, files = req.storage.files_at(req.repo_type, req.repo_id, req.rev)
    out = []
    for p in paths:
        p = p.strip("/")
        if p in files:
            item = entry_json(req, p, files[p])
        elif any(f.startswith(p + "/") for f in files):
            item = {"type": "directory", "oid": folder_oid(files, p), "size": 0, "path": p}
        else:
            continue
        if expand:
            item["lastCommit"] = last_commit(req, sha, p, item["type"] == "directory")
        out.append(item)
    req._json(out)
