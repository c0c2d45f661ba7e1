"""Where self-data distillation pays: sft, sdd, kd and sdd-kd along the axis that makes SFT forget.

    python bench/regimes.py             # every point; resumable across sessions; hours on 2 cores
    python bench/regimes.py --points d1024-e1-r16      # one point
    python bench/regimes.py --smoke     # the same machinery on a tiny random model (CI)
    python bench/regimes.py --screen d1024-e1-full   # SFT alone at a point: does it forget at all?
    python bench/regimes.py --screen d1024-e1-full --with kd   # and KD beside it, same examples and rate
    python bench/regimes.py --screen d1024-e1-full --with kd,sdd,sdd-kd   # all four methods at one rate
    python bench/regimes.py --screen d1024-e1-full --with kd,sdd,sdd-accepted,sdd-filtered   # SDD's data side
    python bench/regimes.py --screen d1024-e1-full --with kd,gkd   # on-policy distillation beside KD

``bench/quality.py`` found, at 256 GSM8K examples and 32 LoRA r=16 steps, that SFT forgot nothing,
so SDD (whose point is to protect what the model knew) had nothing to protect. This drives the same
recipe machinery (``bench/recipe_bench.py``; the base, pruning and evaluation settings of
``bench/quality-4.yaml``, the sweep settings of ``bench/quality-sweep.yaml``, one run directory)
over regime points of rising training intensity: more data (1,024 GSM8K problems), more passes
(3 epochs), more capacity (LoRA r=64 on all linear layers, then full fine-tuning). At each point:

1. a learning-rate sweep of every method on *dev* items (offset past the test items), the same
   examples and budget for every method; each method's best rate on the dev average is used;
2. pruned and the four methods at their rates on the *test* items of six tasks, fidelity to the
   base; at one point also ``sdd-accepted`` (accepted rewrites only, rejected rows dropped) against
   ``sdd`` (rejected rows fall back to the original answer);
3. **learning**: the mean loss per response token of held-out GSM8K reference solutions (problems
   after the largest point's examples in the same shuffled order: never trained on at any point)
   under each model (:func:`hubsdd.stages.evaluate.learning.reference_loss`), cached by model content;
4. **written answers**: greedy short answers to 400 SciQ questions (``bench/generative_qa.py``), the
   generative side of forgetting that the six log-likelihood tasks cannot see, cached by model content.

**Forgetting** = variant - pruned on the six-task average (paired 95% interval): negative is
forgetting. Outputs: ``bench/results/regimes.json`` and ``bench/results/regimes.png`` (forgetting
and learning against training intensity, one line per method, with intervals). Stage seconds and
the machine's fp32 GFLOPS are printed and recorded. The top-k teacher-logit cache's figures
(``kd_cache``) are ``bench/kd_cache.py``'s, read from its results. ``--screen`` writes
``regimes-screen.json`` and puts the same points into ``regimes.json`` (``kind: screen``: every method
at one rate, no sweep), beside the study's own (``kind: study``).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
# this checkout's hubsdd (and its bench helpers), whatever the environment has installed
sys.path[:0] = [str(BENCH), str(ROOT)]

from recipe_bench import (  # noqa: E402
    METHODS, Ledger, cached_per_model, check_disjoint, collect, load_dict, run_recipe, snapshot, sweep_choice,
    with_learning_rates,
)

WITH = ("kd", "sdd", "sdd-kd", "sdd-accepted", "sdd-filtered", "gkd")  # --screen --with: beside sft
SPECS = {"sft": {"data": "original"}, "sdd": {"data": "distilled"}, "kd": {"data": "original", "loss": "kd"},
         "sdd-kd": {"data": "distilled", "loss": "kd"}, "gkd": {"data": "original", "loss": "gkd"}}
RATES = {"lora": [1e-4, 3e-4, 1e-3], "full": [1e-5, 3e-5, 1e-4]}
PAIRS = [("sdd", "sft"), ("kd", "sft"), ("sdd-kd", "kd"), ("sft", "pruned"), ("sdd", "pruned"), ("kd", "pruned"),
         ("sdd-kd", "pruned"), ("sdd-accepted", "sdd"), ("sdd-filtered", "sdd"), ("sdd-filtered", "sft"),
         ("sdd-filtered", "pruned"), ("gkd", "kd"), ("gkd", "sft"), ("gkd", "pruned")]
# sdd-filtered: SDD from rewrites checked with distill.min_length_ratio too (bare answers fall back)
FILTER_RATIO = 0.5
HELD_OUT = 128  # held-out GSM8K problems for the learning figure
GENERATIVE_NOTE = ("greedy short answers to SciQ validation questions (bench/generative_qa.py): sciq_answer = "
                   "share answered (gold answer in the response), generative_forgetting = variant - pruned, points; "
                   "paired_written = the pairs of paired, on these answers, points")


@dataclass(frozen=True)
class Point:
    name: str
    examples: int
    epochs: float
    method: str  # lora-r16 | lora-r64 | full


# In order of training intensity; the first is bench/quality.py's 4-block setting (reused from its cache).
POINTS = [Point("q256-e1-r16", 256, 1, "lora-r16"), Point("d1024-e1-r16", 1024, 1, "lora-r16"),
          Point("d1024-e3-r16", 1024, 3, "lora-r16"), Point("d1024-e3-r64", 1024, 3, "lora-r64"),
          Point("d1024-e3-full", 1024, 3, "full")]
ACCEPTED_AT = "d1024-e1-r16"
# The rate each point's screen trains SFT at: LoRA at the rate bench/quality-sweep.yaml chose for SFT;
# full fine-tuning at the rate the issue's own check used (128 examples, 3 epochs: no forgetting).
SCREEN_RATES = {"lora": 1e-3, "full": 1e-4}
# Points only the screen visits, at the data axis's one epoch (a third of d1024-e3-full): the two
# capacities beyond LoRA r=16, LoRA r=64 on every linear layer and full fine-tuning.
SCREEN_ONLY = [Point("d1024-e1-r64", 1024, 1, "lora-r64"), Point("d1024-e1-full", 1024, 1, "full")]
SMOKE_POINTS = [Point("s6-e1-r16", 6, 1, "lora-r16"), Point("s6-e2-full", 6, 2, "full")]


def intensity(p: Point) -> tuple:
    """Training intensity, for ordering: examples seen, then capacity."""
    return p.examples * p.epochs, {"lora-r16": 0, "lora-r64": 1, "full": 2}[p.method]


def pair_name(a: str, b: str) -> str:
    """regimes.json's name of the paired difference a - b: sdd_kd-kd, sdd_accepted-sdd, kd-sft."""
    return f"{a.replace('-', '_')}-{b}"


