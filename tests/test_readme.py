"""The README's recipe reference is the one the models generate, and its commands exist."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_updater():
    spec = importlib.util.spec_from_file_location("update_readme", ROOT / "scripts" / "update_readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recipe_reference_in_the_readme_matches_the_models() -> None:
    updater = load_updater()
    text = (ROOT / "README.md").read_text()
    assert updater.rendered(text) == text, "README.md is stale: run `python scripts/update_readme.py`"


def test_the_reference_covers_every_field() -> None:
    from hubsdd.core.recipe import Recipe, reference_markdown

    ref = reference_markdown()
    for section in ("BaseSection", "PruneSection", "DistillSection", "FinetuneSection", "VariantSection",
                    "KDSettings", "EvaluateSection", "FidelitySettings", "PublishSection"):
        assert f"#### {section}" in ref
    for name in Recipe.model_fields:
        assert f"| `{name}` |" in ref


def readme_error(first_words: str) -> tuple[str, str]:
    """The (error, fix) lines of the troubleshooting entry whose error starts with ``first_words``."""
    lines = (ROOT / "README.md").read_text().splitlines()
    i = next(i for i, line in enumerate(lines) if line.strip().startswith(f"error: {first_words}"))
    return lines[i].strip().removeprefix("error: "), lines[i + 1].strip().removeprefix("fix: ")


def matches(readme: str, actual: str) -> bool:
    """The README line is the message, with '...' standing for a tail it leaves out."""
    if readme.endswith("...") or readme.endswith("...)"):
        return actual.startswith(readme.rstrip(")").removesuffix("...").rstrip())
    return readme == actual


def test_troubleshooting_no_token(monkeypatch, tmp_path) -> None:
    import pytest
    from huggingface_hub import constants

    from hubsdd.core.errors import AuthError
    from hubsdd.hub import single_token as _token

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "none"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "none2"))
    with pytest.raises(AuthError) as err:
        _token(None)
    message, fix = readme_error("no Hugging Face token")
    assert (err.value.message, err.value.fix) == (message, fix)


def test_troubleshooting_unknown_architecture() -> None:
    import pytest
    from transformers import BartConfig, BartForCausalLM

    from hubsdd.core.errors import UnsupportedArchitectureError
    from hubsdd.stages.prune.stage import decoder_layers

    model = BartForCausalLM(BartConfig(decoder_layers=2, d_model=16, decoder_attention_heads=2,
                                       decoder_ffn_dim=32, vocab_size=50))
    with pytest.raises(UnsupportedArchitectureError) as err:
        decoder_layers(model)
    message, fix = readme_error("layer surgery")
    assert matches(message, err.value.message) and matches(fix, err.value.fix)


def test_troubleshooting_out_of_memory(tmp_path, tiny_recipe_text, monkeypatch) -> None:
    import pytest

    from hubsdd.stages.prune import stage as prune
    from hubsdd.core.errors import OutOfMemoryError
    from hubsdd.core.recipe import parse_recipe
    from hubsdd.pipeline.runner import run

    class FakeCudaOOM(RuntimeError):
        pass

    FakeCudaOOM.__name__ = "OutOfMemoryError"

    def oom(ctx):
        raise FakeCudaOOM("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(prune, "run_prune", oom)
    with pytest.raises(OutOfMemoryError) as err:
        run(parse_recipe(tiny_recipe_text), until="prune")
    message, fix = readme_error("stage 'finetune' ran out of memory")
    assert matches(message.replace("'finetune'", "'prune'"), err.value.message) and fix == err.value.fix


def test_troubleshooting_gated_base_model(hub_server, tmp_path) -> None:
    import pytest
    from huggingface_hub import HfApi
    from hub_fixtures import OTHER_TOKEN, TOKEN

    from conftest import save_tiny
    from hubsdd.core.errors import ModelLoadError
    from hubsdd.core.models import _snapshot

    hub_server.create_repo("alice/gated-base", gated_users=[])
    HfApi(token=TOKEN).upload_folder(folder_path=str(save_tiny(tmp_path / "m")), repo_id="alice/gated-base")
    import os

    os.environ["HF_TOKEN"] = OTHER_TOKEN  # bob has not accepted the license
    try:
        with pytest.raises(ModelLoadError) as err:
            _snapshot("alice/gated-base", "main", False)
    finally:
        del os.environ["HF_TOKEN"]
    message, fix = readme_error("base.model:")
    assert err.value.message == message.replace("meta-llama/Llama-3.1-8B-Instruct", "alice/gated-base")
    assert err.value.fix == fix
