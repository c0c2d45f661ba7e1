"""The command line: clear errors without tracebacks, and the commands a user runs."""

import os

import subprocess
import sys


def hubsdd(*args, env=None, cwd=None):
    full_env = dict(os.environ, **(env or {}))
    full_env.pop("HUBSDD_DEBUG", None) if not env or "HUBSDD_DEBUG" not in env else None
    return subprocess.run([sys.executable, "-m", "hubsdd.cli", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=300)


BAD_RECIPES = {
    "wrong type": ("name: t\nbase:\n  model: org/m\nprune:\n  blocks: lots\n  calibration: {path: c.jsonl}\n",
                   "prune.blocks (line 5)"),
    "unknown key": ("name: t\nbase:\n  model: org/m\n  revison: main\nprune:\n  blocks: 2\n  calibration: {path: c.jsonl}\n",
                    "base.revison (line 4): unknown key"),
    "missing base": ("name: t\nprune:\n  blocks: 2\n  calibration: {path: c.jsonl}\n", "base: required field is missing"),
    "bad yaml": ("name: t\nbase:\n  model: [org/m\nprune: {}\n", "not valid YAML at line"),
}


def test_validate_errors_name_the_yaml_path_without_traceback(tmp_path):
    for label, (text, expected) in BAD_RECIPES.items():
        path = tmp_path / f"{label.replace(' ', '_')}.yaml"
        path.write_text(text)
        proc = hubsdd("validate", str(path))
        assert proc.returncode == 2, label
        assert expected in proc.stderr, (label, proc.stderr)
        assert str(path) in proc.stderr
        assert "Traceback" not in proc.stderr + proc.stdout, label


def test_debug_env_shows_the_traceback(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(BAD_RECIPES["wrong type"][0])
    proc = hubsdd("validate", str(path), env={"HUBSDD_DEBUG": "1"})
    assert proc.returncode == 2 and "Traceback" in proc.stderr


def test_validate_ok_and_plan(tmp_path, tiny_recipe_text):
    path = tmp_path / "r.yaml"
    path.write_text(tiny_recipe_text)
    ok = hubsdd("validate", str(path))
    assert ok.returncode == 0 and "ok" in ok.stdout
    plan = hubsdd("plan", str(path))
    assert plan.returncode == 0
    assert "pending" in plan.stdout and "prune" in plan.stdout and "disabled" not in plan.stdout


def test_run_until_prune_then_plan_shows_cached(tmp_path, tiny_recipe_text):
    path = tmp_path / "r.yaml"
    path.write_text(tiny_recipe_text)
    first = hubsdd("run", str(path), "--until", "prune")
    assert first.returncode == 0, first.stderr
    assert "[prune] done" in first.stdout and "release:" in first.stdout
    again = hubsdd("run", str(path), "--until", "prune")
    assert "[base] cached" in again.stdout and "[prune] cached" in again.stdout
    plan = hubsdd("plan", str(path))
    lines = {l.split()[1]: l.split()[0] for l in plan.stdout.splitlines() if l.startswith("  ") and len(l.split()) > 2}
    assert lines["base"] == "cached" and lines["prune"] == "cached"


def test_runtime_errors_are_formatted_too(tmp_path, tiny_recipe_text):
    path = tmp_path / "r.yaml"
    path.write_text(tiny_recipe_text.replace("blocks: 2", "blocks: 9"))
    proc = hubsdd("run", str(path))
    # A local base's layer count is known before any stage runs (hubsdd.pipeline.preflight): a recipe error.
    assert proc.returncode == 2
    assert "prune.blocks (line 9): the base model has 6 layers" in proc.stderr
    assert "fix:" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_missing_recipe_file(tmp_path):
    proc = hubsdd("plan", str(tmp_path / "nope.yaml"))
    assert proc.returncode == 2 and "file not found" in proc.stderr


def test_init_writes_a_valid_recipe_and_workflow(tmp_path):
    import yaml

    proc = hubsdd("init", "--github-action", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert hubsdd("validate", "recipe.yaml", cwd=tmp_path).returncode == 0
    workflow = yaml.safe_load((tmp_path / ".github/workflows/publish.yml").read_text())
    steps = workflow["jobs"]["publish"]["steps"]
    publish = [s for s in steps if s.get("name") == "Publish"][0]
    assert publish["env"]["HF_TOKEN"] == "${{ secrets.HF_TOKEN }}" and "publish recipe.yaml" in publish["run"]
    again = hubsdd("init", cwd=tmp_path)
    assert again.returncode == 1 and "--force" in again.stderr


def _files_containing(root, needle: bytes):
    from pathlib import Path

    return [p for p in Path(root).rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_publish_dry_run_then_publish_then_pull_through_the_cli(tmp_path, tiny_recipe_text, hub_server,
                                                                monkeypatch, capsys):
    from huggingface_hub import ModelCard

    from hub_fixtures import TOKEN
    from hubsdd.cli import main

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    path = tmp_path / "r.yaml"
    path.write_text(tiny_recipe_text + "publish:\n  model_repo: alice/tiny-pruned\n")

    assert main(["publish", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "Dry run" in out and "model.safetensors" in out and "base_model: hubsdd-tests/tiny-llama" in out
    assert not hub_server.repo_exists("alice/tiny-pruned")

    assert main(["publish", str(path)]) == 0
    out = capsys.readouterr().out
    assert "alice/tiny-pruned" in out and "committed" in out
    commits = hub_server.commits("alice/tiny-pruned")
    assert len([c for c in commits if c.parents]) == 1  # one commit on top of the repo's initial one
    assert any(t.startswith("hubsdd-") for t in hub_server.refs("alice/tiny-pruned")["tags"])

    assert main(["pull", "alice/tiny-pruned", "--local-dir", str(tmp_path / "pulled"), "--allow-unsigned"]) == 0
    out = capsys.readouterr().out
    assert "Verified alice/tiny-pruned" in out and "6 -> 4" in out
    card = ModelCard.load(tmp_path / "pulled" / "README.md")
    assert card.data.base_model == "hubsdd-tests/tiny-llama"

    # The token is read from the environment only: it is in no file of the run, the release or the Hub.
    needle = TOKEN.encode()
    assert _files_containing(tmp_path / "runs", needle) == []
    assert _files_containing(tmp_path / "pulled", needle) == []
    assert _files_containing(tmp_path / "hub-storage", needle) == []


def test_publish_with_a_bad_token_is_a_clear_error_and_pushes_nothing(tmp_path, tiny_recipe_text, hub_server,
                                                                      monkeypatch, capsys):
    from hub_fixtures import BAD_TOKEN
    from hubsdd.cli import main

    monkeypatch.setenv("HF_TOKEN", BAD_TOKEN)
    path = tmp_path / "r.yaml"
    path.write_text(tiny_recipe_text + "publish:\n  model_repo: alice/tiny-pruned\n")
    assert main(["publish", str(path)]) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "fix:" in err and "Traceback" not in err
    assert BAD_TOKEN not in err
    assert not hub_server.repo_exists("alice/tiny-pruned")
