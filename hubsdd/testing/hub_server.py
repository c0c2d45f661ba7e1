"""A Hugging Face Hub-compatible HTTP server for tests and the offline demo.

No installable server implements the Hub's *write* API, and this project has no network, so the push
and pull paths are exercised against this server with the **unmodified** ``huggingface_hub`` client::

    HF_ENDPOINT=http://127.0.0.1:PORT HF_HUB_DISABLE_XET=1 python ...

``HF_HUB_DISABLE_XET=1`` makes the client use the classic protocol this server speaks:
``preupload`` (regular vs LFS, and the remote oid so unchanged files are skipped) -> LFS batch API
(upload + verify actions) -> one NDJSON ``commit``. Downloads use ``/resolve`` with the headers the
client relies on (``X-Repo-Commit``, ``ETag``/``X-Linked-Etag``, ``X-Linked-Size``, ranges) and the
``X-Error-Code`` values it turns into typed exceptions (``RepoNotFound``, ``RevisionNotFound``,
``EntryNotFound``). LFS files are served the way the real Hub serves them: ``/resolve`` answers with
a redirect to a signed URL on a *different origin* (a second listening port standing in for the
CDN), so the client drops the ``Authorization`` header exactly as it does in production.

Storage is real history on disk under ``storage_dir`` (so the demo server survives a restart):

``blobs/ab/<sha1>``
    regular file contents, addressed by their git blob sha1 (``sha1(b"blob %d\\0" + data)``), the
    oid the client compares against.
``lfs/ab/<sha256>``
    LFS objects, addressed by the sha256 the client announces and that the server checks on upload.
``repos/<type>s/<namespace>/<name>/``
    ``repo.json`` (owner, private, PR counter), ``refs.json`` (branches, tags, pull requests),
    ``commits/<sha>.json`` (parents, message, author, date and the full ``path -> entry`` tree of
    that commit) and ``lfs/<sha256>`` markers of the LFS objects uploaded *to this repository*.

Authentication: ``tokens`` maps a bearer token to a user name. Writes need a token whose user owns
the repository's namespace (the part before ``/``; ``orgs`` may add members to a namespace);
opening a pull request needs any valid token that can read the repository, as on the Hub. Private
repositories answer 401 (no token) or 404 (someone else's token) with ``X-Error-Code: RepoNotFound``.

Only 127.0.0.1 is ever bound. The Python API for tests: :class:`HubServer` (``start``/``stop``,
context manager, ``url``) plus inspection helpers (:meth:`HubServer.commits`,
:meth:`HubServer.file_bytes`, :meth:`HubServer.files`, :meth:`HubServer.refs`), a server-side edit
(:meth:`HubServer.rewrite_file`), fault injection (:meth:`HubServer.fail_next`) and request
counters (:attr:`HubServer.counts`).

Command line (for the demo script)::

    python -m hubsdd.testing.hub_server --storage DIR --port 8765 --token TOKEN:USER \\
        [--token T2:U2] [--org ORG:USER1,USER2] [--ready-file FILE]

prints the base URL, writes it to ``--ready-file`` once listening, and runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import base64
import collections
import datetime as _dt
import fnmatch
import hashlib
import hmac
import itertools
import json
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, quote, unquote, urlsplit

import yaml

from ..files import git_blob_sha1
from .oidc import ExchangeRefused, TrustedPublishing

log = logging.getLogger("hubsdd.hub_server")

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

# The patterns of the .gitattributes the Hub writes into every new repository: files matching them
# are uploaded through LFS (the client asks the server, in `preupload`, which mode to use).
DEFAULT_LFS_PATTERNS = [
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*",
    "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb",
    "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors", "saved_model/**/*", "*.tar.*",
    "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*",
]
DATASET_LFS_PATTERNS = ["*.mds", "*.jsonl.gz", "*.png", "*.jpg", "*.jpeg", "*.webp", "*.mp3", "*.wav", "*.flac"]

# License identifiers the Hub accepts in card metadata (plus "other").
KNOWN_LICENSES = frozenset("""
apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0
bigcode-openrail-m afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear
c-uda cc cc0-1.0 cc-by-2.0 cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0
cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0 cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0
cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0 cdla-permissive-1.0 cdla-permissive-2.0 wtfpl
ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 eupl-1.2 agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0 lgpl
lgpl-2.1 lgpl-3.0 isc h-research intel-research lppl-1.3c ms-pl apple-ascl apple-amlr mpl-2.0
odc-by odbl openmdw-1.0 openrail++ osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr
deepfloyd-if-license fair-noncommercial-research-license llama2 llama3 llama3.1 llama3.2 llama3.3
llama4 gemma unknown other
""".split())
HUB_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w\-.]{0,95}(/[A-Za-z0-9][\w\-.]{0,95})?$")
FRONT_MATTER_RE = re.compile(r"^(\s*---(?:\r\n|\r|\n))([\S\s]*?)((?:\r\n|\r|\n)---[ \t]*(\r\n|\n|$))")


# --------------------------------------------------------------------------- helpers


def lfs_pointer(oid: str, size: int) -> bytes:
    """The git-lfs pointer file stored in git in place of an LFS file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


