"""Pruning any decoder-only architecture: every causal LM the installed transformers can build from a
tiny config is pruned (two middle layers), saved as safetensors, reloaded with plain
``AutoModelForCausalLM.from_pretrained``, and its logits and greedy generations (cached and
uncached) compared with the unpruned model run with those layers passed through -- or it gets the
clear error. A fixed representative set runs in the normal suite; the full sweep is slow
(``bench/prune_architectures.py`` prints its figure)."""

import pytest

from hubsdd.testing.architectures import causal_lm_architectures, check_architecture, summarize

# Every family the old fixed list supported, the families issue 12 found refused although their
# layers are one list, other layouts (transformer.h, gpt_neox.layers, backbone.layers), MoE and
# hybrid state-space models; then one of each kind of refusal.
PASS = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gemma3_text", "phi3", "olmo2", "granite",
        "smollm3", "cohere", "stablelm", "starcoder2", "gpt_neox", "phi", "falcon", "gpt2", "qwen3_moe",
        "deepseek_v3", "qwen3_next", "falcon_h1", "mamba"]
REFUSED = {
    "bart": "encoder-decoder",
    "xlm": "split across several lists",
    "zamba": "share weights",
    "jamba": "attn_layer_period",
    "gemma3n_text": "embed_tokens_per_layer",
}
# Transformers 5.24: 150 of 175 buildable architectures pass (BENCHMARKS.md, Reliability). A lower
# count means the generic rule started refusing something it handled.
FULL_SWEEP_FLOOR = 150


@pytest.mark.parametrize("model_type", PASS)
def test_pruned_model_reloads_with_stock_transformers_and_computes_the_same(model_type, tmp_path):
    outcome = check_architecture(model_type, tmp_path)
    assert outcome.status == "pass", outcome.detail


@pytest.mark.parametrize("model_type", sorted(REFUSED))
def test_what_cannot_be_pruned_gets_the_clear_error(model_type, tmp_path):
    outcome = check_architecture(model_type, tmp_path)
    assert outcome.status == "refused", outcome.detail
    message, fix = outcome.detail.split("\n  fix: ")
    assert message.startswith(f"layer surgery cannot prune model_type {model_type!r}")
    assert REFUSED[model_type] in message and fix


@pytest.mark.slow
def test_every_buildable_architecture_passes_or_gets_the_clear_error(tmp_path):
    outcomes = [check_architecture(model_type, tmp_path) for model_type in causal_lm_architectures()]
    failed = [f"{o.model_type}: {o.detail}" for o in outcomes if o.status == "fail"]
    assert not failed, "\n".join(failed)
    for o in outcomes:
        if o.status == "refused":
            assert o.detail.startswith(f"layer surgery cannot prune model_type {o.model_type!r}")
            assert "\n  fix: " in o.detail
    assert sum(o.status == "pass" for o in outcomes) >= FULL_SWEEP_FLOOR, summarize(outcomes)
