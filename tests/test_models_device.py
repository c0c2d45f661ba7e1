"""One device for the whole run: the recipe's ``device`` (auto | cpu | cuda) is resolved in one
place, every stage loads its models there, bf16 is the default on GPUs, and stage.json records the
device, the dtype and (on CUDA) each stage's peak GPU memory."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from conftest import save_tiny
from hubsdd import models
from hubsdd.errors import StageError
from hubsdd.recipe import parse_recipe
from hubsdd.runner import StageContext, StageResult

HUBSDD = Path(models.__file__).resolve().parent
SENTINEL = "sentinel-device"


class Stop(Exception):
    """Raised by the fakes once a stage has said where it loads its model."""


def test_auto_is_the_cpu_here_and_cuda_without_a_gpu_is_a_clear_error(tiny_recipe_text: str) -> None:
    import torch

    assert not torch.cuda.is_available(), "this test describes a CPU machine"
    recipe = parse_recipe(tiny_recipe_text)
    assert recipe.device == "auto"
    assert models.default_device(recipe) == "cpu" and models.model_dtype(recipe) == "float32"
    with pytest.raises(StageError, match=r"^device: the recipe asks for `cuda`") as err:
        models.default_device(parse_recipe("device: cuda\n" + tiny_recipe_text))
    assert "device: auto" in err.value.fix
    bad = parse_recipe  # an unknown value never gets this far: the recipe schema refuses it
    with pytest.raises(Exception, match="device"):
        bad("device: tpu\n" + tiny_recipe_text)


def test_bf16_is_the_default_on_a_gpu_unless_the_recipe_sets_a_dtype(tiny_recipe_text: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "resolve_device", lambda setting="auto": "cuda")
    assert models.model_dtype(parse_recipe(tiny_recipe_text)) == "bfloat16"
    pinned = tiny_recipe_text.replace("  license: apache-2.0\n", "  license: apache-2.0\n  dtype: float32\n")
    assert models.model_dtype(parse_recipe(pinned)) == "float32"


def _stage_contexts(tmp_path: Path) -> dict[str, StageContext]:
    """A context per model stage over tiny models, as the runner would build them."""
    from test_finetune import finetune_ctx

    variants = {n: save_tiny(tmp_path / "ft" / n / "model", layers=2, seed=i) for i, n in enumerate(("sdd", "sft"))}
    pruned = save_tiny(tmp_path / "pruned", layers=2)
    extra = ("  max_steps: 1\nmerge: {method: linear, models: [sdd, sft]}\n"
             "evaluate: {tasks: [arc_easy], num_fewshot: {arc_easy: 0}, limit: 2, speculative: null, fidelity: null}\n")
    ft = finetune_ctx(tmp_path, extra, pruned, teacher=save_tiny(tmp_path / "base", layers=3))
    finetune = StageResult("finetune", tmp_path / "ft", {"fingerprint": "f", "outputs": {"variants": {
        n: {"model_dir": f"{n}/model", "data": "original"} for n in variants}}})
    merge = StageResult("merge", variants["sdd"].parent, {"fingerprint": "m", "outputs": {"model_dir": "model"}})
    every = {**ft.inputs, "finetune": finetune, "merge": merge}
    needs = {"prune": ("base",), "distill": ("base",), "finetune": ("base", "prune", "distill"),
             "merge": ("prune", "finetune"), "evaluate": ("base", "prune", "finetune", "merge")}
    return {name: StageContext(ft.recipe, name, ft.run_dir, tmp_path / f"out-{name}", tmp_path / f"work-{name}",
                               {i: every[i] for i in inputs}, f"{name}-fp") for name, inputs in needs.items()}


def test_no_stage_hard_codes_a_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the resolver answering a sentinel, every stage asks for its models there."""
    from hubsdd import finetune, merge, prune
    from hubsdd.evaluate.stage import run_evaluate
    from hubsdd.distill.backends import make_backend

    contexts = _stage_contexts(tmp_path)
    monkeypatch.setattr(models, "resolve_device", lambda setting="auto": SENTINEL)
    asked: list[tuple[str, object]] = []
    real_load = models.load_model

    def load_model(path, **kw):
        asked.append(("load_model", kw.get("device")))
        if kw.get("device") is None:  # the Trainer places the model it trains: checked below
            return real_load(path, **kw)
        raise Stop

    def trainer_config(section, output_dir, **kw):
        asked.append(("trainer_config", kw.get("device")))
        raise Stop

    def run_mergekit(cfg, out_dir, **kw):
        asked.append(("run_mergekit", kw.get("device")))
        raise Stop

    monkeypatch.setattr(models, "load_model", load_model)
    monkeypatch.setattr(finetune, "trainer_config", trainer_config)
    monkeypatch.setattr(merge, "run_mergekit", run_mergekit)
    entries = {
        "prune": prune.run_prune,
        "distill": lambda ctx: make_backend(ctx, ctx.recipe.distill.generation),
        "finetune": finetune.run_finetune,
        "merge": merge.run_merge,
        "evaluate": run_evaluate,
    }
    for name, entry in entries.items():
        asked.clear()
        with models.stage_device_scope(contexts[name].recipe), pytest.raises(Stop):
            entry(contexts[name])
        assert asked and asked[-1][1] == SENTINEL, (name, asked)


