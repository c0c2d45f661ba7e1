"""`device: auto` on a GPU sizes what the recipe leaves unset from the device's memory."""

from __future__ import annotations

import json
from pathlib import Path

from hubsdd.core.device_profile import distill_sizes, generation_rows, kv_bytes_per_token
from hubsdd.core.recipe.sections import DistillSection

SMOLLM2 = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "hidden_size": 576}
LLAMA_8B = {"num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096,
            "head_dim": 128}
GIB = 1 << 30


def test_kv_cache_arithmetic() -> None:
    assert kv_bytes_per_token(SMOLLM2) == 2 * 30 * 3 * 64 * 2  # 23,040 bytes a token in bf16
    assert kv_bytes_per_token(LLAMA_8B) == 2 * 32 * 8 * 128 * 2  # 131,072


def test_rows_grow_with_the_device_and_shrink_with_the_model() -> None:
    assert generation_rows(SMOLLM2, 270_000_000, 141 * GIB, 224) == 512  # an H200: the cap
    h200_8b = generation_rows(LLAMA_8B, 16 * GIB, 141 * GIB, 1024)
    l4_8b = generation_rows(LLAMA_8B, 16 * GIB, 24 * GIB, 1024)
    assert 8 <= l4_8b < h200_8b <= 512
    # what is chosen fits: rows x tokens x KV bytes within half of what the weights leave
    assert h200_8b * (512 + 1024) * kv_bytes_per_token(LLAMA_8B) <= 0.5 * (141 - 16) * GIB
    assert generation_rows(LLAMA_8B, 16 * GIB, 16 * GIB, 1024) == 8  # never below the CPU default


def _section(**fields) -> DistillSection:
    return DistillSection.model_validate({"data": {"path": "x.jsonl"}, **fields})


def test_only_what_the_recipe_leaves_unset_is_sized(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(SMOLLM2))
    (tmp_path / "model.safetensors").write_bytes(b"0" * 1000)
    settings, size = distill_sizes(_section(), "cuda", tmp_path, device_bytes=141 * GIB)
    assert (settings.batch_size, size) == (512, 1024)
    written = _section(generation={"batch_size": 8}, shard_size=16)
    settings, size = distill_sizes(written, "cuda", tmp_path, device_bytes=141 * GIB)
    assert (settings.batch_size, size) == (8, 16)
    settings, size = distill_sizes(_section(), "cpu", tmp_path)  # the CPU keeps the recipe's defaults
    assert (settings.batch_size, size) == (8, 64)
    vllm = _section(generation={"backend": "vllm"})
    assert distill_sizes(vllm, "cuda", tmp_path, device_bytes=141 * GIB)[0] is vllm.generation


LLAMA_8B_26 = {**LLAMA_8B, "num_hidden_layers": 26, "intermediate_size": 14336, "vocab_size": 128256}


def _finetune(**fields):
    from hubsdd.core.recipe.sections import FinetuneSection

    return FinetuneSection.model_validate(fields)


def _pruned_8b(tmp_path: Path) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_8B_26))
    with open(tmp_path / "model.safetensors", "wb") as f:  # 6.72B parameters in bf16, sparse
        f.truncate(2 * 6_720_000_000)
    return tmp_path


def test_finetune_batch_folds_accumulation_and_keeps_the_effective_batch(tmp_path: Path) -> None:
    from hubsdd.core.device_profile import finetune_sizes, training_bytes

    model = _pruned_8b(tmp_path)
    unset = _finetune(gradient_accumulation_steps=8, max_length=512)
    h200 = finetune_sizes(unset, "cuda", model, device_bytes=141 * GIB)
    a80 = finetune_sizes(unset, "cuda", model, device_bytes=80 * GIB)
    assert h200.batch_size * h200.gradient_accumulation_steps == 32 == a80.batch_size * a80.gradient_accumulation_steps
    assert (a80.batch_size, a80.gradient_accumulation_steps) == (16, 2)
    assert (h200.batch_size, h200.gradient_accumulation_steps) == (32, 1)
    # what is chosen fits 85% of the device and twice as much would not
    assert training_bytes(LLAMA_8B_26, 2 * 6_720_000_000, 0, 16, 512) <= 0.85 * 80 * GIB
    assert training_bytes(LLAMA_8B_26, 2 * 6_720_000_000, 0, 32, 512) > 0.85 * 80 * GIB
    # written by the recipe, or on the CPU: as written
    assert finetune_sizes(_finetune(batch_size=4, gradient_accumulation_steps=8), "cuda", model,
                          device_bytes=141 * GIB).batch_size == 4
    assert finetune_sizes(unset, "cpu", model) is unset


def test_full_finetuning_of_8b_unfolds_into_accumulation_unless_sharded(tmp_path: Path) -> None:
    from hubsdd.core.device_profile import finetune_sizes

    model = _pruned_8b(tmp_path)
    full = _finetune(method="full", gradient_accumulation_steps=2, max_length=2048)
    one = finetune_sizes(full, "cuda", model, device_bytes=141 * GIB)
    assert (one.batch_size, one.gradient_accumulation_steps) == (2, 4)  # weights + AdamW alone take ~88 GiB
    eight = finetune_sizes(full, "cuda", model, device_bytes=80 * GIB, sharded_over=8)
    assert eight.batch_size * eight.gradient_accumulation_steps == 8 and eight.batch_size >= 4
