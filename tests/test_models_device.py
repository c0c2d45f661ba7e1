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
from hubsdd.core import models
from hubsdd.core.errors import StageError
from hubsdd.core.recipe import parse_recipe
from hubsdd.pipeline.runner import StageContext, StageResult

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
    from hubsdd.stages.finetune import stage as finetune
    from hubsdd.stages.merge import stage as merge
    from hubsdd.stages.prune import stage as prune
    from hubsdd.stages.evaluate.stage import run_evaluate
    from hubsdd.stages.distill.backends import make_backend

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


class FakeCuda:
    """torch.cuda as far as the runner sees it: a context opened or not, memory allocated and kept
    cached by the allocator until empty_cache, a peak counter."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import torch

        self.initialized, self.allocated, self.cached, self.peak = False, 0, 0, 0
        self.held_at_start: dict[str, int] = {}
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: self.initialized)
        monkeypatch.setattr(torch.cuda, "empty_cache", self.empty_cache)
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", self.reset_peak)
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: self.peak)

    def allocate(self, n: int) -> None:
        assert self.initialized
        self.allocated += n
        self.peak = max(self.peak, self.allocated)

    def release(self, n: int) -> None:
        self.allocated -= n
        self.cached += n

    def empty_cache(self) -> None:
        assert self.initialized, "empty_cache would open a CUDA context"
        self.cached = 0

    def reset_peak(self, *a) -> None:
        assert self.initialized, "reset_peak_memory_stats would open a CUDA context"
        self.peak = self.allocated


def test_a_stage_that_needs_no_gpu_opens_no_cuda_context(tiny_recipe_text: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from hubsdd.pipeline import runner

    fake = FakeCuda(monkeypatch)
    monkeypatch.setattr(models, "resolve_device", lambda setting="auto": "cuda")
    recipe = parse_recipe(tiny_recipe_text)
    runner.run(recipe, until="base")  # a local base folder: nothing is loaded onto the device
    assert not fake.initialized
    assert json.loads((recipe.run_dir / "base" / "stage.json").read_text())["peak_gpu_memory_bytes"] is None


def test_stage_json_records_device_dtype_and_peak_gpu_memory(tiny_recipe_text: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from hubsdd.stages.prune import stage as prune
    from hubsdd.pipeline import runner
    from hubsdd.pipeline.runner import StageOutput

    recipe = parse_recipe(tiny_recipe_text)
    runner.run(recipe, until="prune")
    data = json.loads((recipe.run_dir / "prune" / "stage.json").read_text())
    assert (data["device"], data["dtype"]) == ("cpu", "float32")
    assert data["peak_gpu_memory_bytes"] is None

    # The same on a (faked) GPU: the peak is reset when the stage starts and read when it ends.
    fake = FakeCuda(monkeypatch)
    monkeypatch.setattr(models, "resolve_device", lambda setting="auto": "cuda")

    def base_stage(ctx):  # loads a model onto the GPU and drops it: the allocator keeps the memory cached
        fake.initialized = True
        fake.allocate(111)
        fake.release(111)
        return real_base(ctx)

    def prune_stage(ctx):  # a stage that starts vLLM needs the memory earlier stages held
        fake.held_at_start["prune"] = fake.allocated + fake.cached
        fake.allocate(2222)
        fake.release(2222)
        return StageOutput(metrics={"layers_after": 4})

    from hubsdd.stages.base import stage as base_module

    real_base = base_module.prepare_base
    monkeypatch.setattr(base_module, "prepare_base", base_stage)
    monkeypatch.setattr(prune, "run_prune", prune_stage)
    runner.run(recipe, until="prune", force=("base", "prune"))
    base = json.loads((recipe.run_dir / "base" / "stage.json").read_text())
    data = json.loads((recipe.run_dir / "prune" / "stage.json").read_text())
    assert fake.held_at_start["prune"] == 0  # the base stage's cache was given back before prune began
    assert fake.cached == 0
    assert (data["device"], data["dtype"]) == ("cuda", "bfloat16")
    assert base["peak_gpu_memory_bytes"] == 111 and data["peak_gpu_memory_bytes"] == 2222
    assert data["metrics"]["layers_after"] == 4
