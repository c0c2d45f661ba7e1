"""The whole pipeline on tiny models with every recovery method: sft, sdd, kd, sdd-kd and their
merge, evaluated with intervals, carded, and read back as a user would."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from conftest import chat_reply, make_tokenizer
from hubsdd.pipeline import runner
from hubsdd.hub import format_retention
from hubsdd.core.recipe import parse_recipe

METHODS = """\
distill:
  data: {path: INSTRUCTIONS}
  columns: {instruction: question, response: answer}
  generation: {max_new_tokens: 12, batch_size: 4}
finetune:
  variants:
    sft: {data: original}
    sdd: {data: distilled}
    kd: {data: original, loss: kd}
    sdd-kd: {data: distilled, loss: kd, learning_rate: 0.005}
  learning_rate: 0.01
  max_steps: 2
  batch_size: 3
  lora: {r: 4, alpha: 8, dropout: 0.0}
merge: {method: slerp, models: [sdd, sft]}
evaluate:
  tasks: [arc_easy, winogrande]
  num_fewshot: {arc_easy: 0, winogrande: 0}
  limit: 20
  speculative: null
  fidelity: {prompts: 3, max_new_tokens: 6}
card: {model_name: Tiny-SDD}
publish: {model_repo: me/tiny-sdd, dataset_repo: me/tiny-data}
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory):
    from conftest import CALIBRATION_TEXTS, INSTRUCTIONS, save_tiny
    import json

    tmp = tmp_path_factory.mktemp("pipeline")
    base = save_tiny(tmp / "tiny-llama")
    (tmp / "cal.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in CALIBRATION_TEXTS))
    (tmp / "ins.jsonl").write_text("".join(json.dumps(r) + "\n" for r in INSTRUCTIONS))
    text = f"""\
name: tiny-methods
runs_dir: {tmp / 'runs'}
base: {{model: hubsdd-tests/tiny-llama, path: {base}, license: apache-2.0}}
prune:
  blocks: 2
  calibration: {{path: {tmp / 'cal.jsonl'}, text_column: text, samples: 8, max_length: 32, batch_size: 4}}
""" + METHODS.replace("INSTRUCTIONS", str(tmp / "ins.jsonl"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = runner.run(parse_recipe(text))
    finally:
        torch.set_num_threads(threads)
    return results


def test_every_variant_reloads_with_stock_transformers_and_generates(finished) -> None:
    from transformers import AutoModelForCausalLM

    ft = finished["finetune"]
    assert {n: (v["data"], v["loss"]) for n, v in ft.outputs["variants"].items()} == {
        "sft": ("original", "ce"), "sdd": ("distilled", "ce"), "kd": ("original", "kd"), "sdd-kd": ("distilled", "kd")}
    assert ft.metrics["variants"]["sdd-kd"]["learning_rate"] == 0.005
    for name, info in ft.outputs["variants"].items():
        model = AutoModelForCausalLM.from_pretrained(ft.resolve(info["model_dir"]))
        assert model.config.num_hidden_layers == 4
        assert isinstance(chat_reply(model, make_tokenizer(), "What is 2 + 3?", max_new_tokens=4), str)


def test_evaluation_records_intervals_and_fidelity_for_every_model(finished) -> None:
    m = finished["evaluate"].metrics
    assert list(m["scores"]) == ["base", "pruned", "sft", "sdd", "kd", "sdd-kd", "merge"]
    evid = m["evidence"]
    assert evid["items"] == {"arc_easy": 20, "winogrande": 20}
    for name in m["scores"]:
        row = evid["models"][name]
        lo, hi = row["average"]["ci95"]
        assert lo <= row["average"]["value"] <= hi and hi - lo > 0.05  # 20 items: wide
        assert "margin_retention" in row
    assert evid["models"]["base"]["retention"]["value"] == pytest.approx(1.0)
    assert set(m["fidelity"]) == {"pruned", "sft", "sdd", "kd", "sdd-kd", "merge"}
    assert all(0 <= f["top1_agreement"] <= 1 and f["kl"] >= 0 for f in m["fidelity"].values())
    pairs = {(p["a"], p["b"]) for p in evid["paired"]}
    assert {("sdd", "sft"), ("kd", "sft"), ("sdd-kd", "sdd"), ("merge", "pruned"), ("pruned", "base")} <= pairs


def test_card_title_first_sentence_and_model_index_agree(finished) -> None:
    card = ModelCard.load(finished["card"].path("model_dir") / "README.md")
    text = card.text
    assert text.lstrip().startswith("# Tiny-SDD\n")
    assert "**Tiny-SDD** is [hubsdd-tests/tiny-llama]" in text
    assert card.data.eval_results and {r.dataset_type for r in card.data.eval_results} == {
        "allenai/ai2_arc", "allenai/winogrande"}
    meta = card.data.to_dict()
    assert meta["model-index"][0]["name"] == "Tiny-SDD"


def test_card_with_few_items_says_so_and_headlines_no_retention(finished) -> None:
    release = finished["card"].path("model_dir")
    text = (release / "README.md").read_text()
    assert "Too few items to tell these models apart" in text
    assert "keeps **" not in text  # no headline figure
    assert "Average (95% CI)" in text and "not significant" in text
    assert "| `sdd-kd`: KD (logit distillation) on self-distilled data |" in text
    assert "KD: forward KL(base ‖ model)" in text
    assert "#### Fidelity to the base model" in text
    block = ModelCard.load(release / "README.md").data.to_dict()["hubsdd"]["retention"]
    assert block["precise"] is False and block["items_per_task"] == 20 and len(block["ci95"]) == 2
    line = format_retention(block)
    assert "95% CI" in line and "too few items" in line
