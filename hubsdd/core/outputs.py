"""What each stage leaves for the others: its ``outputs`` and ``metrics``, as small pydantic models.

A stage builds these and returns them; the runner writes them into ``stage.json``; later stages, the
card, its templates and the CI summary read them back through ``StageResult.typed``, validated, with attribute access and every optional field explicit. A field
added here is a field every reader can rely on; ``extra="forbid"`` keeps the files honest.

Paths in ``outputs`` are relative to the stage folder (or absolute for files a stage did not copy,
such as a local base model); ``StageResult.resolve`` turns them into paths.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_serializer

from .evaluate_outputs import EvaluateMetrics, EvaluateOutputs
from .recipe.sections import ColumnMap, DataSource, GenerationSettings, GKDSettings, KDSettings
from .records import Record, Typed  # noqa: F401  (Typed: part of this module's API)


# --------------------------------------------------------------------------- base


class BaseOutputs(Record):
    hub_id: str | None = None
    revision: str | None = None
    commit_sha: str | None = None  # the Hub commit the revision resolved to
    model_dir: str
    source: Literal["gguf", "local", "hub"]
    source_file: str | None = None  # the GGUF file name
    license_dir: str | None = None
    license_files: list[str] = Field(default_factory=list)
    license: str | None = None
    has_chat_template: bool = True


class BaseMetrics(Record):
    model_type: str
    architectures: list[str] = Field(default_factory=list)
    num_hidden_layers: int
    hidden_size: int


# --------------------------------------------------------------------------- prune


class PrunePlots(Record):
    heatmap: str


class PruneOutputs(Record):
    model_dir: str
    distances: str
    block_influence: str
    plots: PrunePlots


class BlockDistance(Record):
    start: int
    end: int
    distance: float


class BestBlock(Record):
    start: int
    distance: float | None


class PruneMetrics(Record):
    method: str  # a block scorer's name (hubsdd.core.plugins.BLOCK_SCORERS)
    token_position: Literal["last", "all"]
    block_size: int
    removed_layers: list[int]
    layers_before: int
    layers_after: int
    params_before: int
    params_after: int
    params_removed_fraction: float
    flops_per_token_before: int
    flops_per_token_after: int
    flops_saved_fraction: float
    removed_block_distance: float | None
    best_block: BestBlock
    block_distances: list[BlockDistance]
    block_influence: list[float]
    calibration_samples: int
    calibration_tokens: int
    scoring_seconds: float
    forward_passes: int  # the shared scoring pass's plus the scorer's own
    layer_scores: list[float] | None = None  # the scorer's score per layer, when it has one
    method_description: str | None = None  # how the scorer chose, one sentence (for the card)


# --------------------------------------------------------------------------- distill


class TeacherLogitsOutput(Record):
    dir: str  # relative to the stage folder
    top_k: int
    dtype: str
    data: list[Literal["distilled", "original"]]
    format: str
    sequences: int
    positions: int


class DistillOutputs(Record):
    data: str  # the parquet file, relative to the stage folder
    template_name: str
    template_sha256: str
    template_text: str
    teacher: str
    teacher_sha: str | None = None
    source: DataSource
    source_sha: str | None = None
    columns: ColumnMap
    data_license: str | None = None
    checker: str
    rejection_phrases: list[str]
    min_length_ratio: float | None = None  # distill.min_length_ratio: the too-short rule, when on
    generation: GenerationSettings
    teacher_logits: TeacherLogitsOutput | None = None


class DistillMetrics(Record):
    rows: int
    accepted: int
    rejected: int
    acceptance_rate: float
    rejection_reasons: dict[str, int] = Field(default_factory=dict)
    tokens_generated: int
    mean_rewrite_tokens: float
    generation_seconds: float
    tokens_per_second: float | None = None
    # vLLM's engines hold their memory in other processes: the device-wide use while they ran
    device_memory_used_bytes: int | None = None
    shards: int
    shards_resumed: int
    # shards an earlier run of the same teacher, prompts and decoding wrote (the run's .cache/distill)
    shards_reused: int = 0
    seconds: float
    teacher_logits_positions: int | None = None
    teacher_logits_shards_resumed: int | None = None
    teacher_logits_seconds: float | None = None


# --------------------------------------------------------------------------- finetune


class VariantOutput(Record):
    model_dir: str
    data: Literal["distilled", "original", "accepted"]
    loss: str  # a recovery loss's name (hubsdd.core.plugins.RECOVERY_LOSSES)
    loss_description: str | None = None  # how a plug-in loss recovers, in words (the card's)
    learning_rate: float
    train_log: str

    @model_serializer(mode="wrap")
    def _builtin_losses_need_no_description(self, handler: Any) -> Any:
        data = handler(self)  # stage.json of the built-in losses stays as it was
        if isinstance(data, dict) and data.get("loss_description") is None:
            data.pop("loss_description", None)
        return data


class FinetunePlots(Record):
    loss_curve: str


class FinetuneOutputs(Record):
    precision: str
    variants: dict[str, VariantOutput]
    plots: FinetunePlots
    method: Literal["lora", "full"]
    kd: KDSettings | None = None
    gkd: GKDSettings | None = None
    base_model_dir: str
    data: str


class VariantMetrics(Record):
    loss: str
    teacher_logits: str | None = None  # kd: "live", or "cache (top k)"
    learning_rate: float
    train_loss_first: float | None = None
    train_loss_last: float | None = None
    train_loss_mean: float | None = None
    steps: int
    epochs: float
    samples: int  # examples trained on
    dropped_rows: int  # empty instruction or response
    dropped_too_long: int = 0  # prompt alone filled finetune.max_length (TRL drops those)
    resumed_from_step: int | None = None
    trainable_params: int
    total_params: int
    seconds: float
    processes: int = 1  # data-parallel training processes (accelerate launch --num_processes)
    batch_size: int | None = None  # per process, as trained (on a GPU sized when the recipe leaves it unset)
    gradient_accumulation_steps: int | None = None
    strategy: Literal["fsdp"] | None = None  # sharded training (else one whole copy per process)
    tokens_per_second: float | None = None  # trained tokens (prompt and answer) per second, all processes
    on_policy_batches: int | None = None  # gkd: batches whose responses the student generated
    loss_metrics: dict[str, Any] | None = None  # what a plug-in loss reports (LossPlan.metrics)

    @model_serializer(mode="wrap")
    def _builtin_losses_report_no_loss_metrics(self, handler: Any) -> Any:
        data = handler(self)
        if isinstance(data, dict) and data.get("loss_metrics") is None:
            data.pop("loss_metrics", None)
        return data


class FinetuneMetrics(Record):
    variants: dict[str, VariantMetrics]


# --------------------------------------------------------------------------- merge


class MergeOutputs(Record):
    model_dir: str
    config: str
    config_text: str
    method: Literal["slerp", "linear", "ties"]
    models: list[str]
    base_model: str | None = None


class MergeMetrics(Record):
    seconds: float
    method: str
    models: list[str]
    t: float | None = None
    weights: list[float] | None = None
    density: float | None = None
    dtype: str | None = None
    parameters: int
    tensors: int
    has_chat_template: bool
    files_completed: list[str] = Field(default_factory=list)


# --------------------------------------------------------------------------- card


class CardOutputs(Record):
    model_dir: str
    release: str
    # how `publish.release: auto` chose (hubsdd.core.release_choice); None when the recipe named the release
    release_rule: dict | None = None
    dataset_dir: str | None = None


class CardMetrics(Record):
    stages: list[str]


# --------------------------------------------------------------------------- reading

MODELS: dict[str, tuple[type[Record], type[Record]]] = {
    "base": (BaseOutputs, BaseMetrics),
    "prune": (PruneOutputs, PruneMetrics),
    "distill": (DistillOutputs, DistillMetrics),
    "finetune": (FinetuneOutputs, FinetuneMetrics),
    "merge": (MergeOutputs, MergeMetrics),
    "evaluate": (EvaluateOutputs, EvaluateMetrics),  # declared with the evaluate package (hubsdd/core/evaluate_outputs.py)
    "card": (CardOutputs, CardMetrics),
}
"""Each stage's record types, declared here in one table (no registry filled by imports): a new
stage adds its line; ``StageResult.typed`` (:mod:`hubsdd.core.stage_io`) reads a finished stage through it."""
