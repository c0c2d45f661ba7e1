"""Publish a release to the Hub: one commit per repository, nothing half-done.

* card metadata is checked locally *and* by the Hub's ``/api/validate-yaml`` before any upload;
* exactly one commit per repository (``create_commit`` with every file plus the deletions), as a pull
  request with ``create_pr``; nothing is committed when the target already holds exactly these files,
  so a rerun after an interrupted upload does not duplicate a commit, and LFS objects already on the
  Hub are not sent again (the client's preupload/LFS batch exchange skips them);
* files hubsdd did not create are never deleted, and a repository holding such files is refused
  unless ``create_pr`` or ``overwrite``;
* the token comes from the argument, ``huggingface_hub.get_token()`` or trusted publishing, and is
  never logged, written or put in an error message.
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core import progress
from ..core.version import __version__
from ..core.errors import AuthError, HubError, RepoConflictError
from ..core.files import git_blob_sha1
from ..core.hub_errors import endpoint, hub_errors
from .auth import repo_tokens
from .release import Release, ReleaseFile, prepare_release, repo_url, validate_remote
from .signing import PUBLIC_KEY_FILE, SIGNATURE_FILE, resolve_signer, sign_release

log = logging.getLogger("hubsdd.hub")

# Files every hubsdd release writes besides those listed in the card (and the Hub's own .gitattributes).
ALWAYS_OWNED = ("README.md", "recipe.yaml", ".gitattributes", SIGNATURE_FILE, PUBLIC_KEY_FILE)
FULL_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.\-]{0,95}/[A-Za-z0-9][\w.\-]{0,95}$")


def release_tag(run_fingerprint: str) -> str:
    """The tag a published model commit gets: ``hubsdd-<first 12 hex of the run fingerprint>``."""
    return f"hubsdd-{run_fingerprint[:12]}"


@dataclass
class RepoResult:
    """What happened (or, in a dry run, would happen) to one repository."""

    repo_id: str
    repo_type: str
    url: str
    revision: str
    files: list[tuple[str, int]]
    card_text: str
    create_pr: bool = False
    private: bool = False
    commit_sha: str | None = None
    commit_url: str | None = None
    pr_url: str | None = None
    pr_ref: str | None = None
    skipped: bool = False  # the Hub already held exactly these files: no commit was made
    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)  # files on the Hub hubsdd did not create (left alone)
    tag: str | None = None


@dataclass
class PublishResult:
    """The outcome of :func:`publish`: one :class:`RepoResult` per repository."""

    dry_run: bool
    endpoint: str
    model: RepoResult
    dataset: RepoResult | None = None
    run_fingerprint: str | None = None

    @property
    def repos(self) -> list[RepoResult]:
        return [r for r in (self.dataset, self.model) if r is not None]

    @property
    def skipped(self) -> bool:
        """True when no repository needed a commit."""
        return all(r.skipped for r in self.repos)


def _same(local: ReleaseFile, remote: Any) -> bool:
    """Whether a remote RepoFile holds the local file's bytes (LFS sha256, or git blob sha1)."""
    if remote is None or remote.size != local.size:
        return False
    if remote.lfs is not None:
        return remote.lfs.sha256 == local.sha256
    return remote.blob_id == git_blob_sha1(local.read())


def _remote_files(api: Any, repo_id: str, repo_type: str, sha: str) -> dict[str, Any]:
    from huggingface_hub.hf_api import RepoFile

    return {f.path: f for f in api.list_repo_tree(repo_id, recursive=True, revision=sha, repo_type=repo_type)
            if isinstance(f, RepoFile)}


def _remote_release(api: Any, repo_id: str, repo_type: str, sha: str, remote: dict) -> set[str] | None:
    """The files the hubsdd release currently on the Hub created, or None if it is not one."""
    if "README.md" not in remote:
        return None
    from huggingface_hub import RepoCard

    path = api.hf_hub_download(repo_id, "README.md", repo_type=repo_type, revision=sha)
    try:
        block = RepoCard.load(path, ignore_metadata_errors=True).data.to_dict().get("hubsdd")
    except Exception:  # noqa: BLE001 - a foreign, unreadable card simply is not ours
        return None
    if not isinstance(block, dict) or not isinstance(block.get("files"), dict):
        return None
    signed = {SIGNATURE_FILE, PUBLIC_KEY_FILE} if isinstance(block.get("signature"), dict) else set()
    return {str(p) for p in block["files"]} | {"README.md", "recipe.yaml"} | signed


