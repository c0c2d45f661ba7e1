"""The ``evaluate`` stage: every model of the run scored on the same items, compared with the base.

Every model (base, pruned, each fine-tuned variant, the merge) is evaluated with lm-eval on the same
tasks, shots and items (:mod:`.tasks`; offline: :mod:`.offline`, from the Hub: :mod:`.hub_tasks`;
run by :mod:`.harness`). A model's results are cached in the run directory under its content hash
and exactly what was evaluated, so no model is evaluated twice. Then: averages and retention
(:mod:`.results`) with intervals and paired comparisons (:mod:`.evidence`), fidelity to the base
(top-1 agreement, KL, greedy draft acceptance, :mod:`.fidelity`) on the base model's
continuations of held-out prompts taken from the evaluated items, speculative decoding with each
pruned model as the base's draft (:mod:`.speculative`), and the per-task figure (:mod:`.plots`).

With ``evaluate.dev``, every model is also scored on *dev* items (the next ones of the same seeded
order after the test items) with their own paired evidence (``metrics.dev``): what
``publish.release: auto`` chooses on (:mod:`hubsdd.core.release_choice`), so that the test figures the
card reports are not those the release was picked by.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from ...core import worklog
from ...core.errors import DataError, StageError
from ...core.files import atomic_write_json
from ...core.models import default_device, fast_cpu_linears, model_content_id
from ...core.stage_io import StageContext, StageOutput, checkpoint_dirs
from ...core import evidence
from .harness import evaluate_model, summarize
from .hub_tasks import prepare_hub_tasks
from .offline import TASK_FILES_VERSION, prepare_offline_tasks
from .plots import plot_task_bars
from ...core.evaluate_outputs import EvaluateMetrics, EvaluateOutputs
from .results import average_score, retention, stderr_of
from .speculative import measure_plain, measure_speculative, speculative_prompts
from .tasks import PreparedTask, lm_eval_version, resolve_tasks

log = logging.getLogger("hubsdd.evaluate")



def models_to_evaluate(ctx: StageContext) -> dict[str, Path]:
    """base, pruned, each fine-tuned variant, the merge — the ones that ran, in that order,
    filtered by ``evaluate.models``."""
    found = checkpoint_dirs(ctx.inputs)
    wanted = ctx.section.models
    if wanted is None:
        return found
    missing = [m for m in wanted if m not in found]
    if missing:
        raise StageError(
            f"evaluate.models: {missing} were not produced by this run (available: {', '.join(found)})",
            fix="remove them from `evaluate.models`, or add the recipe sections that produce them",
        )
    return {m: found[m] for m in found if m in wanted}


def _load(name: str, path: Path, ctx: StageContext, device: str) -> tuple[Any, Any]:
    from ...core.models import load_model, load_tokenizer, model_dtype

    base = ctx.recipe.base
    is_base = name == "base"
    model = load_model(path, dtype=model_dtype(ctx.recipe), trust_remote_code=base.trust_remote_code,
                       allow_pickle=base.allow_pickle and is_base, device=device)
    tok = load_tokenizer(path, trust_remote_code=base.trust_remote_code)
    return model, tok


def _key(obj: Any) -> str:
    from ...core.version import __version__
    from ...core.recipe import canonical_json

    return hashlib.sha256(canonical_json({"hubsdd": __version__, **obj}).encode()).hexdigest()[:32]


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def evaluation_spec(prepared: dict[str, PreparedTask], *, hub: bool, seed: int, batch_size: int) -> dict:
    """Everything that decides a model's scores besides the model: the cache key of its results."""
    return {
        "mode": "hub" if hub else "offline",
        "seed": seed,
        "batch_size": batch_size,
        "lm_eval": lm_eval_version(),
        **({} if hub else {"task_files": TASK_FILES_VERSION}),
        "tasks": {t: {"shots": p.num_fewshot, "items": p.items, "leaves": p.leaves, "split": p.split,
                      "dataset": p.dataset} for t, p in prepared.items()},
    }


