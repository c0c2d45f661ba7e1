"""The repository API: create, delete, settings, info, file listings, card validation."""

from __future__ import annotations

import hashlib
import json
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from ..protocol import REPO_TYPES, URL_PREFIX, HubHTTPError, check_repo_id, truthy
from ..validation import card_data, validate_card_metadata
from .auth import AuthRoutes


class RepoRoutes(AuthRoutes):
    """``/api/repos/create|delete``, ``/api/{type}s/{id}`` (info, tree, paths-info, settings) and
    ``/api/validate-yaml``."""

    repo_type: str
    repo_id: str
    rev: str | None
    file_path: str

    def _repo_url(self, repo_type: str | None = None, repo_id: str | None = None) -> str:
        rt = repo_type or self.repo_type
        return f"{self.hub.url}/{URL_PREFIX[rt]}{repo_id or self.repo_id}"

    def _validate_yaml(self) -> None:
        body = self._json_body()
        content = body.get("content")
        if not isinstance(content, str):
            raise HubHTTPError(400, '"content" must be a string')
        errors, warnings = validate_card_metadata(content, body.get("repoType") or "model")
        payload = {"errors": [{"message": e} for e in errors], "warnings": [{"message": w} for w in warnings]}
        if errors:
            self._json(payload, 400, {"X-Error-Message": "; ".join(errors)})
        else:
            self._json(payload)

    def _create_repo(self) -> None:
        user = self._require_user()
        body = self._json_body()
        name, org = body.get("name"), body.get("organization") or user
        repo_type = body.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise HubHTTPError(400, f"Invalid repo type {repo_type!r}")
        repo_id = check_repo_id(org, str(name))
        self._check_scope(repo_type, repo_id)
        if not self.hub.can_write(user, repo_id):
            raise HubHTTPError(403, f"You don't have the rights to create a {repo_type} under the namespace {org!r}")
        private = body.get("visibility") == "private" or bool(body.get("private"))
        url = self._repo_url(repo_type, repo_id)
        if not self.storage.create_repo(repo_type, repo_id, user, private):
            self._json({"error": f"You already created this {repo_type} repo", "url": url}, 409,
                       {"X-Error-Message": f"You already created this {repo_type} repo"})
            return
        self._json({"url": url, "name": repo_id, "id": hashlib.sha1(url.encode()).hexdigest()[:24]})

    def _delete_repo(self) -> None:
        user = self._require_user()
        body = self._json_body()
        repo_type = body.get("type") or "model"
        repo_id = check_repo_id(body.get("organization") or user, str(body.get("name")))
        self.repo_type, self.repo_id = repo_type, repo_id
        self._repo(repo_type, repo_id, write=True)
        self.storage.delete_repo(repo_type, repo_id)
        self._json({})

    def _settings(self) -> None:
        self._repo(self.repo_type, self.repo_id, write=True)
        body = self._json_body()
        if "private" in body:
            self.storage.set_private(self.repo_type, self.repo_id, bool(body["private"]))
        self._json({})

    def _repo_info(self) -> None:
        meta, _ = self._repo(self.repo_type, self.repo_id)
        sha, files = self.storage.files_at(self.repo_type, self.repo_id, self.rev or "main")
        head = self.storage.get_commit(self.repo_type, self.repo_id, sha)
        blobs = truthy(self.query.get("blobs"))
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
            "_id": hashlib.sha1(f"{self.repo_type}/{self.repo_id}".encode()).hexdigest()[:24],
            "id": self.repo_id, "author": self.repo_id.split("/")[0], "sha": sha, "private": meta["private"],
            "gated": "manual" if meta.get("gated_users") is not None else False, "disabled": False, "downloads": 0, "likes": 0, "createdAt": meta["createdAt"],
            "lastModified": head["date"], "siblings": siblings,
            "usedStorage": sum(e["size"] for e in files.values()),
        }
        readme = files.get("README.md")
        data = card_data(self.storage.entry_bytes(readme).decode("utf-8", "replace")) if readme else None
        if data is not None:
            info["cardData"] = data
        tags = list((data or {}).get("tags") or []) if isinstance((data or {}).get("tags"), list) else []
        info["tags"] = tags
        if self.repo_type == "model":
            info["modelId"] = self.repo_id
            if data:
                for key in ("pipeline_tag", "library_name"):
                    if isinstance(data.get(key), str):
                        info[key] = data[key]
                if data.get("model-index") is not None:
                    info["model-index"] = data["model-index"]
            if "config.json" in files:
                try:
                    info["config"] = json.loads(self.storage.entry_bytes(files["config.json"]))
                except (ValueError, UnicodeDecodeError):
                    pass
        self._json(info)

    # -- tree / paths-info

    def _entry_json(self, path: str, e: dict) -> dict:
        out: dict[str, Any] = {"type": "file", "oid": e["oid"], "size": e["size"], "path": path}
        if e["type"] == "lfs":
            out["lfs"] = {"oid": e["sha256"], "size": e["size"], "pointerSize": e["pointerSize"]}
        return out

    @staticmethod
    def _folder_oid(files: dict[str, dict], folder: str) -> str:
        prefix = folder + "/"
        listing = sorted((p, e["oid"]) for p, e in files.items() if p.startswith(prefix))
        return hashlib.sha1(json.dumps(listing).encode()).hexdigest()

    def _last_commit(self, sha: str, path: str, is_dir: bool) -> dict:
        """The newest first-parent commit that changed ``path`` (what `expand=True` adds)."""
        def view(files: dict) -> Any:
            if is_dir:
                return sorted((p, e["oid"]) for p, e in files.items() if p.startswith(path + "/"))
            return (files.get(path) or {}).get("oid")

        cur = self.storage.get_commit(self.repo_type, self.repo_id, sha)
        while cur["parents"]:
            parent = self.storage.get_commit(self.repo_type, self.repo_id, cur["parents"][0])
            if view(parent["files"]) != view(cur["files"]):
                break
            cur = parent
        return {"id": cur["id"], "title": cur["title"], "date": cur["date"]}

    def _tree(self) -> None:
        self._repo(self.repo_type, self.repo_id)
        sha, files = self.storage.files_at(self.repo_type, self.repo_id, self.rev)
        base = self.file_path
        recursive = truthy(self.query.get("recursive"))
        expand = truthy(self.query.get("expand"))
        prefix = base + "/" if base else ""
        if base and base in files:
            raise HubHTTPError(400, f"{base!r} is a file, not a folder")
        under = {p: e for p, e in files.items() if p.startswith(prefix)}
        if base and not under:
            raise HubHTTPError(404, f"{base} does not exist on {self.rev}", code="EntryNotFound",
                               headers={"X-Repo-Commit": sha})
        entries: dict[str, dict] = {}
        for path, e in under.items():
            rel = path[len(prefix):].split("/")
            for depth in range(1, len(rel)):  # the folders on the way
                folder = prefix + "/".join(rel[:depth])
                if (recursive or depth == 1) and folder not in entries:
                    entries[folder] = {"type": "directory", "oid": self._folder_oid(files, folder), "size": 0,
                                       "path": folder}
            if recursive or len(rel) == 1:
                entries[path] = self._entry_json(path, e)
        ordered = [entries[k] for k in sorted(entries, key=lambda p: (entries[p]["type"] != "directory", p))]
        # The Hub caps pages at 1000 entries (50 with expand); the cap is configurable to test paging.
        page_size = min(self.hub.tree_page_size, 50) if expand else self.hub.tree_page_size
        if self.query.get("limit", "").isdigit():
            page_size = max(1, min(page_size, int(self.query["limit"])))
        start = int(self.query.get("cursor") or 0)
        page = ordered[start:start + page_size]
        if expand:
            for item in page:
                item["lastCommit"] = self._last_commit(sha, item["path"], item["type"] == "directory")
        headers = {}
        if start + page_size < len(ordered):
            q = {k: v for k, v in self.query.items() if k != "cursor"}
            q["cursor"] = str(start + page_size)
            qs = "&".join(f"{quote(k)}={quote(v)}" for k, v in q.items())
            headers["Link"] = f'<{self.hub.url}{urlsplit(self.path).path}?{qs}>; rel="next"'
        self._json(page, headers=headers)

    def _paths_info(self) -> None:
        self._repo(self.repo_type, self.repo_id)
        ctype = self.headers.get("Content-Type", "")
        raw = self._body()
        if "json" in ctype:
            body = json.loads(raw or b"{}")
            paths, expand = body.get("paths") or [], bool(body.get("expand"))
        else:  # the client posts form data: paths=a&paths=b&expand=False
            form = parse_qs(raw.decode(), keep_blank_values=True)
            paths, expand = form.get("paths", []), truthy((form.get("expand") or ["false"])[-1])
        if isinstance(paths, str):
            paths = [paths]
        sha, files = self.storage.files_at(self.repo_type, self.repo_id, self.rev)
        out = []
        for p in paths:
            p = p.strip("/")
            if p in files:
                item = self._entry_json(p, files[p])
            elif any(f.startswith(p + "/") for f in files):
                item = {"type": "directory", "oid": self._folder_oid(files, p), "size": 0, "path": p}
            else:
                continue
            if expand:
                item["lastCommit"] = self._last_commit(sha, p, item["type"] == "directory")
            out.append(item)
        self._json(out)
