"""Download a released checkpoint at a revision, pinned to its commit, and verify it against its card."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..core import progress
from ..core.errors import HubError, VerificationError
from ..core.files import sha256_file
from ..core.hub_errors import endpoint, hub_errors
from .publish import FULL_REPO_ID_RE
from .release import check_hubsdd_block
from .signing import PUBLIC_KEY_FILE, SIGNATURE_FILE
from .verify import SignatureCheck, check_signature


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
    signature: SignatureCheck | None = None


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
         token: str | None = None, public_key: Path | None = None, identity: str | None = None,
         issuer: str | None = None, allow_unsigned: bool = False, accept_signer: str | None = None) -> PullResult:
    """Download a released checkpoint at a revision (pinned to its commit sha) and verify it.

    First its signature (:mod:`hubsdd.hub.verify`: who signed, and that the signature covers exactly
    the downloaded files), then the card: every file ``hubsdd.files`` lists must be present with that
    sha256, and recipe.yaml must hash to ``hubsdd.recipe_sha256``. Any failure is a
    :class:`VerificationError` naming each file, and leaves nothing in ``local_dir`` (the download is
    made in a hidden folder beside it and moved into place once verified) or, without ``local_dir``,
    in the cache (the revision is deleted from it).
    """
    from huggingface_hub import HfApi, snapshot_download

    repo_id, rev = parse_repo_ref(repo, revision)
    api = HfApi(endpoint=endpoint(), token=token)
    staging: Path | None = None
    if local_dir is not None:
        local_dir = Path(local_dir)
        local_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{local_dir.name}.partial-", dir=local_dir.parent))
    sha = None
    try:
        with hub_errors(f"pulling {repo_id}", repo_id):
            sha = api.model_info(repo_id, revision=rev).sha
            path = Path(snapshot_download(repo_id, revision=sha, local_dir=staging, token=token,
                                          endpoint=endpoint(), tqdm_class=progress.tqdm_class()))
        where = f"{repo_id}@{sha[:12]}"
        check, record = check_signature(path, repo_id, where, public_key=public_key, identity=identity,
                                        issuer=issuer, allow_unsigned=allow_unsigned, accept_signer=accept_signer,
                                        allow_symlinks=staging is None)
        result = _verify_card(path, repo_id, rev, sha, where)
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        elif sha is not None:
            _forget_cached_revision(repo_id, sha)
        raise
    if staging is not None:
        _move_into_place(staging, local_dir)  # type: ignore[arg-type]
        result.local_path = local_dir  # type: ignore[assignment]
    record()
    result.signature = check
    return result


def _move_into_place(staging: Path, target: Path) -> None:
    """The verified download becomes ``target``: renamed when it does not exist yet, else its files
    replace those of the same name (nothing else in ``target`` is touched)."""
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        if target.exists():
            target.rmdir()
        os.replace(staging, target)
        return
    for src in sorted(p for p in staging.rglob("*") if p.is_file()):
        dst = target / src.relative_to(staging)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
    shutil.rmtree(staging, ignore_errors=True)


def _forget_cached_revision(repo_id: str, sha: str) -> None:
    """Drop a revision that failed verification from the cache (blobs other revisions share stay)."""
    try:
        from huggingface_hub import scan_cache_dir

        cache = scan_cache_dir()
        if any(rev.commit_hash == sha for repo in cache.repos if repo.repo_id == repo_id for rev in repo.revisions):
            cache.delete_revisions(sha).execute()
    except Exception:  # noqa: BLE001 - best effort: the verification error is what matters
        pass


def _verify_card(path: Path, repo_id: str, rev: str | None, sha: str, where: str) -> PullResult:
    """The files and recipe against the card's ``hubsdd`` block."""
    from huggingface_hub import ModelCard

    readme = path / "README.md"
    if not readme.is_file():
        raise VerificationError(f"{where} has no README.md, so nothing to verify it against",
                                fix="pull a repository published by hubsdd")
    try:
        meta = ModelCard.load(readme, ignore_metadata_errors=True).data.to_dict()
    except Exception as exc:  # noqa: BLE001
        raise VerificationError(f"{where}: the model card cannot be read: {exc}") from None
    block = meta.get("hubsdd")
    problems = check_hubsdd_block(block, f"{where} README.md", model=True)
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
                      unlisted=sorted(present - set(listed) - {"README.md", "recipe.yaml", SIGNATURE_FILE,
                                                                PUBLIC_KEY_FILE}))


