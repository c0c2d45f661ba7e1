"""``loss: ce``: cross-entropy on the response tokens (SFT on the original data, SDD on the rewrites)."""

from __future__ import annotations

from . import LossPlan, LossRequest, response_trainers


def plan(request: LossRequest) -> LossPlan:
    sft_trainer, _ = response_trainers()
    return LossPlan(trainer_class=sft_trainer, description="cross-entropy on the response tokens")