def key(method: str, lr: float) -> str:
    return f"{method}-lr{lr:.0e}".replace("e-0", "e-")  # sft-lr1e-4, as quality-sweep.yaml names them


def at_point(d: dict, point: Point, smoke: bool) -> dict:
    d = copy.deepcopy(d)
    d["distill"]["data"]["limit"] = point.examples
    ft = d["finetune"]
    ft["epochs"] = point.epochs
    ft["method"] = "full" if point.method == "full" else "lora"
    r = 4 if smoke else int(point.method.split("-r")[1]) if point.method.startswith("lora") else None
    if r:
        ft["lora"] = {**ft["lora"], "r": r, "alpha": 2 * r}
    if smoke:
        ft["max_steps"] = int(point.epochs)  # one step per epoch: the budget still differs between points
        ft["warmup_ratio"] = 0.0  # a warm-up of a 1-step run would train at rate 0
    return d


def sweep_recipe(base: dict, point: Point, smoke: bool) -> dict:
    d = at_point(base, point, smoke)
    rates = RATES["full" if point.method == "full" else "lora"][-2:] if smoke else \
        RATES["full" if point.method == "full" else "lora"]
    d["finetune"]["variants"] = {key(m, lr): {**SPECS[m], "learning_rate": lr} for m in METHODS for lr in rates}
    d["card"]["model_name"] = f"regimes-{point.name}-sweep"
    return d


def test_recipe(base: dict, point: Point, best: dict[str, float], smoke: bool, accepted: int) -> dict:
    d = at_point(base, point, smoke)
    d.pop("merge", None)
    variants = {m: {**SPECS[m], "learning_rate": best[m]} for m in METHODS}
    if accepted and (point.name == ACCEPTED_AT or (smoke and point == SMOKE_POINTS[0])):
        variants["sdd-accepted"] = {"data": "accepted", "learning_rate": best["sdd"]}
    d["finetune"]["variants"] = variants
    d, _ = with_learning_rates(d, best)
    d["card"]["model_name"] = f"regimes-{point.name}"
    return d


def screen_recipe(base: dict, point: Point, smoke: bool, rate: float | None = None,
                  methods: tuple[str, ...] = ("sft",)) -> dict:
    """SFT alone at ``point``: the precondition of the whole study is that SFT forgets somewhere, and
    SFT costs a quarter of a point's training. SFT reads the original answers only, so the teacher
    writes one token per problem (every rewrite is then rejected and unused): the distill stage's
    cost drops from ~45 minutes to a prefill, and the SFT data are exactly the full study's. KD
    reads the original answers too, and so does GKD (on-policy: the student writes half the batches'
    answers and the base model scores them; the other half are the original answers, ``finetune.gkd``'s
    defaults). The methods that read rewrites (sdd, sdd-kd, sdd-accepted,
    sdd-filtered) get their own recipes, whose teacher writes whole answers (:func:`rewrite_recipe`)."""
    d = at_point(base, point, smoke)
    d.pop("merge", None)
    d["distill"]["generation"]["max_new_tokens"] = 1
    lr = rate or SCREEN_RATES["full" if point.method == "full" else "lora"]
    d["finetune"]["variants"] = {m: {**SPECS[m], "learning_rate": lr} for m in methods if m in ("sft", "kd", "gkd")}
    d["card"]["model_name"] = f"regimes-{point.name}-screen"
    return d