# Choosing a device in code (rather than comparing one): only models.resolve_device may.
DEVICE_CHOICE = re.compile(r"""device\s*=\s*["'](cuda|cpu)|\.to\(\s*["'](cuda|cpu)|\.cuda\(\)|"""
                           r"""torch\.device\(\s*["'](cuda|cpu)|cuda\.is_available\(\)""")


def test_no_module_chooses_a_device_outside_the_resolver() -> None:
    found = []
    for path in sorted(HUBSDD.rglob("*.py")):
        lines = path.read_text().splitlines()
        if path.name == "models.py":
            tree = ast.parse("\n".join(lines))
            fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "resolve_device")
            lines = lines[:fn.lineno - 1] + [""] * (fn.end_lineno - fn.lineno + 1) + lines[fn.end_lineno:]
        found += [f"{path.name}:{i}: {line.strip()}" for i, line in enumerate(lines, 1) if DEVICE_CHOICE.search(line)]
    assert not found, "\n".join(found)
    assert DEVICE_CHOICE.search('model.to("cuda")') and not DEVICE_CHOICE.search('x.device.type == "cpu"')


def test_stage_json_records_device_dtype_and_peak_gpu_memory(tiny_recipe_text: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from hubsdd import prune, runner
    from hubsdd.runner import StageOutput

    recipe = parse_recipe(tiny_recipe_text)
    runner.run(recipe, until="prune")
    data = json.loads((recipe.run_dir / "prune" / "stage.json").read_text())
    assert (data["device"], data["dtype"]) == ("cpu", "float32")
    assert data["peak_gpu_memory_bytes"] is None

    # The same on a (faked) GPU: the peak is reset when the stage starts and read when it ends.
    peaks = iter([111, 2222])
    calls = []
    monkeypatch.setattr(models, "resolve_device", lambda setting="auto": "cuda")
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: calls.append("reset"))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: calls.append("read") or next(peaks))
    monkeypatch.setattr(prune, "run_prune", lambda ctx: StageOutput(metrics={"layers_after": 4}))
    runner.run(recipe, until="prune", force=("base", "prune"))
    base = json.loads((recipe.run_dir / "base" / "stage.json").read_text())
    data = json.loads((recipe.run_dir / "prune" / "stage.json").read_text())
    assert calls == ["reset", "read", "reset", "read"]
    assert (data["device"], data["dtype"]) == ("cuda", "bfloat16")
    assert base["peak_gpu_memory_bytes"] == 111 and data["peak_gpu_memory_bytes"] == 2222
    assert data["metrics"]["layers_after"] == 4