def now_iso() -> str:
    """Dates in the one format ``huggingface_hub.utils.parse_datetime`` reads."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def front_matter(text: str) -> tuple[str | None, str]:
    """Split a README into (YAML block or None, body)."""
    m = FRONT_MATTER_RE.search(text)
    if not m:
        return None, text
    return m.group(2), text[m.end():]


def card_data(text: str) -> dict | None:
    """The parsed front matter of a README, or None when absent or unreadable."""
    block, _ = front_matter(text)
    if block is None:
        return None
    try:
        data = yaml.safe_load(block)
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _header_value(value: Any) -> str:
    """Header values must be one latin-1 line: messages (YAML errors...) are flattened and cut."""
    text = " ".join(str(value).split()) if any(c in str(value) for c in "\r\n\t") else str(value)
    return text.encode("ascii", "replace").decode()[:1000]


def _truthy(value: str | None) -> bool:
    return str(value).lower() in ("1", "true", "yes")


class HubHTTPError(Exception):
    """An error answer: status, message (also sent as X-Error-Message) and optional X-Error-Code."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


def _repo_not_found(status: int = 404) -> HubHTTPError:
    return HubHTTPError(status, "Repository not found", code="RepoNotFound")


def _revision_not_found(revision: str) -> HubHTTPError:
    return HubHTTPError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")


# --------------------------------------------------------------------------- validate-yaml


def validate_card_metadata(content: str, repo_type: str = "model") -> tuple[list[str], list[str]]:
    """What ``POST /api/validate-yaml`` checks: returns (errors, warnings).

    Real checks, not a stub: the front matter must parse to a mapping; ``license`` must be a known
    id or 'other'; ``base_model`` must be Hub repo ids (never a local path such as /x or ./x);
    ``model-index`` must be a list of {name, results: [{task: {type}, dataset: {type, name},
    metrics: [{type, value}]}]}; ``tags``/``datasets`` lists of strings.
    """
    errors: list[str] = []
    warnings: list[str] = []
    block, _ = front_matter(content)
    if block is None:
        warnings.append("Empty or missing yaml metadata in repo card")
        return errors, warnings
    try:
        data = yaml.safe_load(block)
    except yaml.YAMLError as exc:
        return [f"Invalid YAML in README.md front matter: {exc}"], warnings
    if data is None:
        warnings.append("Empty or missing yaml metadata in repo card")
        return errors, warnings
    if not isinstance(data, dict):
        return ["YAML metadata must be a mapping (key: value pairs)"], warnings

    def str_list(key: str) -> list | None:
        value = data.get(key)
        if value is None:
            return None
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) and v for v in items):
            errors.append(f'"{key}" must be a string or a list of strings')
            return None
        return items

    for lic in str_list("license") or []:
        if lic.lower() not in KNOWN_LICENSES:
            errors.append(f'"license" must be one of the Hub license ids or "other", got {lic!r}')
    for key in ("base_model", "datasets"):
        for ref in str_list(key) or []:
            if ref.startswith(("/", ".", "~")) or "\\" in ref or ":" in ref or not HUB_REPO_ID_RE.match(ref):
                errors.append(f'"{key}" must be Hub repository ids (org/name), got {ref!r}')
    str_list("tags")
    for key in ("pipeline_tag", "library_name", "base_model_relation"):
        if key in data and not isinstance(data[key], str):
            errors.append(f'"{key}" must be a string')
    if "model-index" in data:
        errors.extend(_check_model_index(data["model-index"]))
    return errors, warnings


def _check_model_index(index: Any) -> list[str]:
    errs: list[str] = []
    if not isinstance(index, list):
        return ['"model-index" must be a list']
    for i, model in enumerate(index):
        where = f"model-index[{i}]"
        if not isinstance(model, dict) or not isinstance(model.get("name"), str):
            errs.append(f'"{where}" must be a mapping with a string "name"')
            continue
        results = model.get("results")
        if not isinstance(results, list):
            errs.append(f'"{where}.results" must be a list')
            continue
        for j, res in enumerate(results):
            rw = f"{where}.results[{j}]"
            if not isinstance(res, dict):
                errs.append(f'"{rw}" must be a mapping')
                continue
            task = res.get("task")
            if not isinstance(task, dict) or not isinstance(task.get("type"), str):
                errs.append(f'"{rw}.task.type" is required')
            ds = res.get("dataset")
            if not isinstance(ds, dict) or not isinstance(ds.get("type"), str) or not isinstance(ds.get("name"), str):
                errs.append(f'"{rw}.dataset" needs string "type" and "name"')
            metrics = res.get("metrics")
            if not isinstance(metrics, list) or not metrics:
                errs.append(f'"{rw}.metrics" must be a non-empty list')
                continue
            for k, metric in enumerate(metrics):
                if not isinstance(metric, dict) or not isinstance(metric.get("type"), str) or "value" not in metric:
                    errs.append(f'"{rw}.metrics[{k}]" needs a string "type" and a "value"')
    return errs


