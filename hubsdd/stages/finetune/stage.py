"""Fine-tune the pruned model on the distilled data (SDD) and, as the baseline, on the original (SFT).

Every variant in ``finetune.variants`` trains the same pruned checkpoint with the same
hyperparameters and seed; only the training responses differ (``selected`` for ``distilled``,
``original`` for ``original``), so the comparison the paper makes (SDD vs SFT) is fair.

Training uses TRL's ``SFTTrainer`` on the prompt/completion format, so the loss covers the
response only: SmolLM2's chat template (and many others) has no ``{% generation %}`` markers, which
rules out ``assistant_only_loss``. LoRA (PEFT) is the default; the adapters are merged into the
weights before saving, so the published checkpoint is a plain ``transformers`` model (no adapter
files, no LoRA modules, ``use_cache: true``). ``method: full`` trains every weight instead.

Recovery methods: a variant's ``data`` is ``distilled`` (the teacher's rewrites) or ``original``,
and its ``loss`` is ``ce`` (cross-entropy on the response tokens, TRL's ``SFTTrainer``) or ``kd``
(logit distillation from the unpruned base model on the same tokens: TRL's ``GKDTrainer`` with
``lmbda=0``, i.e. on the fixed dataset, forward KL by default, the Minitron recipe for
depth-pruned models). ``sft``/``sdd``/``kd``/``sdd-kd`` are the four combinations. ``loss: gkd``
is on-policy distillation: on a ``finetune.gkd.lmbda`` share of the batches the student samples the
responses itself and the base model scores them (``GKDTrainer`` with ``lmbda > 0``). ``data:
accepted`` trains on the accepted rewrites only (rejected rows dropped rather than falling back to
the original). Each variant may set its own learning rate; everything else (examples, steps, LoRA,
seed) is shared. Each loss is a module of :mod:`.losses` (a registry: an installed package adds its
own through the entry-point group ``hubsdd.recovery_losses``); this module trains whatever trainer
the loss's plan names.

Resume: each variant is trained in the run's cache under a key of what decides its weights
(:func:`variant_key`) and leaves ``model/`` and then ``result.json`` (written last); a finished
variant is never retrained: not after a kill, not when other variants are added to the recipe.
The variant being trained when a kill came resumes from its last Trainer checkpoint
(``finetune.checkpoint_steps``; :mod:`hubsdd.stages.finetune.trainer_checkpoints`) and ends as an uninterrupted
run would have.

Multi-GPU (data parallel, one process per GPU) goes through ``accelerate``::

    hubsdd run recipe.yaml --until distill          # base, prune, distill (single process)
    accelerate launch --num_processes 8 -m hubsdd.pipeline.launch recipe.yaml
    hubsdd run recipe.yaml                          # finetune is now cached; merge, evaluate, card

``python -m hubsdd.pipeline.launch`` trains the variants on every rank (DDP, handled by the Trainer;
``batch_size`` is per GPU, the effective batch is ``batch_size x gradient_accumulation_steps x
GPUs``), the main process saves them into the stage's work folder, then installs the finished stage
exactly as ``hubsdd run --until finetune`` would. DDP keeps a full copy of the model per GPU;
``finetune.distributed.strategy: fsdp`` shards it (``hubsdd launch-command`` prints the command,
:mod:`hubsdd.pipeline.launch_commands`), and :func:`hubsdd.stages.finetune.training.whole_model` gathers it onto the main process for
the LoRA merge and the save. DeepSpeed is refused (:func:`refuse_sharded_training`). A single process that sees several GPUs trains on one
(:func:`hubsdd.stages.finetune.training.one_gpu_per_process`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

from ...core import progress, worklog
from . import trainer_checkpoints
from ...core.errors import StageError
from ...core.figures import figure
from ...core.recipe import FinetuneSection
from ...core.files import atomic_write_json, link_or_copy
from ...core.outputs import FinetuneMetrics, FinetuneOutputs
from ...core.plugins import RECOVERY_LOSSES
from ...core.stage_io import StageContext, StageOutput
from .losses import LossRequest, loss_metrics, recovery_plan
from .training import fsdp_enabled, lora_config, refuse_sharded_training, trainer_config, whole_model
from .variants import (RESULT_FILE, finished_result, mean_logged_loss, mixed_bf16, rows_kept_by_trainer,  # noqa: F401
                       sized_section, teacher_logits_dir, tokens_per_second, training_dataset, training_processes,
                       variant_dir, variant_key)

log = logging.getLogger("hubsdd.finetune")

PLOT_FILE = "loss_curve.png"


# --------------------------------------------------------------------------- training


def _lora_modules(model: Any) -> list[str]:
    """Names of LoRA submodules (lora_A, lora_B, lora_dropout, ...) still in a model."""
    return [n for n, _ in model.named_modules() if "lora_" in n]


def train_variant(ctx: StageContext, name: str, *, is_main: bool = True) -> dict:
    """Train one variant into :func:`variant_dir` and return its result (metrics + log).

    Returns the stored result without training when this variant (same key) was trained before."""
    section: FinetuneSection = sized_section(ctx)
    variant = section.variants[name]
    key = variant_key(ctx, name)
    vdir = variant_dir(ctx, name)
    done = finished_result(vdir, key)
    if done is not None:
        log.info("finetune: %s already trained, reusing it", name)
        if is_main:  # checkpoints a kill left between result.json and their removal
            shutil.rmtree(vdir / "trainer", ignore_errors=True)
        return {**done, "variant": name}

    import torch
    from transformers import set_seed

    from ...core.models import (default_device, fast_cpu_frozen_linears, fast_cpu_linears, free_memory, load_model,
                         load_tokenizer, model_dtype, save_model, set_threads)

    refuse_sharded_training()  # before any work (a live teacher is checked when it is asked for)
    set_threads()
    base = ctx.recipe.base
    device, dtype = default_device(ctx.recipe), model_dtype(ctx.recipe)
    bf16 = mixed_bf16(section, dtype)
    cache_dir = teacher_logits_dir(ctx, name)  # kd only: the teacher's stored log-probabilities, if used
    learning_rate = variant.learning_rate or section.learning_rate
    model_dir = ctx.input("prune").path("model_dir")
    tokenizer = load_tokenizer(model_dir, trust_remote_code=base.trust_remote_code)
    if not getattr(tokenizer, "chat_template", None):
        raise StageError(f"finetune: the tokenizer in {model_dir} has no chat template",
                         fix="fine-tune an instruct/chat model, or add a chat_template to its tokenizer_config.json")
    # Same seed for every variant: identical LoRA initialization and data order, only the data differ.
    set_seed(section.seed)
    # On the CPU: the Trainer moves it to the run's device (each process's own under accelerate).
    model = load_model(model_dir, dtype=dtype, trust_remote_code=base.trust_remote_code,
                       allow_pickle=base.allow_pickle)
    model.train()
    stored = None
    if cache_dir is not None:
        # The teacher's stored log-probabilities, checked against this run's teacher and tokenizer.
        from ...core import teacher_logits as tl

        stored = tl.TeacherLogits(cache_dir, teacher=tl.teacher_identity(ctx.input("base")),
                                  tokenizer=tl.tokenizer_identity(tokenizer), max_length=section.max_length,
                                  where=f"finetune: {name}", tokenizer_label=tl.tokenizer_name(tokenizer))

    loaded: dict[str, Any] = {}

    def load_teacher() -> Any:
        # The teacher is the unpruned base model this run already has (same tokenizer and vocabulary).
        if "teacher" not in loaded:
            refuse_sharded_training(live_teacher=True)  # before it is loaded
            teacher = load_model(ctx.input("base").path("model_dir"), dtype=dtype,
                                 trust_remote_code=base.trust_remote_code, allow_pickle=base.allow_pickle)
            loaded["teacher"] = teacher.eval().requires_grad_(False)
        return loaded["teacher"]

    plan = recovery_plan(LossRequest(name=name, variant=variant, section=section, load_teacher=load_teacher,
                                     teacher_logits=stored, tokenizer=tokenizer))
    teacher = loaded.pop("teacher", None)
    dataset, dropped = training_dataset(ctx.input("distill").path("data"), variant.data, messages=plan.messages)
    trainer_dir = vdir / "trainer"
    resume = _resume_point(trainer_dir, is_main)
    started = time.time()
    trainer = plan.trainer_class(
        model=model,
        args=trainer_config(section, trainer_dir, learning_rate=learning_rate, device=device, bf16=bf16,
                            config_class=plan.config_class, extra=plan.config, messages=plan.messages),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(section) if section.method == "lora" else None,
        **plan.trainer_kwargs,
    )
    if not log.isEnabledFor(logging.DEBUG):
        # The Trainer prints a dict per logging step to stdout; the losses go to train_log.json and
        # the card instead (`hubsdd run -v` keeps the Trainer's own output).
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
    refuse_sharded_training(trainer, live_teacher=teacher is not None)
    trained_rows = rows_kept_by_trainer(trainer, len(dataset), name, section.max_length)
    trainer.add_callback(trainer_checkpoints.completion_callback())
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.model.parameters())
    # On CPU the frozen weights (all of them under LoRA) and the teacher run through oneDNN.
    per_step = section.batch_size * section.gradient_accumulation_steps
    steps = section.max_steps if section.max_steps > 0 else math.ceil(trained_rows / per_step * section.epochs)
    with fast_cpu_frozen_linears(trainer.model), \
            (fast_cpu_linears(teacher) if teacher is not None else contextlib.nullcontext()), \
            progress.task(f"training {name}", total=steps, unit="step") as bar:
        trainer.add_callback(progress.CallbackAdapter.build(bar))
        if resume is not None:
            log.info("finetune: %s resumes from %s", name, resume.name)
            bar.advance(trainer_checkpoints.resumed_step(resume))
        trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    seconds = time.time() - started
    # The log holds the steps before a resume too (restored from the checkpoint).
    history = [{"step": int(e["step"]), "loss": float(e["loss"])} for e in trainer.state.log_history
               if "loss" in e and "step" in e]
    reported = {**plan.metrics, **(plan.after_training(trainer) if plan.after_training else {})}
    result = {
        "key": key,
        "variant": name,
        "data": variant.data,
        "loss": variant.loss,
        "loss_description": plan.description,
        "metrics": {
            "loss": variant.loss,
            "learning_rate": learning_rate,
            "train_loss_first": history[0]["loss"] if history else None,
            "train_loss_last": history[-1]["loss"] if history else None,
            "train_loss_mean": mean_logged_loss(history),
            "steps": int(trainer.state.global_step),
            "epochs": round(float(trainer.state.epoch or 0.0), 4),
            "samples": trained_rows,
            "dropped_rows": dropped,
            "dropped_too_long": len(dataset) - trained_rows,
            "resumed_from_step": trainer_checkpoints.resumed_step(resume),
            "trainable_params": int(trainable),
            "total_params": int(total),
            "seconds": round(seconds, 3),
            "processes": training_processes(),
            "batch_size": section.batch_size,
            "gradient_accumulation_steps": section.gradient_accumulation_steps,
            **({"strategy": "fsdp"} if fsdp_enabled(trainer) else {}),
            "tokens_per_second": tokens_per_second(trainer, seconds),
            **loss_metrics(variant.loss, reported),
        },
        "log_history": history,
    }
    trainer.accelerator.wait_for_everyone()
    # Under FSDP every process takes part in gathering the weights onto the main one.
    final = whole_model(trainer, lambda: _unsharded(model_dir, section, dtype, base))
    if is_main:
        if section.method == "lora":
            final = final.merge_and_unload()
        left = _lora_modules(final)
        if left:
            raise StageError(f"finetune: {name}: LoRA modules left after merging ({left[:3]})",
                             fix="report this; it is a bug in hubsdd or peft")
        final.eval()
        with torch.no_grad():
            tmp = vdir / ".model-tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            save_model(final, tokenizer, tmp)
            shutil.rmtree(vdir / "model", ignore_errors=True)
            os.replace(tmp, vdir / "model")
        del final
        # result.json last: its presence is what says the variant is finished.
        atomic_write_json(vdir / RESULT_FILE, result)
        worklog.finished(f"finetune variant {name} {key[:12]}")
        # Only then the checkpoints: a kill in between finds the variant finished.
        shutil.rmtree(trainer_dir, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    # The next variant (or stage) loads its models into the memory these held.
    del trainer, model, teacher, plan  # the plan's trainer arguments may hold the teacher
    free_memory()
    return result


def _unsharded(model_dir: Path, section: FinetuneSection, dtype: str, base: Any) -> Any:
    """The pruned model (with the recipe's LoRA adapters) on the CPU, to load gathered FSDP weights into."""
    from ...core.models import load_model

    model = load_model(model_dir, dtype=dtype, trust_remote_code=base.trust_remote_code,
                       allow_pickle=base.allow_pickle)
    if section.method == "lora":
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(section))
    return model


