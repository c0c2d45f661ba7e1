"""Hub mode's bookkeeping: lm-eval's task objects, item sampling through ``samples``, groups sampled
in part, and the error when the Hub cannot be reached. (Against a Hub serving the benchmarks:
tests/test_evaluate_hub_mode.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_evaluate_speculative import load, save_model

from hubsdd.core.errors import HubError
from hubsdd.stages.evaluate import hub_tasks
from hubsdd.stages.evaluate.harness import evaluate_model, summarize
from hubsdd.stages.evaluate.offline import prepare_offline_tasks


def test_hub_mode_without_network_is_a_hub_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import lm_eval.tasks

    class OfflineManager:
        all_tasks = ["arc_challenge"]

        def load(self, names):
            raise ConnectionError("Couldn't reach 'allenai/ai2_arc' on the Hub")

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", OfflineManager)
    with pytest.raises(HubError, match="allenai/ai2_arc") as err:
        hub_tasks.prepare_hub_tasks(["arc_challenge"], {"arc_challenge": 25}, 5, 0)
    assert "offline" in (err.value.fix or "")


def test_hub_mode_code_path_on_local_tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hub mode (lm-eval's task objects + `samples` indices + group aggregation), with lm-eval's
    task index pointed at local task files instead of the Hub."""
    import lm_eval.tasks

    prepare_offline_tasks(["arc_easy", "mmlu"], {"arc_easy": 0, "mmlu": 0}, 12, 5, tmp_path / "tasks")
    real = lm_eval.tasks.TaskManager
    monkeypatch.setattr(lm_eval.tasks, "TaskManager",
                        lambda *a, **k: real(include_path=str(tmp_path / "tasks"), include_defaults=False))
    prepared = hub_tasks.prepare_hub_tasks(["arc_easy", "mmlu"], {"arc_easy": 0, "mmlu": 0}, 5, 1)
    assert prepared["mmlu"].aggregate and len(prepared["mmlu"].items) == 5 and prepared["mmlu"].pool == 12
    assert sum(len(v) for v in prepared["mmlu"].samples.values()) == 5
    model, tok = load(save_model(tmp_path / "m", layers=2, seed=3))
    raw = evaluate_model(model, tok, prepared, hub=True, task_dir=None, seed=1, batch_size=8)
    summary = summarize(raw, prepared)
    assert summary["arc_easy"]["n_samples"] == 5 and summary["mmlu"]["n_samples"] == 5  # not all 12
    leaves = [(raw["results"][leaf]["acc,none"], raw["n-samples"][leaf]["effective"]) for leaf in prepared["mmlu"].leaves]
    assert summary["mmlu"]["value"] == pytest.approx(sum(a * n for a, n in leaves) / 5)
    # the evaluated docs are the sampled ones, by lm-eval's doc ids
    for leaf, ids in prepared["mmlu"].samples.items():
        assert sorted(int(s["doc_id"]) for s in raw["samples"][leaf]) == sorted(ids)
