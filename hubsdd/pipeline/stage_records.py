"""The run directory's records: a finished stage's ``stage.json`` (sealed with a digest) and the files
it lists, checked before anything trusts them; the lock that keeps two runs apart; and the disk
errors (read-only, full) a user can fix. :mod:`hubsdd.pipeline.runner` drives the stages over these.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Iterator

from ..core.errors import StageError
from ..core.recipe import canonical_json
from ..core.stage_io import StageResult

STAGE_FILE = "stage.json"


def record_digest(data: dict) -> str:
    return hashlib.sha256(canonical_json({k: v for k, v in data.items() if k != "digest"}).encode()).hexdigest()


def _corrupt(path: Path, what: str, stage: str) -> StageError:
    return StageError(f"{path}: {what}",
                      fix=f"restore it, or remove {path.parent} so that `hubsdd run` redoes the {stage!r} stage "
                          f"(`hubsdd run <recipe> --force {stage}` does the same); the other stages are kept")


def read_stage(run_dir: Path, name: str) -> StageResult | None:
    """A finished stage, or None if it has not finished. A ``stage.json`` that cannot be read or was
    changed after the stage wrote it is an error, not a reason to trust (or silently redo) the stage."""
    stage_dir = Path(run_dir) / name
    path = stage_dir / STAGE_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise _corrupt(path, f"cannot be read ({type(exc).__name__}: {exc})", name) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _corrupt(path, f"is not valid JSON ({exc.msg}, line {exc.lineno})", name) from None
    if not isinstance(data, dict) or "fingerprint" not in data:
        raise _corrupt(path, "is not a hubsdd stage record", name)
    # Records written before hubsdd sealed them carry no digest; they are taken as they are.
    if "digest" in data and data["digest"] != record_digest(data):
        raise _corrupt(path, "was changed after the stage finished (its digest does not match)", name)
    return StageResult(name=name, dir=stage_dir, data=data)


def stage_files(stage_dir: Path) -> dict[str, int]:
    """Every file a stage wrote, with its size: what a rerun checks before trusting the stage."""
    return {p.relative_to(stage_dir).as_posix(): p.stat().st_size
            for p in sorted(stage_dir.rglob("*")) if p.is_file() and p.name != STAGE_FILE}


def damaged_files(result: StageResult) -> list[str]:
    """Each file of a finished stage that is missing or changed size (a truncated checkpoint, a
    deleted plot), described; empty when the stage's folder is as the stage left it."""
    problems = []
    for rel, size in (result.data.get("files") or {}).items():
        path = result.dir / rel
        if not path.is_file():
            problems.append(f"{path}: missing, but the {result.name!r} stage wrote it")
        elif path.stat().st_size != size:
            problems.append(f"{path}: {path.stat().st_size} bytes, but the {result.name!r} stage wrote {size} "
                            "(truncated or replaced)")
    return problems


def check_cached_stages(results: list[StageResult]) -> None:
    """Raise one error naming every damaged file of these finished stages, with the one command that
    redoes exactly the damaged stages, so nothing downstream loads a damaged artifact."""
    damaged = {r.name: found for r in results if (found := damaged_files(r))}
    if not damaged:
        return
    lines = [line for found in damaged.values() for line in found]
    shown = "\n  - ".join(lines[:12]) + (f"\n  - ... and {len(lines) - 12} more" if len(lines) > 12 else "")
    forces = " ".join(f"--force {name}" for name in damaged)
    raise StageError(f"finished stages have damaged files:\n  - {shown}",
                     fix=f"restore them, or redo those stages: `hubsdd run <recipe> {forces}` (the other stages "
                         "are kept)")


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StageError(
                f"another hubsdd process is running in {run_dir}",
                fix="wait for it to finish, or stop it; a killed run resumes where it stopped",
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def disk_errors(run_dir: Path) -> Iterator[None]:
    """A read-only or full disk under the run directory is the user's to fix: say which path and how."""
    try:
        yield
    except Exception as exc:
        code = exc.errno if isinstance(exc, OSError) else None
        if code is None:
            # Rust-backed writers (safetensors, tokenizers) report the OS error in their message only.
            found = re.search(r"\(os error (\d+)\)", str(exc))
            code = int(found.group(1)) if found else None
        where = (exc.filename if isinstance(exc, OSError) else None) or run_dir
        if code in (errno.ENOSPC, errno.EDQUOT):
            raise StageError(f"no space left on the device while writing {where}",
                             fix=f"free space on the disk holding {run_dir}, or set the recipe's `runs_dir` to a "
                                 "larger disk; finished stages are kept and a rerun resumes") from None
        if code in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise StageError(f"cannot write {where}: {os.strerror(code)}",
                             fix=f"make {run_dir} writable, or set the recipe's `runs_dir` to a writable "
                                 "folder; finished stages are kept") from None
        raise
