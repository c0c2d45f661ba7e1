"""The TRL trainers of the finetune stage: their configuration, their leaner losses, and the
guards that keep one recipe meaning one training run (one GPU per process, no sharded training).

:mod:`hubsdd.stages.finetune.stage` builds a trainer per variant from these; checkpoints and resume live in
:mod:`hubsdd.stages.finetune.trainer_checkpoints`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from . import trainer_checkpoints
from ...core.errors import StageError
from ...core.recipe import FinetuneSection

log = logging.getLogger("hubsdd.finetune")


def trainer_config(section: FinetuneSection, output_dir: Path, *, learning_rate: float | None = None,
                   device: str | None = None, bf16: bool | None = None, config_class: type | None = None,
                   extra: dict[str, Any] | None = None, messages: bool = False) -> Any:
    """TRL's SFTConfig, or the ``config_class`` a recovery loss asks for (GKDConfig for distillation,
    which extends it) with its ``extra`` settings: the same arguments either way, so the methods differ
    only in their loss. ``messages``: the trainer's collator masks the prompt itself (rows are one
    ``messages`` list), else only the completion is trained on. ``device``: the run's (default:
    :func:`hubsdd.core.models.default_device`); ``bf16``: mixed precision (default: the recipe's
    ``bf16``, else off)."""
    from trl import SFTConfig

    from ...core.models import default_device

    device = device or default_device()
    config_class = config_class or SFTConfig
    extra = dict(extra or {})
    # TRL defaults checkpointing to True; the recipe decides. transformers >= 5.2x renamed the argument.
    names = config_class.__dataclass_fields__
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    settings = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=section.batch_size,
        gradient_accumulation_steps=section.gradient_accumulation_steps,
        learning_rate=learning_rate or section.learning_rate,
        num_train_epochs=section.epochs,
        max_steps=section.max_steps,
        warmup_steps=section.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of total steps
        lr_scheduler_type=section.lr_scheduler,
        weight_decay=section.weight_decay,
        seed=section.seed,
        data_seed=section.seed,
        logging_steps=section.logging_steps,
        logging_first_step=True,
        bf16=bool(section.bf16 if bf16 is None else bf16),  # TRL defaults it to True
        use_cpu=device == "cpu",
        dataloader_pin_memory=device == "cuda",
        ddp_timeout=section.ddp_timeout,
        # Every parameter gets a gradient each step (LoRA adapters or the whole model): without this
        # DDP walks the autograd graph after every forward looking for unused ones, and warns.
        ddp_find_unused_parameters=False,
        max_length=section.max_length,
        completion_only_loss=not messages,
        packing=False,
        save_strategy="steps" if section.checkpoint_steps > 0 else "no",
        **({"save_steps": section.checkpoint_steps} if section.checkpoint_steps > 0 else {}),
        save_total_limit=trainer_checkpoints.KEPT,
        report_to="none",
        include_num_input_tokens_seen="non_padding",  # training tokens/s in the stage's metrics
        dataloader_num_workers=0,
    )
    settings[checkpointing] = section.gradient_checkpointing
    taken = sorted(set(extra) & set(settings))
    if taken:  # what the recipe sets (and the variant's cache key holds) is not a loss's to change
        raise StageError(f"finetune: the recovery loss sets {taken}, which the recipe's finetune section decides",
                         fix="set them in the recipe's finetune section; a loss's own settings go in loss_options")
    config = config_class(**settings, **extra)
    one_gpu_per_process(config)
    return config


def one_gpu_per_process(config: Any) -> None:
    """Train one process on one GPU. A single process that sees several GPUs would otherwise be
    wrapped by the Trainer in ``nn.DataParallel`` over all of them, multiplying the effective
    batch by their number while the stage's fingerprint (and the card) says otherwise."""
    gpus = config.n_gpu  # > 1 only outside distributed training
    if gpus > 1:
        log.warning("finetune: this process sees %d GPUs and trains on one of them, as the recipe's batch size "
                    "assumes; to train data-parallel on all of them run `accelerate launch --num_processes %d "
                    "-m hubsdd.pipeline.launch <recipe>` (README, \"GPUs, several GPUs, vLLM\")", gpus, gpus)
        config._n_gpu = 1


