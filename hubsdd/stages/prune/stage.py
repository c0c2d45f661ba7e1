"""Block scoring and layer surgery: the ``prune`` stage.

Scoring (one forward pass per calibration batch, ``output_hidden_states=True``):

* **angular** (Gromov et al. 2024, "The Unreasonable Ineffectiveness of the Deeper Layers"):
  d(l, n) = arccos(cos(h_l, h_{l+n})) / pi, where h_l is the residual stream entering layer l.
  Every (l, n) comes from the same pass: the cosine between every pair of layer boundaries is one
  small Gram matrix per token. The block l*..l*+n-1 with the smallest d(l*, n) is removed.
* **bi** (Block Influence, ShortGPT, Men et al. 2024): BI_i = 1 - cos(h_i, h_{i+1}); the n layers
  of lowest BI are removed, contiguous or not.

Both are recorded whatever ``prune.method`` is; the method (a block scorer, :mod:`hubsdd.stages.prune.scorers`:
``angular``, ``bi``, ``perplexity`` or one an installed package adds through the entry-point group
``hubsdd.block_scorers``) chooses the layers from them, or from passes of its own.

Hugging Face models return the final hidden state *after* the final norm as the last entry of
``hidden_states``; the distance to the raw output of the last layer is what the method wants, so
that one is captured with a forward hook instead.

Surgery (deleting the layers so that stock ``from_pretrained`` reloads the result, for any
architecture whose config can describe the kept layers) lives in :mod:`hubsdd.stages.prune.surgery`.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from ...core import progress
from ...core.errors import DataError
from ...core.figures import figure
from ...core.models import fast_cpu_linears
from ...core.outputs import PruneMetrics, PruneOutputs
from ...core.plugins import BLOCK_SCORERS
from .scorers import BlockChoice, ScoringInput
from ...core.stage_io import StageContext, StageOutput
from .surgery import check_prunable, decoder_layers, remove_layers

__all__ = ["BlockScores", "ScoreAccumulator", "check_prunable", "decoder_layers", "remove_layers", "run_prune",
           "score_blocks", "select_layers"]

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger("hubsdd.prune")

# --------------------------------------------------------------------------- scoring


@dataclass
class BlockScores:
    """Distances between layer boundaries, averaged over calibration tokens.

    ``angular[n - 1, l]`` is d(l, n) for block size n and start layer l (NaN where l + n > L).
    ``block_influence[i]`` is BI of layer i.
    """

    num_layers: int
    angular: np.ndarray
    block_influence: np.ndarray
    token_position: str
    samples: int = 0
    tokens: int = 0

    def best_block(self, n: int) -> tuple[int, float]:
        row = self.angular[n - 1]
        start = int(np.nanargmin(row))
        return start, float(row[start])


class ScoreAccumulator:
    """Sums angular distances and adjacent cosines over tokens, batch by batch."""

    def __init__(self, num_layers: int, token_position: str) -> None:
        self.num_layers = num_layers
        self.token_position = token_position
        bounds = num_layers + 1
        self.angle_sum = np.zeros((bounds, bounds), dtype=np.float64)
        self.adjacent_cos_sum = np.zeros(num_layers, dtype=np.float64)
        self.count = 0
        self.samples = 0

    def add(self, boundaries: "list[torch.Tensor]", attention_mask: "torch.Tensor") -> None:
        """``boundaries[i]``: [batch, seq, hidden] residual stream entering layer i (i = L: output)."""
        import torch

        mask = attention_mask.bool()
        if self.token_position == "last":
            # Last non-pad token of each row, whichever side the padding is on.
            positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
            last = torch.where(mask, positions, torch.full_like(positions, -1)).max(dim=1).values
            rows = torch.arange(mask.shape[0], device=mask.device)
            picked = torch.stack([h[rows, last] for h in boundaries])  # [L+1, B, D]
        else:
            picked = torch.stack([h[mask] for h in boundaries])  # [L+1, tokens, D]
        # float64: cosines of nearly parallel vectors sit within 1e-7 of 1, where float32 arccos
        # has no resolution left.
        vecs = torch.nn.functional.normalize(picked.double(), dim=-1)
        cos = torch.einsum("itd,jtd->tij", vecs, vecs).clamp(-1.0, 1.0)  # [tokens, L+1, L+1]
        self.angle_sum += (torch.arccos(cos) / math.pi).sum(0).cpu().numpy()
        idx = torch.arange(self.num_layers)
        self.adjacent_cos_sum += cos[:, idx, idx + 1].sum(0).cpu().numpy()
        self.count += cos.shape[0]
        self.samples += int(mask.shape[0])

    def result(self) -> BlockScores:
        if self.count == 0:
            raise DataError("prune.calibration: no calibration tokens were scored", fix="give non-empty texts")
        L = self.num_layers
        mean = self.angle_sum / self.count
        angular = np.full((L, L), np.nan)
        for n in range(1, L + 1):
            for start in range(0, L - n + 1):
                angular[n - 1, start] = mean[start, start + n]
        bi = 1.0 - self.adjacent_cos_sum / self.count
        return BlockScores(L, angular, bi, self.token_position, self.samples, self.count)


def score_blocks(model: "PreTrainedModel", batches: Iterable[dict], token_position: str = "last") -> BlockScores:
    """One forward pass per batch; every (start layer, block size) distance from it."""
    import torch

    layers = decoder_layers(model)
    acc = ScoreAccumulator(len(layers), token_position)
    captured: dict[str, torch.Tensor] = {}

    def keep_last_output(_module: Any, _inputs: Any, output: Any) -> None:
        captured["last"] = output[0] if isinstance(output, tuple) else output

    handle = layers[-1].register_forward_hook(keep_last_output)
    device = next(model.parameters()).device
    batches = list(batches)
    try:
        with torch.inference_mode(), fast_cpu_linears(model), \
                progress.task("scoring blocks", total=len(batches), unit="batch") as bar:
            for batch in batches:
                bar.advance(0)
                batch = {k: v.to(device) for k, v in batch.items()}
                out = model(**batch, output_hidden_states=True, use_cache=False)
                # hidden_states[i] enters layer i; the last entry is post-norm, replaced by the hook's.
                boundaries = list(out.hidden_states[:-1]) + [captured.pop("last")]
                acc.add(boundaries, batch["attention_mask"])
                bar.advance(1)
    finally:
        handle.remove()
    return acc.result()


def select_layers(scores: BlockScores, blocks: int, method: str, model: "PreTrainedModel | None" = None,
                  batches: list[dict] | None = None) -> list[int]:
    """The layers the block scorer ``method`` removes (:data:`hubsdd.core.plugins.BLOCK_SCORERS`)."""
    return choose_layers(scores, blocks, method, model, batches or []).layers


def choose_layers(scores: BlockScores, blocks: int, method: str, model: "PreTrainedModel | None",
                  batches: list[dict]) -> BlockChoice:
    if blocks >= scores.num_layers:
        raise DataError(
            f"prune.blocks: cannot remove {blocks} of {scores.num_layers} layers",
            fix=f"use a number below {scores.num_layers}",
        )
    choice = BLOCK_SCORERS.load(method)(ScoringInput(model=model, batches=batches, blocks=blocks, scores=scores))
    layers = sorted(int(i) for i in choice.layers)
    if len(set(layers)) != blocks or not all(0 <= i < scores.num_layers for i in layers):
        raise DataError(f"prune.method: the block scorer {method!r} chose layers {layers}, not {blocks} distinct "
                        f"layers of 0..{scores.num_layers - 1}", fix="report it to the scorer's authors")
    choice.layers = layers
    return choice


# --------------------------------------------------------------------------- surgery


def count_parameters(model: "PreTrainedModel") -> int:
    return sum(p.numel() for p in model.parameters())


def forward_flops_per_token(model: "PreTrainedModel") -> int:
    """~2 FLOPs per weight per token for every matmul weight (the embedding lookup is free, the
    LM head is a matmul even when tied). Attention-score FLOPs grow with context and are left out;
    they shrink with the layer count in the same proportion."""
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    total = count_parameters(model) - embed.numel()
    if head is not None and head.weight is embed:
        total += embed.numel()
    return 2 * total


# --------------------------------------------------------------------------- artifacts


def write_distances_csv(scores: BlockScores, path: Path) -> None:
    L = scores.num_layers
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["block_size"] + [f"start_{l}" for l in range(L)])
        for n in range(1, L + 1):
            w.writerow([n] + ["" if np.isnan(v) else f"{v:.6f}" for v in scores.angular[n - 1]])


def write_block_influence_csv(scores: BlockScores, path: Path) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["layer", "block_influence"])
        for i, v in enumerate(scores.block_influence):
            w.writerow([i, f"{v:.6f}"])


def plot_heatmap(scores: BlockScores, removed: list[int], method: str, path: Path, title: str = "") -> None:
    L = scores.num_layers
    with figure(path, figsize=(12, 4.8), dpi=110, ncols=2, gridspec_kw={"width_ratios": [3, 2]}) as (fig, (ax, ax2)):
        _draw_heatmap(fig, ax, ax2, scores, removed, method, title, L)


def _draw_heatmap(fig: Any, ax: Any, ax2: Any, scores: BlockScores, removed: list[int], method: str, title: str,
                  L: int) -> None:
    masked = np.ma.masked_invalid(scores.angular)
    im = ax.imshow(masked, origin="lower", aspect="auto", cmap="viridis_r",
                   extent=(-0.5, L - 0.5, 0.5, L + 0.5))
    fig.colorbar(im, ax=ax, label="angular distance d(l, n)")
    ax.set_xlabel("start layer l")
    ax.set_ylabel("block size n")
    if method == "angular" and removed:
        ax.scatter([removed[0]], [len(removed)], marker="s", s=80, facecolors="none", edgecolors="red",
                   linewidths=2, label=f"removed {removed[0]}..{removed[-1]}")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title or "Angular distance between layer l and l+n")
    colors = ["tab:red" if i in removed else "tab:blue" for i in range(L)]
    ax2.bar(range(L), scores.block_influence, color=colors)
    ax2.set_xlabel("layer")
    ax2.set_ylabel("block influence (1 - cos)")
    ax2.set_title("Block influence per layer (red: removed)")


# --------------------------------------------------------------------------- calibration


def calibration_texts(ctx: StageContext) -> list[str]:
    from jinja2 import Environment, StrictUndefined, TemplateError

    from ...core.data import load_rows

    cal = ctx.recipe.prune.calibration
    rows = load_rows(cal, ctx.recipe.source_dir)
    if cal.text_template:
        try:
            template = Environment(undefined=StrictUndefined).from_string(cal.text_template)
            texts = [template.render(**row) for row in rows]
        except TemplateError as exc:
            raise DataError(f"prune.calibration.text_template: {exc}",
                            fix=f"use columns of the data: {', '.join(rows[0]) if rows else '(no rows)'}") from None
    else:
        column = cal.text_column or "text"
        if rows and column not in rows[0]:
            raise DataError(
                f"prune.calibration.text_column: column {column!r} not in the calibration data "
                f"(columns: {', '.join(rows[0])})",
                fix="set `text_column` to one of them, or write a `text_template`",
            )
        texts = [str(row[column]) for row in rows]
    texts = [t for t in texts if t and t.strip()][: cal.samples]
    if not texts:
        raise DataError("prune.calibration: the calibration data has no text", fix="check the file and column")
    return texts


def batches_for(tokenizer: "PreTrainedTokenizerBase", texts: list[str], max_length: int, batch_size: int) -> list[dict]:
    tokenizer.padding_side = "right"
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i:i + batch_size], return_tensors="pt", padding=True, truncation=True,
                        max_length=max_length)
        out.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return out


# --------------------------------------------------------------------------- stage


def run_prune(ctx: StageContext) -> StageOutput:
    """Entry of the ``prune`` stage."""
    from ...core.models import default_device, load_base, save_model

    section = ctx.recipe.prune
    # Scoring is forward passes of the whole base: on the GPU when there is one, like the other
    # stages, in the recipe's dtype (load_base); on CPU, fp32 linears go through oneDNN.
    device = default_device(ctx.recipe)
    model, tokenizer = load_base(ctx, device=device)
    layers_before = len(decoder_layers(model))
    if section.blocks >= layers_before:
        raise DataError(f"prune.blocks: the base model has {layers_before} layers; cannot remove {section.blocks}",
                        fix=f"use a number below {layers_before}")
    # Refuse an architecture surgery cannot handle now, not after the scoring passes: the same
    # surgery on a weightless copy, with the layers named in the recipe or a middle block.
    middle = (layers_before - section.blocks) // 2
    check_prunable(model, section.layers if section.layers is not None
                   else range(middle, middle + section.blocks))
    texts = calibration_texts(ctx)
    batches = batches_for(tokenizer, texts, section.calibration.max_length, section.calibration.batch_size)
    started = time.perf_counter()
    scores = score_blocks(model, batches, section.token_position)

    choice = None
    if section.layers is not None:
        removed = sorted(set(section.layers))
    else:
        choice = choose_layers(scores, section.blocks, section.method, model, batches)
        removed = choice.layers
    scoring_seconds = time.perf_counter() - started
    params_before = count_parameters(model)
    flops_before = forward_flops_per_token(model)
    remove_layers(model, removed)
    params_after = count_parameters(model)
    flops_after = forward_flops_per_token(model)

    save_model(model, tokenizer, ctx.out_dir / "model")
    write_distances_csv(scores, ctx.out_dir / "distances.csv")
    write_block_influence_csv(scores, ctx.out_dir / "block_influence.csv")
    plot_heatmap(scores, removed, section.method, ctx.out_dir / "heatmap.png")

    n = section.blocks
    start, best = scores.best_block(n)
    ranking = sorted(((float(v), int(l)) for l, v in enumerate(scores.angular[n - 1]) if not np.isnan(v)))
    metrics = {
        "method": section.method,
        "token_position": section.token_position,
        "block_size": n,
        "removed_layers": removed,
        "layers_before": layers_before,
        "layers_after": layers_before - len(removed),
        "params_before": params_before,
        "params_after": params_after,
        "params_removed_fraction": round(1 - params_after / params_before, 6),
        "flops_per_token_before": flops_before,
        "flops_per_token_after": flops_after,
        "flops_saved_fraction": round(1 - flops_after / flops_before, 6),
        "removed_block_distance": float(np.mean([scores.angular[0][i] for i in removed])) if section.method == "bi" else best,
        "best_block": {"start": start, "distance": best},
        # d(l, n) for the chosen n, every start layer, smallest first: the card's distance table.
        "block_distances": [{"start": l, "end": l + n - 1, "distance": round(v, 6)} for v, l in ranking],
        "block_influence": [round(float(v), 6) for v in scores.block_influence],
        "calibration_samples": scores.samples,
        "calibration_tokens": scores.tokens,
        "scoring_seconds": round(scoring_seconds, 3),
        "forward_passes": len(batches) + (choice.forward_passes if choice else 0),
        "layer_scores": choice.layer_scores if choice else None,
        "method_description": choice.description or None if choice else None,
    }
    outputs = {
        "model_dir": "model",
        "distances": "distances.csv",
        "block_influence": "block_influence.csv",
        "plots": {"heatmap": "heatmap.png"},
    }
    log.info("removed layers %s: %d -> %d layers, %.1fM -> %.1fM parameters", removed, layers_before,
             layers_before - len(removed), params_before / 1e6, params_after / 1e6)
    return StageOutput(outputs=PruneOutputs(**outputs), metrics=PruneMetrics(**metrics))
