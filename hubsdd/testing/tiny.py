"""Tiny random models and a byte-level tokenizer, offline: for tests and for smoke runs of the
benchmarks (``bench/quality.py --smoke``), where the machinery matters and the weights do not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Configs shrunk to a few thousand parameters.
TINY = dict(vocab_size=259, hidden_size=32, intermediate_size=64, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)


def make_tokenizer() -> Any:
    """A byte-level tokenizer with no merges (259 tokens): any text round-trips, offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {s: i for i, s in enumerate(specials)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", bos_token="<|im_start|>", pad_token="<|endoftext|>"
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_config(model_type: str = "llama", layers: int = 6, **overrides: Any) -> Any:
    from transformers import AutoConfig

    kwargs = dict(TINY, num_hidden_layers=layers, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if model_type in ("gemma2", "gemma3_text"):
        kwargs.update(head_dim=8, sliding_window=16, query_pre_attn_scalar=8)
    if model_type == "gemma3_text":
        kwargs.update(sliding_window_pattern=2)
    if model_type in ("qwen2", "qwen3", "mistral"):
        kwargs.update(sliding_window=None)
    if model_type == "qwen3":
        kwargs.update(head_dim=8)
    kwargs.update(overrides)
    return AutoConfig.for_model(model_type, **kwargs)


def make_tiny_model(model_type: str = "llama", layers: int = 6, seed: int = 0, **overrides: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, layers, **overrides))
    model.eval()
    return model


def save_tiny(folder: Path, model_type: str = "llama", layers: int = 6, seed: int = 0, **overrides: Any) -> Path:
    model = make_tiny_model(model_type, layers, seed, **overrides)
    model.generation_config.eos_token_id = 2
    model.save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return Path(folder)