def rewrite_recipe(base: dict, point: Point, smoke: bool, rate: float | None, methods: tuple[str, ...],
                   accepted: int = 0, filtered: bool = False) -> dict:
    """SDD, SDD-KD and SDD on the accepted rewrites alone at ``point``, at the screen's rate, from the
    same problems; or (``filtered``) SDD on rewrites also checked with ``distill.min_length_ratio``,
    whose bare answers fall back to the original. A recipe of their own
    because the rewrites change the distill stage and so every variant's key: SFT and KD stay
    cached in :func:`screen_recipe`'s run, and both runs evaluate the same items, so the
    comparisons pair across them (:func:`recipe_bench.collect`). Its own run directory too, so
    neither run's distill stage (the rewrites: ~22 min at 1,024 problems, 320 GFLOPS) replaces the other's;
    :func:`share_cache` lets it reuse the first's evaluations."""
    d = at_point(base, point, smoke)
    d["name"] = f"{d['name']}-rewrites{'-filtered' if filtered else ''}"
    d.pop("merge", None)
    lr = rate or SCREEN_RATES["full" if point.method == "full" else "lora"]
    if filtered:  # the same rewrites (greedy), bare answers among them rejected: sdd on that data
        d["distill"]["min_length_ratio"] = FILTER_RATIO
        d["finetune"]["variants"] = {"sdd-filtered": {**SPECS["sdd"], "learning_rate": lr}}
        d["card"]["model_name"] = f"regimes-{point.name}-screen-rewrites-filtered"
        return d
    d["finetune"]["variants"] = {m: {**SPECS[m], "learning_rate": lr} for m in methods if m in ("sdd", "sdd-kd")}
    if accepted and "sdd-accepted" in methods:  # the accepted rewrites alone: fewer rows, fewer steps
        d["finetune"]["variants"]["sdd-accepted"] = {"data": "accepted", "learning_rate": lr}
    d["card"]["model_name"] = f"regimes-{point.name}-screen-rewrites"
    return d


def share_cache(runs_dir: Path, first: dict, second: dict) -> None:
    """Point ``second``'s run-directory cache at ``first``'s. Its entries are keyed by content (model
    weights, evaluation spec, variant inputs), never by run, so a base or pruned model evaluated
    in one run is not evaluated again (~20 min) in the other."""
    shared, link = runs_dir / first["name"] / ".cache", runs_dir / second["name"] / ".cache"
    if link.is_symlink() or link.exists():
        return
    shared.mkdir(parents=True, exist_ok=True)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(shared, link.parent), target_is_directory=True)


