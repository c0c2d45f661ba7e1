"""Angular distance (Gromov et al. 2024, "The Unreasonable Ineffectiveness of the Deeper Layers"):
remove the contiguous block l..l+n-1 whose input and output residual streams are closest,
d(l, n) = arccos(cos(h_l, h_{l+n})) / pi. Uses the shared pass only."""

from __future__ import annotations

from . import BlockChoice, ScoringInput


def score(inp: ScoringInput) -> BlockChoice:
    start, distance = inp.scores.best_block(inp.blocks)
    return BlockChoice(list(range(start, start + inp.blocks)), details={"distance": distance},
                       description="the contiguous block with the smallest angular distance between its input and "
                                   "output (Gromov et al. 2024)")
