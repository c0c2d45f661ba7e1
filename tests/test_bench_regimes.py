"""bench/regimes.py --smoke: the regime study's whole path on a tiny model, so it cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAIRED = {"sdd-sft", "kd-sft", "sdd_kd-kd", "sft-pruned", "sdd-pruned", "kd-pruned"}


def regimes(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {"HUBSDD_THREADS": "1", "PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "bench/regimes.py", "--smoke", "--runs-dir", str(tmp_path / "runs"),
                           "--out", str(tmp_path / "regimes.json"), *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)


def assert_written_answers(models: dict) -> None:
    """Every model answered the SciQ questions; each variant's written answers are compared with the
    pruned model's, item by item."""
    for name, m in models.items():
        g = m["generative"]
        lo, hi = g["sciq_answer_ci95"]
        assert 0 <= lo <= g["sciq_answer"] <= hi <= 100, name
        assert all(0 <= g[k] <= 100 for k in ("gsm8k_markup_share", "repeats_share", "finished_share"))
        trained = name not in ("base", "pruned")
        assert ("generative_forgetting" in g) == trained, name
        if trained:
            f = g["generative_forgetting"]
            assert f["ci95"][0] <= f["diff"] <= f["ci95"][1]
            assert f["diff"] == pytest.approx(g["sciq_answer"] - models["pruned"]["generative"]["sciq_answer"], abs=0.02)


def assert_written_pairs(point: dict) -> None:
    """Every pair of the six tasks is also paired on written answers, kept in the results themselves
    (the per-item answers live in a cache the run directory may lose)."""
    written = point["paired_written"]
    assert set(written) == set(point["paired"])
    sciq = {m: mm["generative"]["sciq_answer"] for m, mm in point["models"].items()}
    for name, d in written.items():
        a, b = name.split("-", 1)
        a = a.replace("_", "-")
        assert d["ci95"][0] <= d["diff"] <= d["ci95"][1], name
        assert d["diff"] == pytest.approx(sciq[a] - sciq[b], abs=0.02), name
        if b == "pruned":
            assert d["diff"] == point["models"][a]["generative"]["generative_forgetting"]["diff"]


