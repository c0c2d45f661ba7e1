"""Block scoring (the prune stage's own work; surgery is tests/test_surgery.py) and the stage's device."""

import json
import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import make_tiny_model, make_tokenizer
from hubsdd.pipeline import runner
from hubsdd.core.errors import UnsupportedArchitectureError
from hubsdd.stages.prune.stage import ScoreAccumulator, score_blocks, select_layers
from hubsdd.core.recipe import parse_recipe
from hubsdd.testing import architectures


def batch(seed=0, rows=3, length=24, pad_side="right", vocab=259):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (rows, length), generator=g)
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


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "falcon", "cohere", "qwen3_moe"])
def test_scoring_works_on_any_architecture(arch):
    # Layers that return tuples or tensors, under model.layers, transformer.h or gpt_neox.layers.
    model = AutoModelForCausalLM.from_config(architectures.tiny_config(arch)).eval()
    scores = score_blocks(model, [batch(vocab=architectures.PROMPT_VOCAB)], "last")
    assert scores.angular.shape == (6, 6) and np.isfinite(scores.angular[0]).all()
    drop = select_layers(scores, 2, "angular")
    assert drop == list(range(drop[0], drop[0] + 2))


# --------------------------------------------------------------------------- the stage


def test_the_base_is_loaded_on_the_device_the_stage_selects(tiny_recipe_text, monkeypatch):
    # Block scoring runs on the device every other stage uses (the GPU when there is one), in the
    # recipe's dtype. "cpu:0" stands for a device only default_device() would pick.
    import hubsdd.core.models

    loads = []
    real_load_model = hubsdd.core.models.load_model

    def recording_load_model(path, **kwargs):
        loads.append(kwargs)
        return real_load_model(path, **kwargs)

    monkeypatch.setattr(hubsdd.core.models, "default_device", lambda recipe=None: "cpu:0")
    monkeypatch.setattr(hubsdd.core.models, "load_model", recording_load_model)
    recipe = parse_recipe(tiny_recipe_text.replace("  license: apache-2.0", "  license: apache-2.0\n  dtype: bfloat16"))
    runner.run(recipe, until="prune")
    assert [(k["device"], k["dtype"]) for k in loads] == [("cpu:0", "bfloat16")]
    saved = json.loads((recipe.run_dir / "prune" / "model" / "config.json").read_text())
    assert saved["num_hidden_layers"] == 4 and saved["dtype"] == "bfloat16"


def test_an_architecture_surgery_refuses_fails_before_any_scoring(tmp_path, tiny_recipe_text, monkeypatch):
    import hubsdd.stages.prune.stage

    torch.manual_seed(0)
    base = tmp_path / "gemma3n"
    AutoModelForCausalLM.from_config(architectures.tiny_config("gemma3n_text")).save_pretrained(base)
    make_tokenizer().save_pretrained(base)

    def no_scoring(*args, **kwargs):
        raise AssertionError("scored a model that surgery then refuses")

    monkeypatch.setattr(hubsdd.stages.prune.stage, "score_blocks", no_scoring)
    recipe = parse_recipe(tiny_recipe_text.replace(str(tmp_path / "tiny-llama"), str(base)))
    with pytest.raises(UnsupportedArchitectureError) as info:
        runner.run(recipe, until="prune")
    assert "'gemma3n_text'" in str(info.value) and "embed_tokens_per_layer" in str(info.value) and info.value.fix
