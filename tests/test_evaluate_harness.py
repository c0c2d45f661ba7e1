"""Reading lm-eval's results: each task's primary metric, per-item outcomes and chance, and the
bookkeeping errors; a real score on SmolLM2 (slow)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import needs_smollm2
from test_evaluate_speculative import load

from hubsdd.core.errors import StageError
from hubsdd.stages.evaluate.harness import evaluate_model, summarize
from hubsdd.stages.evaluate.offline import prepare_offline_tasks
from hubsdd.stages.evaluate.tasks import PreparedTask


def prepared_task(name: str, items: list[int], leaves: list[str] | None = None) -> PreparedTask:
    leaves = leaves or [name]
    return PreparedTask(name=name, num_fewshot=0, split="test", items=items, pool=100, fewshot_source="none",
                        dataset="x", leaves=leaves, item_of={leaves[0]: dict(enumerate(items))})


def test_summary_reads_each_tasks_primary_metric_and_per_item_outcomes() -> None:
    """A hand-made lm-eval result: GSM8K scored by the strict match (not flexible-extract), ARC by
    acc_norm; multiple-choice items have a chance score of 1/choices, generated answers 0."""
    raw = {
        "results": {"gsm8k": {"exact_match,strict-match": 0.5, "exact_match_stderr,strict-match": 0.5,
                              "exact_match,flexible-extract": 1.0, "alias": "gsm8k"},
                    "arc_easy": {"acc,none": 1.0, "acc_norm,none": 0.0, "acc_norm_stderr,none": "N/A"}},
        "versions": {"gsm8k": 3.0, "arc_easy": 1.0},
        "n-samples": {"gsm8k": {"effective": 2}, "arc_easy": {"effective": 1}},
        "samples": {
            "gsm8k": [{"doc_id": 0, "filter": "strict-match", "exact_match": 1.0, "filtered_resps": ["42"]},
                      {"doc_id": 0, "filter": "flexible-extract", "exact_match": 0.0, "filtered_resps": ["4"]},
                      {"doc_id": 1, "filter": "strict-match", "exact_match": 0.0, "filtered_resps": ["[invalid]"]},
                      {"doc_id": 1, "filter": "flexible-extract", "exact_match": 1.0, "filtered_resps": ["7"]}],
            "arc_easy": [{"doc_id": 0, "filter": "none", "acc": 1.0, "acc_norm": 0.0,
                          "filtered_resps": [(-1.0, False), (-2.0, False), (-3.0, False), (-4.0, False)]}],
        },
    }
    prepared = {"gsm8k": prepared_task("gsm8k", [17, 40]), "arc_easy": prepared_task("arc_easy", [5])}
    out = summarize(raw, prepared)
    assert out["gsm8k"]["value"] == 0.5 and out["gsm8k"]["metric"] == "exact_match, strict-match"
    assert out["gsm8k"]["item_scores"] == {"17": 1.0, "40": 0.0} and out["gsm8k"]["item_chance"] == {"17": 0.0, "40": 0.0}
    assert out["gsm8k"]["metrics"]["exact_match,flexible-extract"] == 1.0 and out["gsm8k"]["n_samples"] == 2
    assert out["arc_easy"]["value"] == 0.0 and out["arc_easy"]["stderr"] is None  # "N/A" is no number
    assert out["arc_easy"]["item_scores"] == {"5": 0.0} and out["arc_easy"]["item_chance"] == {"5": 0.25}


def test_outcomes_missing_or_for_unsampled_docs_are_errors() -> None:
    raw = {"results": {"arc_easy": {"acc_norm,none": 0.5}}, "n-samples": {},
           "samples": {"arc_easy": [{"doc_id": 0, "filter": "none", "acc_norm": 1.0, "filtered_resps": []}]}}
    with pytest.raises(StageError, match="1 of 2 items"):
        summarize(raw, {"arc_easy": prepared_task("arc_easy", [3, 4])})
    raw["samples"]["arc_easy"][0]["doc_id"] = 9
    with pytest.raises(StageError, match="doc 9"):
        summarize(raw, {"arc_easy": prepared_task("arc_easy", [3])})
    with pytest.raises(StageError, match="no result for task 'piqa'"):
        summarize(raw, {"piqa": prepared_task("piqa", [3])})


@pytest.mark.slow
@needs_smollm2
def test_smollm2_arc_easy(tmp_path: Path) -> None:
    """SmolLM2-135M-Instruct on 10 ARC-Easy items, 0-shot: a real score through the offline task."""
    import time

    from conftest import load_smollm2
    from hubsdd.core.models import save_model as save

    model, tok = load_smollm2()
    save(model, tok, tmp_path / "smollm2")
    model, tok = load(tmp_path / "smollm2")
    prepared = prepare_offline_tasks(["arc_easy"], {"arc_easy": 0}, 10, 1234, tmp_path / "tasks")
    started = time.time()
    raw = evaluate_model(model, tok, prepared, hub=False, task_dir=tmp_path / "tasks", seed=1234, batch_size=8)
    seconds = time.time() - started
    summary = summarize(raw, prepared)["arc_easy"]
    assert summary["n_samples"] == 10 and 0.0 <= summary["value"] <= 1.0
    # 10 items x 4 choices = 40 log-likelihood requests
    print(f"arc_easy acc_norm={summary['value']:.2f} ({40 / seconds:.1f} requests/s incl. task setup)")
