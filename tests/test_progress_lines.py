"""Progress outside a terminal: with a fake clock (no sleeps), a long step prints a plain line at
most every 30 s and at least every 2 minutes, and --log-format json emits the same as events."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout

from hubsdd.core import progress
from hubsdd.cli.console import Output
from hubsdd.cli.progress_lines import HEARTBEAT, MIN_INTERVAL, TICK, LineReporter, format_line


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def drive(reporter: LineReporter, clock: Clock, schedule: list[float], total: int) -> None:
    """Advance one step at each time in ``schedule`` (seconds from the start), ticking every TICK
    seconds in between as the reporter's thread does."""
    start = clock.now
    with progress.reporting(reporter), progress.task("training sdd", total=total, unit="step") as bar:
        t = 0.0
        for at in schedule:
            while t + TICK <= at:
                t += TICK
                clock.now = start + t
                reporter.tick()
            clock.now = start + at
            bar.advance(1, loss=round(2.0 - at / 1000, 3))


def gaps(times: list[float], start: float) -> list[float]:
    points = [start, *times]
    return [b - a for a, b in zip(points, points[1:])]


def test_lines_are_30s_to_2min_apart_fast_steps_slow_steps_and_a_stall() -> None:
    # fast steps (1 s), slow steps (45 s), then one step that takes 10 minutes
    schedule = [float(i) for i in range(1, 301)] + [300 + 45.0 * i for i in range(1, 9)] + [660 + 600.0]
    clock, lines = Clock(), []
    reporter = LineReporter(lambda rec: lines.append((clock.now, rec)), clock=clock, ticker=False)
    drive(reporter, clock, schedule, total=len(schedule))
    times = [t for t, _ in lines]
    assert len(times) > 10
    between = gaps(times, 1000.0)
    assert min(between) >= MIN_INTERVAL and max(between) <= 120, between
    assert max(between) <= HEARTBEAT + TICK
    # the stall is covered by heartbeats: several lines while the count stood still
    stalled = [rec for t, rec in lines if 1660 < t < 2260]
    assert len(stalled) >= 5 and len({rec["done"] for rec in stalled}) == 1
    rec = lines[0][1]
    assert rec["task"] == "training sdd" and rec["total"] == len(schedule) and "loss" in rec and rec["eta"] > 0
    text = format_line({**rec, "stage": "finetune"})
    assert text.startswith("progress [finetune] training sdd: 30/") and "steps/s" in text and "eta " in text \
        and "loss " in text
    reporter.close()


def test_nothing_before_30s_and_nothing_after_the_step_ends() -> None:
    clock, lines = Clock(), []
    reporter = LineReporter(lambda rec: lines.append(rec), clock=clock, ticker=False)
    drive(reporter, clock, [5.0, 10.0, 29.0], total=3)
    clock.now += 600
    reporter.tick()
    assert lines == []


def test_the_cli_output_prints_lines_on_stderr_or_json_events_on_stdout() -> None:
    for fmt in ("text", "json"):
        out, err = io.StringIO(), io.StringIO()
        clock = Clock()
        output = Output(log_format=fmt)
        output.lines = output.line_reporter(clock=clock, ticker=False)
        output.set_stage("finetune")
        with redirect_stdout(out), redirect_stderr(err):
            drive(output.lines, clock, [float(i) for i in range(1, 200)], total=199)
            output.close()
        if fmt == "text":
            assert out.getvalue() == ""
            got = err.getvalue().splitlines()
            assert got and all(line.startswith("progress [finetune] training sdd: ") for line in got)
        else:
            assert err.getvalue() == ""
            events = [json.loads(line) for line in out.getvalue().splitlines()]
            assert events and all(e["event"] == "progress" and e["stage"] == "finetune" for e in events)
            assert {"done", "total", "rate", "eta", "loss"} <= set(events[0])
