"""What the evaluation shows, with its uncertainty: the figures the card and ``hubsdd pull`` print.

From the per-item outcomes of every evaluated model (``evaluate`` records them), this computes,
with the paired bootstrap of :mod:`hubsdd.core.stats`:

* each model's average with a 95% interval, and per task its mean and interval;
* against the base model: raw retention (average / base average) and margin retention
  ((average - chance) / (base average - chance)) with intervals, per task and on average
  (a 135M model sits near chance on some tasks, where raw retention says little);
* paired differences: every model against the base, every recovered model against the pruned
  one, and every pair of recovered models, each marked significant or not;
* whether the items are enough to headline a figure (:data:`hubsdd.core.stats.HEADLINE_HALF_WIDTH`).

Figures are fractions (0.42, not 42%); the templates format them.
"""

from __future__ import annotations

from typing import Any, Mapping

from . import stats

CHANCE = "__chance__"


def comparisons(models: list[str]) -> list[tuple[str, str]]:
    """(a, b) pairs reported as a - b: each model vs base, each recovered model vs pruned, and
    every pair of recovered models (the later one in the run's order minus the earlier one)."""
    pairs = [(m, "base") for m in models if m != "base" and "base" in models]
    recovered = [m for m in models if m not in ("base", "pruned")]
    if "pruned" in models:
        pairs += [(m, "pruned") for m in recovered]
    pairs += [(recovered[j], recovered[i]) for i in range(len(recovered)) for j in range(i + 1, len(recovered))]
    return pairs


def _iv(interval: stats.Interval) -> dict:
    return {"value": interval.value, "ci95": [interval.low, interval.high]}


def build(per_item: Mapping[str, Mapping[str, Mapping[str, float]]],
          chance: Mapping[str, Mapping[str, float]] | None = None, *,
          iterations: int = stats.ITERATIONS) -> dict[str, Any]:
    """``per_item``: model -> task -> item id -> score; ``chance``: task -> item id -> chance score."""
    models = list(per_item)
    members = dict(per_item)
    if chance:
        members[CHANCE] = chance
    boot = stats.Bootstrap(members, iterations=iterations)
    tasks = boot.tasks
    out: dict[str, Any] = {
        "method": f"paired stratified bootstrap over items, {iterations} resamples, seed {stats.SEED}, "
                  "95% percentile intervals",
        "items": boot.items,
        "headline_half_width": stats.HEADLINE_HALF_WIDTH,
        "chance": {t: float(boot.task_means[CHANCE][t][0]) for t in tasks} if chance else {},
        "models": {},
        "paired": [],
    }
    # Margin retention divides by the base model's margin over chance: where the base is not
    # significantly above chance (a weak base, a hard task), that ratio is noise over noise (a base
    # 0.1 point above chance turns a 2-point gap into 2000%), so it is left undefined there.
    at_chance: list[str] = []
    if chance and "base" in models:
        at_chance = [t for t in tasks if boot.difference("base", CHANCE, t).low <= 0]
        if boot.difference("base", CHANCE).low <= 0:
            at_chance.append("average")
    out["base_at_chance"] = at_chance
    for m in models:
        avg = boot.average(m)
        row: dict[str, Any] = {"average": _iv(avg), "half_width": avg.half_width,
                               "tasks": {t: {"score": _iv(boot.task(m, t))} for t in tasks}}
        if "base" in models:
            row["retention"] = _iv(boot.retention(m, "base"))
            if chance and "average" not in at_chance:
                row["margin_retention"] = _iv(boot.retention(m, "base", CHANCE))
            for t in tasks:
                row["tasks"][t]["retention"] = _iv(boot.retention(m, "base", task=t))
                if chance and t not in at_chance:
                    row["tasks"][t]["margin_retention"] = _iv(boot.retention(m, "base", CHANCE, task=t))
        out["models"][m] = row
    for a, b in comparisons(models):
        diff = boot.difference(a, b)
        out["paired"].append({
            "a": a, "b": b, "diff": _iv(diff), "significant": diff.significant,
            "tasks": {t: {**_iv(d), "significant": d.significant}
                      for t in tasks for d in [boot.difference(a, b, t)]},
        })
    return out


def find_pair(evidence: Mapping[str, Any], a: str, b: str) -> dict | None:
    """The paired difference a - b, whichever order it was stored in (negated if reversed)."""
    for p in evidence.get("paired", []):
        if p["a"] == a and p["b"] == b:
            return p
        if p["a"] == b and p["b"] == a:
            lo, hi = p["diff"]["ci95"]
            return {"a": a, "b": b, "significant": p["significant"],
                    "diff": {"value": -p["diff"]["value"], "ci95": [-hi, -lo]},
                    "tasks": {t: {"value": -d["value"], "ci95": [-d["ci95"][1], -d["ci95"][0]],
                                  "significant": d["significant"]} for t, d in p["tasks"].items()}}
    return None


def headline_ok(evidence: Mapping[str, Any], model: str) -> bool:
    """Whether ``model``'s average is precise enough for the card to headline its retention."""
    row = (evidence.get("models") or {}).get(model)
    if not row:
        return False
    hw = row.get("half_width")
    return hw is not None and hw == hw and hw <= evidence.get("headline_half_width", stats.HEADLINE_HALF_WIDTH)