def _same_or_resigned(path: str, local: ReleaseFile, remote: dict[str, Any]) -> bool:
    """A signature is made afresh at every publish (ECDSA is randomised; Sigstore adds a log entry):
    a release whose other files, card (naming the signer) and public key are on the Hub unchanged
    keeps the signature already there."""
    return _same(local, remote.get(path)) or (path == SIGNATURE_FILE and path in remote)


def _matches(local: dict[str, ReleaseFile], remote: dict[str, Any], stale: list[str]) -> bool:
    return not stale and all(_same_or_resigned(p, f, remote) for p, f in local.items())


@dataclass
class _Plan:
    """What one repository needs, worked out before anything is written to either repository."""

    release: Release
    result: RepoResult
    exists: bool
    branch_exists: bool
    head: str | None
    previous: set[str] | None


def _plan_repo(api: Any, release: Release, repo_id: str, *, private: bool, create_pr: bool,
               revision: str | None, overwrite: bool) -> _Plan:
    """Read the repository's current state and decide: conflict, nothing to do, or which commit.

    Nothing is written here, so a conflict in the model repository is found before the dataset
    repository receives anything."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    kind = release.kind
    branch = revision or "main"
    result = RepoResult(repo_id=repo_id, repo_type=kind, url=repo_url(repo_id, kind), revision=branch,
                        files=[(f.path, f.size) for f in release.files], card_text=release.card_text,
                        create_pr=create_pr, private=private)
    local = release.by_path
    with hub_errors(f"reading {kind} repository {repo_id}", repo_id):
        try:
            api.repo_info(repo_id, repo_type=kind)
        except RepositoryNotFoundError:
            # Created empty at apply time; with create_pr the release is then proposed against its
            # empty main branch, which stays untouched as --pr promises.
            result.changed = sorted(local)
            return _Plan(release, result, exists=False, branch_exists=False, head=None, previous=None)
        try:
            head = api.repo_info(repo_id, repo_type=kind, revision=branch).sha
            branch_exists = True
        except RevisionNotFoundError:
            if create_pr:
                raise HubError(f"{repo_id} has no revision {branch!r} to open a pull request against",
                               fix="pass an existing branch with --revision") from None
            head = api.repo_info(repo_id, repo_type=kind).sha  # the new branch starts from main
            branch_exists = False

        remote = _remote_files(api, repo_id, kind, head)
        previous = _remote_release(api, repo_id, kind, head, remote)
        owned = (previous or set()) | set(ALWAYS_OWNED)
        result.foreign = sorted(set(remote) - owned)
        if result.foreign and not (create_pr or overwrite):
            shown = ", ".join(result.foreign[:8]) + (" ..." if len(result.foreign) > 8 else "")
            raise RepoConflictError(
                f"{kind} repository {repo_id}@{branch} holds {len(result.foreign)} file(s) hubsdd did not create: "
                f"{shown}",
                fix="publish as a pull request with `--pr`, choose another repository, or pass `--overwrite` to "
                    "add the release beside them (hubsdd never deletes files it did not create)")
        # Only files a previous hubsdd release created are deleted, and never .gitattributes.
        result.deleted = sorted(p for p in (previous or set()) if p in remote and p not in local
                                and p not in (".gitattributes", "README.md"))
        result.changed = sorted(p for p, f in local.items() if not _same_or_resigned(p, f, remote))
        if branch_exists and _matches(local, remote, result.deleted):
            log.info("%s already holds this release at %s: no commit", repo_id, head[:12])
            result.skipped, result.commit_sha = True, head
            result.commit_url = f"{result.url}/commit/{head}"
        elif create_pr:
            existing = _matching_pr(api, repo_id, kind, local, previous)
            if existing is not None:
                ref, sha = existing
                log.info("%s already has %s with this release: no new pull request", repo_id, ref)
                result.skipped, result.commit_sha, result.pr_ref = True, sha, ref
                result.pr_url = f"{result.url}/discussions/{ref.rsplit('/', 1)[-1]}"
                result.commit_url = f"{result.url}/commit/{sha}"
    return _Plan(release, result, exists=True, branch_exists=branch_exists, head=head, previous=previous)


def _apply_plan(api: Any, plan: _Plan, *, commit_message: str, commit_description: str) -> RepoResult:
    """Create what is missing and make the one commit (unless the plan says there is nothing to do)."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    result, release = plan.result, plan.release
    if result.skipped:
        return result
    repo_id, kind, branch = result.repo_id, result.repo_type, result.revision
    with hub_errors(f"publishing to {kind} repository {repo_id}", repo_id):
        head = plan.head
        if not plan.exists:
            api.create_repo(repo_id, repo_type=kind, private=result.private, exist_ok=True)
        if not plan.branch_exists and branch != "main":
            api.create_branch(repo_id, repo_type=kind, branch=branch, revision=head, exist_ok=True)
        if head is None or not plan.branch_exists:
            head = api.repo_info(repo_id, repo_type=kind, revision=branch).sha
        readers = [_CountingReader(f.local) if f.data is None else None for f in release.files]
        try:
            ops: list[Any] = [CommitOperationAdd(path_in_repo=f.path, path_or_fileobj=f.data if r is None else r)
                              for f, r in zip(release.files, readers)]
            ops += [CommitOperationDelete(path_in_repo=p) for p in result.deleted]
            total = sum(f.size for f, r in zip(release.files, readers) if r is not None)
            with progress.task(f"uploading {repo_id}", total=total, unit="byte") as bar:
                for r in readers:
                    if r is not None:  # hashed already (above); count from here on what is sent
                        r.on_read = bar.advance
                # parent_commit: if someone pushed since we looked, fail instead of committing over their work.
                info = api.create_commit(repo_id, operations=ops, commit_message=commit_message,
                                         commit_description=commit_description, repo_type=kind, revision=branch,
                                         create_pr=result.create_pr, parent_commit=None if result.create_pr else head)
        finally:
            for r in readers:
                if r is not None:
                    r.close()
        result.commit_sha, result.commit_url = info.oid, info.commit_url
        result.pr_url, result.pr_ref = info.pr_url, info.pr_revision
    return result