# --------------------------------------------------------------------------- storage


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
            _atomic_write(path, data)
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

    def _write_meta(self, repo_type: str, repo_id: str, meta: dict) -> None:
        _atomic_write(self.repo_dir(repo_type, repo_id) / "repo.json", json.dumps(meta, indent=1).encode())

    def create_repo(self, repo_type: str, repo_id: str, owner: str, private: bool) -> bool:
        """Create a repository with the Hub's initial commit (a .gitattributes); False if it exists."""
        with self.lock:
            if self.repo_meta(repo_type, repo_id) is not None:
                return False
            patterns = DEFAULT_LFS_PATTERNS + (DATASET_LFS_PATTERNS if repo_type == "dataset" else [])
            attrs = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in patterns).encode()
            meta = {"id": repo_id, "type": repo_type, "private": bool(private), "created_by": owner,
                    "createdAt": now_iso(), "next_pr": 1}
            self._write_meta(repo_type, repo_id, meta)
            self._write_refs(repo_type, repo_id, {"heads": {}, "tags": {}, "prs": {}})
            entry = {"type": "regular", "oid": self.put_blob(attrs), "size": len(attrs)}
            sha = self._new_commit(repo_type, repo_id, [], {".gitattributes": entry}, "initial commit", "", "system")
            refs = self.read_refs(repo_type, repo_id)
            refs["heads"]["main"] = sha
            self._write_refs(repo_type, repo_id, refs)
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
            self._write_meta(repo_type, repo_id, meta)

    def read_refs(self, repo_type: str, repo_id: str) -> dict:
        return json.loads((self.repo_dir(repo_type, repo_id) / "refs.json").read_text())

    def _write_refs(self, repo_type: str, repo_id: str, refs: dict) -> None:
        _atomic_write(self.repo_dir(repo_type, repo_id) / "refs.json", json.dumps(refs, indent=1).encode())

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
        _atomic_write(self.repo_dir(repo_type, repo_id) / "commits" / f"{sha}.json", json.dumps(record).encode())
        return sha

    def resolve(self, repo_type: str, repo_id: str, revision: str) -> tuple[str, str, str]:
        """Revision -> (commit sha, kind, ref name); kind is branch, tag, pr or commit."""
        refs = self.read_refs(repo_type, repo_id)
        rev = revision
        if rev.startswith("refs/heads/"):
            name = rev[len("refs/heads/"):]
            if name in refs["heads"]:
                return refs["heads"][name], "branch", name
            raise _revision_not_found(revision)
        if rev.startswith("refs/tags/"):
            name = rev[len("refs/tags/"):]
            if name in refs["tags"]:
                return refs["tags"][name]["sha"], "tag", name
            raise _revision_not_found(revision)
        m = re.fullmatch(r"refs/pr/(\d+)", rev)
        if m:
            pr = refs["prs"].get(m.group(1))
            if pr is None:
                raise _revision_not_found(revision)
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
        raise _revision_not_found(revision)

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
                self._write_meta(repo_type, repo_id, meta)
                refs["prs"][str(pr_num)] = {"sha": sha, "base": ref if kind == "branch" else revision,
                                            "title": title, "author": author, "status": "open",
                                            "createdAt": now_iso()}
            elif kind == "branch":
                refs["heads"][ref] = sha
            else:
                refs["prs"][ref]["sha"] = sha
            self._write_refs(repo_type, repo_id, refs)
            return sha, pr_num


# --------------------------------------------------------------------------- HTTP


