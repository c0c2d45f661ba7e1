"""The perplexity criterion of Shortened LLaMA (Kim et al. 2024, Nota AI's ``shortened-llm``): a
layer's importance is the calibration perplexity of the model with that one layer removed; a layer
whose removal leaves the perplexity lowest matters least.

Shortened LLaMA removes the n least important layers wherever they are; hubsdd removes a contiguous
run, like the angular method, so that the two compare on the same footing: the run l..l+n-1 with the
lowest sum of its layers' scores. Cost: one pass over the calibration batches per layer
(L x batches forward passes, on top of the shared one), each with one layer skipped (its output
replaced by its input through a forward hook, so any architecture works; the skipped layer still
computes, about 1/L of a pass wasted).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator

from . import BlockChoice, ScoringInput


@contextlib.contextmanager
def skipped(layer: Any) -> Iterator[None]:
    """``layer`` passes its input hidden states through unchanged while inside."""

    def identity(_module: Any, args: tuple, kwargs: dict, output: Any) -> Any:
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = layer.register_forward_hook(identity, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def perplexity(model: Any, batches: list[dict]) -> float:
    """exp(mean next-token negative log-likelihood) over the non-padding tokens of ``batches``."""
    import torch

    device = next(model.parameters()).device
    nll, count = 0.0, 0
    for batch in batches:
        ids = batch["input_ids"].to(device)
        mask = batch["attention_mask"].to(device)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
        target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        nll += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                       ignore_index=-100, reduction="sum"))
        count += int((target != -100).sum())
    return math.exp(nll / max(count, 1))


def layer_perplexities(model: Any, batches: list[dict]) -> list[float]:
    """The calibration perplexity with each layer removed in turn (L passes over ``batches``)."""
    import torch

    from ....core.models import fast_cpu_linears
    from ..surgery import decoder_layers

    out = []
    with torch.inference_mode(), fast_cpu_linears(model):
        for layer in decoder_layers(model):
            with skipped(layer):
                out.append(perplexity(model, batches))
    return out


def score(inp: ScoringInput) -> BlockChoice:
    ppl = layer_perplexities(inp.model, inp.batches)
    n = inp.blocks
    sums = [sum(ppl[s:s + n]) for s in range(len(ppl) - n + 1)]
    start = min(range(len(sums)), key=lambda s: (sums[s], s))
    return BlockChoice(list(range(start, start + n)), forward_passes=len(ppl) * len(inp.batches),
                       layer_scores=[round(p, 4) for p in ppl],
                       description="the contiguous run of layers with the lowest sum of per-layer perplexity "
                                   "scores (the calibration perplexity with that one layer removed; the PPL "
                                   "criterion of Shortened LLaMA, Kim et al. 2024)")
