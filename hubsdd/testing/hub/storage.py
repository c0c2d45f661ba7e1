"""Repositories with real history on disk: content-addressed blobs and LFS objects, commits, refs.

Layout under ``root`` (so the demo server survives a restart):

``blobs/ab/<sha1>``
    regular file contents, addressed by their git blob sha1 (``sha1(b"blob %d\\0" + data)``), the
    oid the client compares against.
``lfs/ab/<sha256>``
    LFS objects, addressed by the sha256 the client announces and that the server checks on upload.
``repos/<type>s/<namespace>/<name>/``
    ``repo.json`` (owner, private, PR counter), ``refs.json`` (branches, tags, pull requests),
    ``commits/<sha>.json`` (parents, message, author, date and the full ``path -> entry`` tree of
    that commit) and ``lfs/<sha256>`` markers of the LFS objects uploaded *to this repository*.
``tmp/``
    uploads being received; an object enters ``lfs/`` only once its sha256 has been checked, and a
    commit moves a branch only after every object it names is stored, so a reader of a branch never
    sees a half-written file or a partial commit.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import itertools
import json
import os
import re
import shutil
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ...core.files import atomic_write_bytes, git_blob_sha1
from .protocol import HEX_PREFIX_RE, SHA1_RE, HubHTTPError, revision_not_found

# The patterns of the .gitattributes the Hub writes into every new repository: files matching them
# are uploaded through LFS (the client asks the server, in `preupload`, which mode to use).
DEFAULT_LFS_PATTERNS = [
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*",
    "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb",
    "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors", "saved_model/**/*", "*.tar.*",
    "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*",
]
DATASET_LFS_PATTERNS = ["*.mds", "*.jsonl.gz", "*.png", "*.jpg", "*.jpeg", "*.webp", "*.mp3", "*.wav", "*.flac"]


def lfs_pointer(oid: str, size: int) -> bytes:
    """The git-lfs pointer file stored in git in place of an LFS file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


