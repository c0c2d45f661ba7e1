"""The paper's table in miniature: does self-data distillation recover what pruning removes?

    python bench/quality.py            # sweep, 4 blocks, 6 blocks; resumable; ~2-3 h on 2 cores
    python bench/quality.py --smoke    # the same machinery on a tiny random model, in a minute (CI)

It drives the recipe machinery, nothing else: three recipes under ``bench/`` run through
``hubsdd.run`` (hubsdd.runner) in one run directory, so what one recipe computed another reuses (the base model,
the distilled data, every trained variant and every evaluated model are cached by what decides
them), and an interrupted run resumes where it stopped, across sessions:

1. ``quality-sweep.yaml``: each recovery method (sft, sdd, kd, sdd-kd) of SmolLM2-135M-Instruct
   with 4 of 30 blocks removed, trained at three learning rates on the same 256 GSM8K examples
   with the same budget, scored on *dev* items (the test items' seed with an offset, so disjoint).
   The best rate per method on the dev average is the one the next two recipes use;
2. ``quality-4.yaml``: base, pruned, the four methods at their best rates and the SLERP merge of
   sdd with sft, on the *test* items of six log-likelihood tasks (0-shot), with fidelity to the
   base (top-1 agreement, KL, greedy draft acceptance);
3. ``quality-6.yaml``: the same at 6 of 30 blocks for pruned, sft, sdd and kd.

Training data never overlaps evaluation data: the training examples are GSM8K problems and the
six tasks are other datasets (GSM8K is not evaluated here); the fidelity prompts come from the
evaluated items; dev and test items are disjoint slices of one seeded order. The script checks all
three and fails if any overlap.

Outputs: ``bench/results/quality.json`` (the figures, every difference with its paired 95%
interval) and ``bench/results/quality.md`` (the tables for BENCHMARKS.md). Figures are percent
(points) except KL (nats per token). The machine's fp32 GFLOPS is measured and printed beside the
wall time, because 2-core machines here differ up to 4x.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import yaml

# Library progress bars read this when tqdm is imported; the benchmark prints its own progress.
os.environ.setdefault("TQDM_DISABLE", "1")

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

METHODS = ("sft", "sdd", "kd", "sdd-kd")
RECIPES = {"sweep": BENCH / "quality-sweep.yaml", "4": BENCH / "quality-4.yaml", "6": BENCH / "quality-6.yaml"}
# The differences the paper's question is about, as (a, b) for a - b.
NAMED_PAIRS = [("sdd", "sft"), ("kd", "sft"), ("sdd-kd", "sdd"), ("sdd-kd", "kd"), ("sdd-kd", "sft"), ("kd", "sdd"), ("merge", "sdd"),
               ("merge", "sft")]


# --------------------------------------------------------------------------- recipes


def load_dict(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def smoke(d: dict, runs_dir: Path, which: str) -> dict:
    """A recipe shrunk to seconds: a tiny random 8-layer base, a few items, one step."""
    from hubsdd.testing.tiny import save_tiny

    d = copy.deepcopy(d)
    base = runs_dir / "smoke-base"
    if not (base / "config.json").exists():
        save_tiny(base, layers=8, seed=0, hidden_size=64, intermediate_size=128, max_position_embeddings=4096)
    d["base"] = {"model": d["base"]["model"], "path": str(base), "license": d["base"].get("license")}
    d["prune"]["blocks"] = {4: 2, 6: 3}[d["prune"]["blocks"]]
    d["prune"]["calibration"].update(samples=8, max_length=32, batch_size=4)
    d["distill"]["data"]["limit"] = 6
    d["distill"]["generation"].update(max_new_tokens=12, batch_size=4)
    d["distill"]["shard_size"] = 6
    ft = d["finetune"]
    ft.update(max_steps=1, batch_size=2, max_length=256)
    ft["lora"]["r"] = 4
    if which == "sweep":  # two rates per method
        ft["variants"] = {k: v for k, v in ft["variants"].items() if not k.endswith("-lr1e-4")}
    ev = d["evaluate"]
    # the machinery, not the figures: three quick tasks (MMLU's 57 subject tasks take lm-eval a while to build)
    ev["tasks"] = ["arc_easy", "winogrande"] + ([] if which == "sweep" else ["arc_challenge"])
    ev["num_fewshot"] = {t: 0 for t in ev["tasks"]}
    ev["limit"] = 3 if which == "sweep" else 5
    if ev.get("offset"):
        ev["offset"] = 5
    ev["fidelity"].update(prompts=2, max_new_tokens=4)
    return d


def to_recipe(d: dict, runs_dir: Path) -> Any:
    from hubsdd.recipe import parse_recipe

    d = dict(d, runs_dir=str(runs_dir))
    return parse_recipe(yaml.safe_dump(d, sort_keys=False), "bench recipe", ROOT / "bench" / "recipe.yaml")


def with_learning_rates(d: dict, rates: dict[str, float]) -> tuple[dict, dict[str, dict]]:
    """The recipe with each method's variant at the sweep's best rate; and what changed."""
    d = copy.deepcopy(d)
    notes = {}
    for name, v in d["finetune"]["variants"].items():
        if name in rates:
            notes[name] = {"recipe": v.get("learning_rate"), "sweep_best": rates[name]}
            v["learning_rate"] = rates[name]
    return d, notes


# --------------------------------------------------------------------------- running


class Ledger:
    """Seconds of every stage run, keyed by stage fingerprint (work reused is counted once),
    kept beside the run so that resumed invocations add up."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.data = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            self.data = {"stages": {}, "invocations": []}

    def record(self, recipe: str, results: dict) -> None:
        for name, res in results.items():
            self.data["stages"].setdefault(res.fingerprint, {"recipe": recipe, "stage": name,
                                                             "seconds": res.data.get("seconds", 0.0)})
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=1))

    @property
    def seconds(self) -> float:
        return sum(s["seconds"] for s in self.data["stages"].values())


