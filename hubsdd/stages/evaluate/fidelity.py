"""Fidelity to the base model: does a pruned model still predict what its base would write?

The base model writes greedy continuations of held-out prompts once; every other model then reads
them under teacher forcing (one forward pass per batch), and at each continuation position:

* **top-1 agreement**: the model's most likely next token is the base's greedy token;
* **KL(base || model)**: the KL divergence from the base's next-token distribution, in nats,
  averaged over positions;
* **acceptance**: the speculative-decoding acceptance rate the model would have as a draft of
  the base with greedy decoding and ``k`` draft tokens per round, computed from the same
  predictions. Greedy assisted generation is deterministic: a round starting at position i
  proposes min(k, max_new_tokens - i - 1) tokens (transformers' cap), the draft's j-th token is
  its top-1 after the base's own tokens as long as the previous ones matched, so the accepted
  count is the run of top-1 agreements from i (capped); the base then adds one token, and the
  next round starts after it. ``tests/test_evaluate_fidelity.py`` checks this against transformers'
  assisted generation, counted by :func:`hubsdd.stages.evaluate.speculative.count_acceptance`.

These are figures of imitation, not of quality: a model can agree with its base less and still
score as well on benchmarks. They are cheap (no generation by the model measured), low-noise
(thousands of positions) and matter for drafting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from ...core.chat import chat_prompt_ids

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class Reference:
    """The base model's greedy continuations: token ids per prompt, prompt and continuation."""

    prompts: list[list[int]]
    continuations: list[list[int]]
    max_new_tokens: int

    def to_dict(self) -> dict:
        return {"prompts": self.prompts, "continuations": self.continuations, "max_new_tokens": self.max_new_tokens}

    @classmethod
    def from_dict(cls, d: dict) -> "Reference":
        return cls(d["prompts"], d["continuations"], int(d["max_new_tokens"]))


def _stop_ids(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase") -> set[int]:
    eos = model.generation_config.eos_token_id if model.generation_config is not None else None
    if eos is None:
        eos = tokenizer.eos_token_id
    ids = eos if isinstance(eos, list) else [eos]
    return {int(i) for i in ids if i is not None}


def reference_continuations(base: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", prompts: Sequence[str],
                            max_new_tokens: int, batch_size: int = 8) -> Reference:
    """The base model's greedy continuation of each prompt, up to and including its end token."""
    import torch

    encoded = [chat_prompt_ids(tokenizer, p) for p in prompts]
    stops = _stop_ids(base, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(stops), 0)
    continuations: list[list[int]] = [[] for _ in encoded]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):  # left padding: generation continues at the right edge
            ids[row, width - len(encoded[i]):] = torch.tensor(encoded[i])
            mask[row, width - len(encoded[i]):] = 1
        with torch.inference_mode():  # built on the CPU, run where the model is
            out = base.generate(input_ids=ids.to(base.device), attention_mask=mask.to(base.device), max_new_tokens=max_new_tokens, do_sample=False,
                                num_beams=1, pad_token_id=pad, eos_token_id=sorted(stops) or None)
        for row, i in enumerate(batch):
            new = out[row, width:].tolist()
            cut = next((j + 1 for j, t in enumerate(new) if t in stops), len(new))
            continuations[i] = new[:cut]
    return Reference(encoded, continuations, max_new_tokens)


def _forward_logprobs(model: "PreTrainedModel", rows: list[list[int]], keep: list[tuple[int, int]], pad: int) -> Any:
    """log-softmax at positions [start, end) of each right-padded row: a list of (n_i, vocab)."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    with torch.inference_mode():
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device), use_cache=False).logits
    return [torch.log_softmax(logits[i, s:e].float(), dim=-1) for i, (s, e) in enumerate(keep)]


def acceptance_from_matches(matches: Sequence[bool], k: int, max_new_tokens: int) -> tuple[int, int]:
    """(accepted, proposed) draft tokens of greedy speculative decoding along one continuation,
    given whether the draft's teacher-forced top-1 equals the base's token at each position."""
    accepted = proposed = 0
    i, n = 0, len(matches)
    while i < n:
        p = max(0, min(k, max_new_tokens - i - 1))
        run = 0
        while run < p and i + run < n and matches[i + run]:
            run += 1
        proposed += p
        accepted += run
        i += run + 1
    return accepted, proposed


def measure(model: "PreTrainedModel", base: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase",
            reference: Reference, *, num_assistant_tokens: int, batch_size: int = 8) -> dict:
    """Top-1 agreement, mean KL(base || model) per token and greedy acceptance of ``model``."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    agree = positions = accepted = proposed = 0
    kl_sum = 0.0
    pairs = [(p, c) for p, c in zip(reference.prompts, reference.continuations) if c]
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        rows = [p + c[:-1] for p, c in chunk]
        keep = [(len(p) - 1, len(p) - 1 + len(c)) for p, c in chunk]
        mine = _forward_logprobs(model, rows, keep, pad)
        theirs = _forward_logprobs(base, rows, keep, pad) if model is not base else mine
        for (_, cont), lp, lq in zip(chunk, mine, theirs):
            target = torch.tensor(cont, device=lp.device)
            matches = (lp.argmax(dim=-1) == target).tolist()
            agree += sum(matches)
            positions += len(cont)
            kl_sum += float((lq.exp() * (lq - lp)).sum())
            a, p = acceptance_from_matches(matches, num_assistant_tokens, reference.max_new_tokens)
            accepted += a
            proposed += p
    return {
        "top1_agreement": agree / positions if positions else None,
        "kl": kl_sum / positions if positions else None,
        "acceptance": accepted / proposed if proposed else None,
        "accepted": accepted,
        "proposed": proposed,
        "positions": positions,
        "prompts": len(pairs),
        "num_assistant_tokens": num_assistant_tokens,
        "max_new_tokens": reference.max_new_tokens,
    }
