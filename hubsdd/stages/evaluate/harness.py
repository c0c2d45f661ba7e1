"""Running lm-eval on one loaded model, and reading its results: per task and per item.

Log-likelihood requests are scored by :mod:`.scoring` (each context once, the choices packed after
it), with lm-eval's numbers. Every model's outcome on every item is kept (lm-eval's logged
samples), so :mod:`.evidence` can give each average and retention a 95% interval and compare
models item by item.
"""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from ...core.errors import StageError
from ...core.models import fast_cpu_linears
from .hub_tasks import hub_error, leaf_tasks, load_hub_tasks
from .tasks import PreparedTask, primary_metric

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger("hubsdd.evaluate")


@contextlib.contextmanager
def quiet_lm_eval() -> Iterator[None]:
    """lm-eval logs every request batch at INFO; keep the run's log readable."""
    loggers = [logging.getLogger(n) for n in ("lm_eval", "lm-eval", "datasets")]
    levels = [lg.level for lg in loggers]
    # Its warnings about being handed a loaded model are about what hubsdd does on purpose.
    verbose = log.isEnabledFor(logging.DEBUG)
    for lg in loggers:
        lg.setLevel(logging.DEBUG if verbose else logging.ERROR)
    # lm-eval records its own git hash by running `git describe` in the current directory, which
    # prints "fatal: not a git repository" to the terminal wherever that is not a checkout.
    import lm_eval.evaluator as lm_evaluator

    git_hash = lm_evaluator.get_git_commit_hash
    if not verbose:
        lm_evaluator.get_git_commit_hash = lambda: None
    try:
        yield
    finally:
        lm_evaluator.get_git_commit_hash = git_hash
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def evaluate_model(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", prepared: dict[str, PreparedTask],
                   *, hub: bool, task_dir: Path | None, seed: int, batch_size: int) -> dict:
    """Run lm-eval's ``simple_evaluate`` on one loaded model; returns lm-eval's results dict.

    The model is handed to lm-eval already loaded (HFLM around the object), so hubsdd's loading
    rules (safetensors only, remote code opt-in) apply to evaluation as well."""
    from lm_eval import evaluator
    from lm_eval.tasks import TaskManager

    from .scoring import packed_lm_class

    names = list(prepared)
    with quiet_lm_eval():
        lm = packed_lm_class()(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        if hub:
            manager, objs = load_hub_tasks(names, {n: p.num_fewshot for n, p in prepared.items()})
            task_specs: list[Any] = []
            samples: dict[str, list[int]] | None = {}
            for name, obj in objs.items():
                p = prepared[name]
                if p.aggregate:  # only the sampled leaves; summarize() aggregates them
                    task_specs += [leaf for leaf in leaf_tasks(obj) if leaf.task_name in p.leaves]
                else:
                    task_specs.append(obj)
                if p.samples is not None:
                    samples.update(p.samples)
            if not any(p.samples is not None for p in prepared.values()):
                samples = None
        else:
            manager = TaskManager(include_path=str(task_dir), include_defaults=False)
            task_specs, samples = names, None
        try:
            with fast_cpu_linears(model):
                results = evaluator.simple_evaluate(
                    model=lm, tasks=task_specs, samples=samples, task_manager=manager,
                    random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
                    # per-item outcomes: every model is scored on the same items, so models
                    # are compared item by item (hubsdd.core.stats)
                    bootstrap_iters=1000, log_samples=True,
                )
        except (ConnectionError, OSError) as exc:
            if hub:
                raise hub_error(exc, names) from exc
            raise
    if results is None:
        raise StageError("lm-eval returned no results (not rank 0?)", fix="run evaluation in a single process")
    return results


def number(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def summarize(raw: dict, prepared: dict[str, PreparedTask]) -> dict[str, dict]:
    """Per task: the primary metric (value, stderr), every numeric metric, lm-eval's version,
    shots and the items evaluated."""
    out: dict[str, dict] = {}
    res, versions = raw.get("results", {}), raw.get("versions", {})
    for name, p in prepared.items():
        row = aggregate_leaves(raw, p) if p.aggregate else res.get(name)
        if row is None:
            raise StageError(f"lm-eval produced no result for task {name!r}",
                             fix="look at the lm-eval log above; the task configuration may be wrong")
        metric = primary_metric(name)
        value = number(row.get(metric.key))
        if value is None:
            raise StageError(f"lm-eval produced no {metric.key!r} for task {name!r} (has: {sorted(row)})")
        metrics = {k: v for k, v in ((k, number(v)) for k, v in row.items() if "," in k) if v is not None}
        effective = sum(int((raw.get("n-samples", {}).get(leaf) or {}).get("effective", 0)) for leaf in p.leaves)
        scores, chance = item_scores(raw, p)
        out[name] = {
            "item_scores": scores,
            "item_chance": chance,
            "metric": metric.label,
            "value": value,
            "stderr": number(row.get(metric.stderr_key)),
            "metrics": metrics,
            "version": versions.get(name),
            "num_fewshot": p.num_fewshot,
            "n_samples": effective,
        }
    return out


def item_scores(raw: dict, p: PreparedTask) -> tuple[dict[str, float], dict[str, float]]:
    """Per item (id as a string): the primary metric's score and the score of guessing at random
    (1 / number of choices; 0 for generated answers), from lm-eval's logged samples."""
    metric = primary_metric(p.name)
    scores: dict[str, float] = {}
    chance: dict[str, float] = {}
    logged = raw.get("samples") or {}
    for leaf in p.leaves:
        ids = p.item_of.get(leaf, {})
        for sample in logged.get(leaf, []):
            if sample.get("filter", "none") != metric.filter or metric.name not in sample:
                continue
            item = ids.get(int(sample["doc_id"]))
            if item is None:
                raise StageError(f"lm-eval scored doc {sample['doc_id']} of {leaf!r}, which is not a sampled item",
                                 fix="report this; hubsdd's item bookkeeping and lm-eval disagree")
            scores[str(item)] = float(sample[metric.name])
            # multiple choice: one log-likelihood (a tuple) per choice; generated answers: strings
            resps = sample.get("filtered_resps") or []
            choices = len(resps) if resps and all(isinstance(r, (tuple, list)) for r in resps) else 0
            chance[str(item)] = 1.0 / choices if choices else 0.0
    missing = len(p.items) - len(scores)
    if missing:
        raise StageError(f"lm-eval logged outcomes for {len(scores)} of {len(p.items)} items of {p.name!r}",
                         fix="report this; per-item outcomes are needed for paired comparisons")
    return scores, chance


def aggregate_leaves(raw: dict, p: PreparedTask) -> dict:
    """A group's primary metric from its leaves, weighted by size, with lm-eval's own formulas
    (as its ``aggregate_metric_list: weight_by_size`` does)."""
    from lm_eval.api.metrics import aggregate_subtask_metrics, pooled_sample_stderr

    metric = primary_metric(p.name)
    values, stderrs, sizes = [], [], []
    for leaf in p.leaves:
        row = raw.get("results", {}).get(leaf, {})
        value = number(row.get(metric.key))
        if value is None:
            raise StageError(f"lm-eval produced no {metric.key!r} for {leaf!r} (part of {p.name!r})")
        values.append(value)
        stderrs.append(number(row.get(metric.stderr_key)))
        sizes.append(int((raw.get("n-samples", {}).get(leaf) or {}).get("effective", 0)))
    row: dict[str, Any] = {metric.key: aggregate_subtask_metrics(values, sizes, weight_by_size=True)}
    if all(e is not None for e in stderrs) and sum(sizes) > 1:
        row[metric.stderr_key] = pooled_sample_stderr(stderrs, sizes)
    return row
