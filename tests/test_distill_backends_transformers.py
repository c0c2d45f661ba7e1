"""The transformers backend: continuous batching gives transformers' own greedy answers, and
sampling is reproducible per seed."""

from __future__ import annotations

import pytest

from hubsdd.stages.distill.backends.transformers import TransformersBackend
from hubsdd.core.errors import StageError
from hubsdd.core.recipe import GenerationSettings


@pytest.mark.parametrize("model_type", ["llama", "gemma2"])
def test_left_padded_batches_match_one_by_one_generation(model_type: str) -> None:
    from conftest import make_tiny_model, make_tokenizer

    prompts = [[{"role": "user", "content": c}] for c in ("hi", "a much longer prompt here", "mid size")]
    model, tok = make_tiny_model(model_type, layers=2), make_tokenizer()
    one = TransformersBackend(model, tok, GenerationSettings(max_new_tokens=6, batch_size=1))
    batched = TransformersBackend(model, tok, GenerationSettings(max_new_tokens=6, batch_size=3))
    # gemma2's sliding-window cache cannot take refilled rows: it runs in static batches instead.
    assert batched.continuous is (model_type == "llama")
    expected = [g.text for g in one.generate(prompts, seed=0)]
    assert [g.text for g in batched.generate(prompts, seed=0)] == expected
    static = TransformersBackend(model, tok, GenerationSettings(max_new_tokens=6, batch_size=3), continuous=False)
    assert [g.text for g in static.generate(prompts, seed=0)] == expected
    if model_type == "gemma2":
        with pytest.raises(StageError, match="sliding-window"):
            TransformersBackend(model, tok, GenerationSettings(), continuous=True)


SHARED_HEAD = "Rewrite the answer below in your own words, step by step. "
QUESTIONS = ["2+3?", "What is ten minus four, please?", "3*3", "Half of eight is what number?", "7+1=?",
             "Is six minus six zero or one?", "x"]


def _varied_tiny_model():
    """A tiny random model with large weights, so its answers depend on the prompt (at the default
    init every prompt gets the same few tokens, and no row would end before another)."""
    import torch
    from transformers import AutoModelForCausalLM

    from conftest import tiny_config

    config = tiny_config(layers=2)
    config.initializer_range = 0.5
    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.generation_config.eos_token_id = None
    return model


def _stock_greedy(model, tok, conversation: list[dict], max_new_tokens: int) -> list[int]:
    """transformers' own generate, one prompt at a time, never stopping early: the reference."""
    import torch

    ids = tok.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tok(ids, add_special_tokens=False)["input_ids"]])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             min_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None)
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("head", [SHARED_HEAD, ""], ids=["shared-prefix", "no-shared-prefix"])
def test_continuous_batching_matches_stock_generate_as_rows_finish_and_refill(head: str) -> None:
    """7 prompts through 3 rows: rows end at different steps and newcomers take their places. Every
    answer must equal transformers' own one-prompt-at-a-time greedy answer, cut at its end token."""
    from conftest import make_tokenizer

    model, tok = _varied_tiny_model(), make_tokenizer()
    conversations = [[{"role": "user", "content": head + q}] for q in QUESTIONS]
    max_new = 10
    full = [_stock_greedy(model, tok, c, max_new) for c in conversations]

    def ends(token: int) -> list[int]:  # how many tokens each answer has when `token` ends a turn
        return [seq.index(token) + 1 if token in seq else max_new for seq in full]

    # An end-of-turn token that stops the answers at as many different lengths as possible.
    end = max(sorted({t for seq in full for t in seq}), key=lambda t: len(set(ends(t))))
    assert len(set(ends(end))) >= 3, "the tiny model's answers are too uniform to exercise refills"

    backend = TransformersBackend(model, tok, GenerationSettings(max_new_tokens=max_new, batch_size=3))
    backend.eos_ids = [end]
    assert backend.continuous
    calls: list[tuple[int, int]] = []  # (rows, new tokens) of every forward pass
    forward = model.forward

    def spy(*args, **kwargs):
        calls.append(tuple(kwargs["input_ids"].shape))
        return forward(*args, **kwargs)

    model.forward = spy
    try:
        got = backend.generate(conversations, seed=0)
    finally:
        del model.forward
    for seq, n, g in zip(full, ends(end), got):
        kept = seq[:n - 1] if n - 1 < len(seq) and seq[n - 1] == end else seq[:n]
        assert g.text == tok.decode(kept, skip_special_tokens=True).strip()
        assert g.tokens == n
        assert g.finish_reason == ("stop" if end in seq else "length")
    assert max(rows for rows, _ in calls) <= 3
    prefills = [c for c in calls if c[1] > 1]
    assert len(prefills) >= 3  # newcomers were admitted while other rows were still generating
    shared = bool(head)
    # The shared head is prefilled once (one row), not with every prompt.
    assert (prefills[0][0] == 1 and prefills[0][1] >= len(head)) is shared


