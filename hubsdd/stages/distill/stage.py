"""The ``distill`` stage: the unpruned model rewrites the training responses (SDFT, Yang et al. 2024).

For every training example the *teacher* (the base model, before pruning) is shown the instruction
and the original response as a reference, and asked for its own answer (:mod:`.prompts`).
Fine-tuning the pruned model on answers phrased the way the base model would phrase them keeps the
data close to the model's own distribution, which is what recovers quality (arXiv 2410.09982).
Each rewrite is kept or replaced by the original response by the rules of :mod:`.checkers`.

Generation runs in shards of ``distill.shard_size`` rows (:mod:`.shards`), each written atomically
to ``ctx.work_dir`` as soon as it is done. A killed run resumes without regenerating finished shards,
and the run's content-keyed cache keeps them beyond the stage (:func:`rewrites_cache`): changing
only the checks reruns the stage without the teacher.
A shard's content depends only on its own rows and the settings (rows are length-sorted and batched
within the shard, continuously: a finished row is refilled with the shard's next prompt; sampling is
seeded per shard), so under greedy decoding a resumed run produces the same dataset as an
uninterrupted one. Larger shards keep the batch full for longer (each shard ends with a tail in
which rows finish and are not replaced).
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ...core import progress, worklog
from ...core import teacher_logits as tl
from ...core.data import get_value, load_rows, resolve_dataset_revision
from ...core.errors import DataError
from ...core.files import link_or_copy
from ...core.recipe import DistillSection
from ...core.outputs import DistillMetrics, DistillOutputs
from ...core.stage_io import StageContext, StageOutput
from ...core.device_profile import distill_sizes
from ...core.models import default_device, model_content_id
from .backends import GenerationBackend, make_backend
from .checkers import REASONS, REJECTION_PHRASES, select
from .prompts import load_template
from .shards import DATA_FIELDS, SHARD_SCHEMA_FIELDS, read_shard, shard_key, write_parquet

log = logging.getLogger("hubsdd.distill")

DATA_FILE = "data/train.parquet"


@dataclass(frozen=True)
class Example:
    instruction: str
    input: str
    original: str
    label: str | None


def _as_text(value: Any) -> str:
    return "" if value is None else value if isinstance(value, str) else str(value)


def read_examples(section: DistillSection, base_dir: Path, commit: str | None = None) -> list[Example]:
    """The training examples of ``section.data``; ``commit``: the Hub commit its revision resolved to."""
    cols = section.columns
    fields = {"distill.columns.instruction": cols.instruction, "distill.columns.response": cols.response}
    if cols.input:
        fields["distill.columns.input"] = cols.input
    if cols.label:
        fields["distill.columns.label"] = cols.label
    rows = load_rows(section.data, base_dir, columns=fields, where="distill.data", commit=commit)
    out = []
    for row in rows:
        out.append(Example(
            instruction=_as_text(get_value(row, cols.instruction, None)),
            input=_as_text(get_value(row, cols.input, None)) if cols.input else "",
            original=_as_text(get_value(row, cols.response, None)),
            label=_as_text(get_value(row, cols.label, None)) if cols.label else None,
        ))
    empty = sum(1 for e in out if not e.instruction.strip() or not e.original.strip())
    if empty == len(out):
        raise DataError(f"distill.columns: every row has an empty instruction or response in {section.data.path or section.data.dataset}",
                        fix="check distill.columns.instruction and distill.columns.response")
    return out


def rewrites_cache(ctx: StageContext) -> Path:
    """The teacher's finished shards, kept by content beyond the stage (like the variants and the
    evaluations): a shard's key (:func:`.shards.shard_key`) is its prompts, the decoding settings, the
    teacher and its index, none of which the checks after generation touch. So a change of
    ``checker`` or ``min_length_ratio`` (or of the teacher log-probabilities) reruns the stage in
    seconds instead of having the teacher write every row again (22 minutes for 1,024 GSM8K
    problems on a 2-core CPU, bench/regimes.py). Only the recipe's own backend reads and writes it:
    one passed in (notebooks, tests) may answer differently under the same key."""
    return ctx.run_dir / ".cache" / "distill"


def run_distill(ctx: StageContext, *, backend: GenerationBackend | None = None,
                on_shard: Callable[[int, int, bool], None] | None = None) -> StageOutput:
    """Entry of the ``distill`` stage.

    ``backend`` replaces the one the recipe names (notebooks, tests); ``on_shard(index, total,
    resumed)`` is called after each shard is on disk (progress bars, tests that simulate a kill)."""
    started = time.time()
    section: DistillSection = ctx.section
    settings = section.generation
    base = ctx.input("base")
    teacher = base.outputs.get("hub_id") or Path(str(base.outputs.get("model_dir", "base"))).name
    teacher_sha = base.outputs.get("commit_sha")
    template = load_template(section.template, ctx.recipe.source_dir)
    # A Hub dataset is read at the commit its revision names now, and that commit is recorded.
    source_sha = resolve_dataset_revision(section.data, "distill.data") if section.data.dataset else None
    examples = read_examples(section, ctx.recipe.source_dir, source_sha)
    prompts = [template.render(e.instruction, e.input, e.original) for e in examples]
    conversations = [[{"role": "user", "content": p}] for p in prompts]

    shard_dir = ctx.work_dir / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    kept_dir = rewrites_cache(ctx)
    # On a GPU the rows in flight and the shard size the recipe leaves unset are sized from its memory.
    settings, size = distill_sizes(section, default_device(ctx.recipe), base.path("model_dir"))
    bounds = [(start, min(start + size, len(examples))) for start in range(0, len(examples), size)]
    generations: list[dict] = []
    gen_seconds = 0.0
    resumed = reused = 0
    teacher_identity = f"{teacher}@{teacher_sha or base.data.get('fingerprint', '')}"
    own_backend = backend is None

    @functools.cache
    def kept_identity() -> str:
        # Beyond this stage a Hub commit names the weights; a local or GGUF teacher, its files' hashes.
        if teacher_sha:
            return teacher_identity
        return f"{teacher}#{model_content_id(base.path('model_dir'))}"
    device_memory = None  # an engine in other processes (vLLM) reports the device-wide use it saw
    try:
        with progress.task("teacher rewrites", total=len(prompts), unit="row") as bar:
            for k, (lo, hi) in enumerate(bounds):
                key = shard_key(prompts[lo:hi], settings, teacher_identity, k)
                path = shard_dir / f"shard-{k:05d}.parquet"
                found = read_shard(path, key) if path.exists() else None
                if found is not None:
                    resumed += 1
                elif own_backend:
                    kept_key = shard_key(prompts[lo:hi], settings, kept_identity(), k)
                    kept = kept_dir / f"{kept_key[:32]}.parquet"
                    if kept.exists() and (found := read_shard(kept, kept_key)) is not None:
                        reused += 1
                if found is not None:
                    rows, meta = found
                else:
                    if backend is None:
                        backend = make_backend(ctx, settings, conversations)
                    t0 = time.perf_counter()
                    outs = backend.generate(conversations[lo:hi], seed=settings.seed + k)
                    seconds = time.perf_counter() - t0
                    device_memory = getattr(backend, "device_memory_used_bytes", None) or device_memory
                    rows = [{"row": lo + j, "rewrite": g.text, "tokens": g.tokens, "finish_reason": g.finish_reason}
                            for j, g in enumerate(outs)]
                    meta = {"key": key, "seconds": seconds, "tokens": sum(g.tokens for g in outs),
                            "backend": backend.name}
                    write_parquet(path, rows, SHARD_SCHEMA_FIELDS, meta)
                    if own_backend:  # the recipe's own teacher: its key says what it wrote
                        write_parquet(kept, rows, SHARD_SCHEMA_FIELDS, {**meta, "key": kept_key})
                    worklog.finished(f"distill shard {k} {key[:12]}")
                    log.info("distill: shard %d/%d, %d rows, %.1f tok/s", k + 1, len(bounds), hi - lo,
                             meta["tokens"] / max(seconds, 1e-9))
                gen_seconds += float(meta.get("seconds", 0.0))
                tok_s = float(meta.get("tokens", 0)) / max(float(meta.get("seconds", 0.0)), 1e-9)
                bar.advance(hi - lo, tok_s=round(tok_s, 1))
                generations.extend(rows)
                if on_shard is not None:
                    on_shard(k, len(bounds), found is not None)
    finally:
        if own_backend and backend is not None:
            backend.close()

    records = []
    reasons: Counter[str] = Counter()
    for gen in generations:
        ex = examples[gen["row"]]
        v = select(gen["rewrite"], ex.original, checker=section.checker, label=ex.label,
                   finish_reason=gen["finish_reason"], min_length_ratio=section.min_length_ratio)
        if v.verdict == "rejected":
            reasons[v.reason] += 1
        records.append({"instruction": ex.instruction, "input": ex.input, "original": ex.original,
                        "rewrite": gen["rewrite"], "selected": v.selected, "verdict": v.verdict,
                        "reason": v.reason, "label": v.label if v.label is not None else ex.label,
                        "answer": v.answer, "finish_reason": gen["finish_reason"], "tokens": gen["tokens"]})

    generation = settings.model_dump(mode="json")
    provenance = {
        "teacher": teacher, "teacher_sha": teacher_sha,
        "template_name": template.name, "template_sha256": template.sha256,
        "checker": section.checker, "rejection_phrases": list(REJECTION_PHRASES),
        "min_length_ratio": section.min_length_ratio,
        "generation": generation, "source": section.data.model_dump(mode="json", exclude_none=True),
        "source_sha": source_sha,
    }
    write_parquet(ctx.out_dir / DATA_FILE, records, DATA_FIELDS, provenance)
    logits = store_teacher_logits(ctx, records) if section.teacher_logits is not None else None

    n = len(records)
    accepted = sum(1 for r in records if r["verdict"] == "accepted")
    tokens = sum(r["tokens"] for r in records)
    metrics = {
        "rows": n,
        "accepted": accepted,
        "rejected": n - accepted,
        "acceptance_rate": round(accepted / n, 4) if n else 0.0,
        "rejection_reasons": {r: reasons[r] for r in REASONS if reasons[r]},
        "tokens_generated": tokens,
        "mean_rewrite_tokens": round(tokens / n, 1) if n else 0.0,
        "generation_seconds": round(gen_seconds, 3),
        "tokens_per_second": round(tokens / gen_seconds, 2) if gen_seconds > 0 else None,
        "shards": len(bounds),
        "shards_resumed": resumed,
        "shards_reused": reused,
        "device_memory_used_bytes": device_memory,
        "seconds": round(time.time() - started, 3),
    }
    if logits is not None:
        metrics["teacher_logits_positions"] = logits.positions
        metrics["teacher_logits_shards_resumed"] = logits.shards_resumed
        metrics["teacher_logits_seconds"] = logits.seconds
    outputs = {
        "data": DATA_FILE,
        "template_name": template.name,
        "template_sha256": template.sha256,
        "template_text": template.text,
        "teacher": teacher,
        "teacher_sha": teacher_sha,
        "source": section.data.model_dump(mode="json", exclude_none=True),
        "source_sha": source_sha,
        "columns": section.columns.model_dump(mode="json"),
        "data_license": section.data_license,
        "checker": section.checker,
        "rejection_phrases": list(REJECTION_PHRASES),
        "min_length_ratio": section.min_length_ratio,
        "generation": generation,
    }
    if logits is not None:
        settings = section.teacher_logits
        outputs["teacher_logits"] = {"dir": tl.DIR, "top_k": settings.top_k, "dtype": settings.dtype,
                                     "data": list(settings.data), "format": tl.FORMAT, "sequences": logits.sequences,
                                     "positions": logits.positions}
    return StageOutput(outputs=DistillOutputs(**outputs), metrics=DistillMetrics(**metrics))


def store_teacher_logits(ctx: StageContext, records: list[dict],
                         on_shard: Callable[[int, int, bool], None] | None = None) -> "tl.BuildResult":
    """The teacher's top-k log-probabilities on the sequences the ``kd`` variants will train on
    (:mod:`hubsdd.core.teacher_logits`), built resumably in the work folder, linked into ``teacher_logits/``."""

    from ...core.models import default_device, load_model, load_tokenizer, model_dtype

    section: DistillSection = ctx.section
    settings = section.teacher_logits
    base = ctx.recipe.base
    model_dir = ctx.input("base").path("model_dir")
    tokenizer = load_tokenizer(model_dir, trust_remote_code=base.trust_remote_code)
    groups = tl.sequence_groups(records, settings.data, tokenizer, section.shard_size)

    def teacher() -> Any:
        return load_model(model_dir, dtype=model_dtype(ctx.recipe), trust_remote_code=base.trust_remote_code,
                          allow_pickle=base.allow_pickle, device=default_device(ctx.recipe))

    with progress.task("teacher log-probabilities", total=len(groups), unit="shard") as bar:
        def advance(k: int, total: int, resumed: bool) -> None:
            bar.advance(1)
            if on_shard is not None:
                on_shard(k, total, resumed)

        built = tl.build(groups, model_loader=teacher, settings=settings, teacher=tl.teacher_identity(ctx.input("base")),
                         tokenizer=tl.tokenizer_identity(tokenizer), tokenizer_label=tl.tokenizer_name(tokenizer),
                         work_dir=ctx.work_dir / tl.DIR, on_shard=advance,
                         pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    dest = ctx.out_dir / tl.DIR
    dest.mkdir(parents=True, exist_ok=True)
    for src in sorted(built.dir.iterdir()):
        if src.is_file() and not src.name.startswith("."):
            link_or_copy(src, dest / src.name)  # the work folder is removed when the stage succeeds
    log.info("distill: teacher log-probabilities (top %d) at %d positions, %d of %d shards resumed",
             settings.top_k, built.positions, built.shards_resumed, built.shards)
    return built
