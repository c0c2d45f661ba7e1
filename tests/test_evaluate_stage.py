"""The evaluate stage through the runner: per-model results, retention, the card's model-index,
the evaluation section of the card, and the speculative-decoding figures.

One evaluation (three tiny models, two offline tasks, five items, 0-shot) runs once per module and
is shared by the assertions below; lm-eval is slow to start.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_evaluate_speculative import load, save_model, simulate_assisted

from hubsdd.stages.evaluate.offline import prepare_offline_tasks
from hubsdd.stages.evaluate.speculative import encode_prompts, speculative_prompts
from hubsdd.core.recipe import parse_recipe
from hubsdd.pipeline.runner import SPECS, StageResult, run_stage

SEED, LIMIT, DEV, TASKS = 3, 5, 3, ["arc_easy", "winogrande"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine spinning threads
    slow every op several-fold."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> StageResult:
    tmp = tmp_path_factory.mktemp("evaluate")
    base_dir = save_model(tmp / "base", layers=6, seed=0)
    prune_dir = tmp / "prune"
    save_model(prune_dir / "model", layers=4, seed=0)
    finetune_dir = tmp / "finetune"
    save_model(finetune_dir / "sdd" / "model", layers=4, seed=7)
    inputs = {
        "base": StageResult("base", tmp / "base-stage", {"fingerprint": "b" * 64,
                                                          "outputs": {"model_dir": str(base_dir), "hub_id": "t/tiny"}}),
        "prune": StageResult("prune", prune_dir, {"fingerprint": "p" * 64, "outputs": {"model_dir": "model"}}),
        "finetune": StageResult("finetune", finetune_dir, {"fingerprint": "f" * 64, "outputs": {
            "variants": {"sdd": {"model_dir": "sdd/model", "data": "distilled"}}}}),
    }
    recipe = parse_recipe(f"""\
name: tiny-eval
runs_dir: {tmp / 'runs'}
base: {{model: t/tiny, path: {base_dir}}}
prune:
  blocks: 2
  calibration: {{path: {tmp / 'calibration.jsonl'}, text_column: text}}
evaluate:
  tasks: {TASKS}
  num_fewshot: {{arc_easy: 0, winogrande: 0}}
  limit: {LIMIT}
  dev: {DEV}
  seed: {SEED}
  batch_size: 8
  speculative: {{prompts: 2, max_new_tokens: 8, num_assistant_tokens: 3}}
