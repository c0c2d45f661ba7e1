"""What the run directory can suffer (a read-only or full disk, a damaged artifact, a second run)
and what the user then sees: a clear error naming the path and the fix, nothing finished lost."""

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hubsdd.pipeline import runner
from hubsdd.cli import main
from hubsdd.core.errors import StageError
from hubsdd.core.recipe import parse_recipe


def _cli_run(recipe_text: str, tmp_path: Path, capsys, *args: str) -> tuple[int, str]:
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe_text)
    code = main(["run", str(path), *args])
    out = capsys.readouterr()
    return code, out.out + out.err


def _hashes(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def test_a_hand_edited_stage_json_is_named_and_nothing_is_deleted(tiny_recipe_text, tmp_path, capsys):
    recipe = parse_recipe(tiny_recipe_text)
    runner.run(recipe)
    stage_json = recipe.run_dir / "prune" / "stage.json"
    data = json.loads(stage_json.read_text())
    data["metrics"]["removed_layers"] = [7, 8]  # a plausible-looking edit
    stage_json.write_text(json.dumps(data))
    before = _hashes(recipe.run_dir / "base")
    code, out = _cli_run(tiny_recipe_text, tmp_path, capsys)
    assert code == 1 and "Traceback" not in out
    assert f"{stage_json}: was changed after the stage finished" in out
    assert "--force prune" in out
    assert _hashes(recipe.run_dir / "base") == before and stage_json.exists()
    # the documented fix works and redoes only that stage
    code, out = _cli_run(tiny_recipe_text, tmp_path, capsys, "--force", "prune")
    assert code == 0, out
    assert runner.read_stage(recipe.run_dir, "prune").metrics["removed_layers"] != [7, 8]


def test_an_unreadable_stage_json_is_named(tiny_recipe_text):
    recipe = parse_recipe(tiny_recipe_text)
    runner.run(recipe, until="base")
    (recipe.run_dir / "base" / "stage.json").write_text('{"stage": "base", "fingerp')  # cut mid-write by hand
    with pytest.raises(StageError, match=r"base/stage\.json: is not valid JSON") as err:
        runner.run(recipe)
    assert "--force base" in err.value.fix


def test_a_truncated_checkpoint_is_found_before_anything_loads_it(tiny_recipe_text, tmp_path, capsys):
    recipe = parse_recipe(tiny_recipe_text)
    runner.run(recipe)
    weights = next((recipe.run_dir / "prune").rglob("*.safetensors"))
    with open(weights, "r+b") as fh:
        fh.truncate(weights.stat().st_size // 2)
    code, out = _cli_run(tiny_recipe_text, tmp_path, capsys)
    assert code == 1 and "Traceback" not in out
    # the card's release hard-links the same weights: both damaged files are named in one message
    assert str(weights) in out and "truncated" in out and str(recipe.run_dir / "card" / "model") in out
    assert "--force prune --force card" in out
    code, out = _cli_run(tiny_recipe_text, tmp_path, capsys, "--force", "prune", "--force", "card")
    assert code == 0, out


def test_a_second_run_in_the_same_directory_is_refused_in_words(tiny_recipe_text, tmp_path):
    recipe = parse_recipe(tiny_recipe_text)
    path = tmp_path / "recipe.yaml"
    path.write_text(tiny_recipe_text)
    with runner.run_lock(recipe.run_dir):  # the first run, still going
        proc = subprocess.run([sys.executable, "-m", "hubsdd.cli", "run", str(path)], capture_output=True,
                              text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout
    assert f"another hubsdd process is running in {recipe.run_dir}" in proc.stderr + proc.stdout
    assert not (recipe.run_dir / "base").exists()


def test_disk_errors_inside_a_stage_name_the_path_and_keep_finished_stages(tiny_recipe_text, monkeypatch):
    import errno

    import hubsdd.stages.prune.stage

    recipe = parse_recipe(tiny_recipe_text)
    runner.run(recipe, until="base")
    real = hubsdd.stages.prune.stage.run_prune

    for code, words in ((errno.ENOSPC, "no space left on the device while writing"), (errno.EROFS, "cannot write")):
        def failing(ctx, code=code):
            raise OSError(code, os.strerror(code), str(ctx.out_dir / "model" / "model.safetensors"))

        monkeypatch.setattr(hubsdd.stages.prune.stage, "run_prune", failing)
        with pytest.raises(StageError, match=words) as err:
            runner.run(recipe)
        assert "model.safetensors" in str(err.value) and "runs_dir" in err.value.fix
        assert (recipe.run_dir / "base" / "stage.json").exists()
        assert not list(recipe.run_dir.glob(".staging-*"))
    monkeypatch.setattr(hubsdd.stages.prune.stage, "run_prune", real)
    assert runner.run(recipe)["prune"].fingerprint


@contextlib.contextmanager
def _tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN); the monkeypatched test covers it")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_a_really_full_then_read_only_disk(tiny_recipe_text, tmp_path, capsys):
    runs = tmp_path / "small-disk"
    text = tiny_recipe_text.replace(f"runs_dir: {tmp_path / 'runs'}", f"runs_dir: {runs}")
    with _tmpfs(runs, "96k"):
        code, out = _cli_run(text, tmp_path, capsys)  # the base checkpoint alone needs more than 96 KB
        assert code == 1 and "Traceback" not in out and "no space left on the device" in out, out
        assert not [p for p in (runs / "tiny").glob(".staging-*")]
        subprocess.run(["mount", "-o", "remount,size=64m", str(runs)], check=True)
        code, out = _cli_run(text, tmp_path, capsys, "--until", "base")
        assert code == 0, out
        finished = _hashes(runs / "tiny" / "base")
        subprocess.run(["mount", "-o", "remount,ro", str(runs)], check=True)
        code, out = _cli_run(text, tmp_path, capsys)
        assert code == 1 and "Traceback" not in out and "cannot write" in out and str(runs / "tiny") in out, out
        assert _hashes(runs / "tiny" / "base") == finished
        subprocess.run(["mount", "-o", "remount,rw", str(runs)], check=True)
        code, out = _cli_run(text, tmp_path, capsys)
        assert code == 0, out
        assert "cached" in out  # base was not redone
