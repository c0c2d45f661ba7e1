"""The seconds of each training step, as a Trainer callback: what bench/train_step.py and
bench/kd_cache.py time (the Trainer's own figures include data loading and logging)."""

from __future__ import annotations

import time
from typing import Any


def step_clock() -> Any:
    """A new ``TrainerCallback`` whose ``times`` lists each step's wall seconds."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.started = 0.0

        def on_step_begin(self, *a: Any, **k: Any) -> None:
            self.started = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            self.times.append(time.perf_counter() - self.started)

    return StepClock()
