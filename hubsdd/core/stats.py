"""Uncertainty of evaluation figures: intervals for averages and retention, paired differences.

Every model of a run is scored on the same items, so two models are compared item by item (a
*paired* comparison): what varies between resamples is which items were drawn, and that moves
both models together. The interval of a difference is then much narrower than the two models'
separate standard errors suggest, and it is the one that says whether one model is better.

Everything here is one stratified bootstrap over items with a fixed seed, so every figure is
reproducible: each resample draws, for every task independently, as many items as the task has,
with replacement, *the same draw for every model*; a model's average is the equal-weight mean of
its task means (the "average" the card reports). Intervals are the 2.5th and 97.5th percentiles
of the resampled statistic (percentile bootstrap). A difference is *significant* when its
interval excludes zero.

Inputs are per-item scores ``{model: {task: {item_id: score}}}`` with scores in [0, 1], and for
margin retention each item's chance score (1 / number of choices).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

ITERATIONS = 10_000
SEED = 20241009  # any fixed value; this one is the seed paper's arXiv number
# The card headlines a retention figure only when the release's average is known to within this
# many points (half-width of its 95% interval); otherwise it says the items are too few.
HEADLINE_HALF_WIDTH = 0.03

PerItem = Mapping[str, Mapping[str, float]]  # task -> item id -> score


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    @property
    def significant(self) -> bool:
        """The interval excludes zero (read for a difference)."""
        return bool(self.low > 0 or self.high < 0)

    def as_dict(self) -> dict:
        return {"value": self.value, "ci95": [self.low, self.high]}


def _interval(samples: np.ndarray) -> Interval:
    observed, rest = float(samples[0]), samples[1:]
    rest = rest[np.isfinite(rest)]
    if rest.size == 0 or not np.isfinite(observed):
        return Interval(observed, float("nan"), float("nan"))
    low, high = np.percentile(rest, [2.5, 97.5])
    return Interval(observed, float(low), float(high))


class Bootstrap:
    """Resampled task means of several models over the same resampled items.

    ``models`` maps a name to its per-item scores; tasks are those every model has, items those
    every model scored. Row 0 of every array is the observed statistic, rows 1.. the resamples."""

    def __init__(self, models: Mapping[str, PerItem], *, iterations: int = ITERATIONS, seed: int = SEED) -> None:
        if not models:
            raise ValueError("no models to compare")
        names = list(models)
        self.tasks = [t for t in models[names[0]] if all(t in models[m] for m in names)]
        if not self.tasks:
            raise ValueError("the models share no task")
        rng = np.random.default_rng(seed)
        self.items: dict[str, int] = {}
        self.task_means: dict[str, dict[str, np.ndarray]] = {m: {} for m in names}
        for task in self.tasks:
            ids = sorted(set.intersection(*(set(models[m][task]) for m in names)), key=str)
            if not ids:
                raise ValueError(f"no item of task {task!r} is scored for every model")
            self.items[task] = len(ids)
            idx = rng.integers(0, len(ids), size=(iterations, len(ids)))
            for m in names:
                scores = np.array([float(models[m][task][i]) for i in ids], dtype=np.float64)
                self.task_means[m][task] = np.concatenate([[scores.mean()], scores[idx].mean(axis=1)])

    def _avg(self, model: str, tasks: list[str] | None = None) -> np.ndarray:
        tasks = tasks or self.tasks
        return sum(self.task_means[model][t] for t in tasks) / len(tasks)

    def average(self, model: str) -> Interval:
        return _interval(self._avg(model))

    def task(self, model: str, task: str) -> Interval:
        return _interval(self.task_means[model][task])

    def difference(self, a: str, b: str, task: str | None = None) -> Interval:
        """mean(a) - mean(b), on the average (``task=None``) or on one task."""
        tasks = [task] if task else None
        return _interval(self._avg(a, tasks) - self._avg(b, tasks))

    def retention(self, model: str, base: str, chance: str | None = None, task: str | None = None) -> Interval:
        """mean(model) / mean(base); with ``chance`` (the name of the chance scores) the margin
        retention (mean(model) - mean(chance)) / (mean(base) - mean(chance))."""
        tasks = [task] if task else None
        floor = self._avg(chance, tasks) if chance else 0.0
        with np.errstate(divide="ignore", invalid="ignore"):
            return _interval((self._avg(model, tasks) - floor) / (self._avg(base, tasks) - floor))


def average(model: PerItem, **kw: int) -> Interval:
    """A model's equal-weight average over tasks, with its 95% interval."""
    return Bootstrap({"m": model}, **kw).average("m")


def paired_difference(a: PerItem, b: PerItem, **kw: int) -> Interval:
    """average(a) - average(b) over the items both have, with its paired 95% interval."""
    return Bootstrap({"a": a, "b": b}, **kw).difference("a", "b")
