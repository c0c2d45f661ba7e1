"""The card stage: release folder contents and model card metadata/body."""

import hashlib

from huggingface_hub import ModelCard

from hubsdd import runner
from hubsdd.card import rerender
from hubsdd.recipe import parse_recipe


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
