"""Where a finetune variant lives and what decides its weights (:func:`variant_key`), the data it
trains on, and the small facts the stage reads off a Trainer. Split from :mod:`.stage`, which trains."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...core.chat import DATA_COLUMNS, chat_example
from ...core.errors import DataError, StageError
from ...core.recipe import FinetuneSection
from ...core.stage_io import StageContext
from .training import fsdp_enabled

if TYPE_CHECKING:
    from datasets import Dataset

log = logging.getLogger("hubsdd.finetune")

RESULT_FILE = "result.json"


# --------------------------------------------------------------------------- data


def training_dataset(parquet: Path, data: str, *, messages: bool = False) -> tuple["Dataset", int]:
    """The distilled parquet as a conversational prompt/completion dataset (``messages``: one
    ``messages`` list per row, the format TRL's distillation collator reads); also how many rows
    were dropped for an empty response (``data: accepted``: or a rejected rewrite)."""
    import pyarrow.parquet as pq
    from datasets import Dataset

    column = DATA_COLUMNS[data]
    try:
        table = pq.read_table(parquet)
    except (OSError, ValueError) as exc:
        raise DataError(f"finetune: cannot read the distilled data {parquet}: {exc}",
                        fix="rerun the distill stage: `hubsdd run <recipe> --force distill`") from None
    missing = [c for c in ("instruction", column, *(["verdict"] if data == "accepted" else []))
               if c not in table.column_names]
    if missing:
        raise DataError(f"finetune: {parquet} lacks column(s) {missing} (has {table.column_names})",
                        fix="rerun the distill stage with this version of hubsdd")
    records, dropped = [], 0
    for row in table.to_pylist():
        pair = chat_example(row, data)
        if pair is None:
            dropped += 1
            continue
        prompt, completion = pair
        records.append({"messages": prompt + completion} if messages else {"prompt": prompt, "completion": completion})
    if not records:
        raise DataError(f"finetune: no usable rows in {parquet} for `data: {data}`",
                        fix="no rewrite was accepted: use `data: distilled` (rejected rows fall back to the original)"
                        if data == "accepted" else "check the distill stage's output (empty instructions or responses)")
    return Dataset.from_list(records), dropped



# --------------------------------------------------------------------------- where a variant lives


def variant_key(ctx: StageContext, name: str) -> str:
    """What decides a variant's weights: its own settings, the shared hyperparameters, the
    precision, its inputs.

    Not the variant's name, nor the other variants: a variant trained before is reused when
    variants are added, removed or renamed, or by another recipe sharing the run directory."""
    import hashlib

    from ...core.version import __version__
    from ...core.models import model_dtype
    from ...core.recipe import canonical_json

    section: FinetuneSection = sized_section(ctx)
    variant = section.variants[name]
    # How often to checkpoint and how long processes wait for each other do not change the weights.
    # The on-policy settings decide only gkd variants (so adding them kept every other variant's key).
    shared = section.model_dump(mode="json", exclude={"variants", "checkpoint_steps", "ddp_timeout", "gkd", "distributed"})
    dtype = model_dtype(ctx.recipe)  # by default the device's: bfloat16 weights train differently
    payload = {
        "hubsdd": __version__,
        "seed": ctx.recipe.seed,
        "shared": shared,
        "precision": [dtype, mixed_bf16(section, dtype)],
        "data": variant.data,
        "loss": variant.loss,
        "learning_rate": variant.learning_rate or section.learning_rate,
        "inputs": {k: v.fingerprint for k, v in sorted(ctx.inputs.items())},
        # N processes train on N x batch_size examples a step: other weights
        "processes": training_processes(),
    }
    if teacher_logits_dir(ctx, name) is not None:  # only then: the keys of live-teacher variants stay
        payload["teacher_logits"] = "cache"
    if fsdp_enabled():  # only then: the keys of data-parallel variants stay
        payload["strategy"] = "fsdp"
    if variant.loss == "gkd":
        payload["gkd"] = section.gkd.model_dump(mode="json")
    if variant.loss_options:  # only then: the keys of the built-in losses' variants stay
        payload["loss_options"] = variant.loss_options
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()



def sized_section(ctx: StageContext) -> FinetuneSection:
    """The finetune section with the batch this run trains with: on a GPU, a ``batch_size`` the
    recipe leaves unset is sized to the device (:func:`hubsdd.core.device_profile.finetune_sizes`)."""
    from ...core.device_profile import finetune_sizes
    from ...core.models import default_device

    return finetune_sizes(ctx.section, default_device(ctx.recipe), ctx.input("prune").path("model_dir"),
                          sharded_over=training_processes() if fsdp_enabled() else 1)



def training_processes() -> int:
    """How many data-parallel processes train together: accelerate launch's WORLD_SIZE, else 1."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1



def teacher_logits_dir(ctx: StageContext, name: str) -> Path | None:
    """Where a ``loss: kd`` variant reads its teacher's stored log-probabilities, or None when it
    runs the teacher live: ``finetune.kd.teacher_logits`` (auto: the cache when the distill stage
    stored one for the variant's data)."""
    section: FinetuneSection = ctx.section
    variant = section.variants[name]
    if variant.loss != "kd" or section.kd.teacher_logits == "live":
        return None
    distill = ctx.input("distill")
    stored = distill.outputs.get("teacher_logits") or {}
    if variant.data in stored.get("data", []):
        return distill.resolve(stored["dir"])
    if section.kd.teacher_logits == "cache":
        raise StageError(f"finetune: variant {name} (data: {variant.data}) is to distill from stored teacher "
                         "log-probabilities (finetune.kd.teacher_logits: cache), but the distill stage stored "
                         f"none for its data (it has: {stored.get('data', [])})",
                         fix=f"add {variant.data} to distill.teacher_logits.data, or set finetune.kd.teacher_logits: live")
    return None



def variant_dir(ctx: StageContext, name: str) -> Path:
    """Where a variant is trained and kept: the run's cache, keyed by :func:`variant_key`."""
    return ctx.run_dir / ".cache" / "finetune" / variant_key(ctx, name)[:24]



def finished_result(vdir: Path, key: str) -> dict | None:
    try:
        result = json.loads((vdir / RESULT_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if result.get("key") != key or not (vdir / "model" / "config.json").exists():
        return None
    return result



# --------------------------------------------------------------------------- facts of a Trainer


def mixed_bf16(section: FinetuneSection, dtype: str) -> bool:
    """bf16 mixed precision: as the recipe says, else on for bfloat16 weights."""
    return section.bf16 if section.bf16 is not None else dtype == "bfloat16"



def rows_kept_by_trainer(trainer: Any, rows: int, name: str, max_length: int) -> int:
    """How many of the ``rows`` given the trainer trains on. TRL's SFTTrainer drops, with no more
    than a progress bar, every example whose prompt alone fills ``max_length`` (no response token
    is left to learn from): the stage reports what was trained on, warns, and refuses to train on
    nothing."""
    kept = len(trainer.train_dataset) if hasattr(trainer.train_dataset, "__len__") else rows
    if kept == 0:
        raise StageError(f"finetune: {name}: every one of the {rows} examples has a prompt of at least "
                         f"finetune.max_length ({max_length}) tokens, leaving no response token to train on",
                         fix="raise finetune.max_length")
    if kept < rows:
        log.warning("finetune: %s: %d of %d examples dropped: their prompt alone fills finetune.max_length "
                    "(%d tokens); raise it to train on them", name, rows - kept, rows, max_length)
    return kept



def tokens_per_second(trainer: Any, seconds: float) -> float | None:
    """Trained tokens per second over every process (the Trainer counts input tokens when asked to
    with ``include_num_input_tokens_seen``; without that count, None)."""
    seen = getattr(trainer.state, "num_input_tokens_seen", 0) or 0
    return round(seen / seconds, 1) if seen and seconds > 0 else None



def mean_logged_loss(history: list[dict]) -> float | None:
    """The mean training loss per step over the logged steps (each logged loss is the mean over the
    steps since the previous log). Unlike the Trainer's own figure, it covers the steps before a
    resume too."""
    total, last = 0.0, 0
    for entry in history:
        total += entry["loss"] * (entry["step"] - last)
        last = entry["step"]
    return total / last if last else None

