"""Block Influence (ShortGPT, Men et al. 2024): BI_i = 1 - cos(h_i, h_{i+1}); remove the n layers of
lowest influence, contiguous or not. Uses the shared pass only."""

from __future__ import annotations

import numpy as np

from . import BlockChoice, ScoringInput


def score(inp: ScoringInput) -> BlockChoice:
    bi = inp.scores.block_influence
    order = np.argsort(bi, kind="stable")
    return BlockChoice(sorted(int(i) for i in order[: inp.blocks]), layer_scores=[float(v) for v in bi],
                       description="the layers of lowest Block Influence (ShortGPT, Men et al. 2024)")
