"""`hf sdd`: hubsdd as an extension of huggingface_hub's `hf` CLI, laid out the way
`hf extensions install` installs a Python extension (a manifest and the package's `hf-sdd` script
under ~/.local/share/hf/extensions/hf-sdd/), run through the real `hf` binary."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture
def home(tmp_path: Path) -> Path:
    script = BIN / "hf-sdd"
    assert script.is_file(), "the hf-sdd console script comes with `pip install -e .` (make setup)"
    ext = tmp_path / ".local" / "share" / "hf" / "extensions" / "hf-sdd"
    ext.mkdir(parents=True)
    # the fields huggingface_hub's ExtensionManifest reads (huggingface_hub/cli/extensions.py)
    (ext / "manifest.json").write_text(json.dumps({
        "owner": "hubsdd", "repo": "hf-sdd", "repo_id": "hubsdd/hf-sdd", "short_name": "sdd",
        "executable_path": str(script), "type": "python",
        "installed_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "description": "Prune LLM decoder blocks, recover quality with self-data distillation, publish.",
    }))
    return tmp_path


def hf(args: list[str], home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(home), "HF_HUB_DISABLE_TELEMETRY": "1", "COLUMNS": "200"}
    return subprocess.run([str(BIN / "hf"), *args], capture_output=True, text=True, env=env, timeout=120, cwd=home)


def test_hf_lists_and_runs_the_extension(home: Path) -> None:
    top = hf(["--help"], home)
    assert top.returncode == 0 and "sdd" in top.stdout
    helped = hf(["sdd", "--help"], home)
    assert helped.returncode == 0, helped.stderr
    for command in ("validate", "plan", "run", "publish", "pull", "summary"):
        assert command in helped.stdout


def test_hf_sdd_validate_checks_a_recipe(home: Path) -> None:
    ok = hf(["sdd", "validate", str(ROOT / "recipes" / "smollm2-135m-demo.yaml")], home)
    assert ok.returncode == 0 and "ok (name: smollm2-135m-sdd-demo" in ok.stdout, ok.stderr
    bad = home / "bad.yaml"
    bad.write_text("name: x\nbase: {model: a/b}\nprune: {blocks: -1, calibration: {path: c.jsonl}}\n")
    refused = hf(["sdd", "validate", str(bad)], home)
    assert refused.returncode != 0 and "prune.blocks (line 3)" in refused.stderr and "Traceback" not in refused.stderr
