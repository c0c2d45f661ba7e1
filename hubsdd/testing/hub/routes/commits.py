"""Commits and refs: the NDJSON commit, history, branches, tags (and pull requests via commits)."""

from __future__ import annotations

import base64
import json
import re
from typing import Any, TYPE_CHECKING
from urllib.parse import quote, urlsplit

from ..protocol import COMMITS_PAGE_SIZE, SHA1_RE, HubHTTPError, revision_not_found, truthy
from .auth import repo_access
from .repos import repo_url

if TYPE_CHECKING:
    from .plumbing import RequestPlumbing as Request


def commit(req: Request) -> None:
    create_pr = truthy(req.query.get("create_pr"))
    _, user = repo_access(req, req.repo_type, req.repo_id, write=not create_pr, pr=create_pr)
    header: dict = {}
    ops: list[dict] = []
    for n, line in enumerate(req._body().splitlines()):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            key, value = item["key"], item["value"]
        except (ValueError, KeyError, TypeError):
            raise HubHTTPError(400, f"commit payload line {n + 1} is not a {{key, value}} JSON object") from None
        if key == "header":
            header = value
        elif key == "file":
            if value.get("encoding", "base64") != "base64":
                raise HubHTTPError(400, "only base64 file content is supported")
            ops.append({"key": "file", "path": value["path"], "content": base64.b64decode(value["content"])})
        elif key == "lfsFile":
            if value.get("algo", "sha256") != "sha256":
                raise HubHTTPError(400, "only sha256 LFS objects are supported")
            ops.append({"key": "lfsFile", "path": value["path"], "oid": value["oid"], "size": value.get("size")})
        elif key in ("deletedFile", "deletedFolder"):
            ops.append({"key": key, "path": value["path"]})
        else:
            raise HubHTTPError(400, f"unknown commit operation {key!r}")
    summary = (header.get("summary") or "").strip()
    if not summary:
        raise HubHTTPError(400, "the commit summary (message) is required")
    sha, pr = req.storage.commit(
        req.repo_type, req.repo_id, req.rev, ops, title=summary, message=header.get("description") or "",
        author=user, parent_commit=header.get("parentCommit"), create_pr=create_pr)
    req._json({"success": True, "commitOid": sha, "commitUrl": f"{repo_url(req)}/commit/{sha}",
                "hookOutput": "", "pullRequestUrl": f"{repo_url(req)}/discussions/{pr}" if pr else None})


# -- history and refs


def commits(req: Request) -> None:
    repo_access(req, req.repo_type, req.repo_id)
    sha, _, _ = req.storage.resolve(req.repo_type, req.repo_id, req.rev)
    items = req.storage.history(req.repo_type, req.repo_id, sha)
    page, limit = int(req.query.get("p") or 0), int(req.query.get("limit") or COMMITS_PAGE_SIZE)
    chunk = items[page * limit:(page + 1) * limit]
    out = [{"id": c["id"], "title": c["title"], "message": c["message"], "date": c["date"],
            "authors": [{"user": c["author"], "avatar": ""}], "parents": c["parents"]} for c in chunk]
    headers = {}
    if (page + 1) * limit < len(items):
        q = dict(req.query, p=str(page + 1), limit=str(limit))
        qs = "&".join(f"{quote(k)}={quote(v)}" for k, v in q.items())
        headers["Link"] = f'<{req.hub.url}{urlsplit(req.path).path}?{qs}>; rel="next"'
    req._json(out, headers=headers)


def refs(req: Request) -> None:
    repo_access(req, req.repo_type, req.repo_id)
    refs = req.storage.read_refs(req.repo_type, req.repo_id)
    out: dict[str, Any] = {
        "branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": s} for b, s in sorted(refs["heads"].items())],
        "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": v["sha"]} for t, v in sorted(refs["tags"].items())],
        "converts": [],
    }
    if truthy(req.query.get("include_prs")):
        out["pullRequests"] = [{"name": f"refs/pr/{n}", "ref": f"refs/pr/{n}", "targetCommit": v["sha"]}
                               for n, v in sorted(refs["prs"].items(), key=lambda kv: int(kv[0]))]
    req._json(out)


def create_branch(req: Request) -> None:
    repo_access(req, req.repo_type, req.repo_id, write=True)
    body = req._json_body()
    name = req.ref_name
    if not re.fullmatch(r"[\w.\-/]+", name) or name.startswith("refs/") or SHA1_RE.match(name):
        raise HubHTTPError(400, f"Invalid branch name {name!r}")
    with req.storage.lock:
        refs = req.storage.read_refs(req.repo_type, req.repo_id)
        if name in refs["heads"]:
            raise HubHTTPError(409, f"Reference already exists: refs/heads/{name}")
        start = body.get("startingPoint") or "main"
        sha, _, _ = req.storage.resolve(req.repo_type, req.repo_id, start)
        refs["heads"][name] = sha
        req.storage.write_refs(req.repo_type, req.repo_id, refs)
    req._json({})


def delete_branch(req: Request) -> None:
    repo_access(req, req.repo_type, req.repo_id, write=True)
    with req.storage.lock:
        refs = req.storage.read_refs(req.repo_type, req.repo_id)
        if req.ref_name not in refs["heads"]:
            raise revision_not_found(req.ref_name)
        if req.ref_name == "main":
            raise HubHTTPError(403, "Cannot delete the default branch")
        del refs["heads"][req.ref_name]
        req.storage.write_refs(req.repo_type, req.repo_id, refs)
    req._json({})


def create_tag(req: Request) -> None:
    repo_access(req, req.repo_type, req.repo_id, write=True)
    body = req._json_body()
    tag = body.get("tag")
    if not isinstance(tag, str) or not re.fullmatch(r"[\w.\-]+", tag):
        raise HubHTTPError(400, f"Invalid tag name {tag!r}")
    with req.storage.lock:
        sha, _, _ = req.storage.resolve(req.repo_type, req.repo_id, req.rev)
        refs = req.storage.read_refs(req.repo_type, req.repo_id)
        if tag in refs["tags"]:
            raise HubHTTPError(409, f"Tag already exists: refs/tags/{tag}")
        refs["tags"][tag] = {"sha": sha, "message": body.get("message") or ""}
        req.storage.write_refs(req.repo_type, req.repo_id, refs)
    req._json({})


def delete_tag(req: Request) -> None:
    repo_access(req, req.repo_type, req.repo_id, write=True)
    with req.storage.lock:
        refs = req.storage.read_refs(req.repo_type, req.repo_id)
        if req.rev not in refs["tags"]:
            raise revision_not_found(req.rev)
        del refs["tags"][req.rev]
        req.storage.write_refs(req.repo_type, req.repo_id, refs)
    req._json({})
