"""bench/kd_cache.py --smoke: the KD-cache benchmark's whole path on tiny models, so it cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_smoke_run_writes_speed_memory_and_quality(tmp_path: Path) -> None:
    env = {"HUBSDD_THREADS": "1", "PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "bench/kd_cache.py", "--smoke", "--threads", "1",
                           "--out", str(tmp_path / "kd.json")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads((tmp_path / "kd.json").read_text())
    assert out["speedup"] > 0 and out["peak_memory_ratio"] > 0
    assert out["arms"]["live"]["teacher_loaded"] and not out["arms"]["cache"]["teacher_loaded"]
    # the cache arm's process holds the student only; the live arm's the student and the teacher
    assert out["arms"]["cache"]["causal_lm_models_in_memory"] < out["arms"]["live"]["causal_lm_models_in_memory"]
    q = out["quality"]
    assert q["ci95"][0] <= q["diff"] <= q["ci95"][1]
    assert q["kl"]["cache"] < q["kl"]["untrained"] and q["kl"]["live"] < q["kl"]["untrained"]
