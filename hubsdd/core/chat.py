"""Turning a conversation into the token ids a chat model is prompted with, in one place.

The template is rendered to text and tokenized without special tokens: the template already wrote
any BOS it wants, and adding special tokens again would double it. A model without a chat template
(a base model used as a draft or scored for fidelity) gets the plain text of the user message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Messages = list[dict[str, str]]


def has_chat_template(tokenizer: "PreTrainedTokenizerBase") -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def chat_prompt_ids(tokenizer: "PreTrainedTokenizerBase", conversation: Messages | str) -> list[int]:
    """Token ids of ``conversation`` (messages, or one user message as a string) followed by the
    template's generation prompt, ready for the assistant's reply."""
    if isinstance(conversation, str):
        if not has_chat_template(tokenizer):
            return tokenizer(conversation)["input_ids"]
        conversation = [{"role": "user", "content": conversation}]
    text = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def chat_prompts_ids(tokenizer: "PreTrainedTokenizerBase", conversations: Sequence[Messages | str]) -> list[list[int]]:
    return [chat_prompt_ids(tokenizer, c) for c in conversations]


def user_message(instruction: str, input: str | None) -> str:
    """The user turn a fine-tuned model sees: the instruction, then the input if there is one.

    Shared by the distill and finetune stages so that student training prompts are built one way."""
    return f"{instruction}\n\n{input}" if input else instruction


# The column a fine-tuning variant's `data` reads.
DATA_COLUMNS = {"distilled": "selected", "original": "original", "accepted": "selected"}


def chat_example(row: dict, data: str) -> tuple[list[dict], list[dict]] | None:
    """A distilled row as the conversational prompt/completion a student trains on for ``data``
    (``distilled``, ``original``, or ``accepted``: accepted rewrites only, no fallback to the
    original), or None when its instruction or response is empty or, for ``accepted``, the rewrite
    was rejected. Shared by the finetune stage and the teacher log-probabilities, which must see the
    same sequences."""
    response = row.get(DATA_COLUMNS[data]) or ""
    rejected = data == "accepted" and row.get("verdict") != "accepted"
    if rejected or not response.strip() or not (row.get("instruction") or "").strip():
        return None
    return ([{"role": "user", "content": user_message(row["instruction"], row.get("input"))}],
            [{"role": "assistant", "content": response}])