def run_screen(point: Point, recipes: dict, runs_dir: Path, ledger: Ledger, smoke: bool, n_held: int,
               rate: float | None = None, methods: tuple[str, ...] = ("sft",)) -> dict:
    print(f"== screen {point.name}: {', '.join(methods)}, {point.examples} examples, "
          f"{point.epochs:g} epochs, {point.method}", flush=True)
    d = screen_recipe(recipes["test"], point, smoke, rate, methods)
    recipes_here = {"screen": d}
    if {"sdd", "sdd-kd", "sdd-accepted"} & set(methods):
        recipes_here["screen-rewrites"] = rewrite_recipe(recipes["test"], point, smoke, rate, methods)
        share_cache(runs_dir, d, recipes_here["screen-rewrites"])
    if "sdd-filtered" in methods:
        recipes_here["screen-rewrites-filtered"] = rewrite_recipe(recipes["test"], point, smoke, rate, methods,
                                                                  filtered=True)
        share_cache(runs_dir, d, recipes_here["screen-rewrites-filtered"])
    runs = {}
    examples: list = []
    written: dict[str, list[dict]] = {}  # per-item SciQ answers of every model of every run
    for label, rd in recipes_here.items():
        res = run_recipe(f"{point.name}/{label}", rd, runs_dir, ledger)
        accepted = res["distill"].metrics.get("accepted") or 0
        if label == "screen-rewrites" and "sdd-accepted" in methods:
            if accepted:  # known only once the teacher has written: again, the others restored from the cache
                rd = rewrite_recipe(recipes["test"], point, smoke, rate, methods, accepted)
                res = run_recipe(f"{point.name}/{label}", rd, runs_dir, ledger)
            else:
                print("   sdd-accepted: the teacher wrote no accepted rewrite; nothing to train on", flush=True)
        # read now, while the stage files are there
        snap = snapshot(res)
        examples, trained_on = add_learning(snap["models"], res, rd, runs_dir, smoke, n_held)
        if trained_on:
            raise SystemExit(f"{point.name}: {trained_on} held-out problems were trained on")
        written.update(add_generative(snap["models"], res, runs_dir, smoke))
        runs[label] = {"snapshot": snap, "variants": res["finetune"].metrics["variants"],
                       "distill": res["distill"].metrics, "stage_seconds": ledger.first_run_seconds(res)}
    trained = {m for r in runs.values() for m in r["snapshot"]["models"]}
    pairs = [(a, b) for a, b in PAIRS if a in trained and b in trained]
    models, paired, items = collect([r["snapshot"] for r in runs.values()], pairs)
    add_forgetting(models, paired)
    variants = {v: m for r in runs.values() for v, m in r["variants"].items()}
    out = {"name": point.name, "examples": point.examples, "epochs": point.epochs, "method": point.method,
           "learning_rate": d["finetune"]["variants"]["sft"]["learning_rate"], "models": models,
           "paired": {pair_name(a, b): {k: paired.get(f"{a}-{b}", {}).get(k) for k in ("diff", "ci95", "significant")}
                      for a, b in pairs}, "items": items,
           "paired_written": written_pairs(written, pairs),
           "held_out_problems": len(examples),
           "steps": {v: m["steps"] for v, m in variants.items()},
           "train_loss": {v: [m.get("train_loss_first"), m.get("train_loss_last")] for v, m in variants.items()},
           # each variant's own training time (what a method costs), and GKD's batches the student wrote
           "train_seconds": {v: m.get("seconds") for v, m in variants.items()},
           **({"on_policy_batches": on_policy} if (on_policy := {v: m["on_policy_batches"] for v, m in variants.items()
                                                                 if m.get("loss") == "gkd"}) else {}),
           "stage_seconds": runs["screen"]["stage_seconds"]}
    for label, name, extra in (("screen-rewrites", "distill", {}),
                               ("screen-rewrites-filtered", "distill_filtered", {"min_length_ratio": FILTER_RATIO})):
        if label in runs:
            r = runs[label]
            out[name] = {**extra, **{k: r["distill"].get(k) for k in ("rows", "accepted", "rejection_reasons")}}
            out[label.replace("screen-", "").replace("-", "_") + "_stage_seconds"] = r["stage_seconds"]
    return out


# --------------------------------------------------------------------------- learning


def held_out(d: dict, start: int, n: int) -> list[tuple[str, str]]:
    """GSM8K problems ``start..start+n`` of the distill data's shuffled order: never trained on."""
    from hubsdd.core.data import get_value, load_rows
    from hubsdd.core.recipe import DataSource

    src = {k: v for k, v in d["distill"]["data"].items() if k != "limit"}
    rows = load_rows(DataSource(**src), ROOT / "bench")
    cols = d["distill"]["columns"]
    out = [(str(get_value(r, cols["instruction"])), str(get_value(r, cols["response"]))) for r in rows[start:start + n]]
    if len(out) < n:
        raise SystemExit(f"only {len(out)} held-out problems after the first {start} (wanted {n})")
    return out


def learning(models: dict[str, Path], examples: list[tuple[str, str]], cache: Path) -> dict[str, dict]:
    """Each model's reference loss on the held-out problems (cached by model content), with a 95%
    bootstrap interval over problems."""
    import numpy as np

    from hubsdd.core.models import load_model, load_tokenizer
    from hubsdd.stages.evaluate.learning import reference_loss

    def measure(path: Path) -> dict:
        return reference_loss(load_model(path), load_tokenizer(path), examples, max_length=512, batch_size=8)

    digest = hashlib.sha256(json.dumps(examples).encode()).hexdigest()[:16]
    out = {}
    for name, path in models.items():
        found = cached_per_model(cache, path, digest, lambda: measure(path))
        per = np.array(found["per_example"], dtype=float)
        idx = np.random.default_rng(20241009).integers(0, len(per), size=(2000, len(per)))
        ratios = per[idx, 0].sum(axis=1) / np.maximum(per[idx, 1].sum(axis=1), 1)
        out[name] = {"learning_loss": round(found["loss"], 5),
                     "learning_loss_ci95": [round(float(x), 5) for x in np.percentile(ratios, [2.5, 97.5])]}
    return out


# --------------------------------------------------------------------------- one point


