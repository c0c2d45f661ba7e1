"""A record of finished units of work, to check that a resumed run redoes none of them.

When ``HUBSDD_WORK_LOG`` names a file, hubsdd appends one line per unit of work it finished and saved
durably: a stage, a distillation shard, a fine-tuned variant, an evaluated model. A line is written
only after the unit's result is safely on disk, so a kill between the two loses the line, never the
result; a unit that appears twice in the log was computed twice. The kill-anywhere harness
(``hubsdd.testing.kill``) reads it. Without the variable this does nothing.
"""

from __future__ import annotations

import os

ENV = "HUBSDD_WORK_LOG"


def finished(unit: str) -> None:
    path = os.environ.get(ENV)
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{os.getpid()} {unit}\n".encode())  # one write: lines never interleave
        os.fsync(fd)
    finally:
        os.close(fd)
