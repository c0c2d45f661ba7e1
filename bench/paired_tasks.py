"""Six-task differences between models of different runs or screens, paired item by item.

A recipe's evaluate stage pairs the models it evaluated together; ``bench/regimes.py`` pairs the
models of one screen. A model trained in another screen (SFT at 3 epochs against SFT at 1, say) was
evaluated on the same items, and its per-item results are in the run's evaluation cache, keyed by
the model's content. This reads them there (it evaluates nothing) and pairs each model with the
reference on the items every one of them scored under one evaluation spec.

    python bench/paired_tasks.py --model sft_e1=DIR --model sft_e3=DIR --reference sft_e1 [--cache runs/quality/.cache/evaluate]

``bench/generative_qa.py --reference`` is the same for written answers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(BENCH), str(ROOT)]


def spec_of(record: dict) -> tuple:
    """What a cached evaluation scored: tasks, their item ids, seed and mode (equal specs pair)."""
    return (record.get("mode"), record.get("seed"),
            tuple(sorted((t, tuple(map(str, v["item_ids"]))) for t, v in record["tasks"].items())))


def cached_scores(models: dict[str, Path], cache: Path) -> dict[str, dict]:
    """Each model's per-item scores {task: {item: score}} from ``cache``, all under one spec (the one
    with the most items, where the models share several). Exits naming a model evaluated nowhere."""
    from hubsdd.core.models import model_content_id

    ids = {label: model_content_id(path) for label, path in models.items()}
    found: dict[str, dict[tuple, dict]] = {label: {} for label in models}
    for f in sorted(cache.glob("*.json")):
        try:
            record = json.loads(f.read_text())
        except json.JSONDecodeError:
            continue
        for label, content in ids.items():
            if record.get("model_content_id") == content:
                found[label][spec_of(record)] = record
    if missing := [label for label, specs in found.items() if not specs]:
        raise SystemExit(f"no evaluation of {', '.join(missing)} in {cache}: run the recipe that trained it first")
    shared = set.intersection(*(set(specs) for specs in found.values()))
    if not shared:
        raise SystemExit(f"the models were never evaluated on the same items (cache {cache})")
    spec = max(shared, key=lambda s: sum(len(items) for _, items in s[2]))
    return {label: {t: {str(k): float(x) for k, x in v["item_scores"].items()} for t, v in specs[spec]["tasks"].items()}
            for label, specs in found.items()}


def paired(scores: dict[str, dict], reference: str) -> dict[str, dict]:
    """Each model's six-task average and its difference from ``reference`` (points, 95% interval)."""
    from generative_qa import difference_in_points

    from hubsdd.core import stats

    boot = stats.Bootstrap(scores)
    out = {}
    for label in scores:
        avg = boot.average(label)
        out[label] = {"average": round(100 * avg.value, 2), "average_ci95": [round(100 * avg.low, 2), round(100 * avg.high, 2)],
                      "items": sum(boot.items.values())}
        if label != reference:
            out[label]["diff"] = difference_in_points(boot.difference(label, reference))
    return out


def main(argv: list[str] | None = None) -> int:
    from generative_qa import add_model_arguments, labelled_models

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--reference", required=True, help="the label every other model is compared with")
    parser.add_argument("--cache", type=Path, default=ROOT / "runs" / "quality" / ".cache" / "evaluate",
                        help="a run's evaluation cache (runs/<recipe name>/.cache/evaluate)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    models = labelled_models(parser, args.model, args.reference)
    figures = paired(cached_scores(models, args.cache), args.reference)
    for label, f in figures.items():
        d = f.get("diff")
        extra = f"; - {args.reference} {d['diff']:+.2f} ({d['ci95'][0]:+.2f}..{d['ci95'][1]:+.2f})" if d else ""
        print(f"{label}: six-task average {f['average']:.2f} ({f['average_ci95'][0]:.2f}..{f['average_ci95'][1]:.2f}), "
              f"{f['items']} items{extra}")
    if args.out:
        args.out.write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
