"""The stage graph: run directory, fingerprints, resume and atomic writes.

A run lives in ``runs/<recipe name>/``; each stage owns ``runs/<name>/<stage>/`` and proves it
finished with a ``stage.json`` written last. A stage's fingerprint hashes its recipe section, its
inputs' fingerprints and the hubsdd version, so it is known from the recipe alone (``plan`` needs
no model). A stage whose ``stage.json`` carries the expected fingerprint is skipped.

Stages write into a staging folder that is renamed into place only when they succeed, so a killed
stage leaves nothing a rerun would trust. Work that should survive a kill (distillation shards)
goes into ``ctx.work_dir``, a folder keyed by the fingerprint and removed once the stage succeeds.

Stages talk to each other only through ``stage.json`` (``outputs`` and ``metrics``) and the files
it names; the entry functions are imported lazily so ``validate`` and ``plan`` stay fast.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import importlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..core import worklog
from ..core.version import __version__
from ..core.files import atomic_write_json, atomic_write_text, remove_stale_temporaries
from ..core.errors import OutOfMemoryError, StageError
from ..core.stage_io import StageContext, StageOutput, StageResult, checkpoint_dirs  # noqa: F401  (the runner's API too)
from .stage_records import (  # noqa: F401  (part of the runner's API)
    STAGE_FILE, record_digest, stage_files, check_cached_stages, damaged_files, disk_errors, read_stage,
    run_lock,
)
from ..core.models import stage_device_scope
from ..core.recipe import Recipe, canonical_json

log = logging.getLogger("hubsdd")



# --------------------------------------------------------------------------- stages


@dataclass(frozen=True)
class StageSpec:
    name: str
    inputs: tuple[str, ...]
    entry: str  # "module:function", imported when the stage runs
    enabled: Callable[[Recipe], bool] = lambda r: True
    # Extra configuration hashed into the fingerprint besides the recipe section.
    extra: Callable[[Recipe], Any] = lambda r: None
    describe: str = ""


def _base_identity(recipe: Recipe) -> Any:
    """Local files change without the recipe changing: hash their name, size and mtime."""
    base = recipe.base
    ident: dict[str, Any] = {}
    for key in ("path", "gguf_file"):
        value = getattr(base, key)
        if not value:
            continue
        try:
            p = recipe.resolve_path(value)
        except FileNotFoundError:
            ident[key] = "missing"
            continue
        files = [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else []
        ident[key] = [(str(f.relative_to(p) if f != p else f.name), f.stat().st_size, int(f.stat().st_mtime)) for f in files]
    return ident


def _card_extra(recipe: Recipe) -> Any:
    # The card shows the recipe and links the repos: any change to either re-renders it. Signing
    # happens at publish time (hubsdd.hub.signing), so it does not decide the card stage's output.
    publish = {k: v for k, v in recipe.section_dict("publish").items() if k != "signing"}
    return {"publish": publish, "recipe_sha256": recipe.sha256()}


STAGES: tuple[StageSpec, ...] = (
    StageSpec("base", (), "hubsdd.stages.base.stage:prepare_base", extra=_base_identity,
              describe="resolve and snapshot the base model"),
    StageSpec("prune", ("base",), "hubsdd.stages.prune.stage:run_prune", describe="score blocks, remove layers"),
    StageSpec("distill", ("base",), "hubsdd.stages.distill.stage:run_distill",
              enabled=lambda r: r.distill is not None, describe="teacher rewrites the training data"),
    StageSpec("finetune", ("base", "prune", "distill"), "hubsdd.stages.finetune.stage:run_finetune",
              enabled=lambda r: r.finetune is not None, describe="fine-tune each variant"),
    StageSpec("merge", ("prune", "finetune"), "hubsdd.stages.merge.stage:run_merge",
              enabled=lambda r: r.merge is not None, describe="merge variants with mergekit"),
    StageSpec("evaluate", ("base", "prune", "finetune", "merge"), "hubsdd.stages.evaluate.stage:run_evaluate",
              enabled=lambda r: r.evaluate is not None, describe="lm-eval and speculative decoding"),
    StageSpec("card", ("base", "prune", "distill", "finetune", "merge", "evaluate"), "hubsdd.stages.card.stage:run_card",
              extra=_card_extra, describe="assemble the release: model card, dataset card, files"),
)
STAGE_NAMES = tuple(s.name for s in STAGES)
SPECS = {s.name: s for s in STAGES}


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"hubsdd": __version__}
    for dist in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "huggingface-hub",
                 "mergekit", "lm-eval", "gguf", "safetensors", "vllm"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def fingerprint(spec: StageSpec, recipe: Recipe, input_fps: dict[str, str]) -> str:
    payload = {
        "stage": spec.name,
        "config": recipe.section_dict(spec.name),
        "extra": spec.extra(recipe),
        "inputs": input_fps,
        "hubsdd": __version__,
        # a global seed that every stage may use
        "seed": recipe.seed,
    }
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


# --------------------------------------------------------------------------- run directory


def load_results(run_dir: Path) -> dict[str, StageResult]:
    """Every finished stage of a run directory, in stage order."""
    out = {}
    for name in STAGE_NAMES:
        res = read_stage(Path(run_dir), name)
        if res is not None:
            out[name] = res
    return out


@dataclass
class PlannedStage:
    name: str
    status: str  # cached | stale | pending | disabled
    fingerprint: str | None
    describe: str


def expected_fingerprints(recipe: Recipe) -> dict[str, str]:
    """The fingerprint each enabled stage will have once everything upstream has run."""
    fps: dict[str, str] = {}
    for spec in STAGES:
        if not spec.enabled(recipe):
            continue
        fps[spec.name] = fingerprint(spec, recipe, {i: fps[i] for i in spec.inputs if i in fps})
    return fps


def plan(recipe: Recipe) -> list[PlannedStage]:
    fps = expected_fingerprints(recipe)
    out = []
    for spec in STAGES:
        if spec.name not in fps:
            out.append(PlannedStage(spec.name, "disabled", None, spec.describe))
            continue
        found = read_stage(recipe.run_dir, spec.name)
        if found is None:
            status = "pending"
        elif found.fingerprint == fps[spec.name]:
            status = "cached"
        else:
            status = "stale"
        out.append(PlannedStage(spec.name, status, fps[spec.name], spec.describe))
    return out


def _install(staging: Path, final: Path) -> None:
    """Put a finished staging folder in place of the stage folder."""
    trash = None
    if final.exists():
        trash = final.with_name(f".trash-{final.name}-{uuid.uuid4().hex[:8]}")
        os.replace(final, trash)
    os.replace(staging, final)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def stage_work_dir(run_dir: Path, stage: str, fp: str) -> Path:
    """Where a stage keeps work that must survive a kill: keyed by its fingerprint, so a rerun of the
    same configuration finds it and a changed one starts afresh. Processes started outside the
    runner (``accelerate launch -m hubsdd.pipeline.launch``) use the same rule to meet the runner's cache."""
    return Path(run_dir) / ".work" / f"{stage}-{fp[:16]}"


