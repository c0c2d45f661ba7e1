"""Pruned models as speculative drafts of the base: acceptance rate and speed-up, as measured.

Each pruned model drafts for the base model with transformers' ``generate(assistant_model=...)``,
greedy. The acceptance rate (accepted / proposed draft tokens) measures how faithfully the pruned
model imitates the base; it is counted by instrumenting the candidate generator transformers
creates, comparing each round's draft with the tokens that actually entered the output. The
wall-clock speed-up is reported as measured: on a CPU with a small target it is below 1 (the
draft's forward passes cost almost as much as the target's).
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

from ...core.chat import chat_prompt_ids
from ...core.models import fast_cpu_linears
from .tasks import PreparedTask

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class AcceptanceCounter:
    """Draft tokens proposed by the assistant and how many of them ended up in the output."""

    proposed: int = 0
    accepted: int = 0
    rounds: int = 0

    @property
    def rate(self) -> float | None:
        return self.accepted / self.proposed if self.proposed else None


def _instrument(generator: Any, counter: AcceptanceCounter) -> None:
    """Wrap a candidate generator's two protocol methods (on the instance only).

    ``get_candidates`` returns the prompt plus the draft; ``update_candidate_strategy`` is called
    once per round with the sequence after verification. The accepted count is the length of the
    draft's prefix that is in the output: unlike the ``num_matches`` argument, it is not reduced
    when verification ends on an end-of-sequence token the draft got right."""
    get_candidates = generator.get_candidates
    update = generator.update_candidate_strategy
    pending: dict[str, Any] = {}

    def counted_get_candidates(input_ids: Any, *args: Any, **kwargs: Any) -> Any:
        candidate_ids, candidate_logits = get_candidates(input_ids, *args, **kwargs)
        start = input_ids.shape[-1]
        pending["start"] = start
        pending["draft"] = candidate_ids[0, start:].tolist()
        return candidate_ids, candidate_logits

    def counted_update(input_ids: Any, scores: Any, num_matches: int, *args: Any, **kwargs: Any) -> Any:
        draft = pending.pop("draft", [])
        start = pending.pop("start", input_ids.shape[-1])
        kept = input_ids[0, start:].tolist()
        accepted = 0
        for d, k in zip(draft, kept):
            if d != k:
                break
            accepted += 1
        counter.proposed += len(draft)
        counter.accepted += accepted
        counter.rounds += 1
        return update(input_ids, scores, num_matches, *args, **kwargs)

    generator.get_candidates = counted_get_candidates
    generator.update_candidate_strategy = counted_update


@contextlib.contextmanager
def count_acceptance(target: "PreTrainedModel") -> Iterator[AcceptanceCounter]:
    """Count draft acceptance of every assisted ``generate`` call on ``target`` inside the block.

    transformers builds a fresh candidate generator per call in ``_get_candidate_generator``;
    the target instance's method is shadowed to instrument each generator it returns."""
    counter = AcceptanceCounter()
    original = target._get_candidate_generator

    def patched(*args: Any, **kwargs: Any) -> Any:
        generator = original(*args, **kwargs)
        _instrument(generator, counter)
        return generator

    object.__setattr__(target, "_get_candidate_generator", patched)
    try:
        yield counter
    finally:
        object.__delattr__(target, "_get_candidate_generator")


def prompt_text(doc: dict) -> str:
    """A natural user request from an evaluation item (for the speculative-decoding prompts)."""
    if isinstance(doc.get("question"), str):
        text = doc["question"].strip()
        choices = doc.get("choices")
        if isinstance(choices, dict):
            choices = choices.get("text")
        if isinstance(choices, list) and choices and all(isinstance(c, str) for c in choices):
            text += "\n" + "\n".join(f"{chr(65 + i)}. {c}" for i, c in enumerate(choices))
            text += "\nAnswer and explain briefly."
        return text
    if isinstance(doc.get("goal"), str):
        return f"{doc['goal'].strip()} Explain how."
    if isinstance(doc.get("ctx"), str):
        return f"Continue this text: {doc['ctx'].strip()}"
    if isinstance(doc.get("sentence"), str):
        return f"Fill in the blank (_) and explain: {doc['sentence'].strip()}"
    strings = [v for v in doc.values() if isinstance(v, str) and len(v) > 10]
    return strings[0] if strings else json.dumps(doc)[:500]


