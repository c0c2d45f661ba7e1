"""What an engine is: the :class:`GenerationBackend` protocol, the :class:`Generation` it returns and
the tokens every engine stops on. Its own module so that the engines (:mod:`.transformers`,
:mod:`.vllm`) import it, not the package that chooses between them (:func:`make_backend`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Sequence

from ....core.chat import Messages

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