""")
    return run_stage(SPECS["evaluate"], recipe, inputs, "e" * 64)


def model_dirs(evaluated: StageResult) -> dict[str, Path]:
    return {m: Path(json.loads(evaluated.resolve(p).read_text())["model_dir"])
            for m, p in evaluated.outputs["results"].items()}


def test_results_json_per_model(evaluated: StageResult) -> None:
    assert evaluated.outputs["results"] == {m: f"results/{m}.json" for m in ("base", "pruned", "sdd")}
    record = json.loads(evaluated.resolve(evaluated.outputs["results"]["sdd"]).read_text())
    assert record["lm_eval_version"] and record["mode"] == "offline"
    arc = record["tasks"]["arc_easy"]
    assert arc["metric"] == "acc_norm" and arc["num_fewshot"] == 0 and arc["split"] == "validation"
    assert arc["items"] == 5 and arc["n_samples"] == 5 and len(arc["item_ids"]) == 5
    assert 0.0 <= arc["value"] <= 1.0 and "acc,none" in arc["metrics"] and arc["stderr"] is not None
    assert arc["lm_eval_configs"]["arc_easy"]["num_fewshot"] == 0
    # lm-eval's own task definition, reading the sampled items from a local file
    assert arc["lm_eval_configs"]["arc_easy"]["doc_to_text"] == "Question: {{question}}\nAnswer:"
    assert arc["lm_eval_configs"]["arc_easy"]["dataset_path"] == "json"
    assert record["tasks"]["winogrande"]["metric"] == "acc"
    # the per-item outcomes average to the task's score
    scores = arc["item_scores"]
    assert sorted(scores) == sorted(str(i) for i in arc["item_ids"])
    assert arc["value"] == pytest.approx(sum(scores.values()) / len(scores))


def test_same_items_for_every_model(evaluated: StageResult) -> None:
    ids = [json.loads(evaluated.resolve(p).read_text())["tasks"]["arc_easy"]["item_ids"]
           for p in evaluated.outputs["results"].values()]
    assert ids[0] == ids[1] == ids[2]


def test_dev_items_follow_the_test_items_and_have_their_own_evidence(evaluated: StageResult) -> None:
    dev = evaluated.metrics["dev"]
    assert dev["offset"] == LIMIT and dev["items"] == {"arc_easy": DEV, "winogrande": DEV} and dev["left_out"] == []
    assert set(dev["evidence"]["models"]) == {"base", "pruned", "sdd"}
    assert any(p["a"] == "sdd" and p["b"] == "pruned" for p in dev["evidence"]["paired"])
    assert evaluated.outputs["dev_results"] == {m: f"dev/{m}.json" for m in ("base", "pruned", "sdd")}
    for task in TASKS:
        test_ids = json.loads(evaluated.resolve("results/sdd.json").read_text())["tasks"][task]["item_ids"]
        dev_ids = json.loads(evaluated.resolve("dev/sdd.json").read_text())["tasks"][task]["item_ids"]
        assert len(dev_ids) == DEV and not set(dev_ids) & set(test_ids)
        # the next items of the same seeded order: what `offset: LIMIT, limit: DEV` selects
        with_offset = prepare_offline_tasks([task], {task: 0}, DEV, SEED, evaluated.dir.parent / "x", LIMIT)
        assert with_offset[task].items == dev_ids


def test_stage_metrics_schema(evaluated: StageResult) -> None:
    m = evaluated.metrics
    assert set(m["scores"]) == {"base", "pruned", "sdd"}
    assert set(m["scores"]["base"]["winogrande"]) == {"metric", "value", "stderr"}
    assert m["tasks"]["arc_easy"]["items"] == 5 and m["tasks"]["arc_easy"]["dataset_id"] == "allenai/ai2_arc"
    for model, avg in m["average"].items():
        values = [s["value"] for s in m["scores"][model].values()]
        assert avg == pytest.approx(sum(values) / len(values))
    assert (evaluated.dir / evaluated.outputs["plots"]["task_bars"]).read_bytes()[:4] == b"\x89PNG"


def test_retention_is_against_the_base_model(evaluated: StageResult) -> None:
    m = evaluated.metrics
    # the fixture's seeds give the base a non-zero average; were it zero, retention would be
    # undefined and this test must say so rather than pass vacuously
    assert m["average"]["base"] > 0
    ret = m["retention"]
    assert ret["base"]["average"] == pytest.approx(1.0)
    for model in ("pruned", "sdd"):
        assert ret[model]["average"] == pytest.approx(m["average"][model] / m["average"]["base"])
    assert m["evidence"]["models"]["sdd"]["retention"]["value"] == pytest.approx(ret["sdd"]["average"])


def test_speculative_figures_are_each_pruned_model_drafting_for_the_base(evaluated: StageResult) -> None:
    """The stage's counts equal greedy assisted decoding simulated with plain forward passes of
    the base and each draft, on prompts drawn from the evaluated items."""
    spec = evaluated.metrics["speculative"]
    assert set(spec) == {"pruned", "sdd"}
    dirs = model_dirs(evaluated)
    target, tok = load(dirs["base"])
    prepared = prepare_offline_tasks(TASKS, {t: 0 for t in TASKS}, LIMIT, SEED, evaluated.dir / "check-tasks")
    encoded = encode_prompts(tok, speculative_prompts(prepared, 2))
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    for name in ("pruned", "sdd"):
        draft, _ = load(dirs[name])
        expected = [0, 0]
        for enc in encoded:
            proposed, accepted = simulate_assisted(target, draft, enc["input_ids"][0].tolist(), 8, 3, eos)
            expected[0] += proposed
            expected[1] += accepted
        assert (spec[name]["draft_tokens_proposed"], spec[name]["accepted"]) == tuple(expected), name
        assert spec[name]["prompts"] == 2 and spec[name]["num_assistant_tokens"] == 3
        assert spec[name]["outputs_identical_to_plain"] == 1.0


def test_card_model_index_round_trip(evaluated: StageResult) -> None:
    """The card stage's own code turns the stage's entries into a model-index that parses back."""
    from huggingface_hub import ModelCard, ModelCardData

    from hubsdd.stages.card.stage import eval_results_for

    results = eval_results_for("sdd", {"evaluate": evaluated}, "tiny-sdd")
    assert {r.dataset_type for r in results} == {"allenai/ai2_arc", "allenai/winogrande"}
    text = ModelCardData(eval_results=results, model_name="tiny-sdd").to_yaml()
    card = ModelCard(f"---\n{text}\n---\n\n# tiny\n")
    parsed = {(r.dataset_type, r.metric_type): r for r in card.data.eval_results}
    scores = evaluated.metrics["scores"]["sdd"]
    assert set(parsed) == {("allenai/ai2_arc", "acc_norm"), ("allenai/winogrande", "acc")}
    assert parsed[("allenai/ai2_arc", "acc_norm")].metric_value == pytest.approx(scores["arc_easy"]["value"])
    assert parsed[("allenai/winogrande", "acc")].metric_value == pytest.approx(scores["winogrande"]["value"])
    arc = parsed[("allenai/ai2_arc", "acc_norm")]
    assert arc.dataset_split == "validation" and arc.dataset_config == "ARC-Easy"
    assert arc.dataset_args == {"num_few_shot": 0}
    assert "5 items" in arc.dataset_name and "offline" in arc.dataset_name
    assert arc.source_name == "hubsdd (lm-eval)" and arc.source_url.startswith("https://")
    assert card.data.model_name == "tiny-sdd"
    # another model's entries are not the release's
    other = {r.metric_value for r in eval_results_for("pruned", {"evaluate": evaluated}, "x")}
    assert other == {round(s["value"], 6) for s in evaluated.metrics["scores"]["pruned"].values()}


def _render_section(evaluated: StageResult, headline: bool, plots: dict | None = None, merge: bool = False) -> str:
    """The evaluation section as the card renders it, from the stage's typed record."""
    from types import SimpleNamespace

    from hubsdd.stages.card.stage import render_section
    from hubsdd.core.outputs import MergeOutputs, Typed, VariantOutput

    sdd = VariantOutput(model_dir="sdd/model", data="distilled", loss="ce", learning_rate=1e-4, train_log="x")
    ft = Typed(name="finetune", outputs=SimpleNamespace(variants={"sdd": sdd}), metrics=None)
    mg = Typed(name="merge", outputs=MergeOutputs(model_dir="model", config="mergekit.yaml", method="slerp",
                                                  models=["sdd", "sft"], config_text="merge_method: slerp\n"),
               metrics=None) if merge else None
    return render_section("sections/evaluation.md.j2", ev=evaluated.typed, ft=ft, mg=mg, plots=plots or {},
                          release="sdd", headline=headline)


