"""The learning measurement: mean loss per response token of held-out reference solutions."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import INSTRUCTIONS, make_tokenizer, save_tiny
from hubsdd.stages.evaluate.learning import encode, reference_loss

PAIRS = [(r["question"], r["answer"]) for r in INSTRUCTIONS]


def test_reference_loss_is_transformers_own_loss_on_the_response_tokens(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(save_tiny(tmp_path / "m", layers=2, seed=3)).eval()
    tok = make_tokenizer()
    batched = reference_loss(model, tok, PAIRS, batch_size=3)  # padded batches
    total, tokens = 0.0, 0
    for q, a in PAIRS:
        ids, plen = encode(tok, q, a, 512)
        assert plen < len(ids)
        assert tok.decode(ids[plen:]).startswith(a.split("\n")[0])  # the response follows the prompt
        labels = torch.tensor([[-100] * plen + ids[plen:]])
        with torch.no_grad():
            mean = float(model(input_ids=torch.tensor([ids]), labels=labels).loss)
        total += mean * (len(ids) - plen)
        tokens += len(ids) - plen
    assert batched["tokens"] == tokens and len(batched["per_example"]) == len(PAIRS)
    assert batched["loss"] == pytest.approx(total / tokens, rel=1e-4)
    alone = reference_loss(model, tok, PAIRS[:1], batch_size=1)["per_example"][0]
    assert alone == pytest.approx(batched["per_example"][0], rel=1e-4)


def test_a_model_trained_on_the_answers_has_a_lower_reference_loss(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(save_tiny(tmp_path / "m", layers=2, seed=3))
    tok = make_tokenizer()
    before = reference_loss(model, tok, PAIRS)["loss"]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(10):
        for q, a in PAIRS:
            ids, plen = encode(tok, q, a, 512)
            model.train()
            loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([[-100] * plen + ids[plen:]])).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
    assert reference_loss(model, tok, PAIRS)["loss"] < 0.5 * before
