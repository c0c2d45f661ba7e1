"""The card stage: release folder contents and model card metadata/body."""

import hashlib
from pathlib import Path

from huggingface_hub import ModelCard

from hubsdd.pipeline import runner
from hubsdd.pipeline.runner import rerender_card as rerender
from hubsdd.core.recipe import parse_recipe


def release_of(tiny_recipe_text, extra=""):
    results = runner.run(parse_recipe(tiny_recipe_text + extra))
    return results, results["card"].path("model_dir")


def test_card_metadata_follows_hub_conventions(tiny_recipe_text):
    results, release = release_of(tiny_recipe_text, "card:\n  tags: [tiny]\npublish:\n  model_repo: me/tiny-pruned\n")
    card = ModelCard.load(release / "README.md")
    data = card.data.to_dict()
    assert data["base_model"] == "hubsdd-tests/tiny-llama"  # the Hub id, not the local folder it loaded from
    assert data["base_model_relation"] == "finetune"
    assert data["license"] == "apache-2.0"
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-generation"
    assert {"hubsdd", "pruned", "tiny"} <= set(data["tags"])
    assert data["hubsdd"]["prune"]["removed_layers"] == results["prune"].metrics["removed_layers"]
    assert data["hubsdd"]["prune"]["layers_after"] == 4
    local_folder = parse_recipe(tiny_recipe_text).base.path
    assert local_folder and local_folder not in str(data)  # no local path in the metadata


def test_card_body_shows_removed_layers_usage_recipe_and_omits_unrun_sections(tiny_recipe_text):
    results, release = release_of(tiny_recipe_text, "publish:\n  model_repo: me/tiny-pruned\n")
    text = (release / "README.md").read_text()
    removed = results["prune"].metrics["removed_layers"]
    assert f"Removed layers (0-based): **{', '.join(map(str, removed))}**" in text
    assert "(plots/prune_heatmap.png)" in text and (release / "plots" / "prune_heatmap.png").exists()
    assert 'model_id = "me/tiny-pruned"' in text and "apply_chat_template" in text
    assert "<details>" in text and "blocks: 2" in text
    assert "Not fine-tuned after pruning" in text
    assert "Not evaluated" in text and "retention" not in text.lower()
    assert "arXiv:2410.09982" in text
    assert "- transformers:" in text and "- torch:" in text


def test_card_file_hashes_cover_every_released_file(tiny_recipe_text):
    _, release = release_of(tiny_recipe_text)
    files = ModelCard.load(release / "README.md").data.to_dict()["hubsdd"]["files"]
    on_disk = {str(p.relative_to(release)) for p in release.rglob("*") if p.is_file() and p.name != "README.md"}
    assert set(files) == on_disk
    assert {"config.json", "model.safetensors", "recipe.yaml", "hubsdd/prune.json"} <= on_disk
    for rel, digest in files.items():
        assert hashlib.sha256((release / rel).read_bytes()).hexdigest() == digest


def test_llama_bases_get_built_with_llama_and_a_llama_name(tiny_recipe_text):
    text = tiny_recipe_text.replace("model: hubsdd-tests/tiny-llama", "model: meta-llama/Llama-3.1-8B-Instruct")
    text = text.replace("license: apache-2.0", "license: llama3.1")
    _, release = release_of(text, "publish:\n  model_repo: me/Pruned-8B\n")
    card = ModelCard.load(release / "README.md")
    assert card.data.model_name.startswith("Llama")
    assert "Built with Llama" in card.text


def test_rerender_rewrites_the_card_from_stage_json(tiny_recipe_text):
    results, release = release_of(tiny_recipe_text)
    before = (release / "README.md").read_text()
    (release / "README.md").write_text("scribbled over")
    path = rerender(results["card"].dir.parent)
    assert path.read_text() == before


def test_model_index_is_built_from_evaluate_raw_scores() -> None:
    """The card's model-index entries: one per task of the released model, naming the dataset, its
    shots, items and where the data came from, with lm-eval's metric and its value as a fraction."""
    from hubsdd.stages.card.stage import eval_results_for
    from hubsdd.stages.evaluate.tasks import PreparedTask
    from hubsdd.pipeline.runner import StageResult

    tasks = {"gsm8k": PreparedTask(name="gsm8k", num_fewshot=5, split="test", items=[3, 9], pool=10,
                                   fewshot_source="x", dataset="x"),
             "mmlu_anatomy": PreparedTask(name="mmlu_anatomy", num_fewshot=5, split="test", items=[1], pool=4,
                                          fewshot_source="x", dataset="x")}
    strict = "exact_match, strict-match"  # as the stage records GSM8K's metric (lm-eval's key and filter)
    scores = {"sdd": {"gsm8k": {"metric": strict, "value": 0.5}, "mmlu_anatomy": {"metric": "acc", "value": 1.0}},
              "pruned": {"gsm8k": {"metric": strict, "value": 0.25}, "mmlu_anatomy": {"metric": "acc", "value": 0.0}}}
    metrics = {"scores": scores, "average": {"sdd": 0.75, "pruned": 0.125}, "retention": {},
               "tasks": {t: p.info() for t, p in tasks.items()}, "mode": "hub", "models": ["pruned", "sdd"],
               "lm_eval_version": "0.4.13", "seed": 1, "device": "cpu", "seconds_per_model": {}}
    evaluated = StageResult("evaluate", Path("."), {"fingerprint": "e", "metrics": metrics, "outputs": {
        "results": {}, "plots": {"task_bars": "task_bars.png"}}})
    gsm8k, anatomy = eval_results_for("sdd", {"evaluate": evaluated}, "tiny")
    assert (gsm8k.dataset_type, gsm8k.dataset_config, gsm8k.dataset_split) == ("openai/gsm8k", "main", "test")
    assert gsm8k.dataset_name == "GSM8K (5-shot, 2 items, Hub)" and gsm8k.dataset_args == {"num_few_shot": 5}
    assert (gsm8k.metric_type, gsm8k.metric_value) == ("exact_match", 0.5)
    assert gsm8k.metric_name.endswith("(lm-eval 0.4.13)") and gsm8k.source_url
    # a task hubsdd has no dataset entry for is named by lm-eval's task name
    assert anatomy.dataset_type == "mmlu_anatomy" and anatomy.metric_type == "acc"
    # only the released model's scores
    assert [r.metric_value for r in eval_results_for("pruned", {"evaluate": evaluated}, "tiny")] == [0.25, 0.0]