@dataclass
class _Fault:
    status: int
    message: str
    remaining: int
    skip: int = 0  # matching requests let through before the fault fires


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, hub: "HubServer", role: str, port: int) -> None:
        self.hub = hub
        self.role = role  # "api" (the Hub) or "cdn" (signed LFS downloads on another origin)
        super().__init__((HOST, port), _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the client pools connections
    server_version = "hubsdd-hub-server/1.0"
    server: _Server

    # -- plumbing

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet: tests read logs only on failure
        log.debug("%s %s", self.address_string(), fmt % args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    @property
    def hub(self) -> "HubServer":
        return self.server.hub

    @property
    def storage(self) -> HubStorage:
        return self.server.hub.storage

    def _iter_body(self) -> Iterator[bytes]:
        """The request body, chunked or with Content-Length, read from the socket exactly once.

        Every request must have its body consumed before the answer, or the next request on the
        same keep-alive connection would start in the middle of it."""
        if self._cached_body is not None:
            yield self._cached_body
            return
        if self._body_consumed:
            return
        self._body_consumed = True
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                remaining = size
                while remaining:
                    chunk = self.rfile.read(min(remaining, 1 << 20))
                    if not chunk:
                        raise HubHTTPError(400, "truncated chunked body")
                    remaining -= len(chunk)
                    yield chunk
                self.rfile.readline()
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining:
                chunk = self.rfile.read(min(remaining, 1 << 20))
                if not chunk:
                    raise HubHTTPError(400, "truncated body")
                remaining -= len(chunk)
                yield chunk

    def _body(self) -> bytes:
        if self._cached_body is None:
            self._cached_body = b"".join(self._iter_body())
        return self._cached_body

    def _json_body(self) -> Any:
        raw = self._body()
        try:
            return json.loads(raw or b"{}")
        except json.JSONDecodeError:
            raise HubHTTPError(400, "request body is not valid JSON") from None

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Type", content_type)
        headers.setdefault("Content-Length", str(len(body)))
        headers.setdefault("X-Request-Id", self._request_id)
        for k, v in headers.items():
            self.send_header(k, _header_value(v))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        self._status = status

    def _json(self, obj: Any, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, err: HubHTTPError) -> None:
        headers = dict(err.headers)
        # Header values must be latin-1 and single-line; the JSON body keeps the full message.
        headers["X-Error-Message"] = err.message
        if err.code:
            headers["X-Error-Code"] = err.code
        self._json({"error": err.message}, err.status, headers)

    # -- auth

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
            raise _repo_not_found()
        if meta["private"] and not self.hub.can_write(user, repo_id):
            raise _repo_not_found(401 if user is None else 404)
        if write or pr:
            user = self._require_user()
            self._check_scope(repo_type, repo_id)
            if write and not self.hub.can_write(user, repo_id):
                ns = repo_id.split("/")[0]
                raise HubHTTPError(403, f"You don't have the rights to write to {repo_id}: user {user!r} is not "
                                        f"a member of namespace {ns!r}")
        return meta, user

    # -- dispatch

    def _dispatch(self, method: str) -> None:
        self._body_consumed = False
        self.scope: str | None = None  # set by _user() for a trusted-publishing token
        self._cached_body: bytes | None = None
        self._status = 0
        self._request_id = uuid.uuid4().hex[:16]
        split = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        # Split on '/' BEFORE unquoting: the client quotes revisions with safe="" (refs%2Fpr%2F1).
        self.segments = [unquote(s) for s in split.path.split("/")[1:]]
        kind = "unknown"
        try:
            if self.server.role == "cdn":
                kind, handler = "cdn", self._cdn
            else:
                kind, handler = self._route(method)
            self.hub._count(kind)
            fault = self.hub._take_fault(kind)
            if fault is not None:
                raise HubHTTPError(fault.status, fault.message)  # the body is drained below
            handler()
            for _ in self._iter_body():  # a handler that ignored the body must not desync keep-alive
                pass
        except HubHTTPError as err:
            try:
                for _ in self._iter_body():  # drain whatever the handler did not read
                    pass
            except Exception:  # noqa: BLE001 - the connection is closed below anyway
                self.close_connection = True
            self._error(err)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001 - a bug here must reach the client as a 500, not hang it
            log.error("hub server error on %s %s:\n%s", method, self.path, traceback.format_exc())
            self.close_connection = True
            try:
                self._error(HubHTTPError(500, f"internal server error: {exc}"))
            except OSError:
                pass
        finally:
            self.hub._record(method, split.path, kind, self._status)

    def _route(self, method: str):
        s = self.segments
        n = len(s)
        if s == ["oauth", "token"] and method == "POST":
            return "oauth_token", self._oauth_token
        if s[:1] == ["api"]:
            if s == ["api", "whoami-v2"] and method == "GET":
                return "whoami", self._whoami
            if s == ["api", "validate-yaml"] and method == "POST":
                return "validate_yaml", self._validate_yaml
            if s == ["api", "repos", "create"] and method == "POST":
                return "create_repo", self._create_repo
            if s == ["api", "repos", "delete"] and method == "DELETE":
                return "delete_repo", self._delete_repo
            if n == 3 and s[1] in PLURAL_TO_TYPE and method == "GET":
                raise _repo_not_found()  # a namespace-less (legacy) id: not hosted here
            if n >= 4 and s[1] in PLURAL_TO_TYPE:
                self.repo_type = PLURAL_TO_TYPE[s[1]]
                self.repo_id = self._check_id(s[2], s[3])
                rest = s[4:]
                return self._route_repo_api(method, rest)
        # /{datasets/}{ns}/{name}.git/info/lfs/objects/{batch,verify}
        off = 1 if s[:1] and s[0] in ("datasets", "spaces") else 0
        self.repo_type = PLURAL_TO_TYPE[s[0]] if off else "model"
        if n == off + 6 and s[off + 1].endswith(".git") and s[off + 2:off + 5] == ["info", "lfs", "objects"]:
            self.repo_id = self._check_id(s[off], s[off + 1][:-4])
            if s[off + 5] == "batch" and method == "POST":
                return "lfs_batch", self._lfs_batch
            if s[off + 5] == "verify" and method == "POST":
                return "lfs_verify", self._lfs_verify
        if s[:2] == ["_lfs", "upload"] and n == 6 and method == "PUT":
            self.repo_type = s[2]
            self.repo_id = self._check_id(s[3], s[4])
            self.oid = s[5]
            return "lfs_upload", self._lfs_upload
        if n >= off + 3 and s[off + 1] == "resolve" and s[off + 2] != "resolve":
            # A repository id without a namespace ("gpt2"): legacy ids are not hosted here.
            raise _repo_not_found()
        if n >= off + 5 and s[off + 2] == "resolve" and method in ("GET", "HEAD"):
            self.repo_id = self._check_id(s[off], s[off + 1])
            self.rev, rest = self._take_revision(s[off + 3:])
            self.file_path = "/".join(rest)
            return "resolve", self._resolve
        raise HubHTTPError(404, f"No route for {method} {urlsplit(self.path).path} on this test Hub")

    def _route_repo_api(self, method: str, rest: list[str]):
        head = rest[0] if rest else None
        if head is None and method == "GET":
            self.rev = None
            return "repo_info", self._repo_info
        if head == "revision" and method == "GET" and len(rest) >= 2:
            self.rev, _ = self._take_revision(rest[1:])
            return "repo_info", self._repo_info
        if head == "tree" and method == "GET" and len(rest) >= 2:
            self.rev, sub = self._take_revision(rest[1:])
            self.file_path = "/".join(sub).strip("/")
            return "tree", self._tree
        if head == "paths-info" and method == "POST" and len(rest) >= 2:
            self.rev, _ = self._take_revision(rest[1:])
            return "paths_info", self._paths_info
        if head == "preupload" and method == "POST" and len(rest) >= 2:
            self.rev, _ = self._take_revision(rest[1:])
            return "preupload", self._preupload
        if head == "commit" and method == "POST" and len(rest) >= 2:
            self.rev, _ = self._take_revision(rest[1:])
            return "commit", self._commit
        if head == "commits" and method == "GET":
            self.rev, _ = self._take_revision(rest[1:]) if len(rest) >= 2 else ("main", [])
            return "commits", self._commits
        if head == "refs" and method == "GET":
            return "refs", self._refs
        if head == "branch" and len(rest) >= 2 and method in ("POST", "DELETE"):
            self.ref_name = "/".join(rest[1:])
            return ("create_branch", self._create_branch) if method == "POST" else ("delete_branch", self._delete_branch)
        if head == "tag" and len(rest) >= 2 and method in ("POST", "DELETE"):
            self.rev, _ = self._take_revision(rest[1:])
            return ("create_tag", self._create_tag) if method == "POST" else ("delete_tag", self._delete_tag)
        if head == "settings" and method == "PUT":
            return "settings", self._settings
        if head and head.startswith("xet-"):
            # Without HF_HUB_DISABLE_XET=1 a client with hf_xet installed asks for Xet storage,
            # which this server does not speak: say so instead of a bare 404.
            raise HubHTTPError(501, "this test Hub speaks the LFS protocol only: set HF_HUB_DISABLE_XET=1 "
                                    "in the client's environment")
        raise HubHTTPError(404, f"No route for {method} /api/{self.repo_type}s/{self.repo_id}/{'/'.join(rest)}")

    @staticmethod
    def _take_revision(segs: list[str]) -> tuple[str, list[str]]:
        """The revision and the remaining segments. Quoted revisions arrive as one segment; an
        unquoted ``refs/pr/N`` or ``refs/heads/x`` (from hand-written URLs) spans three."""
        if len(segs) >= 3 and segs[0] == "refs" and segs[1] in ("pr", "heads", "tags", "convert"):
            return "/".join(segs[:3]), segs[3:]
        return segs[0], segs[1:]

    @staticmethod
    def _check_id(ns: str, name: str) -> str:
        if not (NAME_RE.match(ns) and NAME_RE.match(name)):
            raise HubHTTPError(400, f"Invalid repository id {ns}/{name}")
        return f"{ns}/{name}"

    def _repo_url(self, repo_type: str | None = None, repo_id: str | None = None) -> str:
        rt = repo_type or self.repo_type
        return f"{self.hub.url}/{URL_PREFIX[rt]}{repo_id or self.repo_id}"

    # -- account / cards

    def _whoami(self) -> None:
        user = self._require_user()
        orgs = [{"type": "org", "name": org, "roleInOrg": "write"} for org, members in self.hub.orgs.items()
                if user in members]
        self._json({"type": "user", "id": hashlib.sha1(user.encode()).hexdigest()[:24], "name": user,
                    "fullname": user, "email": None, "emailVerified": False, "isPro": False, "orgs": orgs,
                    "auth": {"type": "access_token", "accessToken": {"displayName": "test-token", "role": "write"}}})

    def _oauth_token(self) -> None:
        """RFC 8693 token exchange of a CI OIDC id token (trusted publishing, see hubsdd.testing.oidc)."""
        try:
            self._json(self.hub.trusted.exchange(self._json_body()))
        except ExchangeRefused as exc:
            self._json({"error": exc.error, "error_description": exc.description}, exc.status,
                       {"X-Error-Message": exc.description})

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

    # -- repositories

    def _create_repo(self) -> None:
        user = self._require_user()
        body = self._json_body()
        name, org = body.get("name"), body.get("organization") or user
        repo_type = body.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise HubHTTPError(400, f"Invalid repo type {repo_type!r}")
        repo_id = self._check_id(org, str(name))
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
        repo_id = self._check_id(body.get("organization") or user, str(body.get("name")))
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
        blobs = _truthy(self.query.get("blobs"))
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
        recursive = _truthy(self.query.get("recursive"))
        expand = _truthy(self.query.get("expand"))
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
            paths, expand = form.get("paths", []), _truthy((form.get("expand") or ["false"])[-1])
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

    # -- uploads

    def _lfs_patterns(self, files: dict[str, dict]) -> list[str]:
        attrs = files.get(".gitattributes")
        if attrs is None:
            return []
        out = []
        for line in self.storage.entry_bytes(attrs).decode("utf-8", "replace").splitlines():
            parts = line.split()
            if len(parts) >= 2 and not parts[0].startswith("#") and "filter=lfs" in parts[1:]:
                out.append(parts[0])
        return out

    @staticmethod
    def _matches(path: str, pattern: str) -> bool:
        if "/" not in pattern.rstrip("/"):
            return fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern)
        return fnmatch.fnmatchcase(path, pattern.replace("**/", "*"))

    def _preupload(self) -> None:
        create_pr = _truthy(self.query.get("create_pr"))
        self._repo(self.repo_type, self.repo_id, write=not create_pr, pr=create_pr)
        body = self._json_body()
        sha, files = self.storage.files_at(self.repo_type, self.repo_id, self.rev)
        patterns = self._lfs_patterns(files)
        ignore = [ln.strip() for ln in (body.get("gitIgnore") or "").splitlines()
                  if ln.strip() and not ln.startswith("#")]
        out = []
        for f in body.get("files") or []:
            path, size = f["path"], int(f.get("size") or 0)
            sample = base64.b64decode(f.get("sample") or "")
            lfs = size >= LFS_SIZE_THRESHOLD or b"\0" in sample or any(self._matches(path, p) for p in patterns)
            item: dict[str, Any] = {"path": path, "uploadMode": "lfs" if lfs else "regular",
                                    "shouldIgnore": any(self._matches(path, p) for p in ignore)}
            remote = files.get(path)
            if remote is not None:
                # What the client compares with its local oid: sha256 for LFS, the git blob sha1 otherwise.
                item["oid"] = remote["sha256"] if remote["type"] == "lfs" else remote["oid"]
            out.append(item)
        self._json({"files": out, "commitOid": sha})

    def _sign(self, *parts: str) -> str:
        return hmac.new(self.hub.secret, "\n".join(parts).encode(), hashlib.sha256).hexdigest()

    def _lfs_batch(self) -> None:
        body = self._json_body()
        operation = body.get("operation")
        if operation == "upload":
            self._repo(self.repo_type, self.repo_id, pr=True)
        else:
            self._repo(self.repo_type, self.repo_id)
        objects = []
        for obj in body.get("objects") or []:
            oid, size = str(obj.get("oid", "")), obj.get("size")
            if not SHA256_RE.match(oid) or not isinstance(size, int) or size < 0:
                objects.append({"oid": oid, "size": size if isinstance(size, int) else 0,
                                "error": {"code": 422, "message": "oid must be a sha256 hex digest and size an int"}})
                continue
            item: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            present = self.storage.repo_has_lfs(self.repo_type, self.repo_id, oid)
            if operation == "upload":
                if not present:  # no "actions" tells the client the object is already there
                    sig = self._sign(self.repo_type, self.repo_id, oid, str(size))
                    href = (f"{self.hub.url}/_lfs/upload/{self.repo_type}/{self.repo_id}/{oid}"
                            f"?size={size}&sig={sig}")
                    verify = f"{self._repo_url()}.git/info/lfs/objects/verify"
                    item["actions"] = {"upload": {"href": href}, "verify": {"href": verify, "header": {}}}
            else:
                if not present:
                    item["error"] = {"code": 404, "message": "Object does not exist"}
                else:
                    item["actions"] = {"download": {"href": self.hub._cdn_url(oid, os.path.basename(oid))}}
            objects.append(item)
        self._send(200, json.dumps({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}).encode(),
                   content_type="application/vnd.git-lfs+json")

    def _lfs_upload(self) -> None:
        """PUT of one LFS object to the URL the batch answer signed; the sha256 is checked here."""
        if self.repo_type not in REPO_TYPES or not SHA256_RE.match(self.oid):
            raise HubHTTPError(400, "bad upload URL")
        size = self.query.get("size", "")
        expected = self._sign(self.repo_type, self.repo_id, self.oid, size)
        if not hmac.compare_digest(expected, self.query.get("sig", "")):
            raise HubHTTPError(403, "invalid upload signature")
        if self.storage.repo_meta(self.repo_type, self.repo_id) is None:
            raise _repo_not_found()
        tmp = self.storage.tmp_file()
        h, n = hashlib.sha256(), 0
        try:
            with open(tmp, "wb") as fh:
                for chunk in self._iter_body():
                    h.update(chunk)
                    n += len(chunk)
                    fh.write(chunk)
            if h.hexdigest() != self.oid or str(n) != size:
                raise HubHTTPError(400, f"uploaded content does not match oid {self.oid} / size {size} "
                                        f"(got sha256 {h.hexdigest()}, {n} bytes)")
            with self.storage.lock:
                self.storage.install_lfs(tmp, self.oid)
                self.storage.add_repo_lfs(self.repo_type, self.repo_id, self.oid)
        finally:
            tmp.unlink(missing_ok=True)
        self._send(200, b"", {"ETag": f'"{self.oid}"'})

    def _lfs_verify(self) -> None:
        self._repo(self.repo_type, self.repo_id, pr=True)
        body = self._json_body()
        oid, size = str(body.get("oid", "")), body.get("size")
        if not SHA256_RE.match(oid) or not self.storage.repo_has_lfs(self.repo_type, self.repo_id, oid):
            raise HubHTTPError(404, f"LFS object {oid} not found")
        actual = self.storage.lfs_path(oid).stat().st_size
        if size is not None and int(size) != actual:
            raise HubHTTPError(422, f"LFS object {oid} has size {actual}, not {size}")
        self._json({"success": True})

    def _commit(self) -> None:
        create_pr = _truthy(self.query.get("create_pr"))
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
        if _truthy(self.query.get("include_prs")):
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
            self.storage._write_refs(self.repo_type, self.repo_id, refs)
        self._json({})

    def _delete_branch(self) -> None:
        self._repo(self.repo_type, self.repo_id, write=True)
        with self.storage.lock:
            refs = self.storage.read_refs(self.repo_type, self.repo_id)
            if self.ref_name not in refs["heads"]:
                raise _revision_not_found(self.ref_name)
            if self.ref_name == "main":
                raise HubHTTPError(403, "Cannot delete the default branch")
            del refs["heads"][self.ref_name]
            self.storage._write_refs(self.repo_type, self.repo_id, refs)
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
            self.storage._write_refs(self.repo_type, self.repo_id, refs)
        self._json({})

    def _delete_tag(self) -> None:
        self._repo(self.repo_type, self.repo_id, write=True)
        with self.storage.lock:
            refs = self.storage.read_refs(self.repo_type, self.repo_id)
            if self.rev not in refs["tags"]:
                raise _revision_not_found(self.rev)
            del refs["tags"][self.rev]
            self.storage._write_refs(self.repo_type, self.repo_id, refs)
        self._json({})

    # -- downloads

    def _resolve(self) -> None:
        """GET/HEAD a file at a revision. Regular files are served here; LFS files redirect to a
        signed URL on the CDN origin with the metadata headers on the redirect itself."""
        meta, user = self._repo(self.repo_type, self.repo_id)
        sha, files = self.storage.files_at(self.repo_type, self.repo_id, self.rev)
        entry = files.get(self.file_path)
        gated = meta.get("gated_users")
        if gated is not None and user not in gated and not self.hub.can_write(user, self.repo_id) \
                and self.file_path not in ("README.md", ".gitattributes", "config.json"):
            # As on the Hub: a gated repository's card and config are public, its weights are not.
            raise HubHTTPError(401 if user is None else 403,
                               f"Access to model {self.repo_id} is restricted. You must have access to it and be "
                               "authenticated to access it. Please log in.", code="GatedRepo")
        if entry is None:
            # X-Repo-Commit lets the client cache the non-existence for this commit.
            raise HubHTTPError(404, f"Entry not found: {self.file_path}", code="EntryNotFound",
                               headers={"X-Repo-Commit": sha})
        common = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes", "Access-Control-Expose-Headers": "*"}
        if entry["type"] == "lfs":
            location = self.hub._cdn_url(entry["sha256"], self.file_path.rsplit("/", 1)[-1])
            self._send(302, b"", {**common, "Location": location, "ETag": f'"{entry["oid"]}"',
                                  "X-Linked-Etag": f'"{entry["sha256"]}"', "X-Linked-Size": str(entry["size"])})
            return
        self._serve_file(self.storage.entry_path(entry), f'"{entry["oid"]}"', common)

    def _serve_file(self, path: Path, etag: str, headers: dict) -> None:
        size = path.stat().st_size
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
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
        self.send_response(status)
        for k, v in {**headers, "ETag": etag, "Content-Length": str(length),
                     "Content-Type": "application/octet-stream", "X-Request-Id": self._request_id}.items():
            self.send_header(k, v)
        self.end_headers()
        self._status = status
        if self.command == "HEAD" or not length:
            return
        with open(path, "rb") as fh:
            fh.seek(start)
            remaining = length
            while remaining:
                chunk = fh.read(min(remaining, 1 << 20))
                if not chunk:
                    break
                self.wfile.write(chunk)
                remaining -= len(chunk)

    def _cdn(self) -> None:
        """The CDN origin: signed, expiring URLs to LFS objects; no Authorization involved."""
        s = self.segments
        if self.command not in ("GET", "HEAD") or len(s) != 2 or s[0] != "lfs" or not SHA256_RE.match(s[1]):
            raise HubHTTPError(404, "not found")
        oid, exp = s[1], self.query.get("exp", "0")
        if not hmac.compare_digest(self._sign("cdn", oid, exp), self.query.get("sig", "")) or not exp.isdigit():
            raise HubHTTPError(403, "invalid signature")
        if int(exp) < time.time():
            raise HubHTTPError(403, "signed URL expired")
        path = self.storage.lfs_path(oid)
        if not path.exists():
            raise HubHTTPError(404, "object not found")
        name = self.query.get("filename") or oid
        self._serve_file(path, f'"{oid}"', {"Accept-Ranges": "bytes",
                                            "Content-Disposition": f'inline; filename="{name}"'})


# --------------------------------------------------------------------------- public API


class HubServer:
    """A Hub-compatible server on 127.0.0.1 (plus a second port acting as the LFS CDN).

    ``tokens`` maps bearer token -> user name; ``orgs`` maps an organization namespace to the users
    who may write to it. ``port=0`` picks a free port. Use as a context manager or call
    :meth:`start` / :meth:`stop`.
    """

    def __init__(self, storage_dir: Path, tokens: dict[str, str] | None = None, port: int = 0, *,
                 orgs: dict[str, list[str]] | None = None, cdn_port: int = 0,
                 tree_page_size: int = TREE_PAGE_SIZE) -> None:
        self.storage = HubStorage(Path(storage_dir))
        self.tokens = dict(tokens or {})
        self.orgs = {k: list(v) for k, v in (orgs or {}).items()}
        self.port = port
        self.cdn_port = cdn_port
        self.tree_page_size = tree_page_size
        self.secret = os.urandom(32)
        # trusted publishing: register publishers with trusted.add_publisher, mint id tokens with
        # trusted.mint_id_token (the audience is this server's URL once started)
        self.trusted = TrustedPublishing()
        self._servers: list[_Server] = []
        self._threads: list[threading.Thread] = []
        self._faults: dict[str, list[_Fault]] = collections.defaultdict(list)
        self._stats_lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()
        self.requests: list[tuple[str, str, str, int]] = []
        self.url = ""
        self.cdn_url = ""

    # -- lifecycle

    def start(self) -> str:
        """Bind both ports and serve in background threads; returns the base URL."""
        if self._servers:
            return self.url
        api = _Server(self, "api", self.port)
        cdn = _Server(self, "cdn", self.cdn_port)
        self._servers = [api, cdn]
        self.port, self.cdn_port = api.server_address[1], cdn.server_address[1]
        self.url = f"http://{HOST}:{self.port}"
        self.cdn_url = f"http://{HOST}:{self.cdn_port}"
        self.trusted.audience = self.url
        for srv in self._servers:
            t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                                 name=f"hub-server-{srv.role}", daemon=True)
            t.start()
            self._threads.append(t)
        return self.url

    def stop(self) -> None:
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()
        for t in self._threads:
            t.join(timeout=5)
        self._servers, self._threads = [], []

    def __enter__(self) -> "HubServer":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- permissions and bookkeeping

    def can_write(self, user: str | None, repo_id: str) -> bool:
        ns = repo_id.split("/")[0]
        return user is not None and (user == ns or user in self.orgs.get(ns, []))

    def _cdn_url(self, oid: str, filename: str) -> str:
        exp = str(int(time.time()) + SIGNED_URL_TTL)
        sig = hmac.new(self.secret, "\n".join(("cdn", oid, exp)).encode(), hashlib.sha256).hexdigest()
        return f"{self.cdn_url}/lfs/{oid}?exp={exp}&sig={sig}&filename={quote(filename)}"

    def _count(self, kind: str) -> None:
        with self._stats_lock:
            self.counts[kind] += 1

    def _record(self, method: str, path: str, kind: str, status: int) -> None:
        with self._stats_lock:
            self.requests.append((method, path, kind, status))

    def _take_fault(self, kind: str) -> _Fault | None:
        with self._stats_lock:
            queue = self._faults.get(kind)
            if not queue:
                return None
            fault = queue[0]
            if fault.skip > 0:
                fault.skip -= 1
                return None
            fault.remaining -= 1
            if fault.remaining <= 0:
                queue.pop(0)
            return fault

    def fail_next(self, kind: str, times: int = 1, status: int = 500, message: str = "injected fault",
                  after: int = 0) -> None:
        """Make ``times`` requests of ``kind`` fail with ``status`` (after their body is read), once
        ``after`` such requests have gone through normally.

        Kinds: commit, preupload, lfs_batch, lfs_upload, lfs_verify, resolve, cdn, repo_info, tree,
        paths_info, refs, commits, create_repo, create_tag, create_branch, validate_yaml, whoami.
        """
        with self._stats_lock:
            self._faults[kind].append(_Fault(status, message, times, after))

    def reset_counts(self) -> None:
        with self._stats_lock:
            self.counts.clear()
            self.requests.clear()

    # -- inspection (tests assert on what the server stored)

    def repo_exists(self, repo_id: str, repo_type: str = "model") -> bool:
        return self.storage.repo_meta(repo_type, repo_id) is not None

    def repo_info(self, repo_id: str, repo_type: str = "model") -> dict:
        meta = self.storage.repo_meta(repo_type, repo_id)
        if meta is None:
            raise KeyError(f"{repo_type} {repo_id} does not exist")
        return meta

    def commits(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[CommitRecord]:
        """Commits reachable from ``revision``, newest first, with parents, messages and trees."""
        sha, _, _ = self.storage.resolve(repo_type, repo_id, revision)
        return [CommitRecord(id=c["id"], parents=list(c["parents"]), title=c["title"], message=c["message"],
                             author=c["author"], date=c["date"], files=dict(c["files"]))
                for c in self.storage.history(repo_type, repo_id, sha)]

    def head(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> str:
        return self.storage.resolve(repo_type, repo_id, revision)[0]

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, dict]:
        """``path -> entry`` at a revision (entry: type regular/lfs, oid, size, sha256 for LFS)."""
        return dict(self.storage.files_at(repo_type, repo_id, revision)[1])

    def file_bytes(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> bytes:
        files = self.storage.files_at(repo_type, repo_id, revision)[1]
        if path not in files:
            raise KeyError(f"{path} is not in {repo_id}@{revision}")
        return self.storage.entry_bytes(files[path])

    def refs(self, repo_id: str, repo_type: str = "model") -> dict:
        """``{"branches": {name: sha}, "tags": {name: sha}, "prs": {num: {sha, base, title, status}}}``."""
        refs = self.storage.read_refs(repo_type, repo_id)
        return {"branches": dict(refs["heads"]), "tags": {k: v["sha"] for k, v in refs["tags"].items()},
                "prs": {int(k): dict(v) for k, v in refs["prs"].items()}}

    def create_repo(self, repo_id: str, *, owner: str | None = None, private: bool = False,
                    repo_type: str = "model", gated_users: list[str] | None = None) -> None:
        """Create a repository server-side (e.g. to stage a pre-existing repo in a test).
        ``gated_users``: make it gated, readable in full only by these users (and its owners)."""
        self.storage.create_repo(repo_type, repo_id, owner or repo_id.split("/")[0], private)
        if gated_users is not None:
            with self.storage.lock:
                meta = self.storage.repo_meta(repo_type, repo_id)
                meta["gated_users"] = list(gated_users)
                self.storage._write_meta(repo_type, repo_id, meta)

    def rewrite_file(self, repo_id: str, path: str, content: bytes, *, revision: str = "main",
                     repo_type: str = "model", message: str | None = None, author: str = "tamperer",
                     lfs: bool | None = None) -> str:
        """Replace (or add) one file in a new commit on ``revision`` without going through the API.

        Used to simulate a tampered or foreign file. The file stays LFS if it was LFS (or when
        ``lfs=True``). Returns the new commit sha.
        """
        files = self.storage.files_at(repo_type, repo_id, revision)[1]
        as_lfs = lfs if lfs is not None else (path in files and files[path]["type"] == "lfs")
        if as_lfs:
            oid = hashlib.sha256(content).hexdigest()
            tmp = self.storage.tmp_file()
            tmp.write_bytes(content)
            with self.storage.lock:
                self.storage.install_lfs(tmp, oid)
                self.storage.add_repo_lfs(repo_type, repo_id, oid)
            op = {"key": "lfsFile", "path": path, "oid": oid}
        else:
            op = {"key": "file", "path": path, "content": content}
        sha, _ = self.storage.commit(repo_type, repo_id, revision, [op], title=message or f"Update {path}",
                                     message="", author=author)
        return sha


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hubsdd.testing.hub_server",
                                     description="A Hub-compatible server on 127.0.0.1 for offline demos and tests.")
    parser.add_argument("--storage", required=True, type=Path, help="folder holding the repositories")
    parser.add_argument("--port", type=int, default=0, help="API port (0: a free one)")
    parser.add_argument("--cdn-port", type=int, default=0, help="port serving LFS downloads (0: a free one)")
    parser.add_argument("--token", action="append", default=[], metavar="TOKEN:USER",
                        help="accept this bearer token as USER (repeatable)")
    parser.add_argument("--org", action="append", default=[], metavar="ORG:USER[,USER]",
                        help="let these users write to the ORG namespace (repeatable)")
    parser.add_argument("--ready-file", type=Path, help="write the base URL here once listening")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    tokens, orgs = {}, {}
    for spec in args.token:
        token, sep, user = spec.rpartition(":")
        if not sep or not token or not user:
            parser.error(f"--token expects TOKEN:USER, got {spec!r}")
        tokens[token] = user
    for spec in args.org:
        org, sep, users = spec.partition(":")
        if not sep or not org:
            parser.error(f"--org expects ORG:USER[,USER], got {spec!r}")
        orgs[org] = [u for u in users.split(",") if u]
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(message)s")
    server = HubServer(args.storage, tokens, args.port, orgs=orgs, cdn_port=args.cdn_port)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    url = server.start()
    print(url, flush=True)
    if args.ready_file:
        args.ready_file.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(args.ready_file, (url + "\n").encode())  # atomic: a waiting script never reads half
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
        if args.ready_file:
            args.ready_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
