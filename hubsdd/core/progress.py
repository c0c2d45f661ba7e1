"""Progress of long steps: the library reports it, whoever drives the library shows it.

Stages call :func:`task` around their long loops (downloading, block scoring, generation,
training, evaluation, uploading) and advance it; nothing is shown unless a :class:`Reporter` is
installed with :func:`reporting`. The CLI installs a rich progress display on a terminal; a
notebook or a test installs nothing and gets silence. Reporters never see tokens or file
contents, only counts and a few named figures (tokens/s, loss).
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Iterator, Protocol


class Reporter(Protocol):
    def start(self, key: int, description: str, total: float | None, unit: str) -> None: ...

    def advance(self, key: int, amount: float, fields: dict[str, Any]) -> None: ...

    def finish(self, key: int) -> None: ...


_state = threading.local()
_lock = threading.Lock()
_next_key = 0
_reporter: Reporter | None = None


class Task:
    """A running step: ``advance(n, **fields)`` adds ``n`` to its count and updates its fields
    (``loss=1.9``, ``tok_s=140``) as shown next to the bar."""

    def __init__(self, reporter: Reporter | None, key: int) -> None:
        self._reporter = reporter
        self.key = key
        self.done = 0.0
        self.fields: dict[str, Any] = {}
        self.started = time.monotonic()

    def advance(self, amount: float = 1, **fields: Any) -> None:
        self.done += amount
        self.fields.update(fields)
        if self._reporter is not None:
            self._reporter.advance(self.key, amount, dict(fields))

    def set_total(self, total: float | None) -> None:
        if self._reporter is not None and hasattr(self._reporter, "set_total"):
            self._reporter.set_total(self.key, total)


@contextlib.contextmanager
def task(description: str, total: float | None = None, unit: str = "it") -> Iterator[Task]:
    """A step with ``total`` units of work (None: unknown), shown while the block runs."""
    global _next_key
    with _lock:
        _next_key += 1
        key = _next_key
    reporter = _reporter
    if reporter is not None:
        reporter.start(key, description, total, unit)
    try:
        yield Task(reporter, key)
    finally:
        if reporter is not None:
            reporter.finish(key)


@contextlib.contextmanager
def reporting(reporter: Reporter | None) -> Iterator[None]:
    """Show every :func:`task` started inside the block through ``reporter``."""
    global _reporter
    before = _reporter
    _reporter = reporter
    try:
        yield
    finally:
        _reporter = before


class CallbackAdapter:
    """A ``transformers.TrainerCallback`` that advances a task once per optimizer step, with the
    latest logged loss (built lazily: transformers is a heavy import)."""

    @staticmethod
    def build(t: Task) -> Any:
        from transformers import TrainerCallback

        class StepProgress(TrainerCallback):
            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                loss = next((e["loss"] for e in reversed(state.log_history) if "loss" in e), None)
                t.advance(1, **({"loss": round(float(loss), 4)} if loss is not None else {}))

        return StepProgress()


def tqdm_class() -> type:
    """A tqdm class for libraries that take one (huggingface_hub's downloads): it draws nothing
    itself and reports to :func:`task` instead, its total kept up to date as the library grows it."""
    from tqdm.auto import tqdm

    class ProgressTqdm(tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._task: Task | None = None
            kwargs["disable"] = True  # hubsdd's reporter draws it
            desc = kwargs.get("desc") or "downloading"
            self._ctx = task(str(desc), total=kwargs.get("total") or None,
                             unit="byte" if kwargs.get("unit") == "B" else "file")
            self._task = self._ctx.__enter__()
            super().__init__(*args, **kwargs)

        @property
        def total(self) -> Any:  # noqa: D401 - tqdm's attribute
            return self.__dict__.get("_total")

        @total.setter
        def total(self, value: Any) -> None:
            self.__dict__["_total"] = value
            if self.__dict__.get("_task") is not None:
                self._task.set_total(value or None)

        def update(self, n: float = 1) -> Any:
            if self._task is not None and n:
                self._task.advance(n)
            return super().update(n)

        def close(self) -> None:
            ctx, self._ctx = getattr(self, "_ctx", None), None
            if ctx is not None:
                ctx.__exit__(None, None, None)
            super().close()

    return ProgressTqdm
