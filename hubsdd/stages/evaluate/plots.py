"""The evaluation's figure for the card: scores per task and model."""

from __future__ import annotations

from pathlib import Path

from ...core.figures import figure
from .tasks import primary_metric


def plot_task_bars(scores: dict[str, dict[str, dict]], averages: dict[str, float | None], path: Path) -> None:
    """Grouped bars: one group per task (and the average), one bar per model, stderr whiskers."""
    models = list(scores)
    tasks = list(next(iter(scores.values()))) if scores else []
    groups = tasks + ["average"]
    width = 0.8 / max(1, len(models))
    size = (max(6.0, 1.1 * len(groups) + 0.25 * len(groups) * len(models) + 2), 4.2)
    with figure(path, figsize=size, dpi=120) as (_, ax):
        for j, model in enumerate(models):
            values = [scores[model][t]["value"] for t in tasks] + [averages.get(model) or 0.0]
            # no whisker where there is no standard error (nan is not drawn; 0 would draw caps)
            errors = [scores[model][t].get("stderr") or float("nan") for t in tasks] + [float("nan")]
            xs = [i + (j - (len(models) - 1) / 2) * width for i in range(len(groups))]
            ax.bar(xs, values, width, yerr=errors, capsize=2, label=model)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([f"{t}\n({primary_metric(t).name})" if t != "average" else "average" for t in groups],
                           fontsize=8)
        ax.set_ylabel("score")
        ax.set_ylim(0, 1)
        ax.set_title("Scores per task (± standard error)")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        ax.grid(axis="y", alpha=0.3)
