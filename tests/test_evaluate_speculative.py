"""Speculative decoding: acceptance counted from transformers' assisted generation, checked against
a simulation from plain forward passes, and the speed-up as plain time over assisted time."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import make_tokenizer, tiny_config

from hubsdd.stages.evaluate import speculative
from hubsdd.stages.evaluate.tasks import PreparedTask


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def save_model(folder: Path, layers: int, seed: int) -> Path:
    """A tiny llama whose context fits few-shot prompts of the byte-level tokenizer."""
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(layers=layers)
    cfg.max_position_embeddings = 2048
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    model.save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


def load(folder: Path):
    from hubsdd.core.models import load_model, load_tokenizer

    return load_model(folder), load_tokenizer(folder)


def _greedy_next(model, ids: list[int]) -> int:
    with torch.no_grad():
        return int(model(torch.tensor([ids])).logits[0, -1].argmax())


def simulate_assisted(target, draft, prompt: list[int], max_new: int, k: int, eos: int) -> tuple[int, int]:
    """(proposed, accepted) of greedy assisted decoding, computed from plain forward passes."""
    seq, proposed, accepted = list(prompt), 0, 0
    limit = len(prompt) + max_new
    while len(seq) < limit:
        n = min(k, limit - len(seq) - 1)
        guess: list[int] = []
        while len(guess) < n and (not guess or guess[-1] != eos):
            guess.append(_greedy_next(draft, seq + guess))
        proposed += len(guess)
        for token in guess:
            if _greedy_next(target, seq) != token:
                break
            seq.append(token)
            accepted += 1
            if token == eos:
                return proposed, accepted
        if len(seq) < limit:
            seq.append(_greedy_next(target, seq))
            if seq[-1] == eos:
                break
    return proposed, accepted


def perturbed(model, scale: float, seed: int = 0):
    """``model`` with noise on every weight: a draft that agrees with it only part of the time."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale * p.std().clamp(min=1e-3))
    return model


def test_identical_draft_accepts_everything(tmp_path: Path) -> None:
    folder = save_model(tmp_path / "m", layers=2, seed=1)
    (target, tok), (draft, _) = load(folder), load(folder)
    out = speculative.measure_speculative(target, draft, tok, ["Why is the sky blue?", "Name a prime."],
                                          max_new_tokens=12, num_assistant_tokens=4)
    assert out["draft_tokens_proposed"] > 0
    assert out["acceptance_rate"] == 1.0 and out["accepted"] == out["draft_tokens_proposed"]
    assert out["outputs_identical_to_plain"] == 1.0


def test_acceptance_counts_match_a_simulation(tmp_path: Path) -> None:
    folder = save_model(tmp_path / "t", 2, seed=1)
    (target, tok), (draft, _) = load(folder), load(folder)
    perturbed(draft, 0.2)
    prompts = ["The capital of France is", "Two plus two", "Once upon a time"]
    out = speculative.measure_speculative(target, draft, tok, prompts, max_new_tokens=12, num_assistant_tokens=3)
    expected = [0, 0]
    for enc in speculative.encode_prompts(tok, prompts):
        p, a = simulate_assisted(target, draft, enc["input_ids"][0].tolist(), 12, 3, tok.convert_tokens_to_ids("<|im_end|>"))
        expected[0] += p
        expected[1] += a
    assert (out["draft_tokens_proposed"], out["accepted"]) == tuple(expected)
    assert 0.0 < out["acceptance_rate"] < 1.0
    assert out["outputs_identical_to_plain"] == 1.0  # greedy assisted decoding is lossless


def run_on_a_clock(monkeypatch: pytest.MonkeyPatch, target, draft, tok, draft_cost: float) -> dict:
    """measure_speculative with a clock that advances by 1 per forward pass of the target and by
    ``draft_cost`` per forward pass of the draft: the speed-up is then a count, not a timing."""
    clock = SimpleNamespace(now=0.0)

    def ticking(cost: float):
        def hook(module, args):
            clock.now += cost
        return hook

    target.register_forward_pre_hook(ticking(1.0))
    draft.register_forward_pre_hook(ticking(draft_cost))
    monkeypatch.setattr(speculative, "time", SimpleNamespace(perf_counter=lambda: clock.now))
    return speculative.measure_speculative(target, draft, tok, ["Why is the sky blue?", "Count to ten."],
                                           max_new_tokens=24, num_assistant_tokens=4)


def test_a_faithful_cheap_draft_speeds_decoding_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = save_model(tmp_path / "m", layers=2, seed=1)
    (target, tok), (draft, _) = load(folder), load(folder)
    out = run_on_a_clock(monkeypatch, target, draft, tok, draft_cost=0.1)
    assert out["acceptance_rate"] == 1.0
    # 4 accepted draft tokens (0.4) and one verification (1.0) per 5 output tokens, against 5.0
    # plain: about 3.5x; less where the prompt's prefill and the last short round weigh in
    assert 2.0 < out["speedup"] < 3.6
    assert out["target_tokens_per_s"] > out["plain_tokens_per_s"]


def test_a_draft_as_costly_as_the_target_slows_decoding_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = save_model(tmp_path / "m", layers=2, seed=1)
    (target, tok), (draft, _) = load(folder), load(folder)
    perturbed(draft, 0.5)
    out = run_on_a_clock(monkeypatch, target, draft, tok, draft_cost=1.0)
    assert out["acceptance_rate"] < 1.0
    # each round costs k draft passes and one verification for at most k + 1 tokens
    assert out["speedup"] < 1.0
    assert out["outputs_identical_to_plain"] == 1.0


def test_prompts_come_round_robin_from_the_evaluated_items() -> None:
    def task(name: str, docs: list[dict]) -> PreparedTask:
        return PreparedTask(name=name, num_fewshot=0, split="validation", items=list(range(len(docs))), pool=9,
                            fewshot_source="none", dataset="x", docs=docs)

    arc = task("arc_easy", [{"question": "Q1?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}},
                            {"question": "Q2?", "choices": {"text": ["c", "d"], "label": ["A", "B"]}}])
    wino = task("winogrande", [{"sentence": "The cup fell because _ was heavy.", "option1": "x", "option2": "y"}])
    prompts = speculative.speculative_prompts({"arc_easy": arc, "winogrande": wino}, 3)
    assert prompts == ["Q1?\nA. a\nB. b\nAnswer and explain briefly.",
                       "Fill in the blank (_) and explain: The cup fell because _ was heavy.",
                       "Q2?\nA. c\nB. d\nAnswer and explain briefly."]
    assert speculative.speculative_prompts({}, 2) == ["Explain why the sky is blue."]
