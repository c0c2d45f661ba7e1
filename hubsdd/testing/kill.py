"""Kill anywhere: SIGKILL ``hubsdd run`` at random moments, rerun, and check nothing was lost or redone.

A *sequence* starts ``python -m hubsdd.cli run RECIPE`` in a subprocess, kills its whole process group
with SIGKILL after a chosen delay, starts it again, kills again, ..., then lets the last attempt
finish. The finished run directory is then compared with one of an uninterrupted run of the same
recipe in the same place:

* every stage's fingerprint is the same;
* every released file (``card/model``, ``card/dataset``) has the same sha256, except the records that
  carry wall-clock figures (``README.md``, ``hubsdd/*.json``), which must be equal once those figures
  are masked (:func:`normalized`);
* no staging, trash, work or temporary file is left;
* no unit of work that had finished (a stage, a distillation shard, a fine-tuned variant, an
  evaluated model; see :mod:`hubsdd.core.worklog`) was done twice.

``tests/test_kill_anywhere.py`` runs a few kills in CI; ``bench/kill_anywhere.py`` runs hundreds.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..core.worklog import ENV as WORK_LOG_ENV

# Keys whose values are wall-clock measurements (or derived from them), the record's own seal, and
# the history of the run rather than its result: where a resumed variant picked its training up, which
# rewrites a resumed or re-checked distillation found written.
VOLATILE_KEY = re.compile(r"seconds|per_second|^started_at$|^digest$|runtime|speedup|^tokens_per_s|_time$"
                          r"|^date$|^files$|^resumed_from_step$|^shards_(resumed|reused)$")
# In cards: "(123.4 tokens/s)" and the seconds column of the training table.
VOLATILE_TEXT = (re.compile(r"\(\d+(\.\d+)? tokens/s\)"), re.compile(r"\| \d+ s \|"))
VOLATILE_FILES = re.compile(r"(^|/)(README\.md|hubsdd/[^/]+\.json)$")
LEFTOVER = re.compile(r"^\.(staging|trash)-|\.tmp$")


def _mask(obj):
    if isinstance(obj, dict):
        return {k: ("<volatile>" if VOLATILE_KEY.search(str(k)) else _mask(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_mask(v) for v in obj]
    return obj


def normalized(rel: str, data: bytes) -> bytes:
    """A released file's bytes with wall-clock figures masked (unchanged for every other file)."""
    if not VOLATILE_FILES.search(rel):
        return data
    if rel.endswith(".json"):
        return json.dumps(_mask(json.loads(data)), sort_keys=True).encode()
    text = data.decode()
    for pattern in VOLATILE_TEXT:
        text = pattern.sub("<volatile>", text)
    # the card lists each file's sha256: a record with wall-clock figures hashes differently each run
    text = re.sub(r"(hubsdd/[^:\s]+\.json): [0-9a-f]{64}", r"\1: <volatile>", text)
    return text.encode()


@dataclass
class Snapshot:
    fingerprints: dict[str, str]
    release: dict[str, str]  # relative path -> sha256 of its normalized bytes

    def differences(self, other: "Snapshot") -> list[str]:
        out = [f"stage {k}: fingerprint {self.fingerprints.get(k)} vs {other.fingerprints.get(k)}"
               for k in sorted(set(self.fingerprints) | set(other.fingerprints))
               if self.fingerprints.get(k) != other.fingerprints.get(k)]
        out += [f"released {k}: {self.release.get(k, 'missing')[:12]} vs {other.release.get(k, 'missing')[:12]}"
                for k in sorted(set(self.release) | set(other.release)) if self.release.get(k) != other.release.get(k)]
        return out


def snapshot(run_dir: Path) -> Snapshot:
    fps = {}
    for stage_json in sorted(run_dir.glob("*/stage.json")):
        fps[stage_json.parent.name] = json.loads(stage_json.read_text())["fingerprint"]
    release = {}
    card = run_dir / "card"
    for path in sorted(card.rglob("*")):
        if path.is_file() and path.name != "stage.json":
            rel = path.relative_to(card).as_posix()
            release[rel] = hashlib.sha256(normalized(rel, path.read_bytes())).hexdigest()
    return Snapshot(fps, release)


def leftovers(run_dir: Path) -> list[str]:
    """Staging, trash and temporary files, and work folders, that a finished run should not hold."""
    found = [p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if LEFTOVER.search(p.name)]
    work = run_dir / ".work"
    if work.exists():
        found += [p.relative_to(run_dir).as_posix() for p in work.iterdir()]
    return sorted(found)


def repeated_work(log: Path) -> list[str]:
    """Units of work the log records as finished more than once."""
    if not log.exists():
        return []
    units = Counter(line.split(" ", 1)[1] for line in log.read_text().splitlines() if " " in line)
    return sorted(u for u, n in units.items() if n > 1)


@dataclass
class Attempt:
    killed_after: float | None  # None: ran to the end
    returncode: int
    seconds: float
    output: str = ""


def attempt(recipe: Path, env: dict, kill_after: float | None, timeout: float = 1800) -> Attempt:
    """One ``hubsdd run``; with ``kill_after`` its process group is SIGKILLed after that many seconds
    (if it is still running)."""
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "hubsdd.cli", "run", str(recipe)], cwd=recipe.parent, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=kill_after if kill_after is not None else timeout)
        return Attempt(None, proc.returncode, time.monotonic() - started, out.decode(errors="replace"))
    except subprocess.TimeoutExpired:
        if kill_after is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return Attempt(kill_after, proc.returncode, time.monotonic() - started, out.decode(errors="replace"))


@dataclass
class Sequence:
    attempts: list[Attempt] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def kills(self) -> int:
        return sum(1 for a in self.attempts if a.killed_after is not None and a.returncode == -signal.SIGKILL)


def run_sequence(recipe: Path, run_dir: Path, reference: Snapshot, kill_times: list[float],
                 env: dict | None = None) -> Sequence:
    """Kill a run at each of ``kill_times`` (seconds after each start), then finish it and compare."""
    shutil.rmtree(run_dir, ignore_errors=True)
    log = run_dir.parent / f".{run_dir.name}.worklog"
    log.unlink(missing_ok=True)
    env = {**os.environ, **(env or {}), WORK_LOG_ENV: str(log)}
    seq = Sequence()
    for t in kill_times:
        seq.attempts.append(attempt(recipe, env, t))
    final = attempt(recipe, env, None)
    seq.attempts.append(final)
    if final.returncode != 0:
        seq.problems.append(f"the final run failed ({final.returncode}):\n{final.output[-2000:]}")
        return seq
    seq.problems += reference.differences(snapshot(run_dir))
    seq.problems += [f"left behind: {p}" for p in leftovers(run_dir)]
    seq.problems += [f"done twice: {u}" for u in repeated_work(log)]
    return seq
