"""What the evaluate stage leaves for the card, the CI summary and ``hubsdd pull``: raw scores per
model and task, what each task was, the paired-bootstrap evidence, fidelity to the base and the
speculative-decoding figures. The card builds its model-index from these (``hubsdd.stages.card.stage``), so
changing the card never means re-running an evaluation.
"""

from __future__ import annotations

from pydantic import Field

from .records import Record


class EvaluatePlots(Record):
    task_bars: str


class EvaluateOutputs(Record):
    results: dict[str, str]  # model -> its lm-eval results JSON, relative to the stage folder
    plots: EvaluatePlots
    dev_results: dict[str, str] | None = None  # the same on the dev items (evaluate.dev)


class TaskScore(Record):
    metric: str  # lm-eval's metric key, e.g. acc_norm
    value: float
    stderr: float | None = None


class TaskInfo(Record):
    num_fewshot: int
    split: str
    items: int
    metric: str  # the metric as a reader names it, e.g. "acc_norm (normalized accuracy)"
    metric_name: str  # lm-eval's key, e.g. acc_norm
    metric_pretty: str  # e.g. normalized accuracy
    dataset: str  # a sentence on where the data came from
    dataset_id: str | None = None  # the Hub dataset the task is (model-index dataset.type)
    dataset_config: str | None = None
    dataset_pretty: str  # e.g. AI2 Reasoning Challenge (Easy)
    fewshot_source: str
    pool: int


class Interval(Record):
    value: float
    ci95: list[float]


class TaskEvidence(Record):
    score: Interval
    retention: Interval | None = None
    margin_retention: Interval | None = None


class ModelEvidence(Record):
    average: Interval
    half_width: float
    tasks: dict[str, TaskEvidence]
    retention: Interval | None = None
    margin_retention: Interval | None = None


class TaskDifference(Interval):
    significant: bool


class PairedDifference(Record):
    a: str
    b: str
    diff: Interval
    significant: bool
    tasks: dict[str, TaskDifference]


class Evidence(Record):
    method: str
    items: dict[str, int]
    headline_half_width: float
    chance: dict[str, float] = Field(default_factory=dict)
    # tasks (and "average") where the base model is not significantly above chance: no margin retention
    base_at_chance: list[str] = Field(default_factory=list)
    models: dict[str, ModelEvidence]
    paired: list[PairedDifference] = Field(default_factory=list)


class DevEvidence(Record):
    """The models on the dev items (``evaluate.dev``): what ``publish.release: auto`` chooses on."""

    offset: int  # the dev items start here in each task's seeded order (after the test items)
    items: dict[str, int]
    left_out: list[str] = Field(default_factory=list)  # tasks whose items the test set took entirely
    evidence: Evidence


class Fidelity(Record):
    top1_agreement: float | None
    kl: float | None
    acceptance: float | None
    accepted: int
    proposed: int
    positions: int
    prompts: int
    num_assistant_tokens: int
    max_new_tokens: int


class Speculative(Record):
    acceptance_rate: float | None
    speedup: float | None
    draft_tokens_proposed: int
    accepted: int
    rounds: int
    target_tokens_per_s: float | None
    plain_tokens_per_s: float | None
    generated_tokens: int
    draft_token_share: float | None
    outputs_identical_to_plain: float | None
    prompts: int
    max_new_tokens: int
    num_assistant_tokens: int
    device: str


class EvaluateMetrics(Record):
    scores: dict[str, dict[str, TaskScore]]  # model -> task -> primary metric
    average: dict[str, float | None]
    retention: dict[str, dict[str, float | None]]
    speculative: dict[str, Speculative] = Field(default_factory=dict)
    tasks: dict[str, TaskInfo]
    mode: str  # offline | hub
    models: list[str]
    lm_eval_version: str
    seed: int
    device: str
    seconds_per_model: dict[str, float]
    evidence: Evidence | None = None
    fidelity: dict[str, Fidelity] | None = None
    offset: int = 0
    dev: DevEvidence | None = None

