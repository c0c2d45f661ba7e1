"""Averages, retention and the card's model-index entries, on hand-made scores whose answer is known."""

from __future__ import annotations

import pytest

from hubsdd.evaluate import results
from hubsdd.evaluate.tasks import PreparedTask


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


def test_card_entries_name_the_dataset_shots_and_items() -> None:
    prepared = {"gsm8k": PreparedTask(name="gsm8k", num_fewshot=5, split="test", items=[3, 9], pool=10,
                                      fewshot_source="x", dataset="x"),
                "mmlu_anatomy": PreparedTask(name="mmlu_anatomy", num_fewshot=5, split="test", items=[1], pool=4,
                                             fewshot_source="x", dataset="x")}
    entries = results.card_eval_results({"sdd": {"gsm8k": {"value": 0.5}, "mmlu_anatomy": {"value": 1.0}}},
                                        prepared, hub=True)
    gsm8k, anatomy = entries
    assert gsm8k["model"] == "sdd" and gsm8k["dataset_type"] == "openai/gsm8k" and gsm8k["dataset_config"] == "main"
    assert gsm8k["dataset_name"] == "GSM8K (5-shot, 2 items, Hub)"
    assert gsm8k["metric_type"] == "exact_match" and gsm8k["metric_value"] == 0.5
    assert gsm8k["dataset_args"] == {"num_few_shot": 5} and gsm8k["dataset_split"] == "test"
    # a task hubsdd has no dataset entry for is named by lm-eval's task name
    assert anatomy["dataset_type"] == "mmlu_anatomy" and anatomy["metric_type"] == "acc"