def now_iso() -> str:
    """Dates in the one format ``huggingface_hub.utils.parse_datetime`` reads."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class CommitRecord:
    """One commit as the inspection API returns it."""

    id: str
    parents: list[str]
    title: str
    message: str
    author: str
    date: str
    files: dict[str, dict] = field(repr=False)


class HubStorage:
    """Repositories with real history on disk. Every mutation happens under ``self.lock``.

    A tree entry is ``{"type": "regular", "oid": <git sha1>, "size": n}`` or
    ``{"type": "lfs", "oid": <git sha1 of the pointer>, "size": n, "sha256": <oid>,
    "pointerSize": m}``.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.lock = threading.RLock()
        for sub in ("blobs", "lfs", "repos", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._commit_cache: dict[tuple[str, str, str], dict] = {}
        self._counter = itertools.count()

    # -- content-addressed stores

    def put_blob(self, data: bytes) -> str:
        sha = git_blob_sha1(data)
        path = self.blob_path(sha)
        if not path.exists():
            atomic_write_bytes(path, data)
        return sha

    def blob_path(self, sha1: str) -> Path:
        return self.root / "blobs" / sha1[:2] / sha1

    def lfs_path(self, oid: str) -> Path:
        return self.root / "lfs" / oid[:2] / oid

    def tmp_file(self) -> Path:
        return self.root / "tmp" / uuid.uuid4().hex

    def install_lfs(self, tmp: Path, oid: str) -> None:
        """Move a verified upload into the LFS store (content-addressed, so a second copy is dropped)."""
        dest = self.lfs_path(oid)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            tmp.unlink(missing_ok=True)
        else:
            os.replace(tmp, dest)

    def entry_bytes(self, entry: dict) -> bytes:
        path = self.lfs_path(entry["sha256"]) if entry["type"] == "lfs" else self.blob_path(entry["oid"])
        return path.read_bytes()

    def entry_path(self, entry: dict) -> Path:
        return self.lfs_path(entry["sha256"]) if entry["type"] == "lfs" else self.blob_path(entry["oid"])

    # -- repositories

    def repo_dir(self, repo_type: str, repo_id: str) -> Path:
        ns, name = repo_id.split("/", 1)
        return self.root / "repos" / f"{repo_type}s" / ns / name

    def repo_meta(self, repo_type: str, repo_id: str) -> dict | None:
        path = self.repo_dir(repo_type, repo_id) / "repo.json"
        if not path.exists():
            return None
        return json.loads(path.read_text())

    def write_meta(self, repo_type: str, repo_id: str, meta: dict) -> None:
        atomic_write_bytes(self.repo_dir(repo_type, repo_id) / "repo.json", json.dumps(meta, indent=1).encode())

    def create_repo(self, repo_type: str, repo_id: str, owner: str, private: bool) -> bool:
        """Create a repository with the Hub's initial commit (a .gitattributes); False if it exists."""
        with self.lock:
            if self.repo_meta(repo_type, repo_id) is not None:
                return False
            patterns = DEFAULT_LFS_PATTERNS + (DATASET_LFS_PATTERNS if repo_type == "dataset" else [])
            attrs = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in patterns).encode()
            meta = {"id": repo_id, "type": repo_type, "private": bool(private), "created_by": owner,
                    "createdAt": now_iso(), "next_pr": 1}
            self.write_meta(repo_type, repo_id, meta)
            self.write_refs(repo_type, repo_id, {"heads": {}, "tags": {}, "prs": {}})
            entry = {"type": "regular", "oid": self.put_blob(attrs), "size": len(attrs)}
            sha = self._new_commit(repo_type, repo_id, [], {".gitattributes": entry}, "initial commit", "", "system")
            refs = self.read_refs(repo_type, repo_id)
            refs["heads"]["main"] = sha
            self.write_refs(repo_type, repo_id, refs)
            return True

    def delete_repo(self, repo_type: str, repo_id: str) -> bool:
        with self.lock:
            d = self.repo_dir(repo_type, repo_id)
            if not (d / "repo.json").exists():
                return False
            shutil.rmtree(d)
            self._commit_cache = {k: v for k, v in self._commit_cache.items() if k[:2] != (repo_type, repo_id)}
            return True

    def set_private(self, repo_type: str, repo_id: str, private: bool) -> None:
        with self.lock:
            meta = self.repo_meta(repo_type, repo_id)
            meta["private"] = bool(private)
            self.write_meta(repo_type, repo_id, meta)

    def read_refs(self, repo_type: str, repo_id: str) -> dict:
        return json.loads((self.repo_dir(repo_type, repo_id) / "refs.json").read_text())

    def write_refs(self, repo_type: str, repo_id: str, refs: dict) -> None:
        atomic_write_bytes(self.repo_dir(repo_type, repo_id) / "refs.json", json.dumps(refs, indent=1).encode())

    # -- LFS objects uploaded to a repository (an upload proves possession; objects are per repo)

    def repo_has_lfs(self, repo_type: str, repo_id: str, oid: str) -> bool:
        return (self.repo_dir(repo_type, repo_id) / "lfs" / oid).exists() and self.lfs_path(oid).exists()

    def add_repo_lfs(self, repo_type: str, repo_id: str, oid: str) -> None:
        marker = self.repo_dir(repo_type, repo_id) / "lfs" / oid
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()

    # -- commits

    def get_commit(self, repo_type: str, repo_id: str, sha: str) -> dict:
        key = (repo_type, repo_id, sha)
        if key not in self._commit_cache:  # commits are immutable: cache them
            path = self.repo_dir(repo_type, repo_id) / "commits" / f"{sha}.json"
            self._commit_cache[key] = json.loads(path.read_text())
        return self._commit_cache[key]

    def has_commit(self, repo_type: str, repo_id: str, sha: str) -> bool:
        return (self.repo_dir(repo_type, repo_id) / "commits" / f"{sha}.json").exists()

    def _new_commit(self, repo_type: str, repo_id: str, parents: list[str], files: dict, title: str,
                    message: str, author: str) -> str:
        date = now_iso()
        tree_id = hashlib.sha1(json.dumps(sorted(files.items()), sort_keys=True).encode()).hexdigest()
        # The counter and a random salt make two identical commits made in the same millisecond distinct.
        raw = f"tree {tree_id}\n" + "".join(f"parent {p}\n" for p in parents)
        raw += f"author {author} {date} {next(self._counter)} {uuid.uuid4().hex}\n\n{title}\n\n{message}"
        sha = hashlib.sha1(raw.encode()).hexdigest()
        record = {"id": sha, "parents": parents, "title": title, "message": message, "author": author,
                  "date": date, "tree": tree_id, "files": files}
        atomic_write_bytes(self.repo_dir(repo_type, repo_id) / "commits" / f"{sha}.json", json.dumps(record).encode())
        return sha

    def resolve(self, repo_type: str, repo_id: str, revision: str) -> tuple[str, str, str]:
        """Revision -> (commit sha, kind, ref name); kind is branch, tag, pr or commit."""
        refs = self.read_refs(repo_type, repo_id)
        rev = revision
        if rev.startswith("refs/heads/"):
            name = rev[len("refs/heads/"):]
            if name in refs["heads"]:
                return refs["heads"][name], "branch", name
            raise revision_not_found(revision)
        if rev.startswith("refs/tags/"):
            name = rev[len("refs/tags/"):]
            if name in refs["tags"]:
                return refs["tags"][name]["sha"], "tag", name
            raise revision_not_found(revision)
        m = re.fullmatch(r"refs/pr/(\d+)", rev)
        if m:
            pr = refs["prs"].get(m.group(1))
            if pr is None:
                raise revision_not_found(revision)
            return pr["sha"], "pr", m.group(1)
        if rev in refs["heads"]:
            return refs["heads"][rev], "branch", rev
        if rev in refs["tags"]:
            return refs["tags"][rev]["sha"], "tag", rev
        low = rev.lower()
        if SHA1_RE.match(low) and self.has_commit(repo_type, repo_id, low):
            return low, "commit", low
        if HEX_PREFIX_RE.match(low):
            cdir = self.repo_dir(repo_type, repo_id) / "commits"
            hits = [p.stem for p in cdir.glob(f"{low}*.json")]
            if len(hits) == 1:
                return hits[0], "commit", hits[0]
        raise revision_not_found(revision)

    def files_at(self, repo_type: str, repo_id: str, revision: str) -> tuple[str, dict[str, dict]]:
        sha, _, _ = self.resolve(repo_type, repo_id, revision)
        return sha, self.get_commit(repo_type, repo_id, sha)["files"]

    def history(self, repo_type: str, repo_id: str, sha: str) -> list[dict]:
        """Every commit reachable from ``sha``, newest first (as `git log` lists them)."""
        seen: dict[str, dict] = {}
        stack = [sha]
        while stack:
            cur = stack.pop()
            if cur in seen:
                continue
            rec = self.get_commit(repo_type, repo_id, cur)
            seen[cur] = rec
            stack.extend(rec["parents"])
        # Newest first; ties (same millisecond) keep children before parents via the depth order.
        order = {c: i for i, c in enumerate(self._topo(repo_type, repo_id, sha))}
        return sorted(seen.values(), key=lambda r: (r["date"], -order[r["id"]]), reverse=True)

    def _topo(self, repo_type: str, repo_id: str, sha: str) -> list[str]:
        out, seen, stack = [], set(), [sha]
        while stack:
            cur = stack.pop()
            if cur in seen:
                continue
            seen.add(cur)
            out.append(cur)
            stack.extend(reversed(self.get_commit(repo_type, repo_id, cur)["parents"]))
        return out

    def commit(self, repo_type: str, repo_id: str, revision: str, operations: list[dict], *, title: str,
               message: str, author: str, parent_commit: str | None = None, create_pr: bool = False
               ) -> tuple[str, int | None]:
        """Apply operations on top of ``revision`` in one new commit; returns (sha, PR number or None).

        ``operations`` are the NDJSON values the client sends, tagged with their key:
        ``{"key": "file", "path", "content" (bytes)}``, ``{"key": "lfsFile", "path", "oid"}``,
        ``{"key": "deletedFile", "path"}``, ``{"key": "deletedFolder", "path"}``.
        """
        with self.lock:
            base_sha, kind, ref = self.resolve(repo_type, repo_id, revision)
            if not create_pr and kind not in ("branch", "pr"):
                raise HubHTTPError(400, f"Cannot commit to {revision!r}: not a branch or a pull request ref")
            if parent_commit and not create_pr and not base_sha.startswith(parent_commit.lower()):
                raise HubHTTPError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(self.get_commit(repo_type, repo_id, base_sha)["files"])
            for op in operations:
                path = op["path"].lstrip("/")
                if op["key"] == "file":
                    data = op["content"]
                    files[path] = {"type": "regular", "oid": self.put_blob(data), "size": len(data)}
                elif op["key"] == "lfsFile":
                    oid = op["oid"]
                    if not self.repo_has_lfs(repo_type, repo_id, oid):
                        raise HubHTTPError(422, f"LFS object {oid} for {path!r} was not uploaded to this repository")
                    size = self.lfs_path(oid).stat().st_size
                    if op.get("size") is not None and int(op["size"]) != size:
                        raise HubHTTPError(422, f"LFS object {oid} has size {size}, not {op['size']}")
                    pointer = lfs_pointer(oid, size)
                    files[path] = {"type": "lfs", "oid": git_blob_sha1(pointer), "size": size, "sha256": oid,
                                   "pointerSize": len(pointer)}
                elif op["key"] == "deletedFile":
                    if path not in files:
                        raise HubHTTPError(404, f"A file with this name doesn't exist: {path}", code="EntryNotFound")
                    del files[path]
                elif op["key"] == "deletedFolder":
                    prefix = path.rstrip("/") + "/"
                    doomed = [p for p in files if p.startswith(prefix)]
                    if not doomed:
                        raise HubHTTPError(404, f"A folder with this name doesn't exist: {path}", code="EntryNotFound")
                    for p in doomed:
                        del files[p]
                else:
                    raise HubHTTPError(400, f"Unknown commit operation {op['key']!r}")
            sha = self._new_commit(repo_type, repo_id, [base_sha], files, title, message, author)
            refs = self.read_refs(repo_type, repo_id)
            pr_num = None
            if create_pr:
                meta = self.repo_meta(repo_type, repo_id)
                pr_num = meta["next_pr"]
                meta["next_pr"] = pr_num + 1
                self.write_meta(repo_type, repo_id, meta)
                refs["prs"][str(pr_num)] = {"sha": sha, "base": ref if kind == "branch" else revision,
                                            "title": title, "author": author, "status": "open",
                                            "createdAt": now_iso()}
            elif kind == "branch":
                refs["heads"][ref] = sha
            else:
                refs["prs"][ref]["sha"] = sha
            self.write_refs(repo_type, repo_id, refs)
            return sha, pr_num