class _CountingReader(io.BufferedIOBase):
    """A release file as huggingface_hub reads it for upload, reporting the bytes read (the client
    hashes every file first, then sends what the Hub lacks: counting starts once ``on_read`` is set)."""

    def __init__(self, path: Path | None) -> None:
        super().__init__()
        self._file = open(path, "rb")  # noqa: SIM115 - closed by _apply_plan
        self.on_read: Any = None

    def read(self, size: int | None = -1) -> bytes:
        data = self._file.read(-1 if size is None else size)
        if self.on_read is not None and data:
            self.on_read(len(data))
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        self._file.close()
        super().close()


def _matching_pr(api: Any, repo_id: str, kind: str, local: dict[str, ReleaseFile],
                 previous: set[str] | None, limit: int = 20) -> tuple[str, str] | None:
    """A pull request whose head already holds exactly this release (a rerun after a lost answer)."""
    refs = api.list_repo_refs(repo_id, repo_type=kind, include_pull_requests=True)
    for ref in list(reversed(refs.pull_requests or []))[:limit]:
        remote = _remote_files(api, repo_id, kind, ref.target_commit)
        stale = [p for p in (previous or set()) if p in remote and p not in local
                 and p not in (".gitattributes", "README.md")]
        if _matches(local, remote, stale):
            return ref.ref, ref.target_commit
    return None


def _tag(api: Any, result: RepoResult, name: str, fingerprint: str | None) -> None:
    """Tag the release commit; an existing tag is left where it is (tags do not move)."""
    with hub_errors(f"tagging {result.repo_id}", result.repo_id):
        refs = api.list_repo_refs(result.repo_id, repo_type=result.repo_type)
        current = {t.name: t.target_commit for t in refs.tags}
        if name in current:
            if current[name] != result.commit_sha:
                log.warning("tag %s already exists on %s at %s; left unchanged", name, result.repo_id,
                            current[name][:12])
        else:
            api.create_tag(result.repo_id, tag=name, revision=result.commit_sha, repo_type=result.repo_type,
                           tag_message=f"hubsdd release, run fingerprint {fingerprint}", exist_ok=True)
    result.tag = name


