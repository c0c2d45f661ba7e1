"""The merge stage: mergekit over two tiny variants of one architecture, through the stage runner.

SLERP is checked against an independent computation of spherical interpolation of the two input
tensors (mergekit interpolates each weight tensor as one flattened vector), linear against the
exact weighted average; the merged folder must reload with stock transformers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from conftest import save_tiny

from hubsdd.core.recipe import parse_recipe
from hubsdd.pipeline.runner import SPECS, StageResult, run_stage

WEIGHT = "model.layers.1.self_attn.q_proj.weight"


def reference_slerp(t: float, a: torch.Tensor, b: torch.Tensor, dot_threshold: float = 0.9995) -> torch.Tensor:
    """Spherical interpolation of two tensors seen as flat vectors (float64)."""
    x, y = a.double().flatten(), b.double().flatten()
    cos = torch.dot(x / x.norm(), y / y.norm()).clamp(-1, 1)
    if cos.abs() > dot_threshold:
        out = (1 - t) * x + t * y
    else:
        theta = torch.acos(cos)
        out = (torch.sin((1 - t) * theta) * x + torch.sin(t * theta) * y) / torch.sin(theta)
    return out.reshape(a.shape).float()


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


@pytest.fixture
def merge_run(tmp_path: Path, calibration_file: Path, instructions_file: Path):
    """Run the merge stage with a given merge section over two saved tiny variants (+ pruned)."""
    finetune_dir = tmp_path / "runs" / "tiny" / "finetune"
    save_tiny(finetune_dir / "sdd" / "model", layers=4, seed=1)
    save_tiny(finetune_dir / "sft" / "model", layers=4, seed=2)
    prune_dir = tmp_path / "runs" / "tiny" / "prune"
    save_tiny(prune_dir / "model", layers=4, seed=3)
    base_dir = save_tiny(tmp_path / "base", layers=6, seed=0)
    prune = StageResult("prune", prune_dir, {"fingerprint": "p" * 64, "outputs": {"model_dir": "model"}})
    finetune = StageResult("finetune", finetune_dir, {
        "fingerprint": "f" * 64,
        "outputs": {"variants": {"sdd": {"model_dir": "sdd/model", "data": "distilled"},
                                 "sft": {"model_dir": "sft/model", "data": "original"}}},
    })

    def run(merge_yaml: str) -> StageResult:
        text = f"""\
name: tiny
runs_dir: {tmp_path / 'runs'}
base: {{model: hubsdd-tests/tiny-llama, path: {base_dir}}}
prune:
  blocks: 2
  calibration: {{path: {calibration_file}, text_column: text}}
distill:
  data: {{path: {instructions_file}}}
  columns: {{instruction: question, response: answer}}
