"""Figures across models: averages, retention (the paper's headline), and the card's model-index entries.

Retention is a model's score divided by the base model's, per task and for the average over tasks
of each task's primary metric (:data:`.tasks.PRIMARY_METRIC`).
"""

from __future__ import annotations

import math

from .tasks import DATASETS, LM_EVAL_URL, PreparedTask, lm_eval_version, primary_metric


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


def card_eval_results(scores: dict[str, dict[str, dict]], tasks: dict[str, PreparedTask], hub: bool) -> list[dict]:
    """One model-index entry per (model, task): keys are ``huggingface_hub.EvalResult`` parameters
    (plus ``model``, which the card stage filters on and drops). Values are fractions (0-1), as in
    ``scores``."""
    out = []
    version = lm_eval_version()
    for model, per_task in scores.items():
        for task, s in per_task.items():
            p = tasks[task]
            ref = DATASETS.get(task)
            metric = primary_metric(task)
            where = "Hub" if hub else "offline copy"
            out.append({
                "model": model,
                "task_type": "text-generation",
                "dataset_type": ref.hub_id if ref else task,
                "dataset_name": f"{ref.pretty if ref else task} ({p.num_fewshot}-shot, {len(p.items)} items, {where})",
                "dataset_config": ref.config if ref else None,
                "dataset_split": p.split,
                "dataset_args": {"num_few_shot": p.num_fewshot},
                "metric_type": metric.name,
                "metric_value": round(float(s["value"]), 6),
                "metric_name": f"{metric.pretty} (lm-eval {version})",
                # EvalResult requires a source_url whenever a source_name is given (the card
                # stage names the source); task_name and source_name are left to the card stage.
                "source_url": LM_EVAL_URL,
            })
    return out
