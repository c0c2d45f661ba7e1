"""Generation engines for the teacher: what the distill stage needs from one, and which one it gets.

``transformers`` (:mod:`.transformers`): continuous batching with a transformers model on this
machine, CPU or GPU. ``vllm`` (:mod:`.vllm`): vLLM engines on GPUs, an optional extra. A new engine
implements :class:`GenerationBackend` and is chosen in :func:`make_backend`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Sequence

from ...chat import Messages
from ...recipe import GenerationSettings
from ...runner import StageContext

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Chat models end a turn with a dedicated token that is not always the configured eos.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")


@dataclass(frozen=True)
class Generation:
    text: str
    tokens: int  # generated tokens, up to and including the end-of-turn token
    finish_reason: str  # "stop" (end of turn) | "length" (hit max_new_tokens)


class GenerationBackend(Protocol):
    """What distillation needs from an inference engine: chat prompts in, completions out, in order.

    ``seed`` makes sampled generations reproducible per call (the distiller passes one per shard)."""

    name: str

    def generate(self, conversations: Sequence[Messages], *, seed: int) -> list[Generation]: ...

    def close(self) -> None: ...


def stop_token_ids(generation_config: Any, tokenizer: "PreTrainedTokenizerBase") -> list[int]:
    """The tokens that end a rewrite: the eos ids of the model's generation config and of the
    tokenizer, and the chat end-of-turn tokens the vocabulary has. Every backend stops on these."""
    ids: list[int] = []
    for value in (getattr(generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if value is None:
            continue
        ids.extend(value if isinstance(value, (list, tuple)) else [value])
    for tok in END_OF_TURN_TOKENS:
        tid = tokenizer.convert_tokens_to_ids(tok) if tok in tokenizer.get_vocab() else None
        if tid is not None:
            ids.append(tid)
    return sorted(set(int(i) for i in ids))


def make_backend(ctx: StageContext, settings: GenerationSettings,
                 conversations: Sequence[Messages] = ()) -> GenerationBackend:
    """The teacher behind the backend the recipe chose: the base model, unpruned.

    ``conversations``: every prompt the stage will ask for; an engine that must size its context
    up front (vLLM) sizes it for the longest."""
    from ...models import base_model_dir, default_device, load_base, model_dtype, set_threads

    if settings.backend == "vllm":
        from .vllm import VLLMBackend

        base = ctx.recipe.base
        # The run's dtype (base.dtype, else bfloat16 on a GPU): never None, which vLLM would take
        # as its own `auto` (float16 for a float32 checkpoint).
        return VLLMBackend(base_model_dir(ctx), settings, dtype=model_dtype(ctx.recipe),
                           trust_remote_code=base.trust_remote_code, sized_for=conversations)
    from .transformers import TransformersBackend

    set_threads()
    model, tok = load_base(ctx, device=default_device(ctx.recipe))
    return TransformersBackend(model, tok, settings)