@pytest.mark.slow
def test_smoke_run_writes_the_schema_and_the_plot_and_resumes_without_redoing_work(tmp_path: Path) -> None:
    done = regimes(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads((tmp_path / "regimes.json").read_text())
    assert [p["name"] for p in out["points"]] == ["s6-e1-r16", "s6-e2-full"]
    assert [p["method"] for p in out["points"]] == ["lora-r16", "full"]
    for p in out["points"]:
        assert {"pruned", "sft", "sdd", "kd", "sdd-kd"} <= set(p["models"])
        for name in ("pruned", "sft", "sdd", "kd", "sdd-kd"):
            m = p["models"][name]
            assert {"average", "average_ci95", "kl", "top1_agreement", "learning_loss"} <= set(m), name
            lo, hi = m["learning_loss_ci95"]
            assert lo <= m["learning_loss"] <= hi and m["learning_loss"] > 0
        assert p["models"]["sft"]["forgetting"] == {"diff": p["paired"]["sft-pruned"]["diff"],
                                                    "ci95": p["paired"]["sft-pruned"]["ci95"]}
        assert_written_answers(p["models"])
        assert_written_pairs(p)
        assert PAIRED <= set(p["paired"]) and all(len(p["paired"][k]["ci95"]) == 2 for k in PAIRED)
        assert set(p["learning_rates"]) == {"sft", "sdd", "kd", "sdd-kd"}
        assert p["disjoint"]["overlapping_items"] == 0 and p["disjoint"]["held_out_in_training"] == 0
    # more epochs at the second point: twice the steps of the first
    assert out["points"][1]["steps"]["sft"] == 2 * out["points"][0]["steps"]["sft"]
    assert set(out["kd_cache"]) >= {"speedup", "peak_memory_ratio", "quality"}
    assert out["kd_cache"]["speedup"] > 0 and len(out["kd_cache"]["quality"]["ci95"]) == 2  # bench/kd_cache.py's
    assert {p["kind"] for p in out["points"]} == {"study"}
    assert out["wall_seconds"] > 0 and out["gflops"] > 0
    assert (tmp_path / "regimes.png").read_bytes()[:4] == b"\x89PNG"

    caches = [tmp_path / "runs" / "quality" / ".cache", tmp_path / "runs" / ".cache"]  # stages; learning, answers
    assert list((tmp_path / "runs" / ".cache" / "generative-qa").glob("*.json"))
    before = {p: p.stat().st_mtime_ns for c in caches for p in c.rglob("*.json")}
    again = regimes(tmp_path, "--points", "s6-e1-r16")
    assert again.returncode == 0, again.stderr[-3000:]
    after = {p: p.stat().st_mtime_ns for c in caches for p in c.rglob("*.json")}
    assert after == before, "a resumed run trained, evaluated or measured again"
    assert json.loads((tmp_path / "regimes.json").read_text())["points"][0]["models"] == out["points"][0]["models"]


def test_screen_trains_sft_alone_and_keeps_points_of_earlier_invocations(tmp_path: Path) -> None:
    """--screen: SFT alone at a point (does it forget there?), each point added to the same file; --with
    adds the other methods, those that read rewrites from a run of their own, paired across the two."""
    out_file = tmp_path / "screen.json"
    for extra in (["s6-e2-full"], ["s6-e1-r16"], ["s6-e1-r16", "--rate", "3e-3", "--with", "sdd-kd,kd,sdd,sdd-accepted,sdd-filtered,gkd"]):
        done = regimes(tmp_path, "--screen", *extra, "--out", str(out_file))
        assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(out_file.read_text())
    # in order of intensity, then of rate; a point screened at two rates is kept twice
    assert [(p["name"], p["learning_rate"]) for p in out["points"]] == [("s6-e1-r16", 1e-3), ("s6-e1-r16", 3e-3),
                                                                        ("s6-e2-full", 1e-4)]
    for p in out["points"]:
        every = p["learning_rate"] == 3e-3
        others = {"kd", "sdd", "sdd-kd", "sdd-filtered", "gkd"} if every else set()
        # SFT alone (no rewrites), and the other methods beside it where asked
        assert set(p["models"]) == {"base", "pruned", "sft"} | others
        assert set(p["steps"]) == {"sft"} | others
        assert set(p["paired"]) == {"sft-pruned"} | ({"kd-sft", "sdd-sft", "sdd_kd-kd", "kd-pruned", "sdd-pruned",
                                                       "sdd_kd-pruned", "sdd_filtered-sdd", "sdd_filtered-sft",
                                                       "sdd_filtered-pruned", "gkd-kd", "gkd-sft", "gkd-pruned"}
                                                      if every else set())
        assert ("distill" in p) == every  # the teacher wrote whole answers only for sdd and sdd-kd
        # a random teacher gets no answer right: sdd-accepted has nothing to train on, and is left out
        assert "sdd-accepted" not in p["models"] and (not every or p["distill"]["accepted"] == 0)
        for m in others:
            assert p["models"][m]["forgetting"]["diff"] == p["paired"][f"{m.replace('-', '_')}-pruned"]["diff"]
            assert p["steps"][m] == p["steps"]["sft"]
            assert p["train_seconds"][m] > 0
            assert p["models"][m]["learning_loss"] > 0
        if every:
            # GKD: the student wrote the answers of some of its batches (lmbda 0.5 of them, by chance)
            assert 0 <= p["on_policy_batches"]["gkd"] <= p["steps"]["gkd"] and set(p["on_policy_batches"]) == {"gkd"}
            assert p["distill"]["rows"] == p["examples"]
            # sdd-filtered: its own rewrites run, checked with the too-short rule as well
            assert p["distill_filtered"]["min_length_ratio"] == 0.5 and p["distill_filtered"]["rows"] == p["examples"]
            assert p["rewrites_stage_seconds"]["distill"] > 0
            # the pair across the two runs is the difference of the two six-task averages
            assert abs(p["paired"]["sdd-sft"]["diff"] - (p["models"]["sdd"]["average"] - p["models"]["sft"]["average"])) < 0.06
        assert p["paired"]["sft-pruned"]["ci95"][0] <= p["paired"]["sft-pruned"]["diff"] <= \
            p["paired"]["sft-pruned"]["ci95"][1]
        assert p["models"]["sft"]["learning_loss"] > 0
        first, last = p["train_loss"]["sft"]
        assert first > 0 and last > 0
        assert p["models"]["sft"]["forgetting"]["diff"] == p["paired"]["sft-pruned"]["diff"]
        assert_written_answers(p["models"])
        assert_written_pairs(p)
    assert out_file.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    # the same points, in the study's schema (kind "screen": every method at one rate, no sweep)
    study = json.loads((tmp_path / "regimes-smoke.json").read_text())
    assert [(p["name"], p["kind"], p["learning_rates"]["sft"]) for p in study["points"]] == \
        [(p["name"], "screen", p["learning_rate"]) for p in out["points"]]
    assert study["points"][1]["learning_rates"]["gkd"] == 3e-3 and study["points"][1]["models"] == out["points"][1]["models"]
    assert study["kd_cache"]["speedup"] > 0
    assert out["gflops"] > 0 and "1 token" in out["notes"]["distill"]
    # the rewrites had a run directory of their own (neither distill stage replaces the other), whose
    # content-keyed cache is the first's: base and pruned were evaluated once, not once a run
    for suffix in ("-rewrites", "-rewrites-filtered"):
        (rewrites,) = [d for d in (tmp_path / "runs").iterdir() if d.name.endswith(suffix)]
        first = rewrites.with_name(rewrites.name.removesuffix(suffix))
        assert (first / "distill" / "stage.json").exists() and (rewrites / "distill" / "stage.json").exists()
        assert (rewrites / ".cache").resolve() == (first / ".cache").resolve()
    # screening a point again reuses its training and keeps the seconds its stages took when they ran
    again = regimes(tmp_path, "--screen", "s6-e2-full", "--out", str(out_file))
    assert again.returncode == 0, again.stderr[-3000:]
    rescreened = json.loads(out_file.read_text())["points"][-1]
    assert rescreened["name"] == "s6-e2-full"
    assert rescreened["stage_seconds"] == out["points"][-1]["stage_seconds"]
    assert rescreened["stage_seconds"]["finetune"] > 0
