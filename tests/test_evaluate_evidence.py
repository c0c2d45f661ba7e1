"""What the evaluation shows: comparisons, retention and the headline rule, on hand-made per-item
results whose answer is known."""

from __future__ import annotations

import pytest
from test_evaluate_stats import items

from hubsdd.core import evidence


def test_evidence_marks_each_comparison_and_finds_pairs_either_way() -> None:
    n = 300
    base = {"t": items([1] * 150 + [0] * 150)}
    pruned = {"t": items([1] * 90 + [0] * 210)}
    sft = {"t": items([1] * 100 + [0] * 200)}
    sdd = {"t": items([1] * 100 + [0] * 200)}  # the same items right as sft
    chance = {"t": items([0.25] * n)}
    ev = evidence.build({"base": base, "pruned": pruned, "sft": sft, "sdd": sdd}, chance, iterations=2000)
    pairs = {(p["a"], p["b"]): p for p in ev["paired"]}
    assert set(pairs) == {("pruned", "base"), ("sft", "base"), ("sdd", "base"), ("sft", "pruned"),
                          ("sdd", "pruned"), ("sdd", "sft")}
    assert pairs[("pruned", "base")]["significant"] and pairs[("pruned", "base")]["diff"]["value"] == pytest.approx(-0.2)
    assert pairs[("sft", "pruned")]["significant"]  # 10 more right, none fewer
    assert not pairs[("sdd", "sft")]["significant"] and pairs[("sdd", "sft")]["diff"]["ci95"] == [0.0, 0.0]
    back = evidence.find_pair(ev, "base", "pruned")
    assert back["diff"]["value"] == pytest.approx(0.2) and back["diff"]["ci95"][0] > 0
    m = ev["models"]["sdd"]
    assert m["retention"]["value"] == pytest.approx(1 / 1.5)
    assert m["margin_retention"]["value"] == pytest.approx((1 / 3 - 0.25) / (0.5 - 0.25))
    assert ev["chance"] == {"t": pytest.approx(0.25)} and ev["items"] == {"t": n}
    assert not evidence.headline_ok(ev, "sdd")  # 300 items on one task: about ±5 points


def test_headline_needs_a_narrow_interval() -> None:
    many = {f"t{k}": items(([1] * 3 + [0] * 2) * 200) for k in range(6)}  # 6 x 1000 items
    ev = evidence.build({"base": many, "pruned": many}, iterations=1000)
    assert evidence.headline_ok(ev, "pruned")
    few = {"t": items([1] * 8 + [0] * 12)}
    assert not evidence.headline_ok(evidence.build({"base": few, "pruned": few}, iterations=1000), "pruned")


def test_no_margin_retention_where_the_base_is_not_above_chance() -> None:
    # task "hard": the base scores 26% on four-choice items (chance 25%): not above chance
    hard_base = items([1] * 26 + [0] * 74)
    hard_pruned = items([1] * 24 + [0] * 76)
    easy_base, easy_pruned = items([1] * 80 + [0] * 20), items([1] * 70 + [0] * 30)
    chance = {"hard": items([0.25] * 100), "easy": items([0.5] * 100)}
    ev = evidence.build({"base": {"hard": hard_base, "easy": easy_base},
                         "pruned": {"hard": hard_pruned, "easy": easy_pruned}}, chance, iterations=2000)
    assert ev["base_at_chance"] == ["hard"]
    pruned = ev["models"]["pruned"]
    assert "margin_retention" not in pruned["tasks"]["hard"]  # (0.24 - 0.25) / (0.26 - 0.25) = -100% would be noise
    assert pruned["tasks"]["easy"]["margin_retention"]["value"] == pytest.approx((0.7 - 0.5) / (0.8 - 0.5))
    assert pruned["margin_retention"]["value"] == pytest.approx((0.47 - 0.375) / (0.53 - 0.375))
    assert pruned["tasks"]["hard"]["retention"]["value"] == pytest.approx(24 / 26)  # raw retention stays
