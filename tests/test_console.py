"""The terminal as a user sees it: silent libraries, JSON lines for CI, a closing summary, bars on a TTY."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
from benchmark_hub import benchmark_hub  # noqa: F401  (the fixture)

EVALUATE = """\
evaluate:
  tasks: [arc_easy]
  num_fewshot: {arc_easy: 0}
  limit: 3
  speculative: null
  fidelity: {prompts: 1, max_new_tokens: 2}
"""
NOISE = ("it/s]", "%|", "Warning", "WARNING", "warn", "fatal:", "Tokenizing", "Loading weights", "Traceback")


def hubsdd(args: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "HUBSDD_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("HUBSDD_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "hubsdd.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600, **kw)


@pytest.fixture
def recipe(tmp_path: Path, tiny_recipe_text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(tiny_recipe_text + EVALUATE)
    return path


def test_libraries_stay_silent_on_the_real_lm_eval_path(recipe: Path, tmp_path: Path) -> None:
    done = hubsdd(["run", str(recipe)], tmp_path)
    assert done.returncode == 0, done.stderr
    for stream in (done.stdout, done.stderr):
        assert not [n for n in NOISE if n in stream], stream
    assert "[evaluate] done" in done.stdout
    # -v gives the libraries their voice back (the evaluations are cached: drop them first)
    import shutil

    shutil.rmtree(tmp_path / "runs" / "tiny" / ".cache")
    loud = hubsdd(["run", str(recipe), "--force", "evaluate", "-v"], tmp_path)
    assert loud.returncode == 0 and ("%|" in loud.stderr or "Tokenizing" in loud.stderr)


def test_json_log_format_prints_only_json_lines_naming_every_stage(recipe: Path, tmp_path: Path) -> None:
    done = hubsdd(["--log-format", "json", "run", str(recipe)], tmp_path)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]  # every line parses
    stages = {e["stage"] for e in events if "stage" in e}
    assert stages == {"base", "prune", "distill", "finetune", "merge", "evaluate", "card"}
    evaluate = next(e for e in events if e.get("stage") == "evaluate" and e["event"] == "done")
    assert evaluate["seconds"] > 0 and "pruned" in evaluate["metrics"]["models"]
    summary = next(e for e in events if e.get("event") == "summary")
    assert [s["stage"] for s in summary["stages"]] == ["base", "prune", "distill", "finetune", "merge", "evaluate",
                                                     "card"]
    assert {s["status"] for s in summary["stages"]} == {"ran", "skipped"}


def test_summary_table_names_every_stage_and_quiet_prints_only_the_result(recipe: Path, tmp_path: Path) -> None:
    done = hubsdd(["run", str(recipe)], tmp_path)
    table = done.stdout[done.stdout.index("stage     status"):]
    for stage in ("base", "prune", "distill", "finetune", "merge", "evaluate", "card"):
        assert f"\n{stage}" in table
    assert "runs/tiny/prune" in table
    quiet = hubsdd(["-q", "run", str(recipe)], tmp_path)
    assert quiet.stdout.strip().splitlines() == [next(ln for ln in done.stdout.splitlines() if ln.startswith("release:"))]
    assert quiet.stderr == ""


def test_errors_in_json_mode_are_a_json_line_too(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nbase: {model: a/b}\nprune: {blocks: two, calibration: {path: c.jsonl}}\n")
    done = hubsdd(["--log-format", "json", "validate", str(bad)], tmp_path)
    assert done.returncode != 0
    [line] = done.stdout.splitlines()
    err = json.loads(line)
    assert err["event"] == "error" and "prune.blocks" in err["message"]
    assert "prune.blocks" in done.stderr and "Traceback" not in done.stderr


def test_progress_bars_appear_on_a_terminal_only(recipe: Path, tmp_path: Path) -> None:
    leader, follower = pty.openpty()
    env = {**os.environ, "HUBSDD_THREADS": "1", "COLUMNS": "160"}
    proc = subprocess.Popen([sys.executable, "-m", "hubsdd.cli", "run", str(recipe)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=follower, text=True)
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    proc.wait(timeout=600)
    os.close(leader)
    assert proc.returncode == 0
    text = seen.decode(errors="replace")
    assert "scoring blocks" in text and "eta" in text
    assert "scoring blocks" not in proc.stdout.read()


def test_libraries_stay_silent_on_the_hub_mode_lm_eval_path(tmp_path: Path, tiny_recipe_text: str,
                                                            benchmark_hub) -> None:
    """lm-eval's own tasks with their data from the (test) Hub: datasets' downloads, split
    generation and lm-eval's request building bring bars of their own."""
    path = tmp_path / "recipe.yaml"
    path.write_text(tiny_recipe_text + "evaluate:\n  source: hub\n  tasks: [arc_challenge, winogrande]\n"
                    "  num_fewshot: {arc_challenge: 2, winogrande: 2}\n  limit: 2\n  speculative: null\n"
                    "  fidelity: null\n")
    done = hubsdd(["run", str(path)], tmp_path)
    assert done.returncode == 0, done.stderr
    for stream in (done.stdout, done.stderr):
        assert not [n for n in NOISE if n in stream], stream
    assert "[evaluate] done" in done.stdout
