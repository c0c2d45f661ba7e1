"""The routing table: which URL and method go to which route, under which request *kind*.

The kind names the route in the request counters (:attr:`HubServer.counts`) and is what fault
injection targets (:meth:`HubServer.fail_next`). Each concern's routes live in their own module
(:mod:`.auth`, :mod:`.repos`, :mod:`.lfs`, :mod:`.commits`, :mod:`.files`); this class composes them.
"""

from __future__ import annotations

from typing import Callable
from urllib.parse import urlsplit

from ..protocol import PLURAL_TO_TYPE, HubHTTPError, check_repo_id, repo_not_found
from .commits import CommitRoutes
from .files import FileRoutes
from .lfs import LfsRoutes


class HubRequestHandler(CommitRoutes, LfsRoutes, FileRoutes):
    """The handler both listening ports use (the CDN port serves only :meth:`_cdn`)."""

    def _route(self, method: str) -> tuple[str, Callable[[], None]]:
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
                raise repo_not_found()  # a namespace-less (legacy) id: not hosted here
            if n >= 4 and s[1] in PLURAL_TO_TYPE:
                self.repo_type = PLURAL_TO_TYPE[s[1]]
                self.repo_id = check_repo_id(s[2], s[3])
                rest = s[4:]
                return self._route_repo_api(method, rest)
        # /{datasets/}{ns}/{name}.git/info/lfs/objects/{batch,verify}
        off = 1 if s[:1] and s[0] in ("datasets", "spaces") else 0
        self.repo_type = PLURAL_TO_TYPE[s[0]] if off else "model"
        if n == off + 6 and s[off + 1].endswith(".git") and s[off + 2:off + 5] == ["info", "lfs", "objects"]:
            self.repo_id = check_repo_id(s[off], s[off + 1][:-4])
            if s[off + 5] == "batch" and method == "POST":
                return "lfs_batch", self._lfs_batch
            if s[off + 5] == "verify" and method == "POST":
                return "lfs_verify", self._lfs_verify
        if s[:2] == ["_lfs", "upload"] and n == 6 and method == "PUT":
            self.repo_type = s[2]
            self.repo_id = check_repo_id(s[3], s[4])
            self.oid = s[5]
            return "lfs_upload", self._lfs_upload
        if n >= off + 3 and s[off + 1] == "resolve" and s[off + 2] != "resolve":
            # A repository id without a namespace ("gpt2"): legacy ids are not hosted here.
            raise repo_not_found()
        if n >= off + 5 and s[off + 2] == "resolve" and method in ("GET", "HEAD"):
            self.repo_id = check_repo_id(s[off], s[off + 1])
            self.rev, rest = self._take_revision(s[off + 3:])
            self.file_path = "/".join(rest)
            return "resolve", self._resolve
        raise HubHTTPError(404, f"No route for {method} {urlsplit(self.path).path} on this test Hub")

    def _route_repo_api(self, method: str, rest: list[str]) -> tuple[str, Callable[[], None]]:
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
