"""The ``merge`` stage: combine fine-tuned variants with mergekit.

Variants fine-tuned on different data (SDD, SFT, ...) are merged into one checkpoint, by default
with SLERP (spherical interpolation, ``t`` = 0 gives the first model, 1 the second); linear
(weighted average) and TIES (sparsified task vectors over the pruned model) are the alternatives.
The configuration is built from the recipe, validated by mergekit's own pydantic model, and run
through mergekit's Python API on the run's device, in float32, writing the variants' dtype unless
``merge.dtype`` says otherwise (bfloat16 variants give a bfloat16 merge, not one twice their size);
the exact YAML that ran is saved beside the model
(``mergekit.yaml``) and a readable version, naming models by their hubsdd role rather than local
paths, goes to the card.

The merged folder is completed so that it stands alone: tokenizer, chat template and generation
config from the first variant, ``use_cache`` on, safetensors weights — stock ``from_pretrained``
reloads it.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from ...core.errors import ModelLoadError, StageError
from ...core.files import atomic_write_text
from ...core.outputs import MergeMetrics, MergeOutputs
from ...core.stage_io import StageContext, StageOutput, checkpoint_dirs

log = logging.getLogger("hubsdd.merge")

# Files mergekit may not bring along that a release needs; taken from the first variant.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "added_tokens.json", "merges.txt", "vocab.json", "chat_template.jinja", "chat_template.json")


def _check_model_dir(name: str, path: Path) -> None:
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"merge: model {name!r} at {path} has no config.json",
                             fix="rerun the finetune stage (remove its folder under runs/<name>/finetune)")
    if not any(path.glob("*.safetensors")):
        raise ModelLoadError(f"merge: model {name!r} at {path} has no safetensors weights",
                             fix="the finetune stage must save merged (not adapter-only) weights; rerun it")


def saved_dtype(folder: Path) -> str | None:
    """The dtype a saved model's config.json records (``dtype``, or ``torch_dtype`` before
    transformers 5), or None."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    value = config.get("dtype") or config.get("torch_dtype")
    return value if value in ("float32", "bfloat16", "float16") else None


def output_dtype(section: Any, model_dirs: dict[str, Path]) -> str:
    """``merge.dtype``, else the variants' own dtype when they agree, else float32."""
    if section.dtype is not None:
        return section.dtype
    found = {saved_dtype(p) for p in model_dirs.values()}
    return found.pop() if len(found) == 1 and None not in found else "float32"


def build_merge_config(section: Any, model_dirs: dict[str, Path], base_dir: Path | None = None) -> dict:
    """The mergekit configuration (a plain dict) for the recipe's merge section.

    ``model_dirs`` maps each name in ``section.models`` to its folder, in the recipe's order;
    ``base_dir`` is the pruned model (TIES' base: task vectors are the variants minus it)."""
    names = list(section.models)
    paths = [str(model_dirs[n]) for n in names]
    weights = list(section.weights) if section.weights is not None else [1.0] * len(names)
    # Computed in float32 whatever is written: interpolating bfloat16 weights in bfloat16 rounds twice.
    cfg: dict[str, Any] = {"merge_method": section.method, "dtype": "float32",
                           "out_dtype": output_dtype(section, model_dirs)}
    if section.method == "slerp":
        # mergekit's slerp: the base model is t = 0; the other input is t = 1.
        cfg["base_model"] = paths[0]
        cfg["models"] = [{"model": p} for p in paths]
        cfg["parameters"] = {"t": float(section.t)}
    elif section.method == "linear":
        cfg["models"] = [{"model": p, "parameters": {"weight": float(w)}} for p, w in zip(paths, weights)]
        cfg["parameters"] = {"normalize": True}
    elif section.method == "ties":
        if base_dir is None:
            raise StageError("merge: TIES needs the pruned model as its base, and the prune stage has no output",
                             fix="run the prune stage first (`hubsdd run <recipe> --until prune`)")
        cfg["base_model"] = str(base_dir)
        cfg["models"] = [{"model": p, "parameters": {"weight": float(w), "density": float(section.density)}}
                         for p, w in zip(paths, weights)]
        cfg["parameters"] = {"normalize": True}
    else:  # the recipe schema allows no other value
        raise StageError(f"merge.method: unknown method {section.method!r}", fix="use slerp, linear or ties")
    return cfg


def display_config(cfg: dict, names: dict[str, str]) -> str:
    """The configuration as YAML with local paths replaced by hubsdd names (for the card)."""

    def swap(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: swap(v) for k, v in value.items()}
        if isinstance(value, list):
            return [swap(v) for v in value]
        if isinstance(value, str) and value in names:
            return names[value]
        return value

    header = ("# mergekit configuration; model names are hubsdd checkpoints of this run\n"
              "# (fine-tuned variants, and 'pruned' for the pruned model)\n")
    return header + yaml.safe_dump(swap(cfg), sort_keys=False)