def publish(model_dir: Path, dataset_dir: Path | None = None, *, model_repo: str, dataset_repo: str | None = None,
            private: bool = False, create_pr: bool = False, revision: str | None = None, dry_run: bool = False,
            overwrite: bool = False, tag: str | None = None, commit_message: str | None = None,
            token: str | None = None, signing: Any = None, signing_key: Path | None = None) -> PublishResult:
    """Push a release (model folder, optional dataset folder) to the Hub: one commit per repository.

    ``tag``: the tag put on the model commit; default ``hubsdd-<first 12 hex of run_fingerprint>``,
    ``""`` for none; never in ``create_pr`` mode. ``revision``: the branch to commit to (created
    from main if missing) or, with ``create_pr``, the branch the pull request targets.
    ``dry_run`` sends nothing and returns the files and rendered cards (unsigned).
    ``signing``: a ``publish.signing`` section; ``signing_key``: a PEM EC private key's path (signs with
    it whatever the section says). The signer is checked before anything is sent, and the signature
    (``model.sig``) goes into the model repository's one commit (see :mod:`hubsdd.hub.signing`).
    """
    for value, name in ((model_repo, "model_repo"), (dataset_repo, "dataset_repo")):
        if value is not None and not FULL_REPO_ID_RE.match(value):
            raise HubError(f"{name}: {value!r} is not a Hub repository id", fix="use 'namespace/name'")
    if (dataset_dir is None) != (dataset_repo is None):
        raise HubError("give both a dataset folder and a dataset repository, or neither",
                       fix="set the recipe's dataset repository, or publish the model alone")
    model = prepare_release(Path(model_dir), "model")
    fingerprint = str(model.meta["hubsdd"].get("run_fingerprint") or "") or None
    dataset = prepare_release(Path(dataset_dir), "dataset", run_fingerprint=fingerprint) if dataset_dir else None

    def planned(rel: Release, repo_id: str) -> RepoResult:
        return RepoResult(repo_id=repo_id, repo_type=rel.kind, url=repo_url(repo_id, rel.kind),
                          revision=revision or "main", files=[(f.path, f.size) for f in rel.files],
                          card_text=rel.card_text, create_pr=create_pr, private=private)

    tag_name = (release_tag(fingerprint) if fingerprint else None) if tag is None else (tag or None)
    if dry_run:
        return PublishResult(dry_run=True, endpoint=endpoint(), model=planned(model, model_repo),
                             dataset=planned(dataset, dataset_repo) if dataset else None,  # type: ignore[arg-type]
                             run_fingerprint=fingerprint)

    from huggingface_hub import HfApi

    # A missing key or missing OIDC credentials fails here, before any request to the Hub.
    signer = resolve_signer(signing, key_path=signing_key) if (signing is not None or signing_key) else None
    # The configured resource (the model) last: huggingface_hub caches one exchanged token, and it
    # should be the one HF_OIDC_RESOURCE names once this returns.
    wanted = {"dataset": (dataset_repo, "dataset")} if dataset else {}
    wanted["model"] = (model_repo, "model")  # type: ignore[assignment]
    tokens = repo_tokens(wanted, token)
    api = HfApi(endpoint=endpoint(), token=tokens["model"])
    ds_api = HfApi(endpoint=endpoint(), token=tokens["dataset"]) if dataset else api
    with hub_errors("checking the Hub token"):
        me = api.whoami()
    namespaces = {me.get("name")} | {o.get("name") for o in me.get("orgs", []) if isinstance(o, dict)}
    if not create_pr:
        for repo_id in filter(None, (dataset_repo, model_repo)):
            ns = repo_id.split("/")[0]
            if ns not in namespaces:
                raise AuthError(f"the token belongs to {me.get('name')!r}, who cannot write to the namespace {ns!r}",
                                fix=f"use a token of a member of {ns!r}, publish under your own namespace, or open "
                                    "a pull request with `--pr`")
    if signer is not None:
        model = sign_release(model, signer, model_repo)
    # Both cards are validated before anything is created or uploaded.
    for rel in filter(None, (dataset, model)):
        validate_remote(rel, tokens[rel.kind])

    message = commit_message or f"hubsdd release {fingerprint[:12] if fingerprint else ''}".strip()
    base = model.meta.get("base_model")
    description = (f"Published by hubsdd {__version__}. Base model: {base}. "
                   f"Run fingerprint: {fingerprint}.")
    # Plan both repositories before writing to either: a conflict leaves both untouched.
    opts = dict(private=private, create_pr=create_pr, revision=revision, overwrite=overwrite)
    ds_plan = _plan_repo(ds_api, dataset, dataset_repo, **opts) if dataset else None  # type: ignore[arg-type]
    model_plan = _plan_repo(api, model, model_repo, **opts)
    # Dataset first: the model card links to it.
    ds_result = (_apply_plan(ds_api, ds_plan, commit_message=message, commit_description=description)
                 if ds_plan else None)
    model_result = _apply_plan(api, model_plan, commit_message=message, commit_description=description)
    if tag_name and not create_pr:
        _tag(api, model_result, tag_name, fingerprint)
    return PublishResult(dry_run=False, endpoint=endpoint(), model=model_result, dataset=ds_result,
                         run_fingerprint=fingerprint)


