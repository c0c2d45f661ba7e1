"""Figures across models: averages and retention (the paper's headline).

Retention is a model's score divided by the base model's, per task and for the average over tasks
of each task's primary metric (:data:`.tasks.PRIMARY_METRIC`).
"""

from __future__ import annotations

import math



def average_score(scores: dict[str, dict]) -> float | None:
    values = [s["value"] for s in scores.values() if s.get("value") is not None]
    return sum(values) / len(values) if values else None


def retention(scores: dict[str, dict[str, dict]], averages: dict[str, float | None]) -> dict[str, dict[str, float | None]]:
    """Model score / base score per task, and average / base average (the paper's figure)."""
    base = scores.get("base")
    if not base:
        return {}
    out: dict[str, dict[str, float | None]] = {}
    for model, tasks in scores.items():
        row: dict[str, float | None] = {}
        for task, s in tasks.items():
            b = base.get(task, {}).get("value")
            row[task] = (s["value"] / b) if b else None
        b_avg, m_avg = averages.get("base"), averages.get(model)
        row["average"] = (m_avg / b_avg) if b_avg and m_avg is not None else None
        out[model] = row
    return out


def stderr_of(task: dict) -> float | None:
    """lm-eval's standard error; where it gives none (a group aggregated from few items per
    subject), the sample standard error of the per-item scores."""
    if task.get("stderr") is not None:
        return task["stderr"]
    values = list((task.get("item_scores") or {}).values())
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))


