"""Recovery losses: how a finetune variant learns from its data (``finetune.variants.<name>.loss``).

A recovery loss is a callable ``(LossRequest) -> LossPlan``. It is given the variant, the stage's
settings and what the stage can offer (the unpruned base model as a teacher, loaded only if asked
for; the teacher's stored top-k log-probabilities where the recipe keeps them; the stage's TRL
trainers, which compute logits only where a loss reads them), and it returns the trainer class to
train with, that trainer's extra arguments, and the TRL config class and settings. Everything else
(the data, LoRA, checkpoints and resume, merging, saving, the metrics) stays the stage's, so a loss
is a small module. Built-ins, one module each: :mod:`.ce` (cross-entropy: SFT and SDD), :mod:`.kd`
(logit distillation, from the live teacher or the stored cache), :mod:`.gkd` (on-policy
distillation). Others come from installed packages through the entry-point group
``hubsdd.recovery_losses`` (:data:`hubsdd.core.plugins.RECOVERY_LOSSES`)::

    [project.entry-points."hubsdd.recovery_losses"]
    smoothed-ce = "my_package.losses:smoothed_ce"

and a variant with ``loss: smoothed-ce`` (settings in ``loss_options``) trains with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class LossRequest:
    name: str  # the variant's name
    variant: Any  # its hubsdd.core.recipe.VariantSection (loss, loss_options, data, learning_rate)
    section: Any  # the stage's FinetuneSection, its batch sized to the device
    load_teacher: Callable[[], Any]  # the unpruned base model, frozen, in eval mode (loaded when called)
    teacher_logits: Any = None  # kd: the stored top-k teacher log-probabilities for this variant's
    #                             data (hubsdd.core.teacher_logits.TeacherLogits), when the recipe uses them
    tokenizer: Any = None


@dataclass
class LossPlan:
    trainer_class: type  # a TRL SFTTrainer (sub)class: built with model, args, train_dataset,
    #                      processing_class, peft_config and ``trainer_kwargs``
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)
    config_class: type | None = None  # TRL's SFTConfig (the default) or a subclass such as GKDConfig
    config: dict[str, Any] = field(default_factory=dict)  # its extra settings
    messages: bool = False  # rows as one ``messages`` list, the prompt masked by the trainer's own
    #                         collator (TRL's distillation trainers), instead of prompt/completion pairs
    metrics: dict[str, Any] = field(default_factory=dict)  # recorded with the variant's metrics
    after_training: Callable[[Any], dict[str, Any]] | None = None  # the trainer -> more metrics
    description: str = ""  # how the variant recovers, in words, for the model card


def response_trainers() -> tuple[type, type]:
    """The stage's SFTTrainer and GKDTrainer with logits only where the loss reads them (subclass
    these to keep that saving): see :func:`hubsdd.stages.finetune.training.trainer_classes`."""
    from ..training import trainer_classes

    return trainer_classes()


def distillation_config(*, beta: float, lmbda: float = 0.0, temperature: float = 1.0,
                        max_new_tokens: int | None = None) -> tuple[type, dict[str, Any]]:
    """TRL's GKDConfig and its settings for a distillation loss. ``lmbda`` 0: always the fixed
    dataset (off-policy KD); ``beta``: forward KL / JSD / reverse KL. TRL's loss reads the logits
    at temperature 1 (its ``temperature`` only affects sampling, which lmbda=0 never does). Dropout
    stays as configured, as for the CE variants."""
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # GKDTrainer lives in trl.experimental, knowingly
    from trl.experimental.gkd import GKDConfig

    extra: dict[str, Any] = dict(lmbda=lmbda, beta=beta, temperature=temperature, seq_kd=False, disable_dropout=False)
    if max_new_tokens is not None:
        extra["max_new_tokens"] = max_new_tokens
    return GKDConfig, extra


def recovery_plan(request: LossRequest) -> LossPlan:
    """The plan of the variant's recovery loss (built in, or from the entry-point group)."""
    from transformers import Trainer

    from ....core.errors import StageError
    from ....core.plugins import RECOVERY_LOSSES

    name = request.variant.loss
    plan = RECOVERY_LOSSES.load(name)(request)
    if not isinstance(plan, LossPlan) or not (isinstance(plan.trainer_class, type)
                                              and issubclass(plan.trainer_class, Trainer)):
        raise StageError(f"finetune: {request.name}: the recovery loss {name!r} returned {type(plan).__name__}, "
                         "not a LossPlan with a transformers Trainer class",
                         fix="fix the plug-in (hubsdd.stages.finetune.losses describes the interface), or pick "
                             "another `loss`")
    return plan


def loss_metrics(name: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """A loss's figures for the variant's metrics: the built-ins' have their own fields; a plug-in's
    go under ``loss_metrics``."""
    from ....core.plugins import RECOVERY_LOSSES

    if name in RECOVERY_LOSSES.builtins or not metrics:
        return dict(metrics)
    return {"loss_metrics": dict(metrics)}