def run_point(point: Point, recipes: dict, runs_dir: Path, ledger: Ledger, smoke: bool, n_held: int) -> dict:
    print(f"== {point.name}: {point.examples} examples, {point.epochs:g} epochs, {point.method}", flush=True)
    sweep_d = sweep_recipe(recipes["sweep"], point, smoke)
    sweep = run_recipe(f"{point.name}/sweep", sweep_d, runs_dir, ledger)
    best, rows = sweep_choice(sweep)
    print("   best rates: " + ", ".join(f"{k} {v:g}" for k, v in best.items()), flush=True)
    accepted = sweep["distill"].metrics.get("accepted", 0)  # a tiny random teacher gets none right
    test_d = test_recipe(recipes["test"], point, best, smoke, accepted)
    res = run_recipe(f"{point.name}/test", test_d, runs_dir, ledger)
    models, paired, items = collect(res, PAIRS)
    examples, trained_on = add_learning(models, res, test_d, runs_dir, smoke, n_held)
    written = add_generative(models, res, runs_dir, smoke)
    overlap = check_disjoint({"sweep": sweep, "test": res}, {"sweep": sweep_d, "test": test_d})
    overlap["held_out_in_training"] = trained_on
    if overlap["held_out_in_training"]:
        raise SystemExit(f"{point.name}: held-out problems were trained on: {overlap}")
    add_forgetting(models, paired)
    short = {pair_name(v["a"], v["b"]): {"diff": v["diff"], "ci95": v["ci95"], "significant": v["significant"]}
             for v in paired.values()}
    acc = res["distill"].metrics
    return {"name": point.name, "examples": point.examples, "epochs": point.epochs, "method": point.method,
            "models": models, "paired": short,
            "paired_written": written_pairs(written, [(v["a"], v["b"]) for v in paired.values()]),
            "learning_rates": best, "sweep": rows, "items": items,
            "held_out_problems": len(examples), "disjoint": overlap,
            "distill": {"rows": acc.get("rows"), "accepted": acc.get("accepted")},
            "steps": {v: m["steps"] for v, m in res["finetune"].metrics["variants"].items()}}


def add_forgetting(models: dict, paired: dict) -> None:
    """Each trained model's forgetting, variant - pruned on the six tasks (``collect`` pairs every
    model with the pruned one), added to ``models``."""
    for m in models:
        if m not in ("base", "pruned") and f"{m}-pruned" in paired:
            p = paired[f"{m}-pruned"]
            models[m]["forgetting"] = {"diff": p["diff"], "ci95": p["ci95"]}


def add_learning(models: dict, res: dict, d: dict, runs_dir: Path, smoke: bool, n_held: int) -> tuple[list, int]:
    """Each model's learning figure, added to ``models``; the held-out problems, and how many of
    them the run trained on (it must be none)."""
    from hubsdd.pipeline.runner import checkpoint_dirs

    start = max(p.examples for p in (SMOKE_POINTS if smoke else POINTS))
    examples = held_out(d, start, n_held)
    dirs = {m: p for m, p in checkpoint_dirs(res).items() if m in models}
    for m, fig in learning(dirs, examples, runs_dir / ".cache" / "regimes-learning").items():
        models[m].update(fig)
    trained = set(_train_questions(res))
    return examples, sum(1 for q, _ in examples if q in trained)


def add_generative(models: dict, res: dict, runs_dir: Path, smoke: bool) -> dict[str, list[dict]]:
    """Each model's short answers to SciQ questions (``bench/generative_qa.py``), added to ``models``:
    accuracy, GSM8K markup, and for the variants ``generative_forgetting`` (variant - pruned).
    Returns the per-item answers, for ``written_pairs``."""
    import generative_qa
    from hubsdd.pipeline.runner import checkpoint_dirs

    dirs = {m: p for m, p in checkpoint_dirs(res).items() if m in models}
    items = generative_qa.sciq_items(4 if smoke else generative_qa.ITEMS)
    per_model = generative_qa.answers(dirs, items, runs_dir / ".cache" / "generative-qa")
    for m, fig in generative_qa.summarize(per_model).items():
        models[m]["generative"] = fig
    return per_model


def written_pairs(per_model: dict[str, list[dict]], pairs: list[tuple[str, str]]) -> dict[str, dict]:
    """The paired differences of SciQ written answers, a - b in points, for every pair whose models
    both answered: kept in the results because the per-item answers live in the run directory's cache,
    which a lost machine takes with it (the SDD-KD - KD pair was lost that way once)."""
    from generative_qa import difference_in_points

    from hubsdd.core.stats import Bootstrap

    scores = {m: {"sciq": {r["id"]: float(r["correct"]) for r in rows}} for m, rows in per_model.items()}
    boot = Bootstrap(scores)
    return {pair_name(a, b): difference_in_points(boot.difference(a, b)) for a, b in pairs
            if a in scores and b in scores}


def _train_questions(results: dict) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(results["distill"].path("data"), columns=["instruction"]).column("instruction").to_pylist()


# --------------------------------------------------------------------------- plot