def _resume_point(trainer_dir: Path, is_main: bool) -> Path | None:
    """The checkpoint a killed run of this variant left, if any (partial ones are deleted first)."""
    from accelerate import PartialState

    if is_main:
        for folder in trainer_checkpoints.discard_partial(trainer_dir):
            log.info("finetune: deleted %s, a checkpoint left unfinished by a kill", folder)
    PartialState().wait_for_everyone()
    return trainer_checkpoints.last_complete(trainer_dir)


def plot_losses(results: dict[str, dict], path: Path) -> None:
    with figure(path, figsize=(6.4, 4.0), dpi=120) as (_, ax):
        for name, res in results.items():
            hist = res["log_history"]
            if hist:
                ax.plot([h["step"] for h in hist], [h["loss"] for h in hist], label=f"{name} ({res['data']})",
                        marker="." if len(hist) < 40 else None)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss (completion tokens)")
        ax.set_title("Fine-tuning the pruned model")
        ax.grid(alpha=0.3)
        ax.legend()


def train_all(ctx: StageContext, *, is_main: bool = True) -> dict[str, dict]:
    section: FinetuneSection = ctx.section
    return {name: train_variant(ctx, name, is_main=is_main) for name in section.variants}


def run_finetune(ctx: StageContext) -> StageOutput:
    """Entry of the ``finetune`` stage."""
    section: FinetuneSection = ctx.section
    results = train_all(ctx)
    variants, metrics = {}, {}
    for name, res in results.items():
        dest = ctx.out_dir / name
        shutil.copytree(variant_dir(ctx, name) / "model", dest / "model", copy_function=link_or_copy)
        atomic_write_json(dest / "train_log.json", res["log_history"])
        v = section.variants[name]
        variants[name] = {"model_dir": f"{name}/model", "data": v.data, "loss": v.loss,
                          "learning_rate": v.learning_rate or section.learning_rate,
                          "train_log": f"{name}/train_log.json"}
        if v.loss not in RECOVERY_LOSSES.builtins:  # the card words the built-ins itself
            variants[name]["loss_description"] = res.get("loss_description") or f"the `{v.loss}` recovery loss"
        metrics[name] = res["metrics"]
    plot_losses(results, ctx.out_dir / PLOT_FILE)
    from ...core.models import model_dtype

    dtype = model_dtype(ctx.recipe)
    outputs = {
        "precision": f"{dtype} weights" + (", bf16 mixed precision" if mixed_bf16(section, dtype) else ""),
        "variants": variants,
        "plots": {"loss_curve": PLOT_FILE},
        "method": section.method,
        "kd": section.kd.model_dump(mode="json") if any(v.loss == "kd" for v in section.variants.values()) else None,
        "gkd": section.gkd.model_dump(mode="json") if any(v.loss == "gkd" for v in section.variants.values()) else None,
        "base_model_dir": str(ctx.input("prune").path("model_dir")),
        "data": str(ctx.input("distill").path("data")),
    }
    return StageOutput(outputs=FinetuneOutputs(**outputs), metrics=FinetuneMetrics(variants=metrics))
