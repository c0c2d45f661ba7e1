"""The ``accelerate launch`` commands that train the finetune stage over several GPUs and machines,
from the recipe's ``finetune.distributed`` (``hubsdd launch-command`` prints them).

The stages before and after run in one process (``hubsdd run``); only training is spread out::

    hubsdd run recipe.yaml --until distill     # one machine
    accelerate launch ... -m hubsdd.pipeline.launch recipe.yaml   # every machine, its own --machine_rank
    hubsdd run recipe.yaml                     # finetune is cached; merge, evaluate, card

``strategy: fsdp`` shards parameters, gradients and optimizer states over every process
(accelerate's FSDP2: reshard after forward, the FULL_SHARD of FSDP1), wrapped per decoder layer
(the class the model names in ``_no_split_modules``); at the end every process takes part in
gathering the whole state dict onto the main one, which merges the LoRA adapters and saves
(:func:`hubsdd.stages.finetune.training.whole_model`).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from ..core.recipe.distributed import DistributedSettings


def fsdp_args(settings: DistributedSettings, layer_class: str | None = None) -> list[str]:
    """accelerate's FSDP plugin options for ``strategy: fsdp``."""
    args = ["--use_fsdp", "--fsdp_version", "2", "--fsdp_reshard_after_forward", "true",
            "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP"]
    if layer_class:  # else accelerate wraps the model's _no_split_modules: its decoder layer class
        args += ["--fsdp_transformer_layer_cls_to_wrap", layer_class]
    args += ["--fsdp_state_dict_type", "FULL_STATE_DICT",
             "--fsdp_offload_params", "true" if settings.fsdp_offload_params else "false"]
    return args


def launch_args(settings: DistributedSettings, machine_rank: int = 0, layer_class: str | None = None) -> list[str]:
    """The ``accelerate launch`` options (before ``-m hubsdd.pipeline.launch``) for one machine."""
    if not 0 <= machine_rank < settings.num_machines:
        raise ValueError(f"machine_rank {machine_rank} is not one of the {settings.num_machines} machines")
    args = ["accelerate", "launch"]
    args += fsdp_args(settings, layer_class) if settings.strategy == "fsdp" else ["--multi_gpu"]
    args += ["--num_processes", str(settings.num_processes)]
    if settings.num_machines > 1:
        args += ["--num_machines", str(settings.num_machines), "--machine_rank", str(machine_rank),
                 "--main_process_ip", str(settings.main_process_ip),
                 "--main_process_port", str(settings.main_process_port)]
    return args


def launch_commands(recipe: Any, recipe_path: str | Path, layer_class: str | None = None) -> list[str]:
    """One shell command per machine (machine rank 0 first) that trains the recipe's finetune stage.
    A single process needs no launcher: ``hubsdd run``."""
    settings = recipe.finetune.distributed
    path = str(recipe_path)
    if settings.num_processes == 1 and settings.strategy == "ddp":
        return [shlex.join(["hubsdd", "run", path])]
    return [shlex.join([*launch_args(settings, rank, layer_class), "-m", "hubsdd.pipeline.launch", path])
            for rank in range(settings.num_machines)]


def decoder_layer_class(config: dict) -> str | None:
    """The decoder layer class FSDP wraps, from a model's config.json: the first of its
    ``_no_split_modules`` (e.g. LlamaDecoderLayer); None when transformers does not know it."""
    import transformers

    for arch in config.get("architectures") or []:
        names = getattr(getattr(transformers, arch, None), "_no_split_modules", None)
        if names:
            return str(names[0])
    return None


def base_config(recipe: Any) -> dict | None:
    """The base model's config.json if it is on this machine (a folder, or the Hub cache)."""
    base = recipe.base
    candidates = []
    if base.path:
        candidates.append(Path(base.path) / "config.json")
    if base.model:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(base.model, "config.json", revision=base.revision)
            if isinstance(cached, str):
                candidates.append(Path(cached))
        except Exception:  # noqa: BLE001 - only a hint for the command line
            pass
    for path in candidates:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return None
