"""Publish a release to the Hugging Face Hub and pull one back, verified.

A *release* is what the card stage writes: ``runs/<name>/card/model/`` (config, safetensors,
tokenizer, README.md with front matter, recipe.yaml, ``hubsdd/*.json``, plots) and optionally
``runs/<name>/card/dataset/`` (README.md, ``data/*.parquet``). The model card's front matter holds a
``hubsdd`` mapping ``{version, run_fingerprint, recipe_sha256, files: {relative path: sha256}}``
covering every file of the release except README.md; that block is the contract :func:`pull`
verifies and the record of which files on the Hub hubsdd created.

:func:`publish` follows the Hub conventions of DESIGN.md section 4:

* card metadata is checked locally *and* by the Hub's ``/api/validate-yaml`` before any upload
  (posted by hand: ``RepoCard.validate()``/``push_to_hub()`` are avoided on purpose, see DESIGN.md);
* exactly one commit per repository (``create_commit`` with every file plus the deletions), as a pull
  request with ``create_pr``; nothing is committed when the target already holds exactly these files,
  so a rerun after an interrupted upload does not duplicate a commit, and LFS objects already on the
  Hub are not sent again (the client's preupload/LFS batch exchange skips them);
* files hubsdd did not create are never deleted, and a repository holding such files is refused
  unless ``create_pr`` or ``overwrite``;
* the token comes from the argument or ``huggingface_hub.get_token()`` and is never logged, written
  or put in an error message.

Every failure surfaces as a :class:`~hubsdd.errors.HubsddError` subclass with a fix, never as a bare
``huggingface_hub`` traceback. The CLI prints results with :func:`format_dry_run`,
:func:`format_publish` and :func:`format_summary`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from . import __version__, progress
from .errors import AuthError, HubError, HubsddError, RepoConflictError, StageError, VerificationError
from .recipe import HUB_ID_RE
from .files import git_blob_sha1, sha256_file
from .hub_errors import endpoint as _endpoint
from .hub_errors import hub_errors

log = logging.getLogger("hubsdd.hub")

REQUIRED_MODEL_KEYS = ("base_model", "license", "library_name", "pipeline_tag")
# Files every hubsdd release writes besides those listed in the card (and the Hub's own .gitattributes).
ALWAYS_OWNED = ("README.md", "recipe.yaml", ".gitattributes")
URL_PREFIX = {"model": "", "dataset": "datasets/"}
FULL_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.\-]{0,95}/[A-Za-z0-9][\w.\-]{0,95}$")


# --------------------------------------------------------------------------- results


@dataclass
class ReleaseFile:
    """One file of a local release folder."""

    path: str  # relative, POSIX separators, as it lands in the repository
    size: int
    sha256: str
    local: Path | None = None  # None for a README whose text hubsdd completed (see `data`)
    data: bytes | None = None

    def read(self) -> bytes:
        return self.data if self.data is not None else Path(self.local).read_bytes()  # type: ignore[arg-type]


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


@dataclass
class PullResult:
    """A verified download of a released checkpoint."""

    repo_id: str
    revision: str
    commit_sha: str
    local_path: Path
    base_model: Any
    license: Any
    run_fingerprint: str | None
    recipe_sha256: str | None
    files_verified: int
    prune: dict | None = None  # {removed_layers, layers_before, layers_after} when the card has it
    retention: Any = None
    unlisted: list[str] = field(default_factory=list)  # files present but not covered by the card


# --------------------------------------------------------------------------- errors


def _repo_url(repo_id: str, repo_type: str) -> str:
    return f"{_endpoint()}/{URL_PREFIX.get(repo_type, repo_type + 's/')}{repo_id}"


def _token(token: str | None) -> str:
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise AuthError("no Hugging Face token found",
                        fix="log in with `hf auth login`, set HF_TOKEN, or in CI use trusted publishing "
                            "(HF_OIDC_RESOURCE with an OIDC id token)")
    return token


OIDC_ENV = "HF_OIDC_RESOURCE"


def oidc_resource(repo_id: str, repo_type: str) -> str:
    """How the Hub names a repository as a trusted-publishing resource: ``ns/name`` for a model,
    ``datasets/ns/name`` for a dataset."""
    return f"{URL_PREFIX[repo_type]}{repo_id}"


def repo_tokens(repos: dict[str, tuple[str, str]], token: str | None = None) -> dict[str, str]:
    """A token per repository to push (``{key: (repo_id, repo_type)}``), all obtained before anything
    is pushed, so a refused token changes nothing on the Hub.

    With trusted publishing on (``HF_OIDC_RESOURCE`` set, as in a GitHub Actions job with
    ``id-token: write``), huggingface_hub exchanges the CI's OIDC id token for a short-lived token
    scoped to *one* repository; hubsdd asks for one per repository it pushes, each scoped to that
    repository (the repositories must exist, each with this workflow configured as a trusted
    publisher). Otherwise one token (the argument, ``HF_TOKEN`` or the ``hf auth login`` store) serves
    every repository."""
    import os

    from huggingface_hub import get_token
    from huggingface_hub.errors import HfHubHTTPError, OIDCError

    if token or not os.environ.get(OIDC_ENV):
        one = _token(token)
        return {key: one for key in repos}
    configured = os.environ[OIDC_ENV]
    out = {}
    try:
        for key, (repo_id, repo_type) in repos.items():
            resource = oidc_resource(repo_id, repo_type)
            os.environ[OIDC_ENV] = resource
            try:
                exchanged = get_token()
            except OIDCError as exc:
                raise AuthError(f"trusted publishing: no OIDC id token to exchange for {resource}: {exc}",
                                fix="run in GitHub Actions with `permissions: id-token: write` (or set "
                                    "HF_OIDC_ID_TOKEN), or unset HF_OIDC_RESOURCE and set an HF_TOKEN secret") from None
            except HfHubHTTPError as exc:
                server = (getattr(exc, "server_message", None) or "").strip() or str(exc).strip().splitlines()[0]
                raise AuthError(f"trusted publishing: the Hub refused to exchange the OIDC token for {resource} "
                                f"({server})",
                                fix=f"create {repo_type} repository {repo_id} and add this workflow as a trusted "
                                    "publisher in its settings on the Hub; or unset HF_OIDC_RESOURCE and set an "
                                    "HF_TOKEN secret") from None
            if not exchanged:
                raise AuthError(f"trusted publishing: no token for {resource}", fix="check HF_OIDC_RESOURCE")
            out[key] = exchanged
    finally:
        os.environ[OIDC_ENV] = configured
    return out


# --------------------------------------------------------------------------- local release


@dataclass
class _Release:
    kind: str  # model | dataset
    folder: Path
    files: list[ReleaseFile]
    card_text: str
    meta: dict

    @property
    def by_path(self) -> dict[str, ReleaseFile]:
        return {f.path: f for f in self.files}


def _release_files(folder: Path) -> list[ReleaseFile]:
    """Every file under ``folder`` except hidden ones (editor/OS droppings, .cache folders)."""
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if not p.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        out.append(ReleaseFile(path=rel.as_posix(), size=p.stat().st_size, sha256=sha256_file(p), local=p))
    return out


def _is_local_path(ref: str) -> bool:
    return (ref.startswith(("/", "./", "../", "~", ".")) or "\\" in ref or re.match(r"^[A-Za-z]:", ref) is not None
            or not HUB_ID_RE.match(ref))


def _check_model_meta(meta: dict, where: str) -> list[str]:
    problems = []
    for key in REQUIRED_MODEL_KEYS:
        if not meta.get(key):
            problems.append(f"`{key}` is missing")
    base = meta.get("base_model")
    for ref in (base if isinstance(base, list) else [base] if base else []):
        if not isinstance(ref, str) or _is_local_path(ref):
            problems.append(f"`base_model` must be the base model's Hub id (org/name), not {ref!r}")
    return [f"{where}: {p}" for p in problems]


def _check_hubsdd_block(block: Any, where: str, *, model: bool) -> list[str]:
    if not isinstance(block, dict):
        return [f"{where}: the `hubsdd` metadata block is missing"]
    problems = []
    keys = ("version", "run_fingerprint", "recipe_sha256", "files") if model else ("files",)
    for key in keys:
        if key not in block:
            problems.append(f"{where}: `hubsdd.{key}` is missing")
    if "files" in block and not isinstance(block["files"], dict):
        problems.append(f"{where}: `hubsdd.files` must map relative paths to sha256 digests")
    return problems


def _compare_listing(listed: dict[str, str], actual: dict[str, str], where: str) -> list[str]:
    """Lines naming each file whose sha256 differs from the card, is missing, or is not covered."""
    problems = []
    for path, expected in sorted(listed.items()):
        if path not in actual:
            problems.append(f"{path}: listed in {where} but missing")
        elif actual[path] != expected:
            problems.append(f"{path}: expected sha256 {expected}, got {actual[path]}")
    for path in sorted(set(actual) - set(listed) - {"README.md"}):
        problems.append(f"{path}: present but not listed in {where}")
    return problems


def _load_card(text: str, kind: str, where: str):
    from huggingface_hub import DatasetCard, ModelCard

    try:
        return (ModelCard if kind == "model" else DatasetCard)(text)
    except Exception as exc:  # noqa: BLE001 - yaml and card errors come in several types
        raise HubError(f"{where}: the front matter cannot be read: {exc}",
                       fix="re-render the cards with `hubsdd card runs/<name>`") from None


def _prepare_release(folder: Path, kind: str, *, run_fingerprint: str | None = None) -> _Release:
    """Read a release folder and check it is complete and consistent with its card, locally."""
    folder = Path(folder)
    readme = folder / "README.md"
    if not folder.is_dir() or not readme.is_file():
        raise StageError(f"{folder} is not a {kind} release folder (no README.md)",
                         fix="run the card stage first: `hubsdd card runs/<name>`")
    files = _release_files(folder)
    text = readme.read_text(encoding="utf-8")
    where = f"{kind} card ({readme})"
    card = _load_card(text, kind, where)
    meta = card.data.to_dict()
    problems = _check_model_meta(meta, where) if kind == "model" else []
    block = meta.get("hubsdd")
    if kind == "model" or block is not None:
        problems += _check_hubsdd_block(block, where, model=kind == "model")
    if problems:
        raise HubError("card metadata is not publishable:\n  - " + "\n  - ".join(problems),
                       fix="fix the recipe's card settings and run `hubsdd card runs/<name>` again")
    actual = {f.path: f.sha256 for f in files if f.path != "README.md"}
    if block is None:
        # A dataset card without a hubsdd block: record which files this release created, so a
        # later publish knows what it may replace or delete. The uploaded README carries it.
        card.data.hubsdd = {"version": __version__, "run_fingerprint": run_fingerprint, "files": actual}
        text = str(card)
        meta = card.data.to_dict()
        data = text.encode()
        files = [f for f in files if f.path != "README.md"]
        files.append(ReleaseFile(path="README.md", size=len(data), sha256=hashlib.sha256(data).hexdigest(), data=data))
        files.sort(key=lambda f: f.path)
    else:
        mismatch = _compare_listing({str(k): str(v) for k, v in block["files"].items()}, actual, "the card")
        if kind == "model":
            recipe = actual.get("recipe.yaml")
            if recipe is None:
                mismatch.append("recipe.yaml: missing from the release")
            elif recipe != block["recipe_sha256"]:
                mismatch.append(f"recipe.yaml: expected sha256 {block['recipe_sha256']} (hubsdd.recipe_sha256), "
                                f"got {recipe}")
        if mismatch:
            raise VerificationError(f"the {kind} release in {folder} does not match its card:\n  - "
                                    + "\n  - ".join(mismatch),
                                    fix="re-render the release with `hubsdd card runs/<name>`; do not edit it by hand")
    return _Release(kind=kind, folder=folder, files=files, card_text=text, meta=meta)


def _validate_remote(release: _Release, token: str) -> None:
    """POST the card to the Hub's validate-yaml endpoint (at HF_ENDPOINT) before any upload."""
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    with hub_errors(f"validating the {release.kind} card"):
        resp = get_session().post(f"{_endpoint()}/api/validate-yaml",
                                  json={"content": release.card_text, "repoType": release.kind},
                                  headers=build_hf_headers(token=token))
        try:
            body = resp.json()
        except ValueError:
            body = {}
        if resp.status_code == 400:
            errors = [str(e.get("message")) for e in body.get("errors", []) if isinstance(e, dict)] or [resp.text]
            raise HubError(f"the Hub rejected the {release.kind} card metadata:\n  - " + "\n  - ".join(errors),
                           fix="fix the recipe's card settings and run `hubsdd card runs/<name>` again")
        hf_raise_for_status(resp)
        for warning in body.get("warnings", []) if isinstance(body, dict) else []:
            log.warning("%s card: %s", release.kind, warning.get("message") if isinstance(warning, dict) else warning)


