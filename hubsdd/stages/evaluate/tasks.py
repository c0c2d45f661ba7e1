"""What is evaluated: task names and shots, each task's primary metric and dataset, and which items.

Every model of a run is scored on the same items. They are sampled here, deterministically from
``evaluate.seed``: lm-eval's ``limit`` would take the first N rows, which for sorted datasets (MMLU
by subject) is a biased sample and would silently change with the dataset's row order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from ...core.errors import StageError

OPENLLM_V1 = "openllm-v1"
# The Open LLM Leaderboard v1 tasks, by lm-eval's names, with the leaderboard's shots.
LEADERBOARD_V1: dict[str, int] = {
    "arc_challenge": 25,
    "hellaswag": 10,
    "mmlu": 5,
    "truthfulqa_mc2": 0,
    "winogrande": 5,
    "gsm8k": 5,
}
# Default shots of the offline tasks: the leaderboard's, and 0 for PIQA (not on the leaderboard).
DEFAULT_SHOTS: dict[str, int] = {**LEADERBOARD_V1, "arc_easy": 25, "piqa": 0}
OFFLINE_TASKS = ("arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande", "mmlu", "gsm8k")
# Held-out few-shot pool for datasets that ship a single labelled split: at most this many rows,
# and at most a fifth of the split; fixed (not seed-dependent) so that changing the seed only
# changes which items are evaluated.
FEWSHOT_POOL_MAX = 100
FEWSHOT_POOL_SEED = "hubsdd-fewshot-pool"


@dataclass(frozen=True)
class Metric:
    """A metric as lm-eval names it in its results: ``<name>,<filter>``."""

    name: str
    filter: str = "none"
    pretty: str = "accuracy"

    @property
    def key(self) -> str:
        return f"{self.name},{self.filter}"

    @property
    def stderr_key(self) -> str:
        return f"{self.name}_stderr,{self.filter}"

    @property
    def label(self) -> str:
        return self.name if self.filter == "none" else f"{self.name}, {self.filter}"


ACC = Metric("acc", pretty="accuracy")
ACC_NORM = Metric("acc_norm", pretty="normalized accuracy")
# GSM8K: the leaderboard's figure is the strict "#### <number>" match; flexible-extract is kept
# in the per-model results too.
EXACT_MATCH = Metric("exact_match", "strict-match", pretty="exact match (strict)")

# acc_norm for ARC and HellaSwag as on the leaderboard, exact match for GSM8K, accuracy otherwise.
PRIMARY_METRIC: dict[str, Metric] = {
    "arc_easy": ACC_NORM,
    "arc_challenge": ACC_NORM,
    "hellaswag": ACC_NORM,
    "piqa": ACC,
    "winogrande": ACC,
    "mmlu": ACC,
    "truthfulqa_mc2": ACC,
    "gsm8k": EXACT_MATCH,
}


@dataclass(frozen=True)
class DatasetRef:
    """The Hub dataset a task's data is (a copy of), for the card's model-index."""

    hub_id: str
    config: str | None
    pretty: str
    hub_split: str  # the split lm-eval's own task evaluates


DATASETS: dict[str, DatasetRef] = {
    "arc_easy": DatasetRef("allenai/ai2_arc", "ARC-Easy", "AI2 Reasoning Challenge (Easy)", "test"),
    "arc_challenge": DatasetRef("allenai/ai2_arc", "ARC-Challenge", "AI2 Reasoning Challenge", "test"),
    "hellaswag": DatasetRef("Rowan/hellaswag", None, "HellaSwag", "validation"),
    "piqa": DatasetRef("ybisk/piqa", None, "PIQA", "validation"),
    "winogrande": DatasetRef("allenai/winogrande", "winogrande_xl", "WinoGrande", "validation"),
    "mmlu": DatasetRef("cais/mmlu", "all", "MMLU", "test"),
    "gsm8k": DatasetRef("openai/gsm8k", "main", "GSM8K", "test"),
    "truthfulqa_mc2": DatasetRef("truthfulqa/truthful_qa", "multiple_choice", "TruthfulQA (MC2)", "validation"),
}


def primary_metric(task: str) -> Metric:
    return PRIMARY_METRIC.get(task, ACC)


def lm_eval_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("lm-eval")
    except metadata.PackageNotFoundError:
        return "unknown"


def resolve_tasks(section: Any) -> tuple[bool, list[str], dict[str, int | None]]:
    """(hub mode?, task names, shots per task) from the recipe's evaluate section."""
    hub = section.source == "hub" or OPENLLM_V1 in section.tasks
    names: list[str] = []
    for t in section.tasks:
        for name in (LEADERBOARD_V1 if t == OPENLLM_V1 else [t]):
            if name not in names:
                names.append(name)
    extra = [k for k in section.num_fewshot if k not in names]
    if extra:
        raise StageError(f"evaluate.num_fewshot names tasks that are not evaluated: {extra}",
                         fix=f"use task names from evaluate.tasks: {', '.join(names)}")
    # offline tasks all have defaults; a hub task hubsdd does not know keeps lm-eval's (None)
    shots = {n: section.num_fewshot.get(n, DEFAULT_SHOTS.get(n)) for n in names}
    return hub, names, shots