def fsdp_enabled(trainer: Any = None) -> bool:
    """Whether this process trains under accelerate's FSDP plugin (``accelerate launch --use_fsdp``).
    Note: accelerate 1.15 applies FSDP only to GPU processes; on the CPU it trains DDP instead."""
    if trainer is not None:
        return bool(getattr(trainer, "is_fsdp_enabled", False))
    return os.environ.get("ACCELERATE_USE_FSDP", "false").strip().lower() in ("1", "true", "yes")


def refuse_sharded_training(trainer: Any = None, *, live_teacher: bool = False) -> None:
    """DeepSpeed is refused (its ZeRO-3 weights are not gathered here for the LoRA merge and the
    save); FSDP is supported (:func:`whole_model` gathers the weights onto the main process) except
    with a live KD teacher, which accelerate would shard as well: untested, so refused, naming the fix."""
    sharded = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").strip().lower() in ("1", "true", "yes")
    if trainer is not None:
        sharded = sharded or bool(getattr(trainer, "is_deepspeed_enabled", False))
    if sharded:
        raise StageError(
            "finetune: accelerate is configured for DeepSpeed (ACCELERATE_USE_DEEPSPEED), which hubsdd does not "
            "support: merging the LoRA adapters and saving each variant need the whole model in one process",
            fix="use FSDP instead (`finetune.distributed.strategy: fsdp`, then `hubsdd launch-command recipe.yaml`), "
                "or train data-parallel (strategy: ddp)")
    if live_teacher and fsdp_enabled(trainer):
        raise StageError(
            "finetune: a `loss: kd`/`gkd` variant with a live teacher under FSDP is not supported (the teacher "
            "would be sharded with the student; untested)",
            fix="store the teacher's log-probabilities (distill.teacher_logits, finetune.kd.teacher_logits: cache) "
                "for kd, or use `finetune.distributed.strategy: ddp`")


def whole_model(trainer: Any, rebuild: Any) -> Any:
    """The trained model whole on the main process (None on the others), LoRA adapters not yet
    merged. Without FSDP: ``trainer.model``. Under FSDP every process must call this: the shards
    are gathered (a full state dict, in CPU memory, on rank 0) and loaded into ``rebuild()``, an
    unsharded model of the same structure (the pruned model with the same adapters)."""
    import torch.distributed as dist

    model = trainer.model
    if not fsdp_enabled(trainer):
        return model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.is_initialized() and dist.get_rank() != 0:
        return None
    whole = rebuild()
    missing, unexpected = whole.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied to the embeddings
    if missing or unexpected:
        raise StageError(f"finetune: the gathered FSDP state dict does not fit the model: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}", fix="report this; it is a bug in hubsdd")
    return whole


def lora_config(section: FinetuneSection) -> Any:
    from peft import LoraConfig

    lora = section.lora
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=lora.target_modules, bias="none", task_type="CAUSAL_LM")


def completion_positions(labels: Any) -> tuple[Any, Any]:
    """Which positions' logits are scored (those whose next token is a label) as a (batch, length)
    boolean mask, and those next tokens, flattened in the same row-major order."""
    import torch

    nxt = labels[:, 1:]
    scored = nxt != -100
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = scored
    return keep, nxt[scored]


