"""bench/quality.py --smoke: the quality benchmark's whole path on a tiny model, so it cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL_KEYS = {"tasks", "average", "retention", "margin_retention", "acceptance", "top1_agreement", "kl"}


def quality(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {"HUBSDD_THREADS": "1", "PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "bench/quality.py", "--smoke", "--runs-dir", str(tmp_path / "runs"),
                           "--out", str(tmp_path / "quality.json"), *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)


@pytest.mark.slow
def test_smoke_run_writes_the_table_and_resumes_without_redoing_work(tmp_path: Path) -> None:
    done = quality(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads((tmp_path / "quality.json").read_text())
    assert set(out["blocks"]) == {"4", "6"}
    assert set(out["blocks"]["4"]) == {"base", "pruned", "sft", "sdd", "kd", "sdd-kd", "merge"}
    assert {"pruned", "sft", "sdd"} <= set(out["blocks"]["6"])
    for models in out["blocks"].values():
        for m in models.values():
            assert MODEL_KEYS <= set(m)
            assert all({"acc", "stderr"} <= set(t) for t in m["tasks"].values())
    for key in ("sdd-sft", "kd-sft", "sdd-kd-sdd", "sdd-pruned", "sft-pruned"):
        p = out["paired"]["4"][key]
        assert len(p["ci95"]) == 2 and isinstance(p["significant"], bool), key
    assert "sdd-sft" in out["paired"]["6"]
    assert out["wall_seconds"] > 0 and out["gflops"] > 0
    assert out["disjoint"]["overlapping_items"] == 0 and out["disjoint"]["dev_test_shared_items"] == 0
    assert set(out["learning_rates"]["chosen"]) == {"sft", "sdd", "kd", "sdd-kd"}
    assert any(r.get("chosen") for r in out["sweep"])
    md = (tmp_path / "quality.md").read_text()
    assert "| sdd − sft |" in md and "Learning-rate sweep" in md and "GFLOPS" in md

    cache = tmp_path / "runs" / "quality" / ".cache"
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*.json")}
    again = quality(tmp_path, "--blocks", "4")
    assert again.returncode == 0, again.stderr[-3000:]
    after = {p: p.stat().st_mtime_ns for p in cache.rglob("*.json")}
    assert after == before, "a resumed run trained or evaluated again"
    assert json.loads((tmp_path / "quality.json").read_text())["blocks"]["4"] == out["blocks"]["4"]
