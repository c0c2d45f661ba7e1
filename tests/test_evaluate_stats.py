"""Paired intervals and significance on hand-made per-item results whose answer is known."""

from __future__ import annotations

import math

import pytest

from hubsdd.core import stats


def items(scores: list[float]) -> dict[str, float]:
    return {str(i): s for i, s in enumerate(scores)}


def test_identical_models_differ_by_zero_and_not_significantly() -> None:
    a = {"t1": items([1, 0, 1, 1, 0] * 40), "t2": items([0, 1] * 100)}
    d = stats.paired_difference(a, a)
    assert d.value == 0.0 and d.low == 0.0 and d.high == 0.0 and not d.significant


def test_a_model_that_wins_on_known_items_is_significantly_better() -> None:
    # 400 items; b is right on 200; a is right on the same 200 plus 40 more, wrong nowhere b is right
    b = [1] * 200 + [0] * 200
    a = [1] * 240 + [0] * 160
    d = stats.paired_difference({"t": items(a)}, {"t": items(b)})
    assert d.value == pytest.approx(0.10)
    # the paired (McNemar) standard error: sqrt(p_discordant) / sqrt(n) = sqrt(40/400) / 20
    se = math.sqrt(40 / 400) / math.sqrt(400)
    assert d.low == pytest.approx(0.10 - 1.96 * se, abs=0.006) and d.high == pytest.approx(0.10 + 1.96 * se, abs=0.006)
    assert d.significant
    # unpaired, the same two scores would give a much wider interval
    unpaired = 1.96 * math.sqrt(0.6 * 0.4 / 400 + 0.5 * 0.5 / 400)
    assert d.half_width < 0.5 * unpaired


def test_wins_and_losses_that_cancel_are_not_significant() -> None:
    a = [1, 0] * 100 + [1] * 100
    b = [0, 1] * 100 + [1] * 100
    d = stats.paired_difference({"t": items(a)}, {"t": items(b)})
    assert d.value == 0.0 and d.low < 0 < d.high and not d.significant


def test_few_items_give_wide_intervals() -> None:
    base = {"t": items([1] * 7 + [0] * 13)}  # 35% on 20 items
    avg = stats.average(base)
    assert avg.value == pytest.approx(0.35) and avg.half_width > 0.15


def test_average_is_equal_weight_over_tasks_and_retention_uses_chance() -> None:
    model = {"a": items([1] * 30 + [0] * 70), "b": items([1] * 80 + [0] * 20)}
    base = {"a": items([1] * 40 + [0] * 60), "b": items([1] * 90 + [0] * 10)}
    chance = {"a": items([0.25] * 100), "b": items([0.5] * 100)}
    boot = stats.Bootstrap({"m": model, "base": base, "chance": chance})
    assert boot.average("m").value == pytest.approx((0.3 + 0.8) / 2)
    assert boot.retention("m", "base").value == pytest.approx(0.55 / 0.65)
    assert boot.retention("m", "base", "chance").value == pytest.approx((0.55 - 0.375) / (0.65 - 0.375))
    r = boot.retention("m", "base")
    assert r.low < r.value < r.high
