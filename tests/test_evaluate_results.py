"""Averages, retention and the card's model-index entries, on hand-made scores whose answer is known."""

from __future__ import annotations

import pytest

from hubsdd.stages.evaluate import results


def test_retention_and_average() -> None:
    scores = {"base": {"a": {"value": 0.8}, "b": {"value": 0.4}},
              "sdd": {"a": {"value": 0.6}, "b": {"value": 0.4}}}
    averages = {m: results.average_score(s) for m, s in scores.items()}
    ret = results.retention(scores, averages)
    assert averages == {"base": pytest.approx(0.6), "sdd": pytest.approx(0.5)}
    assert ret["sdd"] == {"a": pytest.approx(0.75), "b": pytest.approx(1.0), "average": pytest.approx(0.5 / 0.6)}
    assert results.retention({"sdd": scores["sdd"]}, averages) == {}  # no base, no retention


def test_retention_on_a_task_the_base_scores_zero_on_is_undefined() -> None:
    scores = {"base": {"a": {"value": 0.0}, "b": {"value": 0.5}}, "pruned": {"a": {"value": 0.25}, "b": {"value": 0.25}}}
    ret = results.retention(scores, {m: results.average_score(s) for m, s in scores.items()})
    assert ret["pruned"]["a"] is None and ret["pruned"]["b"] == pytest.approx(0.5)


def test_stderr_falls_back_to_the_items_where_lm_eval_gives_none() -> None:
    assert results.stderr_of({"stderr": 0.1, "item_scores": {"0": 1.0}}) == 0.1
    # four items, two right: sample sd sqrt(1/3), over sqrt(4)
    assert results.stderr_of({"stderr": None, "item_scores": {"0": 1, "1": 0, "2": 1, "3": 0}}) == \
        pytest.approx((1 / 3) ** 0.5 / 2)
    assert results.stderr_of({"stderr": None, "item_scores": {"0": 1.0}}) is None