# --------------------------------------------------------------------------- remote state


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
    return {str(p) for p in block["files"]} | {"README.md", "recipe.yaml"}


def _matches(local: dict[str, ReleaseFile], remote: dict[str, Any], stale: list[str]) -> bool:
    return not stale and all(_same(f, remote.get(p)) for p, f in local.items())


# --------------------------------------------------------------------------- publish


@dataclass
class _Plan:
    """What one repository needs, worked out before anything is written to either repository."""

    release: _Release
    result: RepoResult
    exists: bool
    branch_exists: bool
    head: str | None
    previous: set[str] | None


def _plan_repo(api: Any, release: _Release, repo_id: str, *, private: bool, create_pr: bool,
               revision: str | None, overwrite: bool) -> _Plan:
    """Read the repository's current state and decide: conflict, nothing to do, or which commit.

    Nothing is written here, so a conflict in the model repository is found before the dataset
    repository receives anything."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    kind = release.kind
    branch = revision or "main"
    result = RepoResult(repo_id=repo_id, repo_type=kind, url=_repo_url(repo_id, kind), revision=branch,
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
        result.changed = sorted(p for p, f in local.items() if not _same(f, remote.get(p)))
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
            token: str | None = None) -> PublishResult:
    """Push a release (model folder, optional dataset folder) to the Hub: one commit per repository.

    ``tag``: the tag put on the model commit; default ``hubsdd-<first 12 hex of run_fingerprint>``,
    ``""`` for none; never in ``create_pr`` mode. ``revision``: the branch to commit to (created
    from main if missing) or, with ``create_pr``, the branch the pull request targets.
    ``dry_run`` sends nothing and returns the files and rendered cards.
    """
    for value, name in ((model_repo, "model_repo"), (dataset_repo, "dataset_repo")):
        if value is not None and not FULL_REPO_ID_RE.match(value):
            raise HubError(f"{name}: {value!r} is not a Hub repository id", fix="use 'namespace/name'")
    if (dataset_dir is None) != (dataset_repo is None):
        raise HubError("give both a dataset folder and a dataset repository, or neither",
                       fix="set the recipe's dataset repository, or publish the model alone")
    model = _prepare_release(Path(model_dir), "model")
    fingerprint = str(model.meta["hubsdd"].get("run_fingerprint") or "") or None
    dataset = _prepare_release(Path(dataset_dir), "dataset", run_fingerprint=fingerprint) if dataset_dir else None

    def planned(rel: _Release, repo_id: str) -> RepoResult:
        return RepoResult(repo_id=repo_id, repo_type=rel.kind, url=_repo_url(repo_id, rel.kind),
                          revision=revision or "main", files=[(f.path, f.size) for f in rel.files],
                          card_text=rel.card_text, create_pr=create_pr, private=private)

    tag_name = (f"hubsdd-{fingerprint[:12]}" if fingerprint else None) if tag is None else (tag or None)
    if dry_run:
        return PublishResult(dry_run=True, endpoint=_endpoint(), model=planned(model, model_repo),
                             dataset=planned(dataset, dataset_repo) if dataset else None,  # type: ignore[arg-type]
                             run_fingerprint=fingerprint)

    from huggingface_hub import HfApi

    # The configured resource (the model) last: huggingface_hub caches one exchanged token, and it
    # should be the one HF_OIDC_RESOURCE names once this returns.
    wanted = {"dataset": (dataset_repo, "dataset")} if dataset else {}
    wanted["model"] = (model_repo, "model")  # type: ignore[assignment]
    tokens = repo_tokens(wanted, token)
    api = HfApi(endpoint=_endpoint(), token=tokens["model"])
    ds_api = HfApi(endpoint=_endpoint(), token=tokens["dataset"]) if dataset else api
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
    # Both cards are validated before anything is created or uploaded.
    for rel in filter(None, (dataset, model)):
        _validate_remote(rel, tokens[rel.kind])

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
    return PublishResult(dry_run=False, endpoint=_endpoint(), model=model_result, dataset=ds_result,
                         run_fingerprint=fingerprint)


# --------------------------------------------------------------------------- pull


def parse_repo_ref(repo: str, revision: str | None = None) -> tuple[str, str | None]:
    """``org/name`` or ``org/name@revision`` -> (repo id, revision)."""
    repo_id, sep, rev = repo.partition("@")
    if sep and not rev:
        raise HubError(f"{repo!r}: empty revision after '@'", fix="write org/name@<branch, tag or commit sha>")
    if not FULL_REPO_ID_RE.match(repo_id):
        raise HubError(f"{repo!r} is not a Hub repository id", fix="write org/name or org/name@revision")
    if sep and revision and rev != revision:
        raise HubError(f"two revisions given for {repo_id}: {rev!r} and {revision!r}", fix="give only one")
    return repo_id, (rev if sep else revision)


def pull(repo: str, *, revision: str | None = None, local_dir: Path | None = None,
         token: str | None = None) -> PullResult:
    """Download a released checkpoint at a revision (pinned to its commit sha) and verify it.

    Every file the card's ``hubsdd.files`` lists must be present with that sha256, and recipe.yaml
    must hash to ``hubsdd.recipe_sha256``; otherwise :class:`VerificationError` names each file with
    the expected and actual digest.
    """
    from huggingface_hub import HfApi, ModelCard, snapshot_download

    repo_id, rev = parse_repo_ref(repo, revision)
    api = HfApi(endpoint=_endpoint(), token=token)
    with hub_errors(f"pulling {repo_id}", repo_id):
        sha = api.model_info(repo_id, revision=rev).sha
        path = Path(snapshot_download(repo_id, revision=sha, local_dir=local_dir, token=token,
                                      endpoint=_endpoint(), tqdm_class=progress.tqdm_class()))
    where = f"{repo_id}@{sha[:12]}"
    readme = path / "README.md"
    if not readme.is_file():
        raise VerificationError(f"{where} has no README.md, so nothing to verify it against",
                                fix="pull a repository published by hubsdd")
    try:
        meta = ModelCard.load(readme, ignore_metadata_errors=True).data.to_dict()
    except Exception as exc:  # noqa: BLE001
        raise VerificationError(f"{where}: the model card cannot be read: {exc}") from None
    block = meta.get("hubsdd")
    problems = _check_hubsdd_block(block, f"{where} README.md", model=True)
    if problems:
        raise VerificationError("; ".join(problems), fix="pull a repository published by hubsdd")
    listed = {str(k): str(v) for k, v in block["files"].items()}
    mismatches = []
    for rel, expected in sorted(listed.items()):
        # Not resolved: cache snapshots are symlinks into blobs/. A listed path may not climb out.
        target = path / rel
        if PurePosixPath(rel).is_absolute() or ".." in PurePosixPath(rel).parts:
            mismatches.append(f"{rel}: not a path inside the repository")
        elif not target.is_file():
            mismatches.append(f"{rel}: listed in the card but missing")
        elif (actual := sha256_file(target)) != expected:
            mismatches.append(f"{rel}: expected sha256 {expected}, got {actual}")
    recipe = path / "recipe.yaml"
    if not recipe.is_file():
        mismatches.append("recipe.yaml: missing")
    elif (actual := sha256_file(recipe)) != block["recipe_sha256"]:
        mismatches.append(f"recipe.yaml: expected sha256 {block['recipe_sha256']} (hubsdd.recipe_sha256), got {actual}")
    if mismatches:
        raise VerificationError(f"{where} does not match its card:\n  - " + "\n  - ".join(dict.fromkeys(mismatches)),
                                fix="the files were changed after the release was published; pull a revision "
                                    "published by hubsdd (see the hubsdd-* tags) or ask the owner")
    present = {p.relative_to(path).as_posix() for p in path.rglob("*")
               if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)}
    prune = block.get("prune") if isinstance(block.get("prune"), dict) else None
    return PullResult(repo_id=repo_id, revision=rev or "main", commit_sha=sha, local_path=path,
                      base_model=meta.get("base_model"), license=meta.get("license"),
                      run_fingerprint=block.get("run_fingerprint"), recipe_sha256=block.get("recipe_sha256"),
                      files_verified=len(listed), prune=prune, retention=block.get("retention"),
                      unlisted=sorted(present - set(listed) - {"README.md", "recipe.yaml"}))


# --------------------------------------------------------------------------- formatting


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def format_dry_run(result: PublishResult) -> str:
    """What a dry run would push: per repository the files with sizes, then each rendered card."""
    lines = [f"Dry run: nothing was sent to {result.endpoint}."]
    for r in result.repos:
        mode = f"a pull request against {r.revision}" if r.create_pr else f"branch {r.revision}"
        total = sum(s for _, s in r.files)
        lines.append(f"\n{r.repo_type} repository {r.repo_id} ({'private' if r.private else 'public'}), "
                     f"one commit to {mode}: {len(r.files)} files, {_size(total)}")
        lines += [f"  {_size(size):>10}  {path}" for path, size in r.files]
    for r in result.repos:
        lines.append(f"\n----- {r.repo_type} card: {r.repo_id}/README.md -----\n{r.card_text.rstrip()}")
    return "\n".join(lines)


def format_publish(result: PublishResult) -> str:
    """A short report of a real publish."""
    if result.dry_run:
        return format_dry_run(result)
    lines = []
    for r in result.repos:
        if r.skipped and r.pr_ref:
            state = f"unchanged: {r.pr_ref} already proposes this release ({r.pr_url})"
        elif r.skipped:
            state = f"unchanged: the Hub already holds this release at {r.commit_sha[:12]}"  # type: ignore[index]
        else:
            state = (f"committed {r.commit_sha[:12]} ({len(r.changed)} changed, {len(r.deleted)} deleted)"  # type: ignore[index]
                     + (f" as pull request {r.pr_ref}: {r.pr_url}" if r.pr_ref else ""))
        lines.append(f"{r.repo_type:7} {r.url}  {state}")
        if r.foreign:
            lines.append(f"        left {len(r.foreign)} file(s) hubsdd did not create untouched")
        if r.tag:
            lines.append(f"        tag {r.tag}")
    return "\n".join(lines)


def _pct(x: Any) -> str:
    return f"{x:.1%}" if isinstance(x, (int, float)) else str(x)


def format_retention(ret: Any) -> str:
    """A card's retention block as one line: the figure, its 95% interval and what it rests on; a
    figure from too few items is said to be so rather than given alone."""
    if isinstance(ret, (int, float)):  # releases of hubsdd < 0.2: a bare figure, no interval
        return f"{ret:.1%} of the base model's average (no interval recorded)"
    if not isinstance(ret, dict) or "value" not in ret:
        return str(ret)
    lo, hi = (ret.get("ci95") or [None, None])[:2]
    text = f"{_pct(ret['value'])} of the base model's average (95% CI {_pct(lo)} to {_pct(hi)})"
    if "margin" in ret:
        text += f"; above chance: {_pct(ret['margin'])}"
    items, tasks = ret.get("items_per_task"), ret.get("tasks")
    if items:
        text += f"; {items} items per task" + (f" x {tasks} tasks" if tasks else "")
    if ret.get("precise") is False:
        text += " -- too few items to tell the models apart: read the interval, not the figure"
    return text


def format_summary(result: PullResult) -> str:
    """What `hubsdd pull` prints after a verified download."""
    lines = [f"Verified {result.repo_id}@{result.commit_sha[:12]} ({result.revision}): "
             f"{result.files_verified} files and the recipe match the card",
             f"  local path:      {result.local_path}",
             f"  base model:      {result.base_model}",
             f"  license:         {result.license}",
             f"  run fingerprint: {result.run_fingerprint}"]
    if result.prune:
        p = result.prune
        removed = p.get("removed_layers")
        lines.append(f"  layers:          {p.get('layers_before')} -> {p.get('layers_after')}"
                     + (f" (removed {', '.join(map(str, removed))})" if removed else ""))
    if result.retention is not None:
        lines.append(f"  retention:       {format_retention(result.retention)}")
    if result.unlisted:
        lines.append(f"  not covered by the card: {', '.join(result.unlisted)}")
    lines.append(f"  load with:       AutoModelForCausalLM.from_pretrained({str(result.local_path)!r})")
    return "\n".join(lines)


# The names hubsdd.cli uses.
format_publish_result = format_publish
format_pull_summary = format_summary
