"""Progress where no terminal is: plain lines (a GitHub Actions log, nohup, a pipe) or JSON events.

A :class:`LineReporter` is a :mod:`hubsdd.core.progress` reporter. For each running task it prints a line
(stage, task, step/total, rate, ETA, the task's fields such as loss or tokens/s) when it advances
and at least ``MIN_INTERVAL`` seconds have passed since its last line, and a heartbeat line when
``HEARTBEAT`` seconds passed without one (a long step that does not advance): so consecutive lines
are 30 s to ~70 s apart, never closer, never further than 2 minutes. The clock is injectable and the
heartbeat is driven by :meth:`tick` (a daemon thread calls it every ``TICK`` seconds unless told not
to), so tests need no sleeps.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

MIN_INTERVAL = 30.0
HEARTBEAT = 60.0
TICK = 10.0


@dataclass
class _State:
    description: str
    total: float | None
    unit: str
    started: float
    last_line: float
    done: float = 0.0
    fields: dict[str, Any] = field(default_factory=dict)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class LineReporter:
    """Progress as records handed to ``emit`` (a dict per line: see :meth:`record`)."""

    def __init__(self, emit: Callable[[dict[str, Any]], None], *, clock: Callable[[], float] = time.monotonic,
                 ticker: bool = True) -> None:
        self.emit = emit
        self.clock = clock
        self.stage: str | None = None
        self.tasks: dict[int, _State] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if ticker:
            self._thread = threading.Thread(target=self._run, name="hubsdd-progress", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(TICK):
            self.tick()

    # ---- the Reporter protocol

    def start(self, key: int, description: str, total: float | None, unit: str) -> None:
        now = self.clock()
        with self._lock:
            self.tasks[key] = _State(description, total, unit, started=now, last_line=now)

    def advance(self, key: int, amount: float, fields: dict[str, Any]) -> None:
        with self._lock:
            state = self.tasks.get(key)
            if state is None:
                return
            state.done += amount
            state.fields.update(fields)
            if self.clock() - state.last_line >= MIN_INTERVAL:
                self._line(state)

    def set_total(self, key: int, total: float | None) -> None:
        with self._lock:
            if key in self.tasks:
                self.tasks[key].total = total

    def finish(self, key: int) -> None:
        with self._lock:
            self.tasks.pop(key, None)

    def tick(self) -> None:
        """A heartbeat for every task that has printed nothing for ``HEARTBEAT`` seconds."""
        with self._lock:
            for state in list(self.tasks.values()):
                if self.clock() - state.last_line >= HEARTBEAT:
                    self._line(state)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=1)

    # ---- lines

    def record(self, state: _State) -> dict[str, Any]:
        now = self.clock()
        elapsed = max(now - state.started, 1e-9)
        rate = state.done / elapsed
        eta = (state.total - state.done) / rate if state.total and rate > 0 else None
        return {"event": "progress", "stage": self.stage, "task": state.description, "done": state.done,
                "total": state.total, "unit": state.unit, "rate": round(rate, 4),
                "elapsed": round(elapsed, 1), "eta": None if eta is None else round(max(eta, 0.0), 1),
                **{k: v for k, v in state.fields.items()}}

    def _line(self, state: _State) -> None:
        rec = self.record(state)
        state.last_line = self.clock()
        self.emit(rec)


def format_line(rec: dict[str, Any]) -> str:
    """``progress [finetune] training sdd: 12/32 steps (38%), 0.52 steps/s, eta 38s, loss 1.93``."""
    unit = rec.get("unit") or "it"
    done, total = rec["done"], rec.get("total")
    count = f"{done:g}/{total:g} {unit}s ({done / total:.0%})" if total else f"{done:g} {unit}s"
    parts = [count, f"{rec['rate']:.3g} {unit}s/s", f"elapsed {_duration(rec['elapsed'])}"]
    if rec.get("eta") is not None:
        parts.append(f"eta {_duration(rec['eta'])}")
    known = {"event", "stage", "task", "done", "total", "unit", "rate", "elapsed", "eta"}
    parts += [f"{k.replace('_', '/')} {v}" for k, v in rec.items() if k not in known]
    stage = f"[{rec['stage']}] " if rec.get("stage") else ""
    return f"progress {stage}{rec['task']}: " + ", ".join(parts)