def plot(points: list[dict], path: Path) -> None:
    from hubsdd.core.figures import figure

    xs = list(range(len(points)))
    with figure(path, figsize=(15.5, 4.4), dpi=110, ncols=3) as (_, (left, right, spoken)):
        for i, m in enumerate((*METHODS, "sdd-accepted", "sdd-filtered", "gkd")):
            got = [(x, p["models"][m]) for x, p in zip(xs, points) if m in p["models"]]
            off = (i - 2.5) * 0.05
            f = [(x + off, mm["forgetting"]) for x, mm in got if mm.get("forgetting")]
            if f:
                left.errorbar([x for x, _ in f], [d["diff"] for _, d in f],
                              yerr=[[d["diff"] - d["ci95"][0] for _, d in f], [d["ci95"][1] - d["diff"] for _, d in f]],
                              marker="o", capsize=3, label=m)
            ll = [(x + off, mm) for x, mm in got if mm.get("learning_loss") is not None]
            if ll:
                right.errorbar([x for x, _ in ll], [mm["learning_loss"] for _, mm in ll],
                               yerr=[[mm["learning_loss"] - mm["learning_loss_ci95"][0] for _, mm in ll],
                                     [mm["learning_loss_ci95"][1] - mm["learning_loss"] for _, mm in ll]],
                               marker="o", capsize=3, label=m)
            g = [(x + off, mm["generative"]["generative_forgetting"]) for x, mm in got
                 if (mm.get("generative") or {}).get("generative_forgetting")]
            if g:
                spoken.errorbar([x for x, _ in g], [d["diff"] for _, d in g],
                                yerr=[[d["diff"] - d["ci95"][0] for _, d in g], [d["ci95"][1] - d["diff"] for _, d in g]],
                                marker="o", capsize=3, label=m)
        pruned = [p["models"]["pruned"].get("learning_loss") for p in points]
        right.plot(xs, pruned, "k--", label="pruned (no training)")
        left.axhline(0, color="k", lw=0.8)
        spoken.axhline(0, color="k", lw=0.8)
        base_gap = [p["models"]["base"]["generative"]["sciq_answer"] - p["models"]["pruned"]["generative"]["sciq_answer"]
                    for p in points if (p["models"].get("base") or {}).get("generative")
                    and (p["models"].get("pruned") or {}).get("generative")]
        if base_gap:  # where the unpruned base stands: full recovery
            spoken.axhline(base_gap[0], color="k", ls="--", lw=0.8, label="base (unpruned)")
        for ax, title, ylabel in ((left, "Forgetting: six-task average − pruned", "points (paired 95% CI)"),
                                  (right, "Learning: loss of held-out GSM8K solutions", "nats per response token"),
                                  (spoken, "Written answers: SciQ short answers − pruned", "points (paired 95% CI)")):
            ax.set_xticks(xs, [p["name"] for p in points], rotation=20, fontsize=8)
            ax.set_xlabel("training intensity →")
            ax.set_title(title, fontsize=10)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny random model, a few items, a step per epoch (CI)")
    parser.add_argument("--runs-dir", type=Path, default=None, help="default: runs/ (runs/regimes-smoke for --smoke)")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/regimes.json")
    parser.add_argument("--points", default=None, help="comma-separated point names (default: all)")
    parser.add_argument("--screen", default=None, metavar="POINTS",
                        help="comma-separated point names: SFT alone at each (does SFT forget there?); "
                             "writes bench/results/regimes-screen.json")
    parser.add_argument("--rate", type=float, default=None,
                        help=f"--screen's learning rate (default: {SCREEN_RATES['lora']:g} LoRA, "
                             f"{SCREEN_RATES['full']:g} full fine-tuning)")
    parser.add_argument("--with", dest="with_methods", default="", metavar="METHODS",
                        help="--screen: also train these of kd, sdd, sdd-kd, sdd-accepted, sdd-filtered, gkd (comma-separated) "
                             "from the same examples at the same rate; the sdd ones need the teacher's rewrites (~22 "
                             "min at 1,024 problems, 320 GFLOPS); sdd-accepted trains on the accepted rewrites alone, sdd-filtered "
                             f"on rewrites checked with distill.min_length_ratio {FILTER_RATIO:g} too")
    args = parser.parse_args(argv)
    extra = [m for m in args.with_methods.split(",") if m]
    if extra and not args.screen:
        parser.error("--with goes with --screen (the study trains every method already)")
    if unknown := [m for m in extra if m not in WITH]:
        parser.error(f"--with: unknown methods {unknown}; known: {', '.join(WITH)}")
    if "sdd-accepted" in extra and "sdd" not in extra:
        parser.error("--with sdd-accepted goes with sdd (it is compared with sdd's fallback to the original answers)")
    args.methods = ("sft", *[m for m in WITH if m in extra])

    import torch

    from cpu_linear import measure_gflops
    from hubsdd.core.models import set_threads

    set_threads()
    runs_dir = (args.runs_dir or ROOT / ("runs/regimes-smoke" if args.smoke else "runs")).resolve()
    out_path = args.out or (BENCH / "results" / ("regimes-smoke.json" if args.smoke else "regimes.json"))
    gflops = measure_gflops()
    print(f"fp32 linears on this machine: {gflops['best']:.0f} GFLOPS, {torch.get_num_threads()} threads", flush=True)
    ledger = Ledger(runs_dir / "regimes-ledger.json")
    invoked = time.time()
    recipes = {"sweep": load_dict(BENCH / "quality-sweep.yaml"), "test": load_dict(BENCH / "quality-4.yaml")}
    points = SMOKE_POINTS if args.smoke else POINTS + (SCREEN_ONLY if args.screen else [])
    if args.points or args.screen:
        wanted = (args.screen or args.points).split(",")
        unknown = [w for w in wanted if w not in {p.name for p in points}]
        if unknown:
            parser.error(f"unknown points {unknown}; known: {', '.join(p.name for p in points)}")
        points = [p for p in points if p.name in wanted]
    if args.smoke:
        from quality import smoke

        runs_dir.mkdir(parents=True, exist_ok=True)
        recipes = {"sweep": smoke(recipes["sweep"], runs_dir, "sweep"), "test": smoke(recipes["test"], runs_dir, "4")}
    n_held = 4 if args.smoke else HELD_OUT
    if args.screen:
        return screen(points, recipes, runs_dir, ledger, args, n_held, gflops, invoked, argv)
    results = []
    for point in points:
        started = time.time()
        results.append(run_point(point, recipes, runs_dir, ledger, args.smoke, n_held))
        print(f"   {point.name} done in {time.time() - started:.0f} s (stage time so far {ledger.seconds / 60:.1f} min "
              f"at {gflops['best']:.0f} GFLOPS)", flush=True)
    argv_used = sys.argv[1:] if argv is None else argv
    results = [{**p, "kind": "study"} for p in results]
    out = {
        "points": merged_points(out_path, results, args.smoke),
        "kd_cache": kd_cache_figures(args.smoke),
        "wall_seconds": round(ledger.seconds, 1),
        "wall_seconds_this_invocation": round(time.time() - invoked, 1),
        "gflops": gflops["best"], "gflops_detail": gflops,
        "command": "python bench/regimes.py" + "".join(" " + shlex.quote(a) for a in argv_used),
        "smoke": args.smoke, "torch_threads": torch.get_num_threads(),
        "notes": {"forgetting": "variant - pruned on the six-task average, points; negative = forgot",
                  "learning_loss": "nats per response token of held-out GSM8K reference solutions",
                  "generative": GENERATIVE_NOTE,
                  "sdd_accepted-sdd": f"at {ACCEPTED_AT}: accepted rewrites only vs rejected rows falling back; "
                                      "fewer rows, so fewer steps at the same epochs"},
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(out, indent=1) + "\n")
    plot(results, out_path.with_suffix(".png"))
    for p in results:
        line = ", ".join(f"{k} {v['diff']:+.1f} ({v['ci95'][0]:+.1f}..{v['ci95'][1]:+.1f})"
                         for k, v in p["paired"].items() if v["diff"] is not None)
        print(f"{p['name']}: {line}")
        print("   learning loss: " + ", ".join(f"{m} {mm['learning_loss']:.3f}" for m, mm in p["models"].items()
                                               if mm.get("learning_loss") is not None))
        print("   SciQ answers: " + ", ".join(f"{m} {mm['generative']['sciq_answer']:.1f}%"
                                              for m, mm in p["models"].items() if mm.get("generative")))
    print(f"\nwrote {out_path} and {out_path.with_suffix('.png')}; stage time {ledger.seconds / 60:.1f} min at "
          f"{gflops['best']:.0f} GFLOPS")
    return 0


