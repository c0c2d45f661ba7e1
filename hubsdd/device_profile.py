"""`device: auto` on a GPU: batch sizes from the device's memory instead of the CPU-sized defaults.

The recipe's defaults (8 generation rows, 64-prompt shards, one 256-token packed row per scoring
call) are sized for 2 CPU cores. On a GPU they leave the device idle: a decode step of a 135M model
costs about the same at batch 8 as at batch 256, because it is bound by launching each layer's
kernels, not by arithmetic. Only the fields a recipe leaves unset are sized here; a value the recipe
writes is always used as written. Evaluation packing is sized in
:func:`hubsdd.evaluate.scoring.packing_for`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# At most this share of the memory the weights leave free goes to the teacher's KV cache.
KV_SHARE = 0.5
MAX_GENERATION_ROWS = 512
MIN_GENERATION_ROWS = 8
PROMPT_TOKENS_BUDGET = 512  # a rewrite prompt (template, instruction, reference) is rarely longer


def kv_bytes_per_token(config: dict, dtype_bytes: int = 2) -> int:
    """Keys and values of one token over every layer."""
    text = config.get("text_config") or config
    layers = int(text["num_hidden_layers"])
    heads = int(text.get("num_key_value_heads") or text["num_attention_heads"])
    head_dim = int(text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"])
    return 2 * layers * heads * head_dim * dtype_bytes


def generation_rows(config: dict, weights_bytes: int, device_bytes: int, max_new_tokens: int) -> int:
    """Rows of the teacher's KV cache that fit in :data:`KV_SHARE` of what the weights leave, as a
    power of two between 8 and 512."""
    row = kv_bytes_per_token(config) * (PROMPT_TOKENS_BUDGET + max_new_tokens)
    fit = int(KV_SHARE * max(device_bytes - weights_bytes, 0) // max(row, 1))
    rows = MIN_GENERATION_ROWS
    while rows * 2 <= min(fit, MAX_GENERATION_ROWS):
        rows *= 2
    return rows


def distill_sizes(section: Any, device: str, model_dir: Path, device_bytes: int | None = None) -> tuple[Any, int]:
    """(generation settings, shard size) for the distill stage on ``device``. On a GPU with the
    transformers backend: ``generation.batch_size`` from the device's memory and shards of twice
    that many prompts, each only where the recipe leaves it unset."""
    settings = section.generation
    size = section.shard_size
    if device != "cuda" or settings.backend != "transformers":
        return settings, size
    if device_bytes is None:
        import torch

        device_bytes = int(torch.cuda.get_device_properties(0).total_memory)
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    weights = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    if "batch_size" not in settings.model_fields_set:
        settings = settings.model_copy(update={"batch_size": generation_rows(config, weights, device_bytes,
                                                                             settings.max_new_tokens)})
    if "shard_size" not in section.model_fields_set:
        size = max(size, 2 * settings.batch_size)
    return settings, size