def trainer_classes() -> tuple[type, type]:
    """TRL's SFTTrainer and GKDTrainer, with the logits computed only where the loss reads them.

    TRL computes logits over every position (prompt and padding too) and, for cross-entropy, runs
    a fused vocabulary kernel that on a CPU without Triton falls back to tiles in torch: measured on
    SmolLM2-26L at batch 8 (``bench/train_step.py``), 2.3x the time of the same loss on the
    response positions only. The losses here are TRL's own, on the same tokens: the negative
    log-likelihood normalised exactly as ``SFTTrainer`` does (by the tokens of the whole
    accumulated batch), and ``GKDTrainer.generalized_jsd_loss`` on the student's and teacher's
    logits. ``tests/test_finetune.py`` checks both against TRL's own ``compute_loss``."""
    import torch
    from trl import SFTTrainer

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # GKDTrainer lives in trl.experimental, knowingly
    from trl.experimental.gkd import GKDTrainer

    def scale(trainer: Any, loss: Any, num_items_in_batch: Any) -> Any:
        # As Trainer/SFTTrainer: num_items_in_batch counts every rank's tokens and DDP averages gradients.
        if trainer.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (trainer.accelerator.num_processes // trainer.get_tp_size())
        return loss

    class ResponseSFTTrainer(SFTTrainer):
        def compute_loss(self, model: Any, inputs: dict, return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            keep, targets = completion_positions(inputs["labels"])
            outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"),
                            logits_to_keep=keep, use_cache=False)
            nll = torch.nn.functional.cross_entropy(outputs.logits.float(), targets, reduction="sum")
            count = targets.numel() if num_items_in_batch is None else num_items_in_batch
            loss = scale(self, nll / torch.as_tensor(count).clamp(min=1), num_items_in_batch)
            return (loss, outputs) if return_outputs else loss

    class ResponseGKDTrainer(GKDTrainer):
        on_policy_batches = 0  # batches whose responses the student generated (lmbda > 0)
        _on_policy = False

        def generate_on_policy_outputs(self, model: Any, inputs: dict, generation_config: Any) -> Any:  # type: ignore[override]
            # TRL calls this (on self) for the lmbda share of batches; counted, and the loss of such a
            # batch is normalised by its own response tokens (see compute_loss).
            self.on_policy_batches += 1
            self._on_policy = True
            return GKDTrainer.generate_on_policy_outputs(model, inputs, generation_config)

        def compute_loss(self, model: Any, inputs: dict, return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            keep, targets = completion_positions(inputs["labels"])
            if self._on_policy:
                # The Trainer counted the dataset's response tokens before the student replaced them:
                # normalise by the generated ones (each micro-batch weighs 1 / accumulation steps).
                self._on_policy = False
                num_items_in_batch = torch.as_tensor(max(targets.numel(), 1) * self.args.gradient_accumulation_steps)
            kwargs = dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], logits_to_keep=keep,
                          use_cache=False)
            student = model(**kwargs)
            self.teacher_model.eval()
            with torch.no_grad():
                teacher = self.teacher_model(**kwargs)
            loss = self.generalized_jsd_loss(student_logits=student.logits, teacher_logits=teacher.logits,
                                             beta=self.beta, num_items_in_batch=num_items_in_batch)
            loss = scale(self, loss, num_items_in_batch)
            return (loss, student) if return_outputs else loss

    return ResponseSFTTrainer, ResponseGKDTrainer


def cached_kd_trainer_class() -> type:
    """TRL's SFTTrainer distilling from stored teacher log-probabilities
    (:mod:`hubsdd.core.teacher_logits`) instead of a teacher model: same batches, same positions, same
    normalisation as the live ``ResponseGKDTrainer``, the loss over the k stored tokens and the tail.
    Built with ``teacher_logits=`` (a :class:`hubsdd.core.teacher_logits.TeacherLogits`) and ``beta=``."""
    from ...core import teacher_logits as tl

    sft_trainer, _ = trainer_classes()

    class CachedKDTrainer(sft_trainer):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, teacher_logits: Any, beta: float = 0.0, **kwargs: Any) -> None:
            self.teacher_logits, self.beta = teacher_logits, beta
            super().__init__(*args, **kwargs)

        def compute_loss(self, model: Any, inputs: dict, return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            keep, _ = completion_positions(inputs["labels"])
            student = model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"),
                            logits_to_keep=keep, use_cache=False)
            ids, values, tail = self.teacher_logits.gather(inputs["input_ids"], inputs.get("attention_mask"), keep)
            loss = tl.topk_kd_loss(student.logits, ids, values, tail, beta=self.beta,
                                   num_items_in_batch=num_items_in_batch)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())
            return (loss, student) if return_outputs else loss

    return CachedKDTrainer
