"""``publish.release: auto``: which checkpoint to publish, chosen on the *dev* items.

The test items the card reports are never used to choose: a release picked by its test score would
carry that score's luck into the card (the winner's curse). ``evaluate.dev`` scores every model on
separate dev items (:func:`hubsdd.stages.evaluate.stage.score_dev`) with the same paired bootstrap as the
test items (:mod:`hubsdd.core.stats`); this module applies one stated rule to that evidence:

1. The candidates are every evaluated checkpoint but the base: pruned, the variants, the merge.
2. The *leader* has the highest dev average. The *contenders* are the leader and every candidate
   the leader does not beat significantly (the paired 95% interval of leader - candidate includes
   zero or lies below it).
3. One contender: it is significantly better than every other candidate on dev, and is released
   (rule ``significant``).
4. Several: no difference among them is established, and the tie is broken by fidelity to the base
   model: lowest KL(base || model) per token, then highest top-1 agreement (rule ``fidelity``); a
   contender without fidelity figures ranks after those with them; with none at all, the highest
   dev average (rule ``dev-average``), then the run's order.

Fidelity is measured on the base model's own continuations of prompts, not on task answers, so it
is not the accuracy the card reports; it is the figure of how closely a model still behaves like
the base (``evaluate.fidelity``).
"""

from __future__ import annotations

from typing import Any, Mapping

from .evidence import find_pair

RULES = {
    "significant": "significantly better on the dev items than every other candidate (the paired 95% interval "
                   "of each difference lies above zero)",
    "fidelity": "no significant difference on the dev items between the best candidates, so the tie was broken "
                "by fidelity to the base model: lowest KL(base ‖ model) per token, then highest top-1 agreement (on "
                "the base model's own continuations of the fidelity prompts, not on any task's answers)",
    "dev-average": "no significant difference on the dev items between the best candidates and no fidelity "
                   "figures, so the tie was broken by the highest dev average (a point value, not established)",
}


def choose(dev_evidence: Mapping[str, Any], fidelity: Mapping[str, Mapping[str, Any]] | None = None,
           candidates: list[str] | None = None) -> dict:
    """The release and why, from the dev items' paired evidence (:func:`hubsdd.core.evidence.build`
    as a dict) and the fidelity figures (model -> {"kl", "top1_agreement", ...})."""
    models = dev_evidence["models"]
    names = [m for m in (candidates if candidates is not None else list(models)) if m != "base" and m in models]
    if not names:
        raise ValueError("no candidate checkpoint was evaluated on the dev items")
    fidelity = fidelity or {}
    average = {m: models[m]["average"]["value"] for m in names}
    order = {m: i for i, m in enumerate(names)}
    leader = max(names, key=lambda m: (average[m], -order[m]))
    beaten = {}
    for m in names:
        if m != leader:
            p = find_pair(dev_evidence, leader, m)
            beaten[m] = p is not None and p["significant"] and p["diff"]["value"] > 0
    contenders = [leader] + [m for m in names if m != leader and not beaten[m]]
    if len(contenders) == 1:
        rule, chosen = "significant", leader
    else:
        measured = [m for m in contenders if (fidelity.get(m) or {}).get("kl") is not None]
        if measured:
            rule = "fidelity"

            def closeness(m: str) -> tuple:
                f = fidelity.get(m) or {}
                top1 = f.get("top1_agreement")
                return (f["kl"] if f.get("kl") is not None else float("inf"),
                        -(top1 if top1 is not None else -1.0), -average[m], order[m])

            chosen = min(contenders, key=closeness)
        else:
            rule, chosen = "dev-average", leader
    comparisons = []
    for m in names:
        if m != chosen:
            p = find_pair(dev_evidence, chosen, m)
            if p is not None:
                comparisons.append({"a": chosen, "b": m, "diff": p["diff"]["value"], "ci95": p["diff"]["ci95"],
                                    "significant": p["significant"]})
    return {
        "release": chosen,
        "rule": rule,
        "statement": RULES[rule],
        "leader": leader,
        "contenders": contenders,
        "items": dict(dev_evidence.get("items") or {}),
        "candidates": {m: {"dev_average": average[m], "dev_ci95": models[m]["average"]["ci95"],
                           "kl": (fidelity.get(m) or {}).get("kl"),
                           "top1_agreement": (fidelity.get(m) or {}).get("top1_agreement")} for m in names},
        "comparisons": comparisons,
    }


def default_choice(variants: list[str], merged: bool) -> str:
    """``auto`` without dev items: merge, else sdd, else the first variant, else pruned."""
    if merged:
        return "merge"
    if "sdd" in variants:
        return "sdd"
    return variants[0] if variants else "pruned"