def run_mergekit(cfg: dict, out_dir: Path, *, seed: int | None = None, trust_remote_code: bool = False,
                 device: str | None = None) -> None:
    """Validate ``cfg`` with mergekit's schema and run the merge on ``device`` (default: the run's)
    into ``out_dir``."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    from ...core.models import default_device

    try:
        merge_config = MergeConfiguration.model_validate(cfg)
    except Exception as exc:  # pydantic ValidationError, or mergekit's RuntimeError validators
        raise StageError(f"merge: mergekit rejected the configuration: {exc}",
                         fix="check the recipe's merge section (method, models, weights)") from None
    options = MergeOptions(
        device=device or default_device(), copy_tokenizer=True, write_model_card=False, safe_serialization=True,
        lazy_unpickle=False, random_seed=seed, trust_remote_code=trust_remote_code, quiet=True,
    )
    try:
        run_merge(merge_config, out_path=str(out_dir), options=options)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise StageError(f"merge: mergekit failed: {type(exc).__name__}: {exc}",
                         fix="the variants must share one architecture and shape; check the finetune outputs") from exc


def complete_model_dir(out_dir: Path, donor: Path) -> list[str]:
    """Make the merged folder self-sufficient; returns the files that had to be copied."""
    copied = []
    for name in TOKENIZER_FILES + ("generation_config.json",):
        if (donor / name).is_file() and not (out_dir / name).exists():
            shutil.copy2(donor / name, out_dir / name)
            copied.append(name)
    config_path = out_dir / "config.json"
    config = json.loads(config_path.read_text())
    if config.get("use_cache") is False:
        # the Trainer's use_cache=False must not reach a released model
        config["use_cache"] = True
        atomic_write_text(config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")
    for junk in ("README.md", "mergekit_config.yml"):
        (out_dir / junk).unlink(missing_ok=True)
    return copied


def _tensor_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            for key in fh.keys():
                shapes[key] = tuple(fh.get_slice(key).get_shape())
    return shapes


def verify_merged(out_dir: Path, donor: Path) -> dict:
    """Cheap checks that the merged folder is a complete checkpoint: config and tokenizer load
    with stock transformers, and every tensor of a variant is there with its shape."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        AutoConfig.from_pretrained(out_dir)
        tok = AutoTokenizer.from_pretrained(out_dir)
    except (OSError, ValueError) as exc:
        raise StageError(f"merge: the merged folder does not load: {exc}", fix="look at the mergekit log above") from None
    merged, reference = _tensor_shapes(out_dir), _tensor_shapes(donor)
    missing = sorted(k for k in reference if k not in merged)
    wrong = sorted(k for k in reference if k in merged and merged[k] != reference[k])
    if missing or wrong:
        raise StageError(f"merge: the merged weights differ in layout from the variants "
                         f"(missing {missing[:5]}, wrong shape {wrong[:5]})",
                         fix="the variants must share one architecture; check the finetune outputs")
    params = 0
    for shape in merged.values():
        n = 1
        for d in shape:
            n *= d
        params += n
    return {"tensors": len(merged), "parameters": params, "has_chat_template": bool(getattr(tok, "chat_template", None))}


def _pruned_dir(ctx: StageContext) -> Path | None:
    # TIES' base: the pruned model, a declared input of the merge stage.
    prune = ctx.inputs.get("prune")
    if prune is None or "model_dir" not in prune.outputs:
        return None
    return checkpoint_dirs(ctx.inputs)["pruned"]


def run_merge(ctx: StageContext) -> StageOutput:
    """Entry of the ``merge`` stage."""
    from ...core.models import default_device

    section = ctx.section
    started = time.time()
    finetune = ctx.input("finetune")
    variants = finetune.outputs.get("variants") or {}
    missing = [m for m in section.models if m not in variants]
    if missing:
        raise StageError(f"merge.models: {missing} were not produced by the finetune stage (it made {list(variants)})",
                         fix="name finetune variants in merge.models, or rerun finetune")
    available = checkpoint_dirs(ctx.inputs)
    model_dirs = {m: available[m] for m in section.models}
    for name, path in model_dirs.items():
        _check_model_dir(name, path)
    base_dir = _pruned_dir(ctx) if section.method == "ties" else None
    if base_dir is not None:
        _check_model_dir("pruned", base_dir)

    cfg = build_merge_config(section, model_dirs, base_dir)
    config_text = yaml.safe_dump(cfg, sort_keys=False)
    atomic_write_text(ctx.out_dir / "mergekit.yaml", config_text)
    names = {str(p): n for n, p in model_dirs.items()}
    if base_dir is not None:
        names[str(base_dir)] = "pruned"
    display = display_config(cfg, names)

    out_model = ctx.out_dir / "model"
    log.info("merge: %s of %s", section.method, ", ".join(section.models))
    run_mergekit(cfg, out_model, seed=ctx.recipe.seed, trust_remote_code=ctx.recipe.base.trust_remote_code,
                 device=default_device(ctx.recipe))
    donor = model_dirs[section.models[0]]
    copied = complete_model_dir(out_model, donor)
    check = verify_merged(out_model, donor)
    return StageOutput(
        outputs=MergeOutputs(**{
            "model_dir": "model",
            "config": "mergekit.yaml",
            "config_text": display,
            "method": section.method,
            "models": list(section.models),
            **({"base_model": "pruned"} if base_dir is not None else {}),
        }),
        metrics=MergeMetrics(**{
            "seconds": round(time.time() - started, 3),
            "method": section.method,
            "models": list(section.models),
            "t": section.t if section.method == "slerp" else None,
            "weights": list(section.weights) if section.weights is not None else None,
            "density": section.density if section.method == "ties" else None,
            "dtype": cfg["out_dtype"],
            "parameters": check["parameters"],
            "tensors": check["tensors"],
            "has_chat_template": check["has_chat_template"],
            "files_completed": copied,
        }),
    )
