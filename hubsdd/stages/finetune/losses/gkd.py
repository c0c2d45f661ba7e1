"""``loss: gkd``: on-policy distillation (Agarwal et al. 2024). On a ``finetune.gkd.lmbda`` share of
the batches the student samples the responses and the base model scores them; on the others the
dataset's responses are used (TRL's GKDTrainer with lmbda > 0). The teacher always runs live."""

from __future__ import annotations

from . import LossPlan, LossRequest, distillation_config, response_trainers


def plan(request: LossRequest) -> LossPlan:
    settings = request.section.gkd
    _, gkd_trainer = response_trainers()
    teacher = request.load_teacher()
    # The loss still reads both models' logits at temperature 1; `temperature` is the sampling's.
    config_class, config = distillation_config(beta=settings.beta, lmbda=settings.lmbda,
                                               temperature=settings.temperature,
                                               max_new_tokens=settings.max_new_tokens)
    return LossPlan(trainer_class=gkd_trainer, trainer_kwargs={"teacher_model": teacher}, config_class=config_class,
                    config=config, messages=True, metrics={"teacher_logits": "live"},
                    after_training=lambda trainer: {"on_policy_batches": getattr(trainer, "on_policy_batches", 0)},
                    description="on-policy distillation from the base model (it scored the model's own responses)")
