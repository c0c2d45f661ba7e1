"""The test Hub as a Python object: start/stop, inspection of what it stored, fault injection.

:class:`HubServer` binds 127.0.0.1 only, on two ports: the Hub API and a second origin standing in
for the CDN that serves LFS downloads. Tests assert on what the server stored
(:meth:`~HubServer.commits`, :meth:`~HubServer.files`, :meth:`~HubServer.file_bytes`,
:meth:`~HubServer.refs`), stage server-side state (:meth:`~HubServer.create_repo`,
:meth:`~HubServer.rewrite_file`), inject faults (:meth:`~HubServer.fail_next`) and count requests
(:attr:`~HubServer.counts`).
"""

from __future__ import annotations

import collections
import hashlib
import os
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .faults import Fault, FaultQueue
from .oidc import TrustedPublishing
from .protocol import HOST, SIGNED_URL_TTL, TREE_PAGE_SIZE, sign
from .routes import HubRequestHandler
from .storage import CommitRecord, HubStorage


class HubHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, hub: "HubServer", role: str, port: int) -> None:
        self.hub = hub
        self.role = role  # "api" (the Hub) or "cdn" (signed LFS downloads on another origin)
        super().__init__((HOST, port), HubRequestHandler)


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
        self._servers: list[HubHTTPServer] = []
        self._threads: list[threading.Thread] = []
        self.faults = FaultQueue()
        self._stopping = threading.Event()  # cuts injected waits short when the server stops
        self._idle = threading.Condition()
        self._in_flight = 0
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
        api = HubHTTPServer(self, "api", self.port)
        cdn = HubHTTPServer(self, "cdn", self.cdn_port)
        self._servers = [api, cdn]
        self.port, self.cdn_port = api.server_address[1], cdn.server_address[1]
        self.url = f"http://{HOST}:{self.port}"
        self.cdn_url = f"http://{HOST}:{self.cdn_port}"
        self.trusted.audience = self.url
        self._stopping.clear()
        for srv in self._servers:
            t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                                 name=f"hub-server-{srv.role}", daemon=True)
            t.start()
            self._threads.append(t)
        return self.url

    def stop(self) -> None:
        self._stopping.set()
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

    def sign(self, *parts: str) -> str:
        return sign(self.secret, *parts)

    def signed_cdn_url(self, oid: str, filename: str) -> str:
        """A download URL for an LFS object on the CDN origin, valid for SIGNED_URL_TTL seconds."""
        exp = str(int(time.time()) + SIGNED_URL_TTL)
        return f"{self.cdn_url}/lfs/{oid}?exp={exp}&sig={self.sign('cdn', oid, exp)}&filename={quote(filename)}"

    def _count(self, kind: str) -> None:
        with self._stats_lock:
            self.counts[kind] += 1

    def _record(self, method: str, path: str, kind: str, status: int) -> None:
        with self._stats_lock:
            self.requests.append((method, path, kind, status))

    def _enter(self) -> None:
        with self._idle:
            self._in_flight += 1

    def _leave(self) -> None:
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until no request is being handled (a request the client gave up on may still be
        running, e.g. a slow commit); False if that did not happen within ``timeout`` seconds."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    # -- fault injection (see hubsdd.testing.hub.faults for the behaviours and moments)

    def fail_next(self, kind: str, times: int = 1, status: int = 500, message: str = "injected fault",
                  after: int = 0, *, retry_after: int | None = None, when: str = "before") -> None:
        """Make ``times`` requests of ``kind`` answer ``status`` (with ``Retry-After: retry_after``
        if given), once ``after`` such requests have gone through normally. ``when="before"``: the
        request never takes effect; ``"after"``: it does, and its answer is replaced by the error.

        Kinds (:data:`~hubsdd.testing.hub.faults.KINDS`): commit, preupload, lfs_batch, lfs_upload,
        lfs_verify, resolve, cdn, repo_info, tree, paths_info, refs, commits, create_repo,
        create_tag, create_branch, validate_yaml, whoami, ...
        """
        self.faults.add(kind, Fault(status, message, times, after, retry_after=retry_after, when=when))

    def drop_next(self, kind: str, times: int = 1, after: int = 0, *, when: str = "mid_body",
                  at_byte: int | None = None) -> None:
        """Cut the connection of ``times`` requests of ``kind`` without an answer. ``mid_body``:
        after ``at_byte`` bytes of the request body (default half), so nothing takes effect;
        ``"after"``: once the request took effect (the answer is lost)."""
        self.faults.add(kind, Fault(remaining=times, skip=after, behaviour="drop", when=when, at_byte=at_byte))

    def slow_next(self, kind: str, seconds: float, times: int = 1, after: int = 0, *, when: str = "before") -> None:
        """Make ``times`` requests of ``kind`` take ``seconds`` longer: ``"before"`` the server
        handles them (they still take effect if the client gave up) or ``"after"``, holding the
        answer back. :meth:`wait_idle` waits for such a request to finish."""
        self.faults.add(kind, Fault(remaining=times, skip=after, behaviour="slow", when=when, seconds=seconds))

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
                self.storage.write_meta(repo_type, repo_id, meta)

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
