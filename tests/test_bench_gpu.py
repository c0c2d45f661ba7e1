"""bench/gpu.py, the one prepared GPU measurement (scripts/gpu_check.sh runs it on a lent device):
its smoke mode runs every measurement on this CPU, so none of them can rot between device sessions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_measurement_runs_and_is_recorded(tmp_path: Path) -> None:
    from conftest import save_tiny

    run = tmp_path / "run"
    save_tiny(run / "base" / "model", layers=4)
    save_tiny(run / "prune" / "model", layers=3)
    out = tmp_path / "gpu_bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--run-dir", str(run), "--smoke",
                           "--json", str(out)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads(out.read_text())
    for key in ("teacher", "evaluation", "teacher_paged"):
        assert isinstance(result[key], list) and result[key], f"{key}: {result[key]}"  # an error is a dict
        assert f"{key}_wall_seconds" in result
    assert "error" not in result["training"] and result["training"]["tokens_per_second"] > 0
    assert {e["engine"] for e in result["teacher"]} == {"hubsdd", "generate"}
    assert [(e["engine"], e["batch"]) for e in result["teacher_paged"]] == [("paged", 2), ("paged", 4)]
    assert all(e["tokens"] > 0 and e["tokens_per_second"] > 0 for e in result["teacher"] + result["teacher_paged"])
    assert {e["packing"] for e in result["evaluation"]} == {"cpu packing", "gpu profile"}
