"""The routing table: which method and path go to which handler, under which request *kind*.

One row per route: ``Route(methods, pattern, kind, handler)``. A pattern is the path's segments
(split on ``/`` before unquoting, so a quoted ``refs%2Fpr%2F1`` stays one segment):

* a literal segment (``api``), or a prefix ending in ``*`` (``xet-*``);
* ``{type}``: ``models``, ``datasets`` or ``spaces`` (sets the repository type); ``{prefix}``:
  ``datasets`` or ``spaces`` before a repository id outside ``/api`` (none means a model);
  ``{rawtype}``: the type as the LFS upload URL spells it (``model``);
* ``{ns}`` and ``{name}`` (or ``{name}.git``): the repository id, checked;
* ``{rev}``: a revision, one segment or an unquoted ``refs/pr/N`` / ``refs/heads/x`` (three);
* ``{oid}``: one segment; ``{path*}`` / ``{ref*}`` / ``{rest*}``: the remaining segments (``+``: at
  least one).

The kind names the route in the request counters (:attr:`HubServer.counts`) and is what fault
injection targets (:meth:`HubServer.fail_next`). Handlers are plain functions of the request
(:mod:`.auth`, :mod:`.repos`, :mod:`.lfs`, :mod:`.commits`, :mod:`.files`); the request object
(:class:`.plumbing.RequestPlumbing`) carries the HTTP plumbing and what the match set. The first
matching row wins. This table replaced two nested if-chains (``_route``/``_route_repo_api``) and a
ring of nine mixin classes; werkzeug's ``routing.Map`` would have needed a converter for
revisions that span segments and a new dependency, for no fewer lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlsplit

from ..protocol import PLURAL_TO_TYPE, HubHTTPError, check_repo_id, repo_not_found
from . import auth, commits, files, lfs, repos
from .plumbing import RequestPlumbing

REF_KINDS = ("pr", "heads", "tags", "convert")
READ = ("GET", "HEAD")


def _not_hosted(req: RequestPlumbing) -> None:
    """A repository id without a namespace (a legacy id such as ``gpt2``): not hosted here."""
    raise repo_not_found()


def _no_xet(req: RequestPlumbing) -> None:
    # Without HF_HUB_DISABLE_XET=1 a client with hf_xet installed asks for Xet storage, which this
    # server does not speak: say so instead of a bare 404.
    raise HubHTTPError(501, "this test Hub speaks the LFS protocol only: set HF_HUB_DISABLE_XET=1 in the client's "
                            "environment")


@dataclass(frozen=True)
class Route:
    methods: tuple[str, ...]  # empty: any method
    pattern: str
    kind: str
    handler: Callable[[RequestPlumbing], None]
    defaults: dict[str, Any] = field(default_factory=dict)

    def match(self, method: str, segments: list[str]) -> dict[str, Any] | None:
        if self.methods and method not in self.methods:
            return None
        params: dict[str, Any] = dict(self.defaults)
        i = 0
        for token in self.pattern.split("/"):
            if token.endswith(("*}", "+}")):
                rest = segments[i:]
                if token.endswith("+}") and not rest:
                    return None
                params[token[1:-2]] = rest
                return params
            if i >= len(segments):
                return None
            seg = segments[i]
            if token == "{rev}":
                if len(segments) - i >= 3 and seg == "refs" and segments[i + 1] in REF_KINDS:
                    params["rev"], i = "/".join(segments[i:i + 3]), i + 3
                else:
                    params["rev"], i = seg, i + 1
                continue
            if token == "{type}":
                if seg not in PLURAL_TO_TYPE:
                    return None
                params["repo_type"] = PLURAL_TO_TYPE[seg]
            elif token == "{prefix}":
                if seg not in ("datasets", "spaces"):
                    return None
                params["repo_type"] = PLURAL_TO_TYPE[seg]
            elif token == "{name}.git":
                if not seg.endswith(".git"):
                    return None
                params["name"] = seg[:-4]
            elif token.startswith("{"):
                params[token[1:-1]] = seg
            elif token.endswith("*"):
                if not seg.startswith(token[:-1]):
                    return None
            elif seg != token:
                return None
            i += 1
        return params if i == len(segments) else None


REPO_API = "api/{type}/{ns}/{name}"

ROUTES: tuple[Route, ...] = (
    Route(("POST",), "oauth/token", "oauth_token", auth.oauth_token),
    Route(("GET",), "api/whoami-v2", "whoami", auth.whoami),
    Route(("POST",), "api/validate-yaml", "validate_yaml", repos.validate_yaml),
    Route(("POST",), "api/repos/create", "create_repo", repos.create_repo),
    Route(("DELETE",), "api/repos/delete", "delete_repo", repos.delete_repo),
    Route(("GET",), "api/{type}/{legacy}", "unknown", _not_hosted),
    Route(("GET",), REPO_API, "repo_info", repos.repo_info, {"rev": None}),
    Route(("GET",), f"{REPO_API}/revision/{{rev}}/{{rest*}}", "repo_info", repos.repo_info),
    Route(("GET",), f"{REPO_API}/tree/{{rev}}/{{path*}}", "tree", repos.tree),
    Route(("POST",), f"{REPO_API}/paths-info/{{rev}}/{{rest*}}", "paths_info", repos.paths_info),
    Route(("POST",), f"{REPO_API}/preupload/{{rev}}/{{rest*}}", "preupload", lfs.preupload),
    Route(("POST",), f"{REPO_API}/commit/{{rev}}/{{rest*}}", "commit", commits.commit),
    Route(("GET",), f"{REPO_API}/commits", "commits", commits.commits, {"rev": "main"}),
    Route(("GET",), f"{REPO_API}/commits/{{rev}}/{{rest*}}", "commits", commits.commits),
    Route(("GET",), f"{REPO_API}/refs/{{rest*}}", "refs", commits.refs),
    Route(("POST",), f"{REPO_API}/branch/{{ref+}}", "create_branch", commits.create_branch),
    Route(("DELETE",), f"{REPO_API}/branch/{{ref+}}", "delete_branch", commits.delete_branch),
    Route(("POST",), f"{REPO_API}/tag/{{rev}}/{{rest*}}", "create_tag", commits.create_tag),
    Route(("DELETE",), f"{REPO_API}/tag/{{rev}}/{{rest*}}", "delete_tag", commits.delete_tag),
    Route(("PUT",), f"{REPO_API}/settings/{{rest*}}", "settings", repos.settings),
    Route((), f"{REPO_API}/xet-*/{{rest*}}", "unknown", _no_xet),
    Route(("POST",), "{prefix}/{ns}/{name}.git/info/lfs/objects/batch", "lfs_batch", lfs.lfs_batch),
    Route(("POST",), "{ns}/{name}.git/info/lfs/objects/batch", "lfs_batch", lfs.lfs_batch, {"repo_type": "model"}),
    Route(("POST",), "{prefix}/{ns}/{name}.git/info/lfs/objects/verify", "lfs_verify", lfs.lfs_verify),
    Route(("POST",), "{ns}/{name}.git/info/lfs/objects/verify", "lfs_verify", lfs.lfs_verify, {"repo_type": "model"}),
    Route(("PUT",), "_lfs/upload/{rawtype}/{ns}/{name}/{oid}", "lfs_upload", lfs.lfs_upload),
    Route(READ, "{prefix}/{ns}/{name}/resolve/{rev}/{path+}", "resolve", files.resolve),
    Route(READ, "{ns}/{name}/resolve/{rev}/{path+}", "resolve", files.resolve, {"repo_type": "model"}),
    Route((), "{prefix}/{legacy}/resolve/{rest+}", "unknown", _not_hosted),
    Route((), "{legacy}/resolve/{rest+}", "unknown", _not_hosted),
)


def route(method: str, segments: list[str]) -> tuple[Route, dict[str, Any]] | None:
    """The first row of :data:`ROUTES` matching, with what it matched."""
    for row in ROUTES:
        params = row.match(method, segments)
        if params is not None:
            return row, params
    return None


class HubRequestHandler(RequestPlumbing):
    """The handler both listening ports use: the CDN port serves only :func:`.files.cdn`."""

    def _route(self, method: str) -> tuple[str, Callable[[], None]]:
        found = route(method, self.segments)
        if found is None:
            raise HubHTTPError(404, f"No route for {method} {urlsplit(self.path).path} on this test Hub")
        row, params = found
        if row.kind == "unknown":  # an answer, not a route: raised here, as no route is counted
            row.handler(self)
        if "rawtype" in params:
            self.repo_type = params["rawtype"]
        elif "repo_type" in params:
            self.repo_type = params["repo_type"]
        if "ns" in params:
            self.repo_id = check_repo_id(params["ns"], params["name"])
        if "rev" in params:
            self.rev = params["rev"]
        if "path" in params:
            self.file_path = "/".join(params["path"]).strip("/") if row.kind == "tree" else "/".join(params["path"])
        if "ref" in params:
            self.ref_name = "/".join(params["ref"])
        if "oid" in params:
            self.oid = params["oid"]
        return row.kind, lambda: row.handler(self)

    def _cdn(self) -> None:
        files.cdn(self)
