"""The terminal: what the CLI prints, where, and how (the library itself prints nothing).

Three modes, chosen by the CLI's global options:

* ``text`` (default): stage lines and the closing summary on stdout; hubsdd's log and progress
  bars (rich, with ETA) on stderr, the bars only when stderr is a terminal;
* ``--quiet``: only the result lines (the release, the URLs) and errors;
* ``--log-format json``: one JSON object per line on stdout (``{"stage", "event", "seconds",
  "metrics"}`` per stage, then a summary), for CI logs; no bars; the log stays on stderr.

Library warnings and progress bars (transformers, datasets, lm-eval, TRL, huggingface_hub) are
silenced unless ``-v``; hubsdd's own progress takes their place.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from typing import Any

from ..core import progress


def quiet_libraries() -> None:
    """Library progress bars and warnings drown the stage log on a terminal (``-v`` keeps them).

    The environment variables must be set before those libraries (and tqdm) are imported: tqdm
    reads ``TQDM_DISABLE`` once, at import."""
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    for category in (UserWarning, FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    try:
        import datasets
        import transformers

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - both are dependencies
        pass
    for name in ("lm_eval", "lm-eval", "mergekit", "trl", "peft", "accelerate", "httpx", "httpx2", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)


class RichReporter:
    """:mod:`hubsdd.core.progress` tasks as rich progress bars on stderr (count, elapsed, ETA, fields)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[unit]}"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
            console=self.console, transient=True,
        )
        self.ids: dict[int, Any] = {}
        self.progress.start()

    def start(self, key: int, description: str, total: float | None, unit: str) -> None:
        self.ids[key] = self.progress.add_task(description, total=total, unit=f"{unit}s", info="")

    def advance(self, key: int, amount: float, fields: dict[str, Any]) -> None:
        if key in self.ids:
            info = "  ".join(f"{k.replace('_', '/')} {v}" for k, v in fields.items())
            self.progress.update(self.ids[key], advance=amount, **({"info": info} if info else {}))

    def set_total(self, key: int, total: float | None) -> None:
        if key in self.ids:
            self.progress.update(self.ids[key], total=total)

    def finish(self, key: int) -> None:
        task_id = self.ids.pop(key, None)
        if task_id is not None:
            self.progress.remove_task(task_id)

    def close(self) -> None:
        self.progress.stop()


class _RichLogHandler(logging.Handler):
    """Log lines printed above the live bars instead of through them."""

    def __init__(self, console: Any) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        self.console.print(self.format(record), markup=False, highlight=False, soft_wrap=True)


class Output:
    """Where each kind of output goes, for one CLI invocation."""

    def __init__(self, log_format: str = "text", quiet: bool = False) -> None:
        self.json = log_format == "json"
        self.quiet = quiet
        self.reporter: RichReporter | None = None
        self.lines: Any = None  # a progress_lines.LineReporter where no terminal shows bars

    # ---- setup

    def setup(self, verbose: bool) -> None:
        level = logging.DEBUG if verbose else (logging.WARNING if self.quiet else logging.INFO)
        bars = not (self.json or self.quiet or verbose) and sys.stderr.isatty()
        if bars:
            self.reporter = RichReporter()
            handler: logging.Handler = _RichLogHandler(self.reporter.console)
        else:
            handler = logging.StreamHandler(sys.stderr)
            if not self.quiet:  # a CI log, nohup, a pipe: plain lines (or JSON events) every 30 s to 2 min
                self.lines = self.line_reporter()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
        root = logging.getLogger("hubsdd")
        root.handlers[:] = [handler]
        root.setLevel(level)
        root.propagate = False
        if not verbose:
            quiet_libraries()

    def line_reporter(self, **kwargs: Any) -> Any:
        from .progress_lines import LineReporter, format_line

        lock = threading.Lock()

        def emit(rec: dict[str, Any]) -> None:
            with lock:
                if self.json:
                    print(json.dumps(rec, default=str), flush=True)
                else:
                    print(format_line(rec), file=sys.stderr, flush=True)

        return LineReporter(emit, **kwargs)

    def set_stage(self, stage: str | None) -> None:
        if self.lines is not None:
            self.lines.stage = stage

    def progress(self) -> Any:
        return progress.reporting(self.reporter or self.lines)

    def close(self) -> None:
        if self.reporter is not None:
            self.reporter.close()
            self.reporter = None
        if self.lines is not None:
            self.lines.close()
            self.lines = None

    # ---- writing

    def line(self, text: str = "", *, result: bool = False) -> None:
        """A human line on stdout; ``result`` lines (what a command produced) survive --quiet."""
        if self.json or (self.quiet and not result):
            return
        if self.reporter is not None:
            self.reporter.console.file.flush()
        print(text, flush=True)

    def event(self, **fields: Any) -> None:
        """A JSON line on stdout (json mode only)."""
        if self.json:
            print(json.dumps(fields, default=str, sort_keys=False), flush=True)

    def warn(self, message: str, *, red: bool = False) -> None:
        """A warning on stderr whatever the mode (red on a terminal when ``red``), and a JSON event."""
        self.event(event="warning", message=message)
        color = red and (sys.stderr.isatty() or os.environ.get("GITHUB_ACTIONS") == "true") and not os.environ.get("NO_COLOR")
        text = f"warning: {message}"
        print(f"\x1b[1;31m{text}\x1b[0m" if color else text, file=sys.stderr, flush=True)

    def error(self, message: str, fix: str | None) -> None:
        self.close()
        self.event(event="error", message=message, fix=fix)
        print(f"error: {message}", file=sys.stderr)
        if fix:
            print(f"  fix: {fix}", file=sys.stderr)
