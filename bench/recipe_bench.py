"""What the benchmarks that drive the recipe machinery share (``bench/quality.py``,
``bench/regimes.py``): recipes as dicts run through :func:`hubsdd.pipeline.runner.run` in one run directory
(so every stage, trained variant and evaluated model is computed once, and an interrupted run
resumes), a ledger of stage seconds across invocations, and the evaluate stage's figures in
``quality.json``'s schema with paired 95% intervals.
"""

from __future__ import annotations

import copy
import json
import re
import time
from pathlib import Path
from typing import Any, Callable

import yaml

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

METHODS = ("sft", "sdd", "kd", "sdd-kd")
# The differences the paper's question is about, as (a, b) for a - b.
NAMED_PAIRS = [("sdd", "sft"), ("kd", "sft"), ("sdd-kd", "sdd"), ("sdd-kd", "kd"), ("sdd-kd", "sft"), ("kd", "sdd"), ("merge", "sdd"),
               ("merge", "sft")]


# --------------------------------------------------------------------------- recipes


def load_dict(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def to_recipe(d: dict, runs_dir: Path) -> Any:
    from hubsdd.core.recipe import parse_recipe

    d = dict(d, runs_dir=str(runs_dir))
    return parse_recipe(yaml.safe_dump(d, sort_keys=False), "bench recipe", ROOT / "bench" / "recipe.yaml")


def with_learning_rates(d: dict, rates: dict[str, float]) -> tuple[dict, dict[str, dict]]:
    """The recipe with each method's variant at the sweep's best rate; and what changed."""
    d = copy.deepcopy(d)
    notes = {}
    for name, v in d["finetune"]["variants"].items():
        if name in rates:
            notes[name] = {"recipe": v.get("learning_rate"), "sweep_best": rates[name]}
            v["learning_rate"] = rates[name]
    return d, notes


# --------------------------------------------------------------------------- running


class Ledger:
    """Seconds of every stage run, keyed by stage fingerprint (work reused is counted once),
    kept beside the run so that resumed invocations add up."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.data = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            self.data = {"stages": {}, "invocations": []}

    def record(self, recipe: str, results: dict) -> None:
        for name, res in results.items():
            self.data["stages"].setdefault(res.fingerprint, {"recipe": recipe, "stage": name,
                                                             "seconds": res.data.get("seconds", 0.0)})
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=1))

    def first_run_seconds(self, results: dict) -> dict[str, float | None]:
        """Each stage's seconds when it first ran (a stage restored from the cache takes none)."""
        return {name: (self.data["stages"].get(res.fingerprint) or {}).get("seconds", res.data.get("seconds"))
                for name, res in results.items()}

    @property
    def seconds(self) -> float:
        return sum(s["seconds"] for s in self.data["stages"].values())


def cached_per_model(cache: Path, model_dir: Path, digest: str, compute: Callable[[], Any]) -> Any:
    """``compute()``'s JSON result for a model, kept in ``cache`` under the model's content id and
    ``digest`` (what else the result depends on), so equal weights are measured once."""
    from hubsdd.core.files import atomic_write_json
    from hubsdd.core.models import model_content_id

    file = Path(cache) / f"{model_content_id(Path(model_dir))[:32]}-{digest}.json"
    try:
        return json.loads(file.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        found = compute()
        atomic_write_json(file, found)
        return found


def run_recipe(label: str, d: dict, runs_dir: Path, ledger: Ledger) -> dict:
    from hubsdd.pipeline import runner

    started = time.time()

    def show(stage: str, status: str, seconds: float | None) -> None:
        if status in ("running", "done"):
            extra = f" ({seconds:.0f} s)" if seconds is not None else ""
            print(f"  [{label}] {stage} {status}{extra}", flush=True)

    results = runner.run(to_recipe(d, runs_dir), on_event=show)
    ledger.record(label, results)
    print(f"  [{label}] finished in {time.time() - started:.0f} s", flush=True)
    return results


# --------------------------------------------------------------------------- collecting


def per_item(results: dict) -> tuple[dict, dict, list[str]]:
    """model -> task -> item -> score, task -> item -> chance, and the task names, from the
    evaluate stage's per-model results."""
    ev = results["evaluate"]
    scores, chance, tasks = {}, {}, []
    for model, rel in ev.outputs["results"].items():
        record = json.loads(ev.resolve(rel).read_text())
        tasks = list(record["tasks"])
        scores[model] = {t: record["tasks"][t]["item_scores"] for t in tasks}
        chance = {t: record["tasks"][t]["item_chance"] for t in tasks}
    return scores, chance, tasks


def pct(x: float | None) -> float | None:
    """A fraction in percent (points); undefined figures (a ratio over a base at chance) are None."""
    return None if x is None or x != x else round(100 * x, 2)


def ci(iv: list[float]) -> list[float | None]:
    return [pct(iv[0]), pct(iv[1])]


def value(iv: dict | None) -> float | None:
    """The value in % of an evidence interval, None where the evidence leaves it undefined."""
    return pct(iv["value"]) if iv else None


def interval(iv: dict | None) -> list[float | None]:
    return ci(iv["ci95"]) if iv else [None, None]


def collect(results: dict | list[dict], named_pairs: list[tuple[str, str]] | None = None) -> tuple[dict, dict, dict]:
    """(models, paired, item ids) of one recipe's results, or of several recipes' :func:`snapshot`
    evaluated on the same items (a model in more than one, e.g. base and pruned, must have scored
    the same there): each model's figures in quality.json's schema, the paired differences, and
    the evaluated item ids per task."""
    from hubsdd.core import stats

    runs = results if isinstance(results, list) else [snapshot(results)]
    models: dict = {}
    for run in runs:
        for name, figures in run["models"].items():
            models.setdefault(name, figures)
    scores, chance, tasks, items = dict(runs[0]["scores"]), runs[0]["chance"], runs[0]["tasks"], runs[0]["items"]
    for run in runs[1:]:
        if run["tasks"] != tasks or run["items"] != items:
            raise SystemExit("collect: these runs evaluated different tasks or items; nothing to pair")
        for name, per_task in run["scores"].items():
            if scores.setdefault(name, per_task) != per_task:
                raise SystemExit(f"collect: {name} scored differently in two runs on the same items")
    evid = runs[0]["evidence"]
    boot = stats.Bootstrap({**scores, "__chance__": chance})
    names = list(scores)
    pairs = [(a, b) for a, b in (NAMED_PAIRS if named_pairs is None else named_pairs) if a in names and b in names]
    pairs += [(v, ref) for ref in ("pruned", "base") for v in names if v not in ("base", ref) and ref in names]
    paired = {}
    for a, b in pairs:
        d = boot.difference(a, b)
        if "average" in evid.get("base_at_chance", []):
            # a ratio over a base margin that is not above chance is noise over noise
            margin_diff, margin_ci = None, [None, None]
        else:
            ma = boot.retention(a, "base", "__chance__")
            mb = boot.retention(b, "base", "__chance__")
            # the margin-retention difference, resampled jointly (same items for a, b and base)
            margin = _margin_difference(boot, a, b)
            margin_diff, margin_ci = pct(ma.value - mb.value), [pct(margin.low), pct(margin.high)]
        paired[f"{a}-{b}"] = {
            "a": a, "b": b,
            "diff": pct(d.value), "ci95": [pct(d.low), pct(d.high)],
            "significant": d.significant,
            "margin_retention_diff": margin_diff,
            "margin_retention_ci95": margin_ci,
            "tasks": {t: {"diff": pct(x.value), "ci95": [pct(x.low), pct(x.high)], "significant": x.significant}
                      for t in tasks for x in [boot.difference(a, b, t)]},
        }
    return models, paired, items


def snapshot(results: dict) -> dict:
    """What :func:`collect` needs of one run, read now: the next recipe run in the same run directory
    replaces its stages' files."""
    scores, chance, tasks = per_item(results)
    m = results["evaluate"].metrics
    return {"models": _models(results), "scores": scores, "chance": chance, "tasks": tasks,
            "items": {t: m["tasks"][t]["items"] for t in tasks}, "evidence": m["evidence"]}


def _models(results: dict) -> dict:
    """Each evaluated model's figures in quality.json's schema, from one run's evaluate metrics."""
    m = results["evaluate"].metrics
    evid = m["evidence"]
    fid = m.get("fidelity") or {}
    models = {}
    for name, per_task in m["scores"].items():
        row = evid["models"][name]
        # margin retention is absent (or None) where the base is not significantly above chance
        out = {
            "tasks": {t: {"acc": pct(s["value"]), "stderr": pct(s["stderr"]),
                          **({"retention": value(row["tasks"][t].get("retention")),
                              "margin_retention": value(row["tasks"][t].get("margin_retention"))}
                             if row["tasks"][t].get("retention") else {})}
                      for t, s in per_task.items()},
            "average": pct(row["average"]["value"]), "average_ci95": ci(row["average"]["ci95"]),
            "retention": value(row.get("retention")), "retention_ci95": interval(row.get("retention")),
            "margin_retention": value(row.get("margin_retention")),
            "margin_retention_ci95": interval(row.get("margin_retention")),
        }
        if name == "base":
            out.update(acceptance=100.0, top1_agreement=100.0, kl=0.0)
        elif name in fid:
            f = fid[name]
            out.update(acceptance=pct(f["acceptance"]), top1_agreement=pct(f["top1_agreement"]), kl=round(f["kl"], 5))
        models[name] = out
    return models


def _margin_difference(boot: Any, a: str, b: str) -> Any:
    import numpy as np

    from hubsdd.core import stats

    floor = boot._avg("__chance__")
    base = boot._avg("base") - floor
    with np.errstate(divide="ignore", invalid="ignore"):
        samples = (boot._avg(a) - floor) / base - (boot._avg(b) - floor) / base
    return stats._interval(samples)


def sweep_choice(results: dict, methods: tuple[str, ...] = METHODS) -> tuple[dict[str, float], list[dict]]:
    """Each method's learning rate with the best dev average, and the whole sweep table."""
    m = results["evaluate"].metrics
    evid = m["evidence"]
    fid = m.get("fidelity") or {}
    variants = results["finetune"].outputs["variants"]
    rows = []
    for name, v in variants.items():
        method = re.sub(r"-lr[0-9e.-]+$", "", name)
        row = evid["models"][name]
        rows.append({"variant": name, "method": method, "learning_rate": v["learning_rate"],
                     "dev_average": pct(row["average"]["value"]), "dev_average_ci95": ci(row["average"]["ci95"]),
                     "dev_vs_pruned": None, "kl": round(fid[name]["kl"], 5) if name in fid else None,
                     "train_loss_last": results["finetune"].metrics["variants"][name]["train_loss_last"]})
    for r in rows:
        for p in evid["paired"]:
            if p["a"] == r["variant"] and p["b"] == "pruned":
                r["dev_vs_pruned"] = {"diff": round(100 * p["diff"]["value"], 2), "ci95": ci(p["diff"]["ci95"]),
                                      "significant": p["significant"]}
    best = {}
    for method in methods:
        cands = [r for r in rows if r["method"] == method]
        if cands:
            top = max(cands, key=lambda r: (r["dev_average"], -r["learning_rate"]))
            best[method] = top["learning_rate"]
            top["chosen"] = True
    for name in ("base", "pruned"):
        if name in evid["models"]:
            rows.append({"variant": name, "method": name, "learning_rate": None,
                         "dev_average": pct(evid["models"][name]["average"]["value"]),
                         "dev_average_ci95": ci(evid["models"][name]["average"]["ci95"]),
                         "kl": round(fid[name]["kl"], 5) if name in fid else None})
    return best, rows


def check_disjoint(results_by_recipe: dict[str, dict], recipes: dict[str, dict]) -> dict:
    """Fail unless training data, evaluation items and fidelity prompts are disjoint."""
    import pyarrow.parquet as pq

    from hubsdd.stages.evaluate.offline import prepare_offline_tasks

    some = next(iter(results_by_recipe.values()))
    train = {_norm(q) for q in pq.read_table(some["distill"].path("data"), columns=["instruction"])
             .column("instruction").to_pylist()}
    seen: dict[str, dict[str, set]] = {}
    report = {"training_examples": len(train), "overlapping_items": 0, "dev_test_shared_items": 0}
    import tempfile

    for label, res in results_by_recipe.items():
        section = recipes[label]["evaluate"]
        m = res["evaluate"].metrics
        names = list(m["tasks"])
        with tempfile.TemporaryDirectory() as tmp:
            prepared = prepare_offline_tasks(names, {t: m["tasks"][t]["num_fewshot"] for t in names},
                                                section.get("limit"), section.get("seed", 1234), Path(tmp),
                                                section.get("offset", 0))
        for t, p in prepared.items():
            seen.setdefault(label, {})[t] = set(p.items)
            texts = [_norm(" ".join(str(v) for v in d.values() if isinstance(v, str))) for d in p.docs]
            hits = sum(1 for text in texts for q in train if q and q in text)
            report["overlapping_items"] += hits
    if "sweep" in seen:
        for label in seen:
            if label != "sweep":
                for t, ids in seen[label].items():
                    report["dev_test_shared_items"] += len(ids & seen["sweep"].get(t, set()))
    if report["overlapping_items"] or report["dev_test_shared_items"]:
        raise SystemExit(f"training/evaluation overlap found: {report}")
    return report


def _norm(text: str) -> str:
    return " ".join(str(text).lower().split())