def speculative_prompts(prepared: dict[str, PreparedTask], count: int) -> list[str]:
    """``count`` prompts taken round-robin over the tasks' evaluated items (deterministic)."""
    lists = [[prompt_text(d) for d in p.docs] for p in prepared.values()]
    out: list[str] = []
    depth = max((len(x) for x in lists), default=0)
    for i in range(depth):
        for prompts in lists:
            if i < len(prompts) and len(out) < count:
                out.append(prompts[i])
    if not out:
        out = ["Explain why the sky is blue."]
    return out


def encode_prompts(tokenizer: "PreTrainedTokenizerBase", prompts: list[str]) -> list[Any]:
    import torch

    encoded = []
    for text in prompts:
        ids = torch.tensor([chat_prompt_ids(tokenizer, text)])
        encoded.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return encoded


def _greedy_config(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", max_new_tokens: int) -> Any:
    from transformers import GenerationConfig

    eos = model.generation_config.eos_token_id if model.generation_config is not None else None
    return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                            eos_token_id=eos if eos is not None else tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)


def _set_draft_config(draft: "PreTrainedModel", num_assistant_tokens: int) -> None:
    """A fixed draft length and no early stop on low confidence, so that 'proposed' is simple."""
    draft.generation_config.num_assistant_tokens = num_assistant_tokens
    draft.generation_config.num_assistant_tokens_schedule = "constant"
    draft.generation_config.assistant_confidence_threshold = 0.0


def _timed_generate(model: "PreTrainedModel", encoded: list[Any], config: Any,
                    assistant: "PreTrainedModel | None" = None) -> tuple[list[list[int]], float, int]:
    import torch

    outputs, seconds, tokens = [], 0.0, 0
    # Target and draft both on the faster CPU kernels, in plain and assisted runs alike.
    draft_kernels = fast_cpu_linears(assistant) if assistant is not None else contextlib.nullcontext()
    with torch.inference_mode(), fast_cpu_linears(model), draft_kernels:
        for enc in encoded:
            enc = {k: v.to(model.device) for k, v in enc.items()}
            started = time.perf_counter()
            out = model.generate(**enc, generation_config=config, assistant_model=assistant)
            seconds += time.perf_counter() - started
            new = out[0, enc["input_ids"].shape[1]:].tolist()
            outputs.append(new)
            tokens += len(new)
    return outputs, seconds, tokens


def measure_plain(target: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", prompts: list[str],
                  max_new_tokens: int) -> dict:
    """Plain greedy decoding of the target: the reference outputs and tokens/s."""
    encoded = encode_prompts(tokenizer, prompts)
    config = _greedy_config(target, tokenizer, max_new_tokens)
    _timed_generate(target, encoded[:1], _greedy_config(target, tokenizer, 2))  # warm-up
    outputs, seconds, tokens = _timed_generate(target, encoded, config)
    return {"outputs": outputs, "seconds": seconds, "tokens": tokens,
            "tokens_per_s": tokens / seconds if seconds else None}


def measure_speculative(target: "PreTrainedModel", draft: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase",
                        prompts: list[str], max_new_tokens: int, num_assistant_tokens: int,
                        plain: dict | None = None) -> dict:
    """``draft`` as the assistant of ``target`` on ``prompts``, greedy: acceptance and speed-up."""
    encoded = encode_prompts(tokenizer, prompts)
    config = _greedy_config(target, tokenizer, max_new_tokens)
    _set_draft_config(draft, num_assistant_tokens)
    if plain is None:
        plain = measure_plain(target, tokenizer, prompts, max_new_tokens)
    _timed_generate(target, encoded[:1], _greedy_config(target, tokenizer, 2), assistant=draft)  # warm-up
    with count_acceptance(target) as counter:
        outputs, seconds, tokens = _timed_generate(target, encoded, config, assistant=draft)
    tps = tokens / seconds if seconds else None
    same = sum(1 for a, b in zip(outputs, plain["outputs"]) if a == b)
    return {
        "acceptance_rate": counter.rate,
        "speedup": (tps / plain["tokens_per_s"]) if tps and plain.get("tokens_per_s") else None,
        "draft_tokens_proposed": counter.proposed,
        "accepted": counter.accepted,
        "rounds": counter.rounds,
        "target_tokens_per_s": tps,
        "plain_tokens_per_s": plain.get("tokens_per_s"),
        "generated_tokens": tokens,
        # another common reading of "acceptance": the share of output tokens the draft supplied
        "draft_token_share": counter.accepted / tokens if tokens else None,
        # greedy assisted decoding is lossless up to floating-point ties
        "outputs_identical_to_plain": same / len(outputs) if outputs else None,
    }