def run_recipe(label: str, d: dict, runs_dir: Path, ledger: Ledger) -> dict:
    from hubsdd import runner

    started = time.time()

    def show(stage: str, status: str, seconds: float | None) -> None:
        if status in ("running", "done"):
            extra = f" ({seconds:.0f} s)" if seconds is not None else ""
            print(f"  [{label}] {stage} {status}{extra}", flush=True)

    results = runner.run(to_recipe(d, runs_dir), on_event=show)
    ledger.record(label, results)
    print(f"  [{label}] finished in {time.time() - started:.0f} s", flush=True)
    return results


# --------------------------------------------------------------------------- collecting


def per_item(results: dict) -> tuple[dict, dict, list[str]]:
    """model -> task -> item -> score, task -> item -> chance, and the task names, from the
    evaluate stage's per-model results."""
    ev = results["evaluate"]
    scores, chance, tasks = {}, {}, []
    for model, rel in ev.outputs["results"].items():
        record = json.loads(ev.resolve(rel).read_text())
        tasks = list(record["tasks"])
        scores[model] = {t: record["tasks"][t]["item_scores"] for t in tasks}
        chance = {t: record["tasks"][t]["item_chance"] for t in tasks}
    return scores, chance, tasks


def pct(x: float | None) -> float | None:
    """A fraction in percent (points); undefined figures (a ratio over a base at chance) are None."""
    return None if x is None or x != x else round(100 * x, 2)


def ci(iv: list[float]) -> list[float | None]:
    return [pct(iv[0]), pct(iv[1])]


def value(iv: dict | None) -> float | None:
    """The value in % of an evidence interval, None where the evidence leaves it undefined."""
    return pct(iv["value"]) if iv else None


def interval(iv: dict | None) -> list[float | None]:
    return ci(iv["ci95"]) if iv else [None, None]


