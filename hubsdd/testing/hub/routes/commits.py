"""Commits and refs: the NDJSON commit, history, branches, tags (and pull requests via commits)."""

from __future__ import annotations

import base64
import json
import re
from typing import Any
from urllib.parse import quote, urlsplit

from ..protocol import COMMITS_PAGE_SIZE, SHA1_RE, HubHTTPError, revision_not_found, truthy
from .repos import RepoRoutes


class CommitRoutes(RepoRoutes):
    """``/api/{type}s/{id}/commit/{rev}``, ``.../commits``, ``.../refs``, ``.../branch/...``,
    ``.../tag/...``."""

    ref_name: str

    def _commit(self) -> None:
        create_pr = truthy(self.query.get("create_pr"))
        _, user = self._repo(self.repo_type, self.repo_id, write=not create_pr, pr=create_pr)
        header: dict = {}
        ops: list[dict] = []
        for n, line in enumerate(self._body().splitlines()):
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
        sha, pr = self.storage.commit(
            self.repo_type, self.repo_id, self.rev, ops, title=summary, message=header.get("description") or "",
            author=user, parent_commit=header.get("parentCommit"), create_pr=create_pr)
        self._json({"success": True, "commitOid": sha, "commitUrl": f"{self._repo_url()}/commit/{sha}",
                    "hookOutput": "", "pullRequestUrl": f"{self._repo_url()}/discussions/{pr}" if pr else None})

    # -- history and refs

    def _commits(self) -> None:
        self._repo(self.repo_type, self.repo_id)
        sha, _, _ = self.storage.resolve(self.repo_type, self.repo_id, self.rev)
        items = self.storage.history(self.repo_type, self.repo_id, sha)
        page, limit = int(self.query.get("p") or 0), int(self.query.get("limit") or COMMITS_PAGE_SIZE)
        chunk = items[page * limit:(page + 1) * limit]
        out = [{"id": c["id"], "title": c["title"], "message": c["message"], "date": c["date"],
                "authors": [{"user": c["author"], "avatar": ""}], "parents": c["parents"]} for c in chunk]
        headers = {}
        if (page + 1) * limit < len(items):
            q = dict(self.query, p=str(page + 1), limit=str(limit))
            qs = "&".join(f"{quote(k)}={quote(v)}" for k, v in q.items())
            headers["Link"] = f'<{self.hub.url}{urlsplit(self.path).path}?{qs}>; rel="next"'
        self._json(out, headers=headers)

    def _refs(self) -> None:
        self._repo(self.repo_type, self.repo_id)
        refs = self.storage.read_refs(self.repo_type, self.repo_id)
        out: dict[str, Any] = {
            "branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": s} for b, s in sorted(refs["heads"].items())],
            "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": v["sha"]} for t, v in sorted(refs["tags"].items())],
            "converts": [],
        }
        if truthy(self.query.get("include_prs")):
            out["pullRequests"] = [{"name": f"refs/pr/{n}", "ref": f"refs/pr/{n}", "targetCommit": v["sha"]}
                                   for n, v in sorted(refs["prs"].items(), key=lambda kv: int(kv[0]))]
        self._json(out)

    def _create_branch(self) -> None:
        self._repo(self.repo_type, self.repo_id, write=True)
        body = self._json_body()
        name = self.ref_name
        if not re.fullmatch(r"[\w.\-/]+", name) or name.startswith("refs/") or SHA1_RE.match(name):
            raise HubHTTPError(400, f"Invalid branch name {name!r}")
        with self.storage.lock:
            refs = self.storage.read_refs(self.repo_type, self.repo_id)
            if name in refs["heads"]:
                raise HubHTTPError(409, f"Reference already exists: refs/heads/{name}")
            start = body.get("startingPoint") or "main"
            sha, _, _ = self.storage.resolve(self.repo_type, self.repo_id, start)
            refs["heads"][name] = sha
            self.storage.write_refs(self.repo_type, self.repo_id, refs)
        self._json({})

    def _delete_branch(self) -> None:
        self._repo(self.repo_type, self.repo_id, write=True)
        with self.storage.lock:
            refs = self.storage.read_refs(self.repo_type, self.repo_id)
            if self.ref_name not in refs["heads"]:
                raise revision_not_found(self.ref_name)
            if self.ref_name == "main":
                raise HubHTTPError(403, "Cannot delete the default branch")
            del refs["heads"][self.ref_name]
            self.storage.write_refs(self.repo_type, self.repo_id, refs)
        self._json({})

    def _create_tag(self) -> None:
        self._repo(self.repo_type, self.repo_id, write=True)
        body = self._json_body()
        tag = body.get("tag")
        if not isinstance(tag, str) or not re.fullmatch(r"[\w.\-]+", tag):
            raise HubHTTPError(400, f"Invalid tag name {tag!r}")
        with self.storage.lock:
            sha, _, _ = self.storage.resolve(self.repo_type, self.repo_id, self.rev)
            refs = self.storage.read_refs(self.repo_type, self.repo_id)
            if tag in refs["tags"]:
                raise HubHTTPError(409, f"Tag already exists: refs/tags/{tag}")
            refs["tags"][tag] = {"sha": sha, "message": body.get("message") or ""}
            self.storage.write_refs(self.repo_type, self.repo_id, refs)
        self._json({})

    def _delete_tag(self) -> None:
        self._repo(self.repo_type, self.repo_id, write=True)
        with self.storage.lock:
            refs = self.storage.read_refs(self.repo_type, self.repo_id)
            if self.rev not in refs["tags"]:
                raise revision_not_found(self.rev)
            del refs["tags"][self.rev]
            self.storage.write_refs(self.repo_type, self.repo_id, refs)
        self._json({})