def _load_entry(entry: str) -> Callable[[StageContext], StageOutput]:
    module, _, func = entry.partition(":")
    return getattr(importlib.import_module(module), func)


def run_stage(spec: StageSpec, recipe: Recipe, results: dict[str, StageResult], fp: str,
              run_dir: Path | None = None) -> StageResult:
    """Run one stage into a staging folder and install it (stage.json last) in place of the old one."""
    run_dir = Path(run_dir) if run_dir is not None else recipe.run_dir
    staging = run_dir / f".staging-{spec.name}-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    work_dir = stage_work_dir(run_dir, spec.name, fp)
    work_dir.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(
        recipe=recipe, name=spec.name, run_dir=run_dir, out_dir=staging, work_dir=work_dir,
        inputs={i: results[i] for i in spec.inputs if i in results}, fingerprint=fp,
    )
    started = time.time()

    try:
        with stage_device_scope(recipe) as usage:
            output = _load_entry(spec.entry)(ctx)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if _is_out_of_memory(exc):
            raise OutOfMemoryError(
                f"stage {spec.name!r} ran out of memory ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
                fix="lower the batch sizes (finetune.batch_size, raising gradient_accumulation_steps to keep the "
                    "effective batch; distill.generation.batch_size; evaluate.batch_size), set "
                    "finetune.gradient_checkpointing: true, or use a larger GPU; finished work is kept, rerun "
                    "to resume") from exc
        raise
    seconds = time.time() - started
    data = {
        "stage": spec.name,
        "fingerprint": fp,
        "inputs": {k: v.fingerprint for k, v in ctx.inputs.items()},
        "config": recipe.section_dict(spec.name),
        "outputs": _plain(output.outputs),
        "metrics": _plain(output.metrics),
        "device": usage["device"],
        "dtype": usage["dtype"],
        # the most this stage held on the GPU (CUDA only)
        "peak_gpu_memory_bytes": usage.get("peak_gpu_memory_bytes"),
        "started_at": _dt.datetime.fromtimestamp(started, _dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 3),
        "versions": _versions(),
        "files": stage_files(staging),
    }
    data = json.loads(json.dumps(data, default=str))  # the digest covers exactly what is read back
    data["digest"] = record_digest(data)
    # stage.json last: its presence is what says the stage finished.
    atomic_write_json(staging / STAGE_FILE, data)
    final = run_dir / spec.name
    _install(staging, final)
    worklog.finished(f"stage {spec.name} {fp[:12]}")
    shutil.rmtree(work_dir, ignore_errors=True)
    return StageResult(spec.name, final, data)