def test_evaluation_section_renders(evaluated: StageResult) -> None:
    text = _render_section(evaluated, headline=False, plots={"evaluate": {"task_bars": "plots/evaluate_task_bars.png"}},
                           merge=True)
    assert "| base (unpruned) |" in text and "SDD (self-data distilled) **← this model**" in text
    score = evaluated.metrics["scores"]["pruned"]["arc_easy"]["value"]
    assert f"{score * 100:.1f}" in text
    assert "![Scores per task and model](plots/evaluate_task_bars.png)" in text
    assert "Acceptance rate" in text and "slower than plain decoding" in text
    assert f"| {evaluated.metrics['speculative']['sdd']['speedup']:.2f}× |" in text
    assert "```yaml\nmerge_method: slerp\n```" in text
    assert "None" not in text
    assert "Too few items to tell these models apart" in text and "| Model | vs base | vs pruned |" in text
    assert "#### Fidelity to the base model" in text


def test_evaluation_section_headlines_retention_only_with_enough_items(evaluated: StageResult) -> None:
    precise = _render_section(evaluated, headline=True)
    retained = evaluated.metrics["evidence"]["models"]["sdd"]["retention"]["value"]
    assert f"keeps **{retained * 100:.1f}%**" in precise and "Against the pruned model" in precise
    assert "Too few items" not in precise
    few = _render_section(evaluated, headline=False)
    assert "keeps **" not in few and "Too few items to tell these models apart" in few
