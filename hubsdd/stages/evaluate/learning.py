"""What a model learned of the training task: the mean loss, per response token, of held-out
reference solutions (problems of the training task that were never trained on), formatted exactly as
the finetune stage formats training examples (the chat template, loss on the response only).

A lower figure than the pruned model's says the fine-tuning taught the task, not just the examples;
``bench/regimes.py`` reports it beside forgetting (the six tasks' change against the pruned model).
"""

from __future__ import annotations

from typing import Any, Sequence


def encode(tokenizer: Any, instruction: str, response: str, max_length: int) -> tuple[list[int], int]:
    """Token ids of prompt + response (as the finetune stage trains on them) and the prompt's length."""
    from ...core.chat import user_message

    prompt = tokenizer.apply_chat_template([{"role": "user", "content": user_message(instruction, None)}],
                                           add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template([{"role": "user", "content": user_message(instruction, None)},
                                          {"role": "assistant", "content": response}], tokenize=False)
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    if ids[:len(p_ids)] != p_ids:  # templates that re-render the prompt differently: fall back to concatenation
        ids = p_ids + tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
    return ids[:max_length], len(p_ids)


def reference_loss(model: Any, tokenizer: Any, examples: Sequence[tuple[str, str]], *, max_length: int = 512,
                   batch_size: int = 8) -> dict:
    """Mean negative log-likelihood per response token of ``examples`` ((instruction, response)
    pairs) under ``model``: {"loss": total / tokens, "tokens", "per_example": [[nll sum, tokens], ...]}.
    Examples whose response is cut off entirely by ``max_length`` count zero tokens."""
    import torch

    encoded = [encode(tokenizer, q, a, max_length) for q, a in examples]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    per_example: list[list[float]] = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start:start + batch_size]
            width = max(len(ids) for ids, _ in chunk)
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            labels = torch.full((len(chunk), width), -100, dtype=torch.long)
            for row, (ids, plen) in enumerate(chunk):  # right padding: positions are those of an unpadded run
                input_ids[row, :len(ids)] = torch.tensor(ids)
                mask[row, :len(ids)] = 1
                labels[row, plen:len(ids)] = torch.tensor(ids[plen:], dtype=torch.long)
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits.float()
            targets = labels[:, 1:].to(device)
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), targets, ignore_index=-100,
                                                    reduction="none")
            scored = targets != -100
            for row in range(len(chunk)):
                per_example.append([float(nll[row][scored[row]].sum()), int(scored[row].sum())])
    tokens = sum(n for _, n in per_example)
    return {"loss": sum(s for s, _ in per_example) / tokens if tokens else None, "tokens": tokens,
            "per_example": per_example}
