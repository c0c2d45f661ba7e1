"""Model loading: safetensors only unless allowed, no remote code unless allowed, base stage provenance."""

import json

import pytest
import torch

from conftest import make_tiny_model, save_tiny
from hubsdd.pipeline import runner
from hubsdd.core.errors import ModelLoadError, UnsafeModelError
from hubsdd.core.models import load_model
from hubsdd.core.recipe import parse_recipe


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


def test_one_gguf_name_map_maps_every_tensor_as_transformers_does():
    """The base stage's cache of gguf's name map gives transformers the same GGUF -> model names
    (hence the same weights), building the map once instead of once per submodule."""
    import gguf
    from transformers import AutoModelForCausalLM, LlamaConfig
    from transformers.modeling_gguf_pytorch_utils import TensorProcessor, get_gguf_hf_weights_map

    from hubsdd.stages.base.stage import one_gguf_name_map

    config = LlamaConfig(num_hidden_layers=6, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=100)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    original = gguf.get_tensor_name_map
    plain = get_gguf_hf_weights_map(model, TensorProcessor())
    with one_gguf_name_map():
        cached = get_gguf_hf_weights_map(model, TensorProcessor())
        built = gguf.get_tensor_name_map.cache_info()
    assert cached == plain and len(plain) == len(model.state_dict())
    assert built.misses == 1 and built.hits > 10  # one map, read for every submodule
    assert gguf.get_tensor_name_map is original  # restored


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


# --------------------------------------------------------------------------- from the Hub (test server)


def _upload_base(server, tmp_path, repo_id, *, pickle_only=False, license_id="mit"):
    from huggingface_hub import HfApi

    from hub_fixtures import TOKEN

    folder = save_tiny(tmp_path / "upload", layers=4)
    if pickle_only:
        state = {k: v.clone() for k, v in make_tiny_model("llama", layers=4).state_dict().items()}
        (folder / "model.safetensors").unlink()
        torch.save(state, folder / "pytorch_model.bin")
    (folder / "README.md").write_text(f"---\nlicense: {license_id}\n---\n# tiny base\n")
    (folder / "LICENSE").write_text("the license text\n")
    api = HfApi(token=TOKEN)
    api.create_repo(repo_id)
    return api.upload_folder(repo_id=repo_id, folder_path=folder).oid


def _hub_recipe(tmp_path, calibration_file, repo_id, revision="main"):
    """A prune-only recipe whose base model (and its license) come from the Hub."""
    return f"""\
name: from-hub
runs_dir: {tmp_path / 'runs'}
base:
  model: {repo_id}
  revision: {revision}
prune:
  blocks: 2
  calibration: {{path: {calibration_file}, text_column: text, samples: 4, max_length: 16}}
"""


def test_base_from_the_hub_pins_the_commit_and_inherits_the_license(hub_server, tmp_path, calibration_file,
                                                                     monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_test_alice_token")
    sha = _upload_base(hub_server, tmp_path, "alice/tiny-base")
    recipe = parse_recipe(_hub_recipe(tmp_path, calibration_file, "alice/tiny-base"))
    results = runner.run(recipe)
    base = results["base"]
    assert base.outputs["source"] == "hub" and base.outputs["commit_sha"] == sha
    assert base.outputs["license"] == "mit" and base.outputs["license_files"] == ["LICENSE"]
    from huggingface_hub import ModelCard

    card = ModelCard.load(results["card"].path("model_dir") / "README.md").data.to_dict()
    assert card["base_model"] == "alice/tiny-base" and card["license"] == "mit"
    assert results["prune"].metrics["layers_after"] == 2


def test_base_from_the_hub_refuses_pickle_only_repos(hub_server, tmp_path, calibration_file, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_test_alice_token")
    _upload_base(hub_server, tmp_path, "alice/pickled", pickle_only=True)
    with pytest.raises(UnsafeModelError) as info:
        runner.run(parse_recipe(_hub_recipe(tmp_path, calibration_file, "alice/pickled")), until="base")
    assert "allow_pickle" in info.value.fix


def test_base_from_the_hub_unknown_repo_and_revision(hub_server, calibration_file, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_test_alice_token")
    with pytest.raises(ModelLoadError, match="was not found"):
        runner.run(parse_recipe(_hub_recipe(tmp_path, calibration_file, "alice/nope")), until="base")
    _upload_base(hub_server, tmp_path, "alice/tiny-base")
    with pytest.raises(ModelLoadError, match="base.revision"):
        runner.run(parse_recipe(_hub_recipe(tmp_path, calibration_file, "alice/tiny-base", "v9")), until="base")


# --------------------------------------------------------------------------- CPU inference speed


def test_fast_cpu_linears_same_outputs_restored_after_and_training_untouched(monkeypatch) -> None:
    from hubsdd.core import models

    model = make_tiny_model(layers=2)
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    ids = torch.tensor([[5, 9, 33, 70, 2, 11]])
    with torch.inference_mode():
        expected = model(input_ids=ids).logits
    with models.fast_cpu_linears(model) as patched:
        assert patched == len(linears) > 0  # q/k/v/o, the MLP and the LM head of every layer
        with torch.inference_mode():
            got = model(input_ids=ids).logits
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5)
        # With gradients on, layers take the ordinary path, so training still works inside.
        model(input_ids=ids, labels=ids).loss.backward()
        assert all(m.weight.grad is not None for m in linears)
    assert not any("forward" in m.__dict__ for m in linears)

    monkeypatch.setenv("HUBSDD_ONEDNN", "0")
    monkeypatch.setattr(models, "_ONEDNN_OK", None)  # the check runs once per process
    with models.fast_cpu_linears(model) as patched:
        assert patched == 0