def _plain(value: Any) -> Any:
    """A stage's typed outputs/metrics (hubsdd.core.outputs) as the JSON that stage.json holds."""
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    names = {type(exc).__name__, *(t.__name__ for t in type(exc).__mro__)}
    return "OutOfMemoryError" in names or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def _clean_stale_staging(run_dir: Path) -> None:
    """What a killed run left half-made: staging and trash folders, and the temporary files of
    atomic writes (hubsdd.core.files) anywhere in the run directory. The run lock is held, so nothing is
    writing them now."""
    for p in run_dir.glob(".staging-*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in run_dir.glob(".trash-*"):
        shutil.rmtree(p, ignore_errors=True)
    remove_stale_temporaries(run_dir)


def run(recipe: Recipe | str | Path, until: str | None = None, force: tuple[str, ...] = (),
        on_event: Callable[[str, str, float | None], None] | None = None) -> dict[str, StageResult]:
    """Run every enabled stage up to ``until`` (inclusive), skipping cached ones, then the card.

    ``on_event(stage, status, seconds)`` reports progress: status is 'cached', 'running', 'done',
    or 'skipped' (disabled in the recipe or past ``until``).
    """
    if until is not None and until not in STAGE_NAMES:
        raise StageError(f"unknown stage {until!r}", fix=f"use one of: {', '.join(STAGE_NAMES)}")
    for name in force:
        if name not in STAGE_NAMES:
            raise StageError(f"unknown stage {name!r} in --force", fix=f"use one of: {', '.join(STAGE_NAMES)}")
    if not isinstance(recipe, Recipe):
        from ..core.recipe import load_recipe

        recipe = load_recipe(recipe)
    # Facts on disk (a local base's layer count, local data columns) can fail the recipe right now.
    from . import preflight

    preflight.check(recipe)
    force = tuple(force)
    notify = on_event or (lambda *a: None)
    run_dir = recipe.run_dir
    stop = STAGE_NAMES.index(until) if until else len(STAGE_NAMES) - 1
    with disk_errors(run_dir), run_lock(run_dir):
        _clean_stale_staging(run_dir)
        expected = expected_fingerprints(recipe)
        # The teacher's backend must be able to start here: known now, not after base and prune.
        distill_done = getattr(read_stage(run_dir, "distill"), "fingerprint", None) == expected.get("distill")
        if "distill" in expected and stop >= STAGE_NAMES.index("distill") and ("distill" in force or not distill_done):
            preflight.check_generation(recipe)
        atomic_write_text(run_dir / "recipe.yaml", recipe.text())
        # Every cached stage this run will trust is checked first, so one message names all the damage.
        check_cached_stages([found for name, fp in expected.items() if name not in force
                             and (found := read_stage(run_dir, name)) is not None and found.fingerprint == fp])
        results: dict[str, StageResult] = {}
        for idx, spec in enumerate(STAGES):
            past_until = idx > stop and spec.name != "card"
            if not spec.enabled(recipe) or past_until:
                notify(spec.name, "skipped", None)
                continue
            # The card describes what has run so far: its inputs are whichever stages finished.
            missing = [i for i in spec.inputs if SPECS[i].enabled(recipe) and i not in results
                       and spec.name != "card"]
            if missing:
                raise StageError(f"stage {spec.name!r} needs {missing} which did not run")
            if spec.name == "prune":  # the base model's layer count is known now, before any heavy work
                preflight.check(recipe, base=results["base"])
            fp = fingerprint(spec, recipe, {i: results[i].fingerprint for i in spec.inputs if i in results})
            # A forced stage is redone whatever state its folder is in (the fix a damaged one names).
            found = None if spec.name in force else read_stage(run_dir, spec.name)
            if found is not None and found.fingerprint == fp:
                check_cached_stages([found])
                # A kill between installing a stage and removing its work folder leaves the folder:
                # the stage is finished, so what it kept for a resume is garbage now.
                shutil.rmtree(stage_work_dir(run_dir, spec.name, fp), ignore_errors=True)
                results[spec.name] = found
                notify(spec.name, "cached", found.data.get("seconds"))
                continue
            notify(spec.name, "running", None)
            log.info("stage %s: running (fingerprint %s)", spec.name, fp[:12])
            results[spec.name] = run_stage(spec, recipe, results, fp)
            notify(spec.name, "done", results[spec.name].data["seconds"])
        return results


def rerender_card(run_dir: Path) -> Path:
    """``hubsdd card runs/<name>``: render the cards again from a finished run's stage.json files."""
    from ..core.recipe import load_recipe

    run_dir = Path(run_dir)
    recipe_file = run_dir / "recipe.yaml"
    if not recipe_file.exists():
        raise StageError(f"{run_dir} is not a hubsdd run directory (no recipe.yaml)",
                         fix="pass runs/<recipe name>, created by `hubsdd run`")
    recipe = load_recipe(recipe_file)
    results = load_results(run_dir)
    card = results.pop("card", None)
    if card is None:
        raise StageError(f"{run_dir} has no finished card stage", fix="run `hubsdd run <recipe>` first")
    # The same staging and atomic install as a run: a failure leaves the previous release in place.
    with run_lock(run_dir):
        done = run_stage(SPECS["card"], recipe, results, card.fingerprint, run_dir=run_dir)
    return done.path("model_dir") / "README.md"
