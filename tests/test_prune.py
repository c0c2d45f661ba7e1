"""Block scoring and layer surgery on tiny random models of every supported architecture."""

import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import make_tiny_model
from hubsdd.errors import UnsupportedArchitectureError
from hubsdd.prune import (ScoreAccumulator, count_parameters, decoder_layers, remove_layers, score_blocks,
                          select_layers)

ARCHITECTURES = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3"]


def batch(seed=0, rows=3, length=24, pad_side="right"):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 259, (rows, length), generator=g)
    mask = torch.ones_like(ids)
    for r, keep in enumerate(range(length, 0, -7)[:rows]):
        if pad_side == "right":
            mask[r, keep:] = 0
            ids[r, keep:] = 0
        else:
            mask[r, : length - keep] = 0
            ids[r, : length - keep] = 0
    return {"input_ids": ids, "attention_mask": mask}


def unpadded_rows(padded):
    """Each row of a right-padded batch as its own batch of one, padding cut off."""
    rows = []
    for r in range(padded["input_ids"].shape[0]):
        keep = int(padded["attention_mask"][r].sum())
        ids = padded["input_ids"][r : r + 1, :keep]
        rows.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return rows


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_score_prune_save_reload_same_logits(arch, tmp_path):
    model = make_tiny_model(arch, layers=6)
    scores = score_blocks(model, [batch()], "last")
    assert scores.angular.shape == (6, 6)
    drop = select_layers(scores, 2, "angular")
    assert drop == list(range(drop[0], drop[0] + 2))
    remove_layers(model, drop)
    assert len(decoder_layers(model)) == 4 and model.config.num_hidden_layers == 4
    model.save_pretrained(tmp_path / "pruned")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").eval()
    assert reloaded.config.num_hidden_layers == 4
    b = batch(1)
    with torch.no_grad():
        torch.testing.assert_close(model(**b).logits, reloaded(**b).logits, rtol=0, atol=1e-6)
        # generation exercises the KV cache, indexed by the renumbered layer_idx
        a = model.generate(b["input_ids"][:1], max_new_tokens=6, do_sample=False)
        c = reloaded.generate(b["input_ids"][:1], max_new_tokens=6, do_sample=False)
    assert torch.equal(a, c)


@pytest.mark.parametrize("arch", ["gemma2", "gemma3_text", "qwen2"])
def test_per_layer_config_lists_follow_the_kept_layers(arch, tmp_path):
    # Removing one layer from an alternating sliding/full pattern shifts it: the saved config must
    # say what each kept layer really is, or a reload attends differently.
    model = make_tiny_model(arch, layers=6)
    before = list(getattr(model.config, "layer_types", []) or [])
    remove_layers(model, [1])
    if before:
        assert model.config.layer_types == [before[i] for i in (0, 2, 3, 4, 5)]
    for new_idx, layer in enumerate(decoder_layers(model)):
        assert layer.self_attn.layer_idx == new_idx
    model.save_pretrained(tmp_path / "p")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "p").eval()
    b = batch(2, length=40)  # longer than the sliding window (16)
    with torch.no_grad():
        torch.testing.assert_close(model(**b).logits, reloaded(**b).logits, rtol=0, atol=1e-6)


def test_angular_distance_matches_hand_computation():
    # Three boundaries (two layers), one token each: vectors at 0, 90 and 180 degrees.
    acc = ScoreAccumulator(num_layers=2, token_position="last")
    h = [torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[0.0, 2.0]]]), torch.tensor([[[-3.0, 0.0]]])]
    acc.add(h, torch.ones(1, 1))
    s = acc.result()
    assert s.angular[0, 0] == pytest.approx(0.5)  # d(0, 1): 90 degrees
    assert s.angular[0, 1] == pytest.approx(0.5)  # d(1, 1)
    assert s.angular[1, 0] == pytest.approx(1.0)  # d(0, 2): 180 degrees
    assert math.isnan(s.angular[1, 1])
    np.testing.assert_allclose(s.block_influence, [1.0, 1.0])


def test_last_token_is_the_last_non_pad_token_whichever_side_pads():
    model = make_tiny_model("llama", layers=4)
    right = batch(pad_side="right")
    # padding must not move the scored token: padded rows score like the same rows unpadded
    padded = score_blocks(model, [right], "last")
    one_by_one = score_blocks(model, unpadded_rows(right), "last")
    np.testing.assert_allclose(padded.angular, one_by_one.angular, atol=1e-5, equal_nan=True)


def test_all_tokens_ignores_padding():
    model = make_tiny_model("llama", layers=4)
    padded = batch(pad_side="right")
    a = score_blocks(model, [padded], "all")
    b = score_blocks(model, unpadded_rows(padded), "all")
    assert a.tokens == b.tokens == int(padded["attention_mask"].sum())
    np.testing.assert_allclose(a.angular, b.angular, atol=1e-5, equal_nan=True)


def test_last_hidden_state_is_taken_before_the_final_norm():
    # The last boundary must be the raw output of the last layer: scaling the final norm's weight
    # changes hidden_states[-1] but must not change any distance.
    model = make_tiny_model("llama", layers=4)
    b = batch()
    s1 = score_blocks(model, [b], "last")
    with torch.no_grad():
        model.model.norm.weight.mul_(-7.0)
    s2 = score_blocks(model, [b], "last")
    np.testing.assert_allclose(s1.angular, s2.angular, atol=1e-9, equal_nan=True)


def test_block_influence_picks_lowest_layers_not_necessarily_contiguous():
    model = make_tiny_model("llama", layers=6)
    scores = score_blocks(model, [batch()], "all")
    scores.block_influence = np.array([0.9, 0.1, 0.8, 0.05, 0.7, 0.6])
    assert select_layers(scores, 2, "bi") == [1, 3]


def test_parameter_count_drops_by_the_removed_layers():
    model = make_tiny_model("llama", layers=6)
    per_layer = sum(p.numel() for p in decoder_layers(model)[0].parameters())
    before = count_parameters(model)
    remove_layers(model, [2, 3])
    assert before - count_parameters(model) == 2 * per_layer


def test_unsupported_architecture_is_a_clear_error():
    from transformers import AutoConfig

    cfg = AutoConfig.for_model("gpt2", n_layer=2, n_embd=32, n_head=2, vocab_size=259)
    model = AutoModelForCausalLM.from_config(cfg)
    with pytest.raises(UnsupportedArchitectureError) as info:
        remove_layers(model, [0])
    assert "gpt2" in str(info.value) and "llama" in info.value.fix
