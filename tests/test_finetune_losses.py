"""Recovery losses as plug-ins: the built-ins by name, one added by an installed distribution's entry
point trains a variant (its options reach it and key the variant), the card says what it did, and bad
names or options are recipe errors naming the field and the choices."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import install_distribution, save_tiny
from hubsdd.core.errors import RecipeError, StageError
from hubsdd.core.plugins import RECOVERY_LOSSES
from hubsdd.core.recipe import FinetuneSection, parse_recipe
from test_finetune import assert_plain_checkpoint, finetune_ctx

# A third-party package: cross-entropy with label smoothing, its strength from `loss_options`; it
# counts the batches its loss saw, so the test can tell that its trainer, not the stage's, trained.
PLUGIN = '''\
from hubsdd.stages.finetune.losses import LossPlan, response_trainers

calls = []


def smoothed_ce(request):
    sft_trainer, _ = response_trainers()
    smoothing = float(request.variant.loss_options.get("smoothing", 0.1))

    class SmoothedTrainer(sft_trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            import torch
            from hubsdd.stages.finetune.training import completion_positions

            keep, targets = completion_positions(inputs["labels"])
            out = model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"),
                        logits_to_keep=keep, use_cache=False)
            loss = torch.nn.functional.cross_entropy(out.logits.float(), targets, label_smoothing=smoothing)
            calls.append(request.name)
            return (loss, out) if return_outputs else loss

    return LossPlan(trainer_class=SmoothedTrainer, metrics={"smoothing": smoothing},
                    after_training=lambda trainer: {"batches_seen": len(calls)},
                    description=f"cross-entropy with label smoothing {smoothing}")


def not_a_plan(request):
    return {"trainer": "mine"}
'''


@pytest.fixture
def third_party_loss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An installed distribution (a dist-info folder on sys.path) declaring two recovery losses."""
    install_distribution(tmp_path / "site", "smoothed_loss", PLUGIN, "hubsdd.recovery_losses",
                         {"smoothed-ce": "smoothed_loss:smoothed_ce", "broken": "smoothed_loss:not_a_plan"},
                         monkeypatch)
    yield
    sys.modules.pop("smoothed_loss", None)


VARIANTS = """\
  max_steps: 3
  batch_size: 2
  learning_rate: 0.02
  lora: {r: 4, alpha: 8, dropout: 0.0}
  variants:
"""


def test_a_loss_from_an_entry_point_trains_a_variant(third_party_loss, tmp_path: Path) -> None:
    from hubsdd.stages.finetune.stage import run_finetune, variant_dir

    assert RECOVERY_LOSSES.names() == ["ce", "kd", "gkd", "broken", "smoothed-ce"]
    pruned = save_tiny(tmp_path / "pruned", layers=3)
    ctx = finetune_ctx(tmp_path, VARIANTS + """\
    smooth: {data: original, loss: smoothed-ce, loss_options: {smoothing: 0.3}}
    sft: {data: original}
""", pruned)
    out = run_finetune(ctx)
    import smoothed_loss

    assert smoothed_loss.calls == ["smooth"] * 3  # its trainer trained `smooth`, and only it
    smooth = out.metrics.variants["smooth"]
    assert smooth.loss == "smoothed-ce" and smooth.steps == 3
    assert smooth.loss_metrics == {"smoothing": 0.3, "batches_seen": 3}
    assert out.metrics.variants["sft"].loss_metrics is None
    assert "loss_metrics" not in out.metrics.model_dump()["variants"]["sft"]  # built-ins' records unchanged
    described = out.outputs.variants["smooth"]
    assert described.loss_description == "cross-entropy with label smoothing 0.3"
    assert "loss_description" not in out.outputs.model_dump()["variants"]["sft"]
    model = assert_plain_checkpoint(ctx.out_dir / "smooth" / "model", layers=3)
    assert model.config.num_hidden_layers == 3
    # The options decide the weights, so they key the variant: another smoothing trains anew.
    other = finetune_ctx(tmp_path, VARIANTS + """\
    smooth: {data: original, loss: smoothed-ce, loss_options: {smoothing: 0.05}}
""", pruned, out="out2")
    assert variant_dir(other, "smooth") != variant_dir(ctx, "smooth")


def test_the_card_words_a_plugin_loss(third_party_loss, tmp_path: Path) -> None:
    from hubsdd.stages.card.stage import render_section
    from hubsdd.stages.finetune.stage import run_finetune

    pruned = save_tiny(tmp_path / "pruned", layers=3)
    ctx = finetune_ctx(tmp_path, VARIANTS + """\
    smooth: {data: distilled, loss: smoothed-ce}
""", pruned)
    out = run_finetune(ctx)
    from hubsdd.core.outputs import Typed

    ft = Typed(name="finetune", outputs=out.outputs, metrics=out.metrics)
    text = render_section("sections/training.md.j2", ft=ft, cfg=ctx.recipe.finetune, plots={}, ds=None,
                          dataset_repo=None)
    row = next(line for line in text.splitlines() if line.startswith("| `smooth`"))
    assert "cross-entropy with label smoothing 0.1 (plug-in loss `smoothed-ce`)" in row
    assert "self-distilled responses" in row and "(SDD)" not in row


def test_a_plugin_that_returns_no_plan_is_a_stage_error_naming_it(third_party_loss, tmp_path: Path) -> None:
    from hubsdd.stages.finetune.stage import run_finetune

    ctx = finetune_ctx(tmp_path, VARIANTS + "    b: {data: original, loss: broken}\n",
                       save_tiny(tmp_path / "pruned", layers=3))
    with pytest.raises(StageError, match=r"b: the recovery loss 'broken' returned dict, not a LossPlan"):
        run_finetune(ctx)


RECIPE = """\
name: t
base: {model: x/y}
prune: {blocks: 1, calibration: {path: c.jsonl, text_column: text}}
distill: {data: {path: d.jsonl}}
finetune:
  variants:
    sft: {data: original}
    mine: {data: original, loss: %s}
"""


def test_an_unknown_loss_is_a_yaml_path_error_naming_the_available_ones(third_party_loss) -> None:
    with pytest.raises(RecipeError) as err:
        parse_recipe(RECIPE % "kl")
    (problem,) = err.value.problems
    assert problem.startswith("finetune.variants.mine.loss (line 8): unknown recovery loss 'kl'; available: ce, kd, "
                              "gkd, broken, smoothed-ce")
    assert "hubsdd.recovery_losses" in problem


def test_builtin_losses_take_no_loss_options() -> None:
    with pytest.raises(RecipeError) as err:
        parse_recipe(RECIPE % "kd, loss_options: {beta: 0.5}")
    (problem,) = err.value.problems
    assert problem.startswith("finetune.variants.mine") and "finetune.kd" in problem


def test_recipes_without_plugin_losses_keep_their_fingerprints() -> None:
    section = FinetuneSection(variants={"sft": {"data": "original"}})
    assert "loss_options" not in json.dumps(section.model_dump(mode="json"))
    assert FinetuneSection(variants={"p": {"data": "original", "loss": "ce"}}).variants["p"].loss_options == {}


def test_a_loss_may_not_change_what_the_recipe_decides(tmp_path: Path) -> None:
    from hubsdd.stages.finetune.training import trainer_config

    with pytest.raises(StageError, match=r"\['learning_rate'\]"):
        trainer_config(FinetuneSection(), tmp_path / "t", device="cpu", extra={"learning_rate": 1.0})
