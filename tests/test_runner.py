"""The stage runner: fingerprints, skipping, rerunning what changed, atomic stage folders."""

import json

import pytest

import hubsdd
from hubsdd.pipeline import runner
from hubsdd.core.errors import StageError
from hubsdd.core.recipe import parse_recipe


def events_of(recipe, **kw):
    seen = []
    runner.run(recipe, on_event=lambda stage, status, s: seen.append((stage, status)), **kw)
    return [e for e in seen if e[1] != "skipped"]


def test_first_run_then_everything_cached(tiny_recipe_text):
    recipe = parse_recipe(tiny_recipe_text)
    assert [p.status for p in runner.plan(recipe)][:2] == ["pending", "pending"]
    first = events_of(recipe)
    assert first == [("base", "running"), ("base", "done"), ("prune", "running"), ("prune", "done"),
                     ("card", "running"), ("card", "done")]
    assert events_of(recipe) == [("base", "cached"), ("prune", "cached"), ("card", "cached")]
    statuses = {p.name: p.status for p in runner.plan(recipe)}
    assert statuses == {"base": "cached", "prune": "cached", "distill": "disabled", "finetune": "disabled",
                        "merge": "disabled", "evaluate": "disabled", "card": "cached"}


def test_changing_blocks_reruns_prune_not_base(tiny_recipe_text):
    runner.run(parse_recipe(tiny_recipe_text))
    changed = parse_recipe(tiny_recipe_text.replace("blocks: 2", "blocks: 3"))
    assert {p.name: p.status for p in runner.plan(changed)}["prune"] == "stale"
    assert events_of(changed) == [("base", "cached"), ("prune", "running"), ("prune", "done"),
                                  ("card", "running"), ("card", "done")]
    stage = json.loads((changed.run_dir / "prune" / "stage.json").read_text())
    assert stage["metrics"]["layers_after"] == 3
    assert stage["inputs"]["base"] == json.loads((changed.run_dir / "base" / "stage.json").read_text())["fingerprint"]


def test_stage_json_records_config_inputs_versions_timings(tiny_recipe_text):
    recipe = parse_recipe(tiny_recipe_text)
    runner.run(recipe, until="prune")
    data = json.loads((recipe.run_dir / "prune" / "stage.json").read_text())
    assert data["config"]["blocks"] == 2
    assert set(data["inputs"]) == {"base"}
    assert data["versions"]["hubsdd"] == hubsdd.__version__ and "torch" in data["versions"]
    assert data["seconds"] >= 0 and data["started_at"]
    assert len(data["fingerprint"]) == 64


def test_failed_stage_leaves_nothing_a_rerun_would_trust(tiny_recipe_text, monkeypatch):
    recipe = parse_recipe(tiny_recipe_text)
    runner.run(recipe, until="base")

    def crash(ctx):
        (ctx.out_dir / "model").mkdir()
        (ctx.out_dir / "model" / "half-written.safetensors").write_bytes(b"\0" * 10)
        raise KeyboardInterrupt  # what a Ctrl-C / kill in the middle of a stage looks like

    import hubsdd.stages.prune.stage

    monkeypatch.setattr(hubsdd.stages.prune.stage, "run_prune", crash)
    with pytest.raises(KeyboardInterrupt):
        runner.run(recipe)
    assert not (recipe.run_dir / "prune").exists()
    assert not list(recipe.run_dir.glob(".staging-*"))
    monkeypatch.undo()
    assert events_of(recipe)[:3] == [("base", "cached"), ("prune", "running"), ("prune", "done")]


def test_staging_left_by_a_hard_kill_is_ignored_and_cleaned(tiny_recipe_text):
    recipe = parse_recipe(tiny_recipe_text)
    runner.run(recipe, until="base")
    leftover = recipe.run_dir / ".staging-prune-deadbeef"
    (leftover / "model").mkdir(parents=True)
    # no stage.json in it: nothing trusts it, and the next run removes it
    assert {p.name: p.status for p in runner.plan(recipe)}["prune"] == "pending"
    runner.run(recipe)
    assert not leftover.exists()


def test_second_process_is_refused(tiny_recipe_text):
    recipe = parse_recipe(tiny_recipe_text)
    with runner.run_lock(recipe.run_dir):
        with pytest.raises(StageError, match="another hubsdd process"):
            runner.run(recipe)


def test_unknown_until_stage(tiny_recipe_text):
    with pytest.raises(StageError, match="unknown stage"):
        runner.run(parse_recipe(tiny_recipe_text), until="prnue")


def test_force_reruns_a_cached_stage(tiny_recipe_text):
    recipe = parse_recipe(tiny_recipe_text)
    runner.run(recipe)
    ev = events_of(recipe, force=("prune",))
    assert ("prune", "running") in ev and ("base", "cached") in ev


def test_package_level_run_accepts_a_path(tiny_recipe_text, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(tiny_recipe_text)
    results = hubsdd.run(path, until="prune")
    assert {"base", "prune", "card"} <= set(results)


def test_running_out_of_memory_is_a_clear_error_naming_the_fix(tmp_path, tiny_recipe_text, monkeypatch) -> None:
    from hubsdd.stages.prune import stage as prune
    from hubsdd.core.errors import OutOfMemoryError
    from hubsdd.core.recipe import parse_recipe
    from hubsdd.pipeline.runner import run

    def oom(ctx):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(prune, "run_prune", oom)
    with pytest.raises(OutOfMemoryError) as err:
        run(parse_recipe(tiny_recipe_text), until="prune")
    assert "stage 'prune' ran out of memory" in err.value.message and "batch_size" in err.value.fix
    assert not list((tmp_path / "runs" / "tiny").glob(".staging-*"))


def test_temporary_files_of_a_killed_atomic_write_are_cleaned(tiny_recipe_text):
    # a kill between writing an atomic write's temporary file and renaming it leaves the file
    recipe = parse_recipe(tiny_recipe_text)
    runner.run(recipe, until="base")
    left = recipe.run_dir / ".cache" / "fidelity" / ".reference-abc.json.0123abcd.tmp"
    left.parent.mkdir(parents=True)
    left.write_text("{half")
    kept = recipe.run_dir / ".cache" / "fidelity" / "notes.tmp"  # not an atomic write's: left alone
    kept.write_text("x")
    runner.run(recipe, until="base")
    assert not left.exists() and kept.exists()


def test_work_folder_of_a_stage_killed_after_it_was_installed_is_removed(tiny_recipe_text):
    """bench/kill_anywhere.py, seed 3, sequence 88: a kill between installing a stage and removing
    its work folder left `.work/<stage>-<fp>` behind, and the stage, now cached, never ran again to
    remove it. The next run removes the work folder of every stage it finds finished."""
    recipe = parse_recipe(tiny_recipe_text)
    runner.run(recipe, until="prune")
    fp = runner.read_stage(recipe.run_dir, "prune").fingerprint
    leftover = runner.stage_work_dir(recipe.run_dir, "prune", fp)
    (leftover / "partial").mkdir(parents=True)
    assert {p.name: p.status for p in runner.plan(recipe)}["prune"] == "cached"
    runner.run(recipe, until="prune")
    assert not leftover.exists()
    assert runner.read_stage(recipe.run_dir, "prune").fingerprint == fp  # still cached, not redone
