"""``loss: kd``: logit distillation from the unpruned base model on the dataset's responses (forward
KL at ``finetune.kd.beta`` 0, the Minitron recipe for depth-pruned models). From the teacher's stored
top-k log-probabilities when the recipe keeps them (``finetune.kd.teacher_logits``), else from the
teacher run live at every step (TRL's GKDTrainer with lmbda=0)."""

from __future__ import annotations

from . import LossPlan, LossRequest, distillation_config, response_trainers

DESCRIPTION = "logit distillation from the base model"


def plan(request: LossRequest) -> LossPlan:
    beta = request.section.kd.beta
    stored = request.teacher_logits
    if stored is not None:
        from ..training import cached_kd_trainer_class

        return LossPlan(trainer_class=cached_kd_trainer_class(),
                        trainer_kwargs={"teacher_logits": stored, "beta": beta},
                        metrics={"teacher_logits": f"cache (top {stored.top_k})"}, description=DESCRIPTION)
    _, gkd_trainer = response_trainers()
    teacher = request.load_teacher()
    config_class, config = distillation_config(beta=beta)
    return LossPlan(trainer_class=gkd_trainer, trainer_kwargs={"teacher_model": teacher}, config_class=config_class,
                    config=config, messages=True, metrics={"teacher_logits": "live"},
                    description=DESCRIPTION)
