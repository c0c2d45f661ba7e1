"""Block scorers as plug-ins: the built-ins, one added by an installed distribution's entry point,
an unknown name named with the available ones, and the perplexity criterion on a planted identity."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import install_distribution, make_tiny_model, make_tokenizer
from hubsdd.pipeline import runner
from hubsdd.core.errors import RecipeError
from hubsdd.core.plugins import BLOCK_SCORERS
from hubsdd.stages.prune.stage import batches_for
from hubsdd.core.recipe import parse_recipe
from hubsdd.stages.prune.scorers import ScoringInput
from hubsdd.stages.prune.scorers import perplexity as ppl_scorer

TEXTS = ["The quick brown fox jumps over the lazy dog.", "A journey of a thousand miles begins with one step.",
         "Pack my box with five dozen liquor jugs.", "She sells sea shells by the sea shore, they say."]


def trained_with_an_identity_layer(identity: int, layers: int = 6, steps: int = 100) -> tuple:
    """A tiny model overfitted to TEXTS (so removing a working layer hurts, which a random model does
    not promise) whose layer ``identity`` adds nothing to the residual stream (output projections
    zero and frozen): removing that one changes nothing."""
    model = make_tiny_model("llama", layers=layers, seed=0)
    frozen = [model.model.layers[identity].self_attn.o_proj.weight, model.model.layers[identity].mlp.down_proj.weight]
    with torch.no_grad():
        for w in frozen:
            w.zero_()
            w.requires_grad_(False)
    batches = batches_for(make_tokenizer(), TEXTS, max_length=32, batch_size=2)
    torch.manual_seed(0)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for step in range(steps):
        b = batches[step % len(batches)]
        labels = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
        model(**b, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    return model, batches


def test_perplexity_scorer_picks_the_block_that_is_an_identity(one_torch_thread) -> None:
    model, batches = trained_with_an_identity_layer(3)
    choice = ppl_scorer.score(ScoringInput(model=model, batches=batches, blocks=1, scores=None))
    assert choice.layers == [3]
    assert choice.forward_passes == 6 * len(batches)  # one pass over the calibration batches per layer
    with torch.inference_mode():
        full = ppl_scorer.perplexity(model, batches)
    assert choice.layer_scores[3] == pytest.approx(full, rel=1e-4)
    assert all(s > choice.layer_scores[3] for i, s in enumerate(choice.layer_scores) if i != 3)


def test_perplexity_scorer_chooses_the_contiguous_run_of_lowest_summed_scores(monkeypatch) -> None:
    monkeypatch.setattr(ppl_scorer, "layer_perplexities", lambda model, batches: [9.0, 2.0, 8.0, 3.0, 1.0, 1.5])
    choice = ppl_scorer.score(ScoringInput(model=None, batches=[{}], blocks=2, scores=None))
    assert choice.layers == [4, 5]  # 2.5 beats 3+1=4 and 2+8=10
    assert ppl_scorer.score(ScoringInput(model=None, batches=[{}], blocks=3, scores=None)).layers == [3, 4, 5]


@pytest.fixture
def third_party_scorer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An installed distribution (a dist-info folder on sys.path) declaring a block scorer."""
    install_distribution(tmp_path / "site", "lastlayers_scorer",
                         "from hubsdd.stages.prune.scorers import BlockChoice\n\n"
                         "def score(inp):\n"
                         "    L = inp.scores.num_layers\n"
                         "    return BlockChoice(list(range(L - inp.blocks, L)), description='the last layers')\n",
                         "hubsdd.block_scorers", {"last-layers": "lastlayers_scorer:score"}, monkeypatch)
    yield "last-layers"
    sys.modules.pop("lastlayers_scorer", None)


def test_a_scorer_from_an_entry_point_is_picked_by_a_recipe(third_party_scorer: str, tiny_recipe_text: str) -> None:
    assert BLOCK_SCORERS.names() == ["angular", "bi", "perplexity", "last-layers"]
    recipe = parse_recipe(tiny_recipe_text.replace("method: angular", f"method: {third_party_scorer}"))
    runner.run(recipe, until="prune")
    metrics = json.loads((recipe.run_dir / "prune" / "stage.json").read_text())["metrics"]
    assert metrics["method"] == "last-layers" and metrics["removed_layers"] == [4, 5]
    assert metrics["method_description"] == "the last layers"


def test_an_unknown_scorer_is_a_yaml_path_error_naming_the_available_ones(third_party_scorer: str,
                                                                          tiny_recipe_text: str) -> None:
    with pytest.raises(RecipeError) as err:
        parse_recipe(tiny_recipe_text.replace("method: angular", "method: angualr"))
    (problem,) = err.value.problems
    assert problem.startswith("prune.method (line 8): unknown block scorer 'angualr'; available: angular, bi, "
                              "perplexity, last-layers")
    assert "hubsdd.block_scorers" in problem


def test_the_perplexity_scorer_runs_in_the_stage(tiny_recipe_text: str) -> None:
    recipe = parse_recipe(tiny_recipe_text.replace("method: angular", "method: perplexity"))
    runner.run(recipe, until="prune")
    metrics = json.loads((recipe.run_dir / "prune" / "stage.json").read_text())["metrics"]
    removed = metrics["removed_layers"]
    assert removed == list(range(removed[0], removed[0] + 2)) and len(metrics["layer_scores"]) == 6
    assert metrics["forward_passes"] == 2 + 6 * 2  # the shared pass (2 batches) + one pass per layer
