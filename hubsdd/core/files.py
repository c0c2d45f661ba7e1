"""Files written so that a kill never leaves a torn one, and the hashes that identify them.

``sha256_file`` is what the card lists and ``hubsdd pull`` verifies; ``git_blob_sha1`` is the id the
Hub gives a file that is not in LFS (git's blob hash), which publish compares to skip unchanged files
and the test Hub computes to store them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

# An atomic write's temporary file: ``.<name>.<8 hex>.tmp`` beside its target.
TEMPORARY_NAME = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that readers see the old content or the new, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def remove_stale_temporaries(root: Path) -> None:
    """Delete the temporary files that killed atomic writes left anywhere under ``root``. Only for a
    caller that knows nothing is writing there now (the runner, holding the run lock)."""
    for p in Path(root).rglob(".*.tmp"):
        if TEMPORARY_NAME.match(p.name) and p.is_file():
            p.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def link_or_copy(src: str | Path, dst: str | Path) -> None:
    """Hard-link ``src`` to ``dst`` (a large checkpoint is not copied, and the link survives the
    removal of the folder it came from), else copy it; ``dst``'s folder is made."""
    import shutil

    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def git_blob_sha1(data: bytes) -> str:
    """git's object id of a blob: sha1 over ``blob <size>\0`` and the bytes."""
    h = hashlib.sha1(f"blob {len(data)}\0".encode())
    h.update(data)
    return h.hexdigest()