def measure_fidelity(ctx: StageContext, settings: Any, prepared: dict[str, PreparedTask], models: dict[str, Path],
                     content: dict[str, str], base_dir: Path, device: str) -> dict[str, dict]:
    """Top-1 agreement, KL(base || model) and greedy draft acceptance of every model but the base,
    on the base's continuations of held-out prompts (:mod:`.fidelity`). Cached per model."""
    from . import fidelity

    cache = ctx.run_dir / ".cache" / "fidelity"
    prompts = speculative_prompts(prepared, settings.prompts)
    base_id = content.get("base") or model_content_id(base_dir)
    ref_key = _key({"base": base_id, "prompts": prompts, "max_new_tokens": settings.max_new_tokens})
    todo = {}
    out: dict[str, dict] = {}
    for name, path in models.items():
        if name == "base":
            continue
        path_key = _key({"model": content[name], "reference": ref_key, "k": settings.num_assistant_tokens})
        found = _read_json(cache / f"{path_key}.json")
        if found is None:
            todo[name] = path_key
        else:
            out[name] = found
    if not todo:
        return {n: out[n] for n in models if n in out}
    base, tok = _load("base", base_dir, ctx, device)
    with fast_cpu_linears(base):
        ref_file = cache / f"reference-{ref_key}.json"
        ref_data = _read_json(ref_file)
        if ref_data is None:
            log.info("evaluate: fidelity: base continuations of %d held-out prompts", len(prompts))
            reference = fidelity.reference_continuations(base, tok, prompts, settings.max_new_tokens,
                                                         settings.batch_size)
            atomic_write_json(ref_file, reference.to_dict())
        else:
            reference = fidelity.Reference.from_dict(ref_data)
        for name, path_key in todo.items():
            model, _ = _load(name, models[name], ctx, device)
            with fast_cpu_linears(model):
                result = fidelity.measure(model, base, tok, reference, num_assistant_tokens=settings.num_assistant_tokens,
                                          batch_size=settings.batch_size)
            atomic_write_json(cache / f"{path_key}.json", result)
            out[name] = result
            del model
            gc.collect()
    del base
    gc.collect()
    return {n: out[n] for n in models if n in out}


def score_models(ctx: StageContext, models: dict[str, Path], content: dict[str, str],
                 prepared: dict[str, PreparedTask], *, hub: bool, task_dir: Path,
                 folder: str) -> tuple[dict[str, dict], dict[str, str]]:
    """Every model's lm-eval record on ``prepared`` (from the run's cache when evaluated before),
    each written to ``<stage>/<folder>/<model>.json``; the records and those paths."""
    section = ctx.section
    version = lm_eval_version()
    names = list(prepared)
    cache = ctx.run_dir / ".cache" / "evaluate"
    spec = evaluation_spec(prepared, hub=hub, seed=section.seed, batch_size=section.batch_size)
    records: dict[str, dict] = {}
    paths: dict[str, str] = {}
    device = default_device(ctx.recipe)
    for name, path in models.items():
        cached = cache / f"{_key({'model': content[name], 'spec': spec})}.json"
        record = _read_json(cached)
        if record is None:
            log.info("evaluate: %s (%s) on %s%s", name, path, ", ".join(names), " (dev items)" if folder != "results" else "")
            started = time.time()
            model, tok = _load(name, path, ctx, device)
            raw = evaluate_model(model, tok, prepared, hub=hub, task_dir=task_dir, seed=section.seed,
                                 batch_size=section.batch_size)
            del model
            gc.collect()
            summary = summarize(raw, prepared)
            record = {
                "model_content_id": content[name],
                "lm_eval_version": version,
                "mode": "hub" if hub else "offline",
                "seed": section.seed,
                "seconds": round(time.time() - started, 3),
                "tasks": {
                    t: {
                        **summary[t],
                        **prepared[t].info(),
                        "item_ids": prepared[t].items,
                        "lm_eval_versions": {k: raw.get("versions", {}).get(k) for k in [t, *prepared[t].leaves]
                                             if k in raw.get("versions", {})},
                        "lm_eval_configs": {leaf: raw.get("configs", {}).get(leaf) for leaf in prepared[t].leaves},
                    }
                    for t in names
                },
                "average": average_score(summary),
            }
            atomic_write_json(cached, record)
            worklog.finished(f"evaluate model {name} {cached.stem[:12]}")
        record = {"model": name, "model_dir": str(path), **record}
        records[name] = record
        atomic_write_json(ctx.out_dir / folder / f"{name}.json", record)
        paths[name] = f"{folder}/{name}.json"
    return records, paths


def dev_tasks(section: Any, names: list[str], shots: dict[str, int], hub: bool,
              task_dir: Path) -> tuple[dict[str, PreparedTask], list[str]]:
    """The dev items of each task: ``dev`` items after the ``offset + limit`` test items of the
    seeded order; the tasks with no item left are returned apart (left out of the dev set)."""
    offset = section.offset + section.limit
    prepared: dict[str, PreparedTask] = {}
    left_out: list[str] = []
    for name in names:
        try:
            one = (prepare_hub_tasks([name], shots, section.dev, section.seed, offset) if hub else
                   prepare_offline_tasks([name], shots, section.dev, section.seed, task_dir, offset))
        except DataError:  # the test items took every item of this task
            left_out.append(name)
            continue
        prepared.update({t: p for t, p in one.items() if p.items})
        left_out += [t for t, p in one.items() if not p.items]
    return prepared, left_out