def screen(points: list[Point], recipes: dict, runs_dir: Path, ledger: Ledger, args: argparse.Namespace,
           n_held: int, gflops: dict, invoked: float, argv: list[str] | None) -> int:
    import torch

    out_path = args.out or (BENCH / "results" / ("regimes-screen-smoke.json" if args.smoke else "regimes-screen.json"))
    try:  # one entry per (point, rate): earlier invocations' stay
        found = {(p["name"], p["learning_rate"]): p for p in json.loads(out_path.read_text())["points"]}
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        found = {}
    for point in points:
        started = time.time()
        got = run_screen(point, recipes, runs_dir, ledger, args.smoke, n_held, args.rate, args.methods)
        found[(got["name"], got["learning_rate"])] = got
        print(f"   {point.name} done in {time.time() - started:.0f} s at {gflops['best']:.0f} GFLOPS", flush=True)
    argv_used = sys.argv[1:] if argv is None else argv
    order = [p.name for p in (SMOKE_POINTS if args.smoke else sorted(POINTS + SCREEN_ONLY, key=intensity))]
    out = {"points": sorted(found.values(), key=lambda p: (order.index(p["name"]), p["learning_rate"])),
           "wall_seconds": round(ledger.seconds, 1), "wall_seconds_this_invocation": round(time.time() - invoked, 1),
           "gflops": gflops["best"], "gflops_detail": gflops,
           "command": "python bench/regimes.py" + "".join(" " + shlex.quote(a) for a in argv_used),
           "smoke": args.smoke, "torch_threads": torch.get_num_threads(),
           "notes": {"forgetting": "variant - pruned on the six-task average, points; negative = forgot",
                     "distill": "the teacher writes 1 token per problem: SFT and KD read the original answers only; "
                                "sdd and sdd-kd train in a run of their own whose teacher writes whole answers "
                                "(distill: its rows and accepted rewrites), paired with the first on the same items",
                     "generative": GENERATIVE_NOTE}}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(out, indent=1) + "\n")
    study_path = out_path.with_name("regimes-smoke.json" if args.smoke else "regimes.json")
    screened = [{**p, "kind": "screen", "learning_rates": {m: p["learning_rate"] for m in p["steps"]}}
                for p in out["points"]]
    study_path.write_text(json.dumps({**out, "points": merged_points(study_path, screened, args.smoke),
                                      "kd_cache": kd_cache_figures(args.smoke)}, indent=1) + "\n")
    labelled = [{**p, "name": f"{p['name']}\nlr {p['learning_rate']:g}"} for p in out["points"]]
    plot(labelled, out_path.with_suffix(".png"))
    for p in out["points"]:
        f = p["paired"]["sft-pruned"]
        ll = {m: mm.get("learning_loss") for m, mm in p["models"].items()}
        g = (p["models"]["sft"].get("generative") or {}).get("generative_forgetting")
        written = f"; SciQ answers - pruned {g['diff']:+.1f} ({g['ci95'][0]:+.1f}..{g['ci95'][1]:+.1f})" if g else ""
        for name in ("kd-sft", "sdd-sft", "sdd_kd-kd", "sdd_accepted-sdd", "sdd_filtered-sdd", "sdd_filtered-sft",
                     "gkd-kd", "gkd-sft"):
            k = p["paired"].get(name)
            if k and k.get("diff") is not None:
                written += f"; {name} {k['diff']:+.1f} ({k['ci95'][0]:+.1f}..{k['ci95'][1]:+.1f})"
            w = (p.get("paired_written") or {}).get(name)
            if w:
                written += f", written {w['diff']:+.1f} ({w['ci95'][0]:+.1f}..{w['ci95'][1]:+.1f})"
        print(f"{p['name']} (lr {p['learning_rate']:g}): sft - pruned {f['diff']:+.1f} "
              f"({f['ci95'][0]:+.1f}..{f['ci95'][1]:+.1f}); learning loss {ll}{written}")
    print(f"\nwrote {out_path} and {out_path.with_suffix('.png')}, and its points into {study_path}; stage time "
          f"{ledger.seconds / 60:.1f} min at {gflops['best']:.0f} GFLOPS")
    return 0