def collect(results: dict) -> tuple[dict, dict, dict]:
    """(models, paired, item ids) of one recipe: each model's figures in quality.json's schema,
    the paired differences, and the evaluated item ids per task."""
    from hubsdd.evaluate import stats

    m = results["evaluate"].metrics
    evid = m["evidence"]
    fid = m.get("fidelity") or {}
    models = {}
    for name, per_task in m["scores"].items():
        row = evid["models"][name]
        # margin retention is absent (or None) where the base is not significantly above chance
        out = {
            "tasks": {t: {"acc": pct(s["value"]), "stderr": pct(s["stderr"]),
                          **({"retention": value(row["tasks"][t].get("retention")),
                              "margin_retention": value(row["tasks"][t].get("margin_retention"))}
                             if row["tasks"][t].get("retention") else {})}
                      for t, s in per_task.items()},
            "average": pct(row["average"]["value"]), "average_ci95": ci(row["average"]["ci95"]),
            "retention": value(row.get("retention")), "retention_ci95": interval(row.get("retention")),
            "margin_retention": value(row.get("margin_retention")),
            "margin_retention_ci95": interval(row.get("margin_retention")),
        }
        if name == "base":
            out.update(acceptance=100.0, top1_agreement=100.0, kl=0.0)
        elif name in fid:
            f = fid[name]
            out.update(acceptance=pct(f["acceptance"]), top1_agreement=pct(f["top1_agreement"]), kl=round(f["kl"], 5))
        models[name] = out

    scores, chance, tasks = per_item(results)
    boot = stats.Bootstrap({**scores, "__chance__": chance})
    names = list(scores)
    pairs = [(a, b) for a, b in NAMED_PAIRS if a in names and b in names]
    pairs += [(v, ref) for ref in ("pruned", "base") for v in names if v not in ("base", ref) and ref in names]
    paired = {}
    for a, b in pairs:
        d = boot.difference(a, b)
        if "average" in evid.get("base_at_chance", []):
            # a ratio over a base margin that is not above chance is noise over noise
            margin_diff, margin_ci = None, [None, None]
        else:
            ma = boot.retention(a, "base", "__chance__")
            mb = boot.retention(b, "base", "__chance__")
            # the margin-retention difference, resampled jointly (same items for a, b and base)
            margin = _margin_difference(boot, a, b)
            margin_diff, margin_ci = pct(ma.value - mb.value), [pct(margin.low), pct(margin.high)]
        paired[f"{a}-{b}"] = {
            "a": a, "b": b,
            "diff": pct(d.value), "ci95": [pct(d.low), pct(d.high)],
            "significant": d.significant,
            "margin_retention_diff": margin_diff,
            "margin_retention_ci95": margin_ci,
            "tasks": {t: {"diff": pct(x.value), "ci95": [pct(x.low), pct(x.high)], "significant": x.significant}
                      for t in tasks for x in [boot.difference(a, b, t)]},
        }
    items = {t: m["tasks"][t]["items"] for t in tasks}
    return models, paired, items


def _margin_difference(boot: Any, a: str, b: str) -> Any:
    import numpy as np

    from hubsdd.evaluate import stats

    floor = boot._avg("__chance__")
    base = boot._avg("base") - floor
    with np.errstate(divide="ignore", invalid="ignore"):
        samples = (boot._avg(a) - floor) / base - (boot._avg(b) - floor) / base
    return stats._interval(samples)


def sweep_choice(results: dict) -> tuple[dict[str, float], list[dict]]:
    """Each method's learning rate with the best dev average, and the whole sweep table."""
    m = results["evaluate"].metrics
    evid = m["evidence"]
    fid = m.get("fidelity") or {}
    variants = results["finetune"].outputs["variants"]
    rows = []
    for name, v in variants.items():
        method = re.sub(r"-lr[0-9e.-]+$", "", name)
        row = evid["models"][name]
        rows.append({"variant": name, "method": method, "learning_rate": v["learning_rate"],
                     "dev_average": pct(row["average"]["value"]), "dev_average_ci95": ci(row["average"]["ci95"]),
                     "dev_vs_pruned": None, "kl": round(fid[name]["kl"], 5) if name in fid else None,
                     "train_loss_last": results["finetune"].metrics["variants"][name]["train_loss_last"]})
    for r in rows:
        for p in evid["paired"]:
            if p["a"] == r["variant"] and p["b"] == "pruned":
                r["dev_vs_pruned"] = {"diff": round(100 * p["diff"]["value"], 2), "ci95": ci(p["diff"]["ci95"]),
                                      "significant": p["significant"]}
    best = {}
    for method in METHODS:
        cands = [r for r in rows if r["method"] == method]
        if cands:
            top = max(cands, key=lambda r: (r["dev_average"], -r["learning_rate"]))
            best[method] = top["learning_rate"]
            top["chosen"] = True
    for name in ("base", "pruned"):
        if name in evid["models"]:
            rows.append({"variant": name, "method": name, "learning_rate": None,
                         "dev_average": pct(evid["models"][name]["average"]["value"]),
                         "dev_average_ci95": ci(evid["models"][name]["average"]["ci95"]),
                         "kl": round(fid[name]["kl"], 5) if name in fid else None})
    return best, rows