def score_dev(ctx: StageContext, models: dict[str, Path], content: dict[str, str], *, hub: bool,
              names: list[str], shots: dict[str, int]) -> tuple[dict, dict[str, str]]:
    """Every model on the dev items, and their paired evidence (``metrics.dev``)."""
    section = ctx.section
    prepared, left_out = dev_tasks(section, names, shots, hub, ctx.work_dir / "dev-tasks")
    if not prepared:
        raise StageError(f"evaluate.dev: no task has items left after the {section.limit} test items "
                         f"(offset {section.offset}): {', '.join(left_out)}",
                         fix="lower evaluate.limit, or leave `dev` out and name `publish.release` yourself")
    records, paths = score_models(ctx, models, content, prepared, hub=hub, task_dir=ctx.work_dir / "dev-tasks",
                                  folder="dev")
    per_item = {m: {t: r["tasks"][t]["item_scores"] for t in prepared} for m, r in records.items()}
    first = next(iter(records.values()))
    chance = {t: first["tasks"][t]["item_chance"] for t in prepared}
    dev = {"offset": section.offset + section.limit, "items": {t: len(p.items) for t, p in prepared.items()},
           "left_out": left_out, "evidence": evidence.build(per_item, chance)}
    return dev, paths


def run_evaluate(ctx: StageContext) -> StageOutput:
    """Entry of the ``evaluate`` stage."""
    from ...core.models import set_threads

    section = ctx.section
    set_threads()
    device = default_device(ctx.recipe)
    models = models_to_evaluate(ctx)
    if not models:
        raise StageError("nothing to evaluate: no model stage has run", fix="run the base and prune stages first")
    hub, names, shots = resolve_tasks(section)
    task_dir = ctx.work_dir / "tasks"
    if hub:
        prepared = prepare_hub_tasks(names, shots, section.limit, section.seed, section.offset)
    else:
        prepared = prepare_offline_tasks(names, shots, section.limit, section.seed, task_dir, section.offset)
    version = lm_eval_version()

    # Per-model results are kept in the run's cache, keyed by the model's content and exactly what
    # was evaluated: they survive a kill, and a model evaluated before (by another recipe sharing
    # the run directory, or before a variant was added) is not evaluated again.
    content = {name: model_content_id(path) for name, path in models.items()}
    records, results_out = score_models(ctx, models, content, prepared, hub=hub, task_dir=task_dir, folder="results")
    scores: dict[str, dict[str, dict]] = {}
    seconds: dict[str, float] = {}
    for name, record in records.items():
        scores[name] = {t: {"metric": record["tasks"][t]["metric"], "value": record["tasks"][t]["value"],
                            "stderr": stderr_of(record["tasks"][t])} for t in names}
        seconds[name] = record["seconds"]
    dev, dev_out = score_dev(ctx, models, content, hub=hub, names=names, shots=shots) if section.dev else (None, None)

    averages = {m: average_score(s) for m, s in scores.items()}
    retained = retention(scores, averages)
    per_item = {m: {t: r["tasks"][t]["item_scores"] for t in names} for m, r in records.items()}
    first = next(iter(records.values()))
    chance = {t: first["tasks"][t]["item_chance"] for t in names}
    found = evidence.build(per_item, chance)

    base_dir = models.get("base") or (ctx.input("base").path("model_dir") if "base" in ctx.inputs else None)
    fidelity_out: dict[str, dict] = {}
    if section.fidelity is not None and base_dir is not None and len(models) > 1:
        fidelity_out = measure_fidelity(ctx, section.fidelity, prepared, models, content, base_dir, device)

    speculative: dict[str, dict] = {}
    spec_settings = section.speculative
    drafts = [m for m in models if m != "base"]
    if spec_settings is not None and drafts and base_dir is not None:
        prompts = speculative_prompts(prepared, spec_settings.prompts)
        target, tok = _load("base", base_dir, ctx, device)
        plain = measure_plain(target, tok, prompts, spec_settings.max_new_tokens)
        for name in drafts:
            draft, _ = _load(name, models[name], ctx, device)
            speculative[name] = measure_speculative(target, draft, tok, prompts, spec_settings.max_new_tokens,
                                                    spec_settings.num_assistant_tokens, plain=plain)
            speculative[name].update(prompts=len(prompts), max_new_tokens=spec_settings.max_new_tokens,
                                     num_assistant_tokens=spec_settings.num_assistant_tokens, device=device)
            del draft
            gc.collect()
        del target
        gc.collect()

    plot_task_bars(scores, averages, ctx.out_dir / "task_bars.png")
    metrics = {
        "scores": scores,
        "average": averages,
        "retention": retained,
        "speculative": speculative,
        "tasks": {t: p.info() for t, p in prepared.items()},
        "mode": "hub" if hub else "offline",
        "models": list(models),
        "lm_eval_version": version,
        "seed": section.seed,
        "device": device,
        "seconds_per_model": seconds,
        "evidence": found,
        "fidelity": fidelity_out,
        "offset": section.offset,
    }
    if dev is not None:
        metrics["dev"] = dev
    return StageOutput(
        outputs=EvaluateOutputs(results=results_out, plots={"task_bars": "task_bars.png"}, dev_results=dev_out),
        metrics=EvaluateMetrics(**metrics),
    )
