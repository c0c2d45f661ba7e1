"""Model loading: safetensors only unless allowed, no remote code unless allowed, base stage provenance."""

import json

import pytest
import torch

from conftest import make_tiny_model, save_tiny
from hubsdd import run as runner
from hubsdd.errors import ModelLoadError, UnsafeModelError
from hubsdd.models import load_model
from hubsdd.recipe import parse_recipe


def test_pickle_weights_refused_unless_allowed(tmp_path):
    model = make_tiny_model("llama", layers=2)
    # transformers 5 only writes safetensors; write the pickle the way old checkpoints were.
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(UnsafeModelError) as info:
        load_model(tmp_path)
    assert "allow_pickle" in info.value.fix
    loaded = load_model(tmp_path, allow_pickle=True)
    assert loaded.config.num_hidden_layers == 2


def test_remote_code_refused_unless_allowed(tmp_path):
    save_tiny(tmp_path, layers=2)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model_type"] = "evil"  # a type only the repository's own code knows
    cfg["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig",
                       "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "configuration_evil.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(UnsafeModelError) as info:
        load_model(tmp_path)
    assert "trust_remote_code" in info.value.fix


def test_folder_without_weights(tmp_path):
    save_tiny(tmp_path, layers=2)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no model weights"):
        load_model(tmp_path)


def test_base_stage_inherits_license_and_copies_license_files(tiny_model_dir, tiny_recipe_text):
    (tiny_model_dir / "README.md").write_text("---\nlicense: mit\n---\n# tiny\n")
    (tiny_model_dir / "LICENSE").write_text("MIT License\n")
    recipe = parse_recipe(tiny_recipe_text.replace("  license: apache-2.0\n", ""))
    results = runner.run(recipe)
    base = results["base"]
    assert base.outputs["license"] == "mit" and base.outputs["license_files"] == ["LICENSE"]
    release = results["card"].path("model_dir")
    assert (release / "LICENSE").read_text() == "MIT License\n"


def test_gguf_missing_file_is_clear(tiny_recipe_text, tmp_path):
    text = tiny_recipe_text.replace("base:\n  model: hubsdd-tests/tiny-llama\n  path: ",
                                    "base:\n  model: hubsdd-tests/tiny-llama\n  gguf_file: /nonexistent/m.gguf\n  #")
    with pytest.raises(ModelLoadError, match="does not exist"):
        runner.run(parse_recipe(text), until="base")


def test_base_path_must_be_a_folder(tiny_recipe_text, tmp_path):
    text = tiny_recipe_text.replace("base:\n  model: hubsdd-tests/tiny-llama\n  path: ",
                                    f"base:\n  model: hubsdd-tests/tiny-llama\n  path: {tmp_path / 'nope'}\n  #")
    with pytest.raises(ModelLoadError, match="base.path"):
        runner.run(parse_recipe(text), until="base")


def test_pruned_release_loads_with_stock_transformers(tiny_recipe_text):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    results = runner.run(parse_recipe(tiny_recipe_text))
    release = results["card"].path("model_dir")
    model = AutoModelForCausalLM.from_pretrained(release)
    tok = AutoTokenizer.from_pretrained(release)
    assert model.config.num_hidden_layers == 4 and model.config.use_cache is True
    ids = tok("hello", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 4
    assert not list(release.glob("*.bin"))