def merged_points(path: Path, points: list[dict], smoke: bool) -> list[dict]:
    """regimes.json's points: these (``kind`` "study": each method at its swept rate; "screen": every
    method at one rate, no sweep) and the file's others (another kind, point or rate), in order of intensity."""
    def ident(p: dict) -> tuple:
        return p["name"], p.get("kind"), p.get("learning_rate")

    new = {ident(p) for p in points}
    try:
        kept = [p for p in json.loads(path.read_text())["points"] if p.get("kind") and ident(p) not in new]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        kept = []
    order = [p.name for p in (SMOKE_POINTS if smoke else sorted(POINTS + SCREEN_ONLY, key=intensity))]
    return sorted(kept + points, key=lambda p: (order.index(p["name"]), p["kind"], p.get("learning_rate") or 0))


def kd_cache_figures(smoke: bool) -> dict:
    """The top-k teacher-logit cache against the live teacher, as ``bench/kd_cache.py`` measured it
    (its own bench: the same KD step timed both ways in one run)."""
    path = BENCH / "results" / ("kd_cache-smoke.json" if smoke else "kd_cache.json")
    try:
        found = json.loads(path.read_text())
    except FileNotFoundError:
        return {"speedup": None, "peak_memory_ratio": None, "quality": None,
                "status": f"not measured: run bench/kd_cache.py{' --smoke' if smoke else ''}"}
    q = found.get("quality") or {}
    return {"speedup": found.get("speedup"), "peak_memory_ratio": found.get("peak_memory_ratio"),
            "quality": {"diff": q.get("diff"), "ci95": q.get("ci95"), "metric": q.get("metric")},
            "source": str(path.relative_to(ROOT))}


if __name__ == "__main__":
    raise SystemExit(main())