def test_sampling_is_reproducible_per_seed() -> None:
    from conftest import make_tokenizer

    model, tok = _varied_tiny_model(), make_tokenizer()
    settings = GenerationSettings(max_new_tokens=8, batch_size=2, do_sample=True, temperature=1.0, top_p=0.9)
    conversations = [[{"role": "user", "content": SHARED_HEAD + q}] for q in QUESTIONS[:5]]
    backend = TransformersBackend(model, tok, settings)
    first = [g.text for g in backend.generate(conversations, seed=7)]
    assert [g.text for g in backend.generate(conversations, seed=7)] == first
    assert [g.text for g in backend.generate(conversations, seed=8)] != first
    greedy = TransformersBackend(model, tok, GenerationSettings(max_new_tokens=8, batch_size=2))
    assert [g.text for g in greedy.generate(conversations, seed=7)] != first


def test_paged_engine_gives_the_same_answers_and_leaves_the_model_as_it_was() -> None:
    """``generation.paged``: transformers' generate_batch, 3 requests in flight over 7 prompts, gives
    this engine's greedy answers with the same stop tokens and finish reasons; afterwards the model
    answers plain forward passes exactly as before (its attention implementation is restored)."""
    import torch

    from conftest import make_tokenizer

    model, tok = _varied_tiny_model(), make_tokenizer()
    conversations = [[{"role": "user", "content": SHARED_HEAD + q}] for q in QUESTIONS]
    ours = TransformersBackend(model, tok, GenerationSettings(max_new_tokens=10, batch_size=3))
    paged = TransformersBackend(model, tok, GenerationSettings(max_new_tokens=10, batch_size=3, paged=True))
    assert paged.paged and not paged.continuous
    # An end-of-turn token some answers reach, so both stop reasons occur.
    full = ours.generate(conversations, seed=0)
    ids = [tok(tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False),
               add_special_tokens=False)["input_ids"] for c in conversations]
    probe = torch.tensor([ids[1]])
    with torch.inference_mode():
        before = model(input_ids=probe).logits
    stock = [_stock_greedy(model, tok, c, 10) for c in conversations]
    end = max({t for seq in stock for t in seq}, key=lambda t: sum(t in seq for seq in stock) * (t not in stock[0]))
    ours.eos_ids = paged.eos_ids = [end]
    expected = ours.generate(conversations, seed=0)
    assert {g.finish_reason for g in expected} == {"stop", "length"}
    got = paged.generate(conversations, seed=0)
    assert [(g.text, g.tokens, g.finish_reason) for g in got] == [(g.text, g.tokens, g.finish_reason) for g in expected]
    assert [g.text for g in full] != [g.text for g in expected]  # the end token did change the answers
    with torch.inference_mode():
        assert torch.equal(model(input_ids=probe).logits, before)
    sampled = TransformersBackend(model, tok, GenerationSettings(max_new_tokens=8, batch_size=2, do_sample=True,
                                                                 temperature=1.0, paged=True))
    first = [g.text for g in sampled.generate(conversations[:4], seed=7)]
    assert [g.text for g in sampled.generate(conversations[:4], seed=7)] == first
    assert [g.text for g in sampled.generate(conversations[:4], seed=8)] != first


def test_paged_is_refused_beside_vllm_and_absent_from_the_settings_while_off() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="paged: true applies to `backend: transformers` only"):
        GenerationSettings(backend="vllm", paged=True)
    # Left out while off: the shard keys and fingerprints of recipes that never set it are unchanged.
    assert "paged" not in GenerationSettings().model_dump(mode="json")
    assert GenerationSettings(paged=True).model_dump(mode="json")["paged"] is True


def test_paged_engine_asks_for_cuda_graphs_on_a_gpu_and_a_failed_request_is_an_error() -> None:
    """What only a GPU runs, as a contract: on CUDA the call asks for graphs and leaves the cache's
    size to transformers (it sizes it from the device's memory); a request that generate_batch
    reports failed (it only logs it) stops the shard instead of leaving a row empty."""
    from types import SimpleNamespace

    from conftest import make_tiny_model, make_tokenizer

    real, tok = make_tiny_model(layers=2), make_tokenizer()
    seen: dict = {}

    class OnCuda:
        config, generation_config = real.config, real.generation_config

        def parameters(self):
            yield SimpleNamespace(device=SimpleNamespace(type="cuda"))

        def modules(self):
            return iter(())

        def generate_batch(self, inputs, generation_config, continuous_batching_config, max_new_tokens):
            seen.update(config=continuous_batching_config, max_new_tokens=max_new_tokens, n=len(inputs))
            return {f"req_{i}": SimpleNamespace(generated_tokens=[5, 2], error="out of pages" if i == 1 else None)
                    for i in range(len(inputs))}

    backend = TransformersBackend(OnCuda(), tok, GenerationSettings(max_new_tokens=4, batch_size=2, paged=True))
    conversations = [[{"role": "user", "content": q}] for q in QUESTIONS[:3]]
    with pytest.raises(StageError, match=r"returned 2 of 3 generations \(out of pages\)"):
        backend.generate(conversations, seed=0)
    config = seen["config"]
    assert config.use_cuda_graph is True and config.max_requests_per_batch == 2
    assert config.num_blocks is None and config.max_batch_tokens is None  # sized by transformers from the GPU
    assert seen["max_new_tokens"] == 4 and seen["n"] == 3
