"""Fidelity to the base: top-1 agreement, KL and the acceptance rate computed from teacher forcing,
checked against transformers' own assisted generation."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_tiny_model, make_tokenizer

from hubsdd.stages.evaluate import fidelity, speculative

PROMPTS = ["What is 2 + 3?", "Name a colour.", "Tell me about the sea and the sky.", "Why?", "Count to five."]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def drop_layers(model, keep: list[int]):
    """A copy of ``model`` with only the decoder layers ``keep``: a pruned draft that agrees with
    its base part of the time."""
    pruned = copy.deepcopy(model)
    pruned.model.layers = torch.nn.ModuleList([pruned.model.layers[i] for i in keep])
    for i, layer in enumerate(pruned.model.layers):
        layer.self_attn.layer_idx = i
    pruned.config.num_hidden_layers = len(keep)
    return pruned


@pytest.fixture(scope="module")
def models():
    base = make_tiny_model(layers=6, seed=3)
    base.generation_config.eos_token_id = 2
    draft = drop_layers(base, [0, 1, 2, 5])
    return base, draft, make_tokenizer()


def test_acceptance_from_matches_counts_rounds() -> None:
    # k=3: round at 0 accepts 2 (mismatch at 2), base adds token 2; round at 3 accepts 3; base adds 6;
    # round at 7 proposes min(3, 10-7-1)=2, accepts 1 (position 8 mismatches), base adds 8; done at 9.
    matches = [True, True, False, True, True, True, False, True, False]
    assert fidelity.acceptance_from_matches(matches, 3, max_new_tokens=10) == (6, 8)
    assert fidelity.acceptance_from_matches([], 3, 10) == (0, 0)
    assert fidelity.acceptance_from_matches([True] * 4, 5, 4) == (3, 3)  # the last token is the base's


@pytest.mark.parametrize("k", [1, 3, 5])
def test_acceptance_equals_transformers_assisted_generation(models, k: int) -> None:
    base, draft, tok = models
    max_new = 24
    reference = fidelity.reference_continuations(base, tok, PROMPTS, max_new, batch_size=1)
    computed = fidelity.measure(draft, base, tok, reference, num_assistant_tokens=k, batch_size=2)
    measured = speculative.measure_speculative(base, copy.deepcopy(draft), tok, PROMPTS, max_new, k)
    assert measured["outputs_identical_to_plain"] == 1.0
    assert 0 < computed["accepted"] < computed["proposed"]
    assert (computed["accepted"], computed["proposed"]) == (measured["accepted"], measured["draft_tokens_proposed"])


def test_reference_is_the_base_greedy_output(models) -> None:
    base, _, tok = models
    ref = fidelity.reference_continuations(base, tok, PROMPTS, 16, batch_size=3)  # left-padded batches
    for text, prompt, cont in zip(PROMPTS, ref.prompts, ref.continuations):
        ids = torch.tensor([prompt])
        out = base.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False,
                            pad_token_id=0, eos_token_id=2)
        expected = out[0, len(prompt):].tolist()
        if 2 in expected:
            expected = expected[:expected.index(2) + 1]
        assert cont == expected, text


def test_base_against_itself_is_perfect_and_a_pruned_draft_is_not(models) -> None:
    base, draft, tok = models
    ref = fidelity.reference_continuations(base, tok, PROMPTS, 16)
    same = fidelity.measure(base, base, tok, ref, num_assistant_tokens=4)
    assert same["top1_agreement"] == 1.0 and same["acceptance"] == 1.0 and abs(same["kl"]) < 1e-6
    other = fidelity.measure(draft, base, tok, ref, num_assistant_tokens=4)
    assert other["top1_agreement"] < 1.0 and other["acceptance"] < 1.0
    assert other["positions"] == sum(len(c) for c in ref.continuations)
    # KL(base || draft) by hand, one unpadded sequence at a time
    total, n = 0.0, 0
    for prompt, cont in zip(ref.prompts, ref.continuations):
        ids = torch.tensor([prompt + cont[:-1]])
        with torch.no_grad():
            p = torch.log_softmax(base(ids).logits[0, len(prompt) - 1:], -1)
            q = torch.log_softmax(draft(ids).logits[0, len(prompt) - 1:], -1)
        total += float(torch.nn.functional.kl_div(q, p, log_target=True, reduction="sum"))
        n += len(cont)
    assert other["kl"] == pytest.approx(total / n, rel=1e-4)
