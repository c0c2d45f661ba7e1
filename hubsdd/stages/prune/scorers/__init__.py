"""Block scorers: which decoder layers the prune stage removes (``prune.method``).

A scorer is a callable ``(ScoringInput) -> BlockChoice``. It is given the model, the calibration
batches, the number of layers to remove and the scores of the stage's one shared pass (angular
distances and Block Influence, :class:`hubsdd.stages.prune.stage.BlockScores`, recorded whatever the method), and
returns the layers to remove, what extra forward passes it ran and, if it has one, a score per layer.

Built-ins, one module each: :mod:`.angular` (Gromov et al. 2024), :mod:`.block_influence`
(ShortGPT), :mod:`.perplexity` (Shortened LLaMA's PPL criterion). Others come from installed
packages through the entry-point group ``hubsdd.block_scorers`` (:data:`hubsdd.core.plugins.BLOCK_SCORERS`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ScoringInput:
    model: Any  # a transformers causal LM, in eval mode, on the stage's device
    batches: list[dict]  # calibration batches: input_ids, attention_mask (right-padded)
    blocks: int  # how many layers to remove
    scores: Any  # hubsdd.stages.prune.stage.BlockScores from the shared pass


@dataclass
class BlockChoice:
    layers: list[int]  # the layers to remove, sorted
    forward_passes: int = 0  # full forward passes run beyond the shared scoring pass
    layer_scores: list[float] | None = None  # the score per layer the choice was made by, if any
    description: str = ""  # one sentence on how the layers were chosen (for the card)
    details: dict[str, Any] = field(default_factory=dict)
