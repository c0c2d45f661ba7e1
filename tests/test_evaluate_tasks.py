"""Task names, shots and item sampling: the same items for every model, changed only by the seed."""

from __future__ import annotations

import pytest

from hubsdd.core.errors import StageError
from hubsdd.stages.evaluate import tasks
from hubsdd.core.recipe import EvaluateSection


def test_sample_items_and_holdout() -> None:
    fewshot, pool = tasks.fewshot_holdout(1000, "x")
    assert len(fewshot) == 100 and not set(fewshot) & set(pool) and len(pool) == 900
    assert fewshot == tasks.fewshot_holdout(1000, "x")[0] != tasks.fewshot_holdout(1000, "y")[0]
    assert len(tasks.fewshot_holdout(50, "x")[0]) == 10  # a fifth of a small split
    assert tasks.sample_items(pool, None, 0, "x") == pool
    assert tasks.sample_items(pool, 10, 0, "x") == tasks.sample_items(pool, 10, 0, "x") != tasks.sample_items(pool, 10, 0, "y")
    assert tasks.sample_items(pool, 10, 0, "x") != tasks.sample_items(pool, 10, 1, "x")


def test_offsets_give_disjoint_items_from_the_same_order() -> None:
    pool = list(range(200))
    test = tasks.sample_items(pool, 40, 5, "t")
    dev = tasks.sample_items(pool, 40, 5, "t", offset=40)
    assert len(test) == len(dev) == 40 and not set(test) & set(dev)
    assert sorted(test + dev) == tasks.sample_items(pool, 80, 5, "t")


def test_openllm_v1_is_hub_mode_with_leaderboard_shots() -> None:
    hub, names, shots = tasks.resolve_tasks(EvaluateSection(tasks=["openllm-v1"], num_fewshot={"gsm8k": 2}))
    assert hub and names == ["arc_challenge", "hellaswag", "mmlu", "truthfulqa_mc2", "winogrande", "gsm8k"]
    assert shots == {"arc_challenge": 25, "hellaswag": 10, "mmlu": 5, "truthfulqa_mc2": 0, "winogrande": 5, "gsm8k": 2}
    hub, names, shots = tasks.resolve_tasks(EvaluateSection(tasks=["piqa", "arc_easy"]))
    assert not hub and shots == {"piqa": 0, "arc_easy": 25}
    hub, _, shots = tasks.resolve_tasks(EvaluateSection(tasks=["mmlu_anatomy"], source="hub"))
    assert hub and shots == {"mmlu_anatomy": None}  # lm-eval's own default


def test_shots_for_a_task_not_evaluated_are_refused() -> None:
    with pytest.raises(StageError, match="hellaswag") as err:
        tasks.resolve_tasks(EvaluateSection(tasks=["arc_easy"], num_fewshot={"hellaswag": 3}))
    assert "arc_easy" in err.value.fix


def test_primary_metrics_are_the_leaderboards() -> None:
    assert tasks.primary_metric("arc_challenge").key == "acc_norm,none"
    assert tasks.primary_metric("hellaswag").key == "acc_norm,none"
    assert tasks.primary_metric("gsm8k").key == "exact_match,strict-match"
    assert tasks.primary_metric("gsm8k").stderr_key == "exact_match_stderr,strict-match"
    assert tasks.primary_metric("mmlu_anatomy").key == "acc,none"  # unknown tasks: accuracy