finetune: {{}}
merge:
{merge_yaml}"""
        recipe = parse_recipe(text)
        return run_stage(SPECS["merge"], recipe, {"prune": prune, "finetune": finetune}, "m" * 64)

    return run, finetune_dir


def test_slerp_merge_matches_reference_and_reloads(merge_run) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run, finetune_dir = merge_run
    result = run("  method: slerp\n  models: [sdd, sft]\n  t: 0.3\n")
    out = result.path("model_dir")
    assert result.outputs["method"] == "slerp" and result.outputs["models"] == ["sdd", "sft"]
    assert result.outputs["config"] == "mergekit.yaml" and (result.dir / "mergekit.yaml").is_file()
    cfg = yaml.safe_load((result.dir / "mergekit.yaml").read_text())
    assert cfg["merge_method"] == "slerp" and cfg["parameters"] == {"t": 0.3}
    assert cfg["base_model"] == str(finetune_dir / "sdd" / "model")
    # the card's version names models, not local paths
    assert str(finetune_dir) not in result.outputs["config_text"]
    assert "sdd" in result.outputs["config_text"] and "sft" in result.outputs["config_text"]
    assert result.metrics["seconds"] > 0

    a, b, merged = _weights(finetune_dir / "sdd" / "model"), _weights(finetune_dir / "sft" / "model"), _weights(out)
    assert set(merged) == set(a)
    expected = reference_slerp(0.3, a[WEIGHT], b[WEIGHT])
    torch.testing.assert_close(merged[WEIGHT], expected, atol=1e-6, rtol=1e-5)
    assert not torch.equal(merged[WEIGHT], a[WEIGHT]) and not torch.equal(merged[WEIGHT], b[WEIGHT])
    # SLERP is not the linear mix: for nearly orthogonal random tensors it keeps more norm
    linear = 0.7 * a[WEIGHT] + 0.3 * b[WEIGHT]
    assert merged[WEIGHT].norm() > linear.norm() * 1.05

    # a complete checkpoint for stock transformers: weights, tokenizer, chat template, generation config
    assert (out / "generation_config.json").is_file() and (out / "chat_template.jinja").is_file()
    assert not list(out.glob("*.bin")) and not (out / "README.md").exists()
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template and model.config.use_cache is True
    logits = model(**tok("hello", return_tensors="pt")).logits
    assert torch.isfinite(logits).all()


def test_linear_merge_is_the_weighted_average(merge_run) -> None:
    run, finetune_dir = merge_run
    result = run("  method: linear\n  models: [sdd, sft]\n  weights: [1.0, 3.0]\n")
    a, b, merged = _weights(finetune_dir / "sdd" / "model"), _weights(finetune_dir / "sft" / "model"), \
        _weights(result.path("model_dir"))
    for key in (WEIGHT, "model.embed_tokens.weight", "model.norm.weight"):
        torch.testing.assert_close(merged[key], (1.0 * a[key] + 3.0 * b[key]) / 4.0, atol=1e-6, rtol=1e-6)


def test_ties_merge_uses_the_pruned_model_as_base(merge_run) -> None:
    run, finetune_dir = merge_run
    result = run("  method: ties\n  models: [sdd, sft]\n  density: 0.5\n")
    cfg = yaml.safe_load((result.dir / "mergekit.yaml").read_text())
    assert cfg["merge_method"] == "ties" and cfg["base_model"].endswith("prune/model")
    assert all(m["parameters"]["density"] == 0.5 for m in cfg["models"])
    assert result.outputs["base_model"] == "pruned" and "pruned" in result.outputs["config_text"]
    merged = _weights(result.path("model_dir"))
    pruned = _weights(finetune_dir.parent / "prune" / "model")
    assert merged[WEIGHT].shape == pruned[WEIGHT].shape and not torch.equal(merged[WEIGHT], pruned[WEIGHT])


def test_bf16_variants_merge_into_bf16_unless_the_recipe_says_otherwise(tmp_path: Path, calibration_file: Path,
                                                                         instructions_file: Path) -> None:
    """An 8B merge written in float32 from bf16 variants is 32 GB instead of 16: the merge keeps
    the variants' dtype by default (computing in float32)."""
    import json

    finetune_dir = tmp_path / "runs" / "tiny" / "finetune"
    for name, seed in (("sdd", 1), ("sft", 2)):
        folder = save_tiny(finetune_dir / name / "model", layers=2, seed=seed)
        from transformers import AutoModelForCausalLM

        AutoModelForCausalLM.from_pretrained(folder).to(torch.bfloat16).save_pretrained(folder)
    prune = StageResult("prune", tmp_path / "prune", {"fingerprint": "p" * 64, "outputs": {"model_dir": "model"}})
    finetune = StageResult("finetune", finetune_dir, {"fingerprint": "f" * 64, "outputs": {"variants": {
        "sdd": {"model_dir": "sdd/model", "data": "distilled"}, "sft": {"model_dir": "sft/model", "data": "original"}}}})

    def merged(merge_yaml: str) -> dict[str, torch.Tensor]:
        recipe = parse_recipe(f"""\
name: tiny
runs_dir: {tmp_path / 'runs'}
base: {{path: {finetune_dir / 'sdd' / 'model'}}}
prune: {{blocks: 1, calibration: {{path: {calibration_file}, text_column: text}}}}
distill: {{data: {{path: {instructions_file}}}, columns: {{instruction: question, response: answer}}}}
finetune: {{}}
merge: {merge_yaml}
""")
        result = run_stage(SPECS["merge"], recipe, {"prune": prune, "finetune": finetune}, "m" * 64)
        config = json.loads((result.path("model_dir") / "config.json").read_text())
        assert result.metrics["dtype"] == (config.get("dtype") or config.get("torch_dtype"))
        return _weights(result.path("model_dir"))

    default = merged("{method: linear, models: [sdd, sft]}")
    assert {t.dtype for t in default.values()} == {torch.bfloat16}
    a, b = _weights(finetune_dir / "sdd" / "model"), _weights(finetune_dir / "sft" / "model")
    expected = ((a[WEIGHT].float() + b[WEIGHT].float()) / 2).to(torch.bfloat16)
    torch.testing.assert_close(default[WEIGHT], expected, atol=0, rtol=0)  # one rounding, at the end
    wide = merged("{method: linear, models: [sdd, sft], dtype: float32}")
    assert {t.dtype for t in wide.values()} == {torch.float32}
