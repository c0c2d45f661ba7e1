"""The whole product on the real model: `hubsdd publish` of the demo recipe to the test Hub, then
`hubsdd pull`, then stock transformers loading from the Hub endpoint.

This is the path a user takes; CI runs it (marked slow). It covers distillation and fine-tuning of
both variants on SmolLM2, the merge, the evaluation, the cards and the Hub round trip.
"""

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from huggingface_hub import DatasetCard, ModelCard, hf_hub_download

from conftest import chat_reply, needs_smollm2, set_at
from hub_fixtures import TOKEN
from hubsdd.cli import main

pytestmark = [pytest.mark.slow, needs_smollm2]

DEMO = Path(__file__).parent.parent / "recipes" / "smollm2-135m-demo.yaml"
MODEL_REPO = "alice/SmolLM2-26L-sdd"
DATASET_REPO = "alice/SmolLM2-gsm8k-self-distilled"


def gsm8k_final_answer(solution: str) -> str:
    """GSM8K's own answer: what follows the solution's last '####', without thousands commas. The
    test's rule, independent of the product's extraction."""
    return solution.rsplit("####", 1)[1].strip().replace(",", "")


def numbers_in(text: str) -> set[float]:
    return {float(n) for n in re.findall(r"\d+(?:\.\d+)?", text.replace(",", ""))}


def files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


# The demo recipe with smaller budgets (CI's time on the slowest 2-core machines): every stage, model
# and setting is the demo's; only these numbers shrink.
BUDGETS = {"distill.data.limit": 8, "finetune.max_steps": 3, "evaluate.limit": 8, "evaluate.fidelity.prompts": 2,
           "evaluate.fidelity.max_new_tokens": 16, "evaluate.speculative.prompts": 1,
           "evaluate.speculative.max_new_tokens": 16}


def e2e_recipe(runs_dir: Path) -> dict:
    data = yaml.safe_load(DEMO.read_text())
    data["name"], data["runs_dir"] = "e2e", str(runs_dir)
    for path, value in BUDGETS.items():
        before = set_at(data, path, value)
        assert isinstance(before, int) and before > value, path  # a smaller budget of the demo's own
    return data


def test_demo_publish_pull_and_load_from_the_hub(tmp_path, hub_server, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    recipe = tmp_path / "demo.yaml"
    recipe.write_text(yaml.safe_dump(e2e_recipe(tmp_path / "runs"), sort_keys=False))
    args = ["publish", str(recipe), "--model-repo", MODEL_REPO, "--dataset-repo", DATASET_REPO]
    assert main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    for stage in ("base", "prune", "distill", "finetune", "merge", "evaluate", "card"):
        assert f"[{stage}] done" in out
    run_dir = tmp_path / "runs" / "e2e"

    # --- the model repo: one hubsdd commit holding the release
    commits = [c for c in hub_server.commits(MODEL_REPO) if c.parents]
    assert len(commits) == 1
    files = set(hub_server.files(MODEL_REPO))
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "recipe.yaml",
            "hubsdd/evaluate.json", "plots/prune_heatmap.png", "plots/finetune_loss_curve.png",
            "plots/evaluate_task_bars.png"} <= files

    # --- the card, read back from the server, says what the run measured
    card = ModelCard.load(MODEL_REPO)
    meta = card.data.to_dict()
    evaluate = json.loads((run_dir / "evaluate" / "stage.json").read_text())["metrics"]
    prune = json.loads((run_dir / "prune" / "stage.json").read_text())["metrics"]
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["datasets"] == [DATASET_REPO] and meta["license"] == "apache-2.0"
    assert meta["hubsdd"]["release"] == "merge"
    assert meta["hubsdd"]["prune"]["layers_after"] == 26 == prune["layers_after"]
    expected = {(evaluate["tasks"][t]["dataset_id"], s["metric"]): round(s["value"], 6)
                for t, s in evaluate["scores"]["merge"].items()}
    got = {(r.dataset_type, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert got == expected and len(got) == 3
    retention = meta["hubsdd"]["retention"]
    assert retention["value"] == pytest.approx(evaluate["retention"]["merge"]["average"], abs=1e-6)
    lo, hi = retention["ci95"]
    assert lo <= retention["value"] <= hi and retention["items_per_task"] == 8
    assert retention["precise"] is False  # 8 items per task cannot tell the models apart
    body = card.text
    name = meta["model-index"][0]["name"]
    assert body.lstrip().startswith(f"# {name}\n") and f"**{name}** is [HuggingFaceTB/SmolLM2-135M-Instruct]" in body
    assert "Too few items to tell these models apart" in body and "keeps **" not in body
    assert "Fidelity to the base model" in body
    for row in ("base (unpruned)", "pruned, not fine-tuned", "SDD (self-data distilled)", "SFT (original data)",
                "merge (slerp of sdd + sft)"):
        assert row in body
    assert "## Training" in body and "rewrites kept" in body and "Speculative decoding" in body
    assert "Removed layers (0-based)" in body and "merge_method: slerp" in body

    # --- the dataset repo: the distilled data with verdicts, and its card
    parquet = hf_hub_download(DATASET_REPO, "data/train.parquet", repo_type="dataset")
    rows = pq.read_table(parquet).to_pylist()
    assert len(rows) == 8
    for row in rows:
        assert row["selected"] == (row["rewrite"] if row["verdict"] == "accepted" else row["original"])
        gold = gsm8k_final_answer(row["original"])
        if row["verdict"] == "accepted":  # the final-number checker kept only rewrites with GSM8K's answer
            assert (row["label"], row["answer"]) == (gold, gold)
            assert abs(float(gold)) in numbers_in(row["rewrite"])
        elif row["reason"] == "wrong-answer":
            assert row["label"] == gold and row["answer"] != gold
        elif row["reason"] == "too-short":  # the demo's min_length_ratio: 0.5
            assert len(row["rewrite"].split()) < 0.5 * len(row["original"].split())
    distill = json.loads((run_dir / "distill" / "stage.json").read_text())["metrics"]
    assert distill["accepted"] == sum(r["verdict"] == "accepted" for r in rows)
    dcard = DatasetCard.load(DATASET_REPO, repo_type="dataset")
    assert "self-distilled" in dcard.text.lower() or "self-data distillation" in dcard.text.lower()
    assert "`too-short`: the rewrite has fewer words than 50% of the original response's" in dcard.text

    # --- stock transformers loads model and tokenizer straight from the endpoint, and generates
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(MODEL_REPO)
    tok = AutoTokenizer.from_pretrained(MODEL_REPO)
    assert model.config.num_hidden_layers == 26
    assert chat_reply(model, tok, "What is 2 + 3?", max_new_tokens=16).strip()

    # --- publishing again changes nothing on the Hub
    assert main(args) == 0
    assert "unchanged" in capsys.readouterr().out
    assert len([c for c in hub_server.commits(MODEL_REPO) if c.parents]) == 1

    # --- pull verifies files and recipe against the card
    assert main(["pull", MODEL_REPO, "--local-dir", str(tmp_path / "pulled"), "--allow-unsigned"]) == 0
    out = capsys.readouterr().out
    assert "Verified" in out and "30 -> 26" in out
    assert "retention:" in out and "95% CI" in out and "too few items to tell the models apart" in out

    # --- the token never reached a file of the run, the download or the server's storage
    for root in (tmp_path / "runs", tmp_path / "pulled", tmp_path / "hub-storage"):
        assert files_containing(root, TOKEN.encode()) == []