def check_disjoint(results_by_recipe: dict[str, dict], recipes: dict[str, dict]) -> dict:
    """Fail unless training data, evaluation items and fidelity prompts are disjoint."""
    import pyarrow.parquet as pq

    from hubsdd.evaluate.offline import prepare_offline_tasks

    some = next(iter(results_by_recipe.values()))
    train = {_norm(q) for q in pq.read_table(some["distill"].path("data"), columns=["instruction"])
             .column("instruction").to_pylist()}
    seen: dict[str, dict[str, set]] = {}
    report = {"training_examples": len(train), "overlapping_items": 0, "dev_test_shared_items": 0}
    import tempfile

    for label, res in results_by_recipe.items():
        section = recipes[label]["evaluate"]
        m = res["evaluate"].metrics
        names = list(m["tasks"])
        with tempfile.TemporaryDirectory() as tmp:
            prepared = prepare_offline_tasks(names, {t: m["tasks"][t]["num_fewshot"] for t in names},
                                                section.get("limit"), section.get("seed", 1234), Path(tmp),
                                                section.get("offset", 0))
        for t, p in prepared.items():
            seen.setdefault(label, {})[t] = set(p.items)
            texts = [_norm(" ".join(str(v) for v in d.values() if isinstance(v, str))) for d in p.docs]
            hits = sum(1 for text in texts for q in train if q and q in text)
            report["overlapping_items"] += hits
    if "sweep" in seen:
        for label in seen:
            if label != "sweep":
                for t, ids in seen[label].items():
                    report["dev_test_shared_items"] += len(ids & seen["sweep"].get(t, set()))
    if report["overlapping_items"] or report["dev_test_shared_items"]:
        raise SystemExit(f"training/evaluation overlap found: {report}")
    return report


def _norm(text: str) -> str:
    return " ".join(str(text).lower().split())


# --------------------------------------------------------------------------- report


def fmt(x: Any, nd: int = 1) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def fmt_ci(v: Any, iv: Any, nd: int = 1) -> str:
    return "–" if v is None or None in iv else f"{v:.{nd}f} ({iv[0]:.{nd}f}–{iv[1]:.{nd}f})"


def signed(v: float | None) -> str:
    return "–" if v is None else "0.0" if round(v, 1) == 0 else f"{v:+.1f}"


