"""The paper's table in miniature: does self-data distillation recover what pruning removes?

    python bench/quality.py            # sweep, 4 blocks, 6 blocks; resumable; ~2-3 h on 2 cores
    python bench/quality.py --smoke    # the same machinery on a tiny random model, in a minute (CI)

It drives the recipe machinery, nothing else: three recipes under ``bench/`` run through
``hubsdd.run`` (hubsdd.pipeline.runner) in one run directory, so what one recipe computed another reuses (the base model,
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
import shlex
import sys
import time
from pathlib import Path
from typing import Any

# Library progress bars read this when tqdm is imported; the benchmark prints its own progress.
os.environ.setdefault("TQDM_DISABLE", "1")

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from recipe_bench import (  # noqa: E402  (shared with bench/regimes.py)
    Ledger, check_disjoint, collect, load_dict, run_recipe, sweep_choice, with_learning_rates,
)

RECIPES = {"sweep": BENCH / "quality-sweep.yaml", "4": BENCH / "quality-4.yaml", "6": BENCH / "quality-6.yaml"}


# --------------------------------------------------------------------------- recipes


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
    from hubsdd.core.models import set_threads

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