# --------------------------------------------------------------------------- item sampling


def fewshot_holdout(n: int, task: str) -> tuple[list[int], list[int]]:
    """Split ``range(n)`` into a fixed few-shot pool and the evaluation pool, disjoint.

    Used where the data ships a single labelled split: few-shot examples must never be items the
    model is scored on. The pool does not depend on the evaluation seed."""
    order = list(range(n))
    random.Random(f"{FEWSHOT_POOL_SEED}:{task}").shuffle(order)
    size = min(FEWSHOT_POOL_MAX, n // 5)
    return sorted(order[:size]), sorted(order[size:])


def sample_items(pool: list[int], limit: int | None, seed: int, task: str, offset: int = 0) -> list[int]:
    """``limit`` items of ``pool`` after the first ``offset`` of a seeded order: the same for every
    model, changed only by ``seed``. Two calls with the same seed and non-overlapping
    ``[offset, offset + limit)`` ranges give disjoint items (a dev set beside a test set).

    The task name is mixed into the seed so that tasks of equal size do not get the same rows;
    ``random.Random`` seeded with a string is stable across Python processes and versions."""
    if offset == 0 and (limit is None or limit >= len(pool)):
        return list(pool)
    order = list(pool)
    random.Random(f"{seed}:{task}").shuffle(order)
    end = None if limit is None else offset + limit
    return sorted(order[offset:end])


@dataclass
class PreparedTask:
    """A task ready to evaluate: which items, shots and data, the same for every model."""

    name: str
    num_fewshot: int
    split: str
    items: list[int]  # row indices in ``split`` (MMLU: indices into the subject-sorted test set)
    pool: int  # number of rows the items were drawn from
    fewshot_source: str
    dataset: str  # a sentence on where the data came from
    docs: list[dict] = field(default_factory=list)  # the evaluated docs (for speculative prompts)
    leaves: list[str] = field(default_factory=list)  # lm-eval leaf task names (MMLU subjects)
    samples: dict[str, list[int]] | None = None  # hub mode: lm-eval `samples` per leaf task
    # hub mode, a group sampled partly: its sampled leaves run as tasks and hubsdd aggregates them
    # (lm-eval would evaluate every item of a leaf that `samples` does not name)
    aggregate: bool = False
    # per lm-eval leaf task, its doc_id -> the item id (an entry of ``items``) that doc is
    item_of: dict[str, dict[int, int]] = field(default_factory=dict)

    def info(self) -> dict:
        ref = DATASETS.get(self.name)
        metric = primary_metric(self.name)
        return {
            "num_fewshot": self.num_fewshot,
            "split": self.split,
            "items": len(self.items),
            "metric": metric.label,
            "metric_name": metric.name,
            "metric_pretty": metric.pretty,
            "dataset": self.dataset,
            "dataset_id": ref.hub_id if ref else None,
            "dataset_config": ref.config if ref else None,
            "dataset_pretty": ref.pretty if ref else self.name,
            "fewshot_source": self.fewshot_source,
            "pool": self.pool,
        }