def markdown(out: dict) -> str:
    lines = [f"Command: `{out['command']}`; {out['wall_seconds'] / 60:.0f} min of stage time on a machine whose fp32 "
             f"linears reach {out['gflops']:.0f} GFLOPS (`bench/cpu_linear.py`, {out['gflops_detail']['shape']}, "
             f"2 threads; MKL {out['gflops_detail']['mkl']:.0f}, oneDNN {out['gflops_detail']['onednn']:.0f}).", ""]
    for blocks, models in out["blocks"].items():
        tasks = list(next(iter(models.values()))["tasks"])
        items = out["items"][blocks]
        lines += [f"### {blocks} of 30 blocks removed", "",
                  "Items per task: " + ", ".join(f"{t} {n}" for t, n in items.items()) + ". Accuracy in % ± standard "
                  "error; average, retention and margin retention with 95% intervals (paired bootstrap over items).",
                  "", "| model | " + " | ".join(tasks) + " | average | retention | margin retention | top-1 agr. | "
                  "KL (nats) | acceptance |",
                  "|---|" + "---:|" * (len(tasks) + 6)]
        for name, mm in models.items():
            cells = [f"{fmt(mm['tasks'][t]['acc'])} ± {fmt(mm['tasks'][t]['stderr'])}" for t in tasks]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {fmt_ci(mm['average'], mm['average_ci95'])} | "
                         f"{fmt_ci(mm['retention'], mm['retention_ci95'])} | "
                         f"{fmt_ci(mm['margin_retention'], mm['margin_retention_ci95'])} | "
                         f"{fmt(mm.get('top1_agreement'))} | {fmt(mm.get('kl'), 3)} | {fmt(mm.get('acceptance'))} |")
        lines += ["", "| difference (a − b) | average, points (95% CI) | significant | margin retention, points "
                  "(95% CI) |", "|---|---:|---|---:|"]
        for key, p in out["paired"][blocks].items():
            lines.append(f"| {p['a']} − {p['b']} | {signed(p['diff'])} ({signed(p['ci95'][0])} to "
                         f"{signed(p['ci95'][1])}) | {'yes' if p['significant'] else 'no'} | "
                         f"{signed(p['margin_retention_diff'])} ({signed(p['margin_retention_ci95'][0])} to "
                         f"{signed(p['margin_retention_ci95'][1])}) |")
        lines.append("")
    if out.get("sweep"):
        lines += ["### Learning-rate sweep (4 blocks, dev items)", "",
                  "| variant | learning rate | dev average (95% CI) | vs pruned (95% CI) | KL (nats) | last train loss |"
                  " chosen |", "|---|---:|---:|---:|---:|---:|---|"]
        for r in out["sweep"]:
            vs = r.get("dev_vs_pruned")
            vs_txt = f"{signed(vs['diff'])} ({signed(vs['ci95'][0])} to {signed(vs['ci95'][1])})" if vs else "–"
            lines.append(f"| {r['variant']} | {r['learning_rate'] if r['learning_rate'] else '–'} | "
                         f"{fmt_ci(r['dev_average'], r['dev_average_ci95'])} | {vs_txt} | {fmt(r.get('kl'), 3)} | "
                         f"{fmt(r.get('train_loss_last'), 3)} | {'**yes**' if r.get('chosen') else ''} |")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny random model, a few items, one step (CI)")
    parser.add_argument("--runs-dir", type=Path, default=None,
                        help="where the run lives (default: runs/; runs/quality-smoke for --smoke)")
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default: bench/results/quality.json)")
    parser.add_argument("--blocks", default="4,6", help="which block counts to run after the sweep")
    args = parser.parse_args(argv)

    import torch

    from cpu_linear import measure_gflops
    from hubsdd.models import set_threads

    set_threads()
    runs_dir = (args.runs_dir or ROOT / ("runs/quality-smoke" if args.smoke else "runs")).resolve()
    out_path = args.out or (BENCH / "results" / ("quality-smoke.json" if args.smoke else "quality.json"))
    gflops = measure_gflops()
    print(f"fp32 linears on this machine: {gflops['best']:.0f} GFLOPS (MKL {gflops['mkl']:.0f}, "
          f"oneDNN {gflops['onednn']:.0f}), {torch.get_num_threads()} threads", flush=True)
    ledger = Ledger(runs_dir / "quality-ledger.json")
    invoked = time.time()

    recipes = {k: load_dict(p) for k, p in RECIPES.items()}
    if args.smoke:
        runs_dir.mkdir(parents=True, exist_ok=True)
        recipes = {k: smoke(d, runs_dir, k) for k, d in recipes.items()}

    print("1. learning-rate sweep (dev items)", flush=True)
    sweep = run_recipe("sweep", recipes["sweep"], runs_dir, ledger)
    best, sweep_rows = sweep_choice(sweep)
    print("   best learning rate per method: " + ", ".join(f"{k} {v:g}" for k, v in best.items()), flush=True)

    results: dict[str, dict] = {"sweep": sweep}
    effective: dict[str, dict] = {}
    lr_notes: dict[str, dict] = {}
    out: dict[str, Any] = {"blocks": {}, "paired": {}, "items": {}}
    for blocks in [b for b in args.blocks.split(",") if b]:
        d, notes = with_learning_rates(recipes[blocks], best)
        changed = {k: v for k, v in notes.items() if v["recipe"] != v["sweep_best"]}
        if changed:
            print(f"   note: bench/quality-{blocks}.yaml's rates differ from the sweep's, using the sweep's: {changed}")
        lr_notes[blocks] = notes
        effective[blocks] = d
        print(f"2. {blocks} of 30 blocks", flush=True)
        res = run_recipe(blocks, d, runs_dir, ledger)
        results[blocks] = res
        models, paired, items = collect(res)
        out["blocks"][blocks] = models
        out["paired"][blocks] = paired
        out["items"][blocks] = items

    overlap = check_disjoint({k: v for k, v in results.items()},
                             {"sweep": recipes["sweep"], **effective})
    argv_used = sys.argv[1:] if argv is None else argv
    out.update(
        wall_seconds=round(ledger.seconds, 1),
        wall_seconds_this_invocation=round(time.time() - invoked, 1),
        gflops=gflops["best"], gflops_detail=gflops,
        command="python bench/quality.py" + "".join(" " + shlex.quote(a) for a in argv_used),
        learning_rates={"chosen": best, "by_recipe": lr_notes},
        sweep=sweep_rows,
        disjoint=overlap,
        smoke=args.smoke,
        torch_threads=torch.get_num_threads(),
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(out, indent=1) + "\n")
    md = markdown(out)
    out_path.with_suffix(".md").write_text(md + "\n")
    print("\n" + md)
    print(f"\nwrote {out_path} and {out_path.with_suffix('.md')}; stage time {ledger.seconds / 60:.1f} min at "
          f"{gflops['best']:.0f} GFLOPS")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
