"""`device: auto` on a GPU: batch sizes from the device's memory instead of the CPU-sized defaults.

The recipe's defaults (8 generation rows, 64-prompt shards, one 256-token packed row per scoring
call) are sized for 2 CPU cores. On a GPU they leave the device idle: a decode step of a 135M model
costs about the same at batch 8 as at batch 256, because it is bound by launching each layer's
kernels, not by arithmetic. Only the fields a recipe leaves unset are sized here; a value the recipe
writes is always used as written. Evaluation packing is sized in
:func:`hubsdd.stages.evaluate.scoring.packing_for`.
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


# Fine-tuning memory, per process. Bytes per trainable parameter beyond the weight itself: its
# gradient and AdamW's two moments, each kept in float32 (an upper bound: in bf16 they take half).
TRAINABLE_STATE_BYTES = 12
# Activations the backward pass keeps, bytes per token per layer per hidden unit in bf16: 34, the
# figure of Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
# Models") without its attention-score term (SDPA / flash attention keep no score matrix); with
# gradient checkpointing only each layer's input (2 bytes) is kept.
ACTIVATION_BYTES = 34
CHECKPOINTED_ACTIVATION_BYTES = 2
LOGIT_BYTES = 8  # float32 logits and their gradient, per token per vocabulary entry
USABLE_SHARE = 0.85  # of the device's memory; the rest for the CUDA context, fragmentation, the allocator


def lora_parameters(config: dict, r: int, targets: Any) -> int:
    """Trainable LoRA parameters, approximately: r x (in + out) per adapted projection, with every
    projection counted as hidden x hidden except the MLP's (hidden x intermediate); ``all-linear``:
    the seven projections of a Llama-style layer."""
    text = config.get("text_config") or config
    hidden, layers = int(text["hidden_size"]), int(text["num_hidden_layers"])
    inter = int(text.get("intermediate_size") or 4 * hidden)
    names = targets if isinstance(targets, list) else ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                        "up_proj", "down_proj"]
    per_layer = sum(r * (hidden + (inter if n in ("gate_proj", "up_proj", "down_proj") else hidden)) for n in names)
    return per_layer * layers


def training_bytes(config: dict, weights_bytes: int, trainable: int, batch: int, max_length: int,
                   checkpointing: bool = False, sharded_over: int = 1) -> int:
    """Memory one process needs to train at ``batch`` rows of ``max_length`` tokens: weights and the
    trainable parameters' state (divided over ``sharded_over`` processes under FSDP), activations,
    logits."""
    text = config.get("text_config") or config
    hidden, layers = int(text["hidden_size"]), int(text["num_hidden_layers"])
    vocab = int(text.get("vocab_size") or 32000)
    tokens = batch * max_length
    per_unit = CHECKPOINTED_ACTIVATION_BYTES if checkpointing else ACTIVATION_BYTES
    state = (weights_bytes + TRAINABLE_STATE_BYTES * trainable) // max(sharded_over, 1)
    return state + tokens * hidden * layers * per_unit + tokens * vocab * LOGIT_BYTES


def finetune_sizes(section: Any, device: str, model_dir: Path, device_bytes: int | None = None,
                   sharded_over: int = 1) -> Any:
    """The finetune section with ``batch_size`` sized to the device, on a GPU and only when the recipe
    leaves it unset. The effective batch (``batch_size x gradient_accumulation_steps``) never changes:
    accumulation steps are folded into the batch (by the largest factor of them that fits
    :data:`USABLE_SHARE` of the device by :func:`training_bytes`), or, when even the default batch
    does not fit, the batch is halved into more accumulation steps."""
    if device != "cuda" or "batch_size" in section.model_fields_set:
        return section
    if device_bytes is None:
        import torch

        device_bytes = int(torch.cuda.get_device_properties(0).total_memory)
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    weights = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    text = config.get("text_config") or config
    params = weights // 2  # bf16 on a GPU
    trainable = params if section.method == "full" else lora_parameters(text, section.lora.r,
                                                                        section.lora.target_modules)
    budget = USABLE_SHARE * device_bytes

    def fits(batch: int) -> bool:
        return training_bytes(text, weights, trainable, batch, section.max_length, section.gradient_checkpointing,
                              sharded_over) <= budget

    batch, steps = section.batch_size, section.gradient_accumulation_steps
    fold = max((d for d in range(1, steps + 1) if steps % d == 0 and fits(batch * d)), default=1)
    batch, steps = batch * fold, steps // fold
    while not fits(batch) and batch % 2 == 0:
        batch, steps = batch // 2, steps * 2
    if (batch, steps) == (section.batch_size, section.gradient_accumulation_steps):
        return section
    return section.model_copy(update={"batch_size": batch, "gradient_accumulation_steps": steps})
