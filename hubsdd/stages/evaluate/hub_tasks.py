"""Hub mode: lm-eval's own task definitions, unmodified, with their datasets from the Hub.

``source: hub`` (or the task ``openllm-v1``: the Open LLM Leaderboard v1 set, ARC-Challenge 25-shot,
HellaSwag 10, MMLU 5, TruthfulQA-MC2 0, Winogrande 5, GSM8K 5) loads tasks by lm-eval's names
through its ``TaskManager``; ``datasets`` downloads their data from ``HF_ENDPOINT``. Items are
subsampled with lm-eval's ``samples`` (explicit indices), for the reason given in :mod:`.tasks`.
"""

from __future__ import annotations

from typing import Any

from ...core.errors import DataError, HubError
from .tasks import DATASETS, PreparedTask, lm_eval_version, sample_items

OFFLINE_FIX = ("or evaluate offline (`evaluate.source: offline` with arc_easy, arc_challenge, hellaswag, piqa, "
               "winogrande, mmlu, gsm8k)")


def task_dataset(manager: Any, task: str) -> str | None:
    """``<dataset_path>[/<dataset_name>]`` of lm-eval's task ``task`` (a group: of its first task,
    followed by ", ..."), read from lm-eval's YAML without loading anything; None where it cannot
    be told."""
    from lm_eval.tasks._index import Kind
    from lm_eval.tasks._yaml_loader import load_yaml

    suffix = ""
    try:
        for _ in range(5):  # a group names groups, tags or tasks; follow the first a few levels down
            entry = manager.task_index.get(task)
            if entry is None:
                return None
            if entry.kind is Kind.TAG:
                task, suffix = sorted(entry.tags)[0], ", ..."
                continue
            cfg = load_yaml(entry.yaml_path, resolve_func=False)
            if "dataset_path" in cfg:
                return cfg["dataset_path"] + (f"/{cfg['dataset_name']}" if cfg.get("dataset_name") else "") + suffix
            members = cfg.get("task")
            if not (isinstance(members, list) and members and isinstance(members[0], str)):
                return None
            task, suffix = members[0], ", ..."
    except Exception:  # a better message is all that is at stake
        return None
    return None


def hub_error(exc: BaseException, tasks: list[str], dataset: str | None = None) -> HubError | DataError:
    """What a user sees when a task's data cannot be had from the Hub: the task, its dataset, why,
    and what to do."""
    what = f"{tasks[0]!r} (dataset {dataset})" if dataset and len(tasks) == 1 else str(tasks)
    reason = f"{type(exc).__name__}: {str(exc)[:300]}"
    if "dataset scripts are no longer supported" in str(exc).lower():
        # datasets >= 4 runs no loading scripts; a repository that holds only a script has no data
        return DataError(
            f"evaluate.tasks: lm-eval's task {what} needs a dataset loading script, which the installed "
            f"`datasets` no longer runs ({reason})",
            fix=f"publish that dataset as data files (parquet, with `configs:` in its README) where HF_ENDPOINT "
                f"points, or remove {tasks[0]} from evaluate.tasks, {OFFLINE_FIX}")
    return HubError(
        f"cannot fetch the evaluation data of {what} from the Hub at {_endpoint()}: {reason}",
        fix=f"check the network and HF_ENDPOINT / HF_TOKEN (some datasets are gated); if that Hub does not "
            f"serve {dataset or 'the dataset'}, remove {tasks[0]} from evaluate.tasks (with 'openllm-v1', list "
            f"the tasks it serves instead), {OFFLINE_FIX}",
    )


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


# lm-eval indexes its thousands of task files when a TaskManager is made (seconds); one per process
# and factory serves every load, as loading builds fresh task objects from the index each time.
_MANAGERS: dict[Any, Any] = {}


def task_manager() -> Any:
    from lm_eval.tasks import TaskManager

    if TaskManager not in _MANAGERS:
        _MANAGERS.clear()
        _MANAGERS[TaskManager] = TaskManager()
    return _MANAGERS[TaskManager]


def leaf_tasks(obj: Any) -> list[Any]:
    return list(obj.get_all_tasks()) if hasattr(obj, "get_all_tasks") else [obj]


def load_hub_tasks(tasks: list[str], shots: dict[str, int | None]) -> tuple[Any, dict[str, Any]]:
    """lm-eval's own tasks by name (datasets downloaded from the Hub), shots set per task
    (``None``: the task's own default)."""
    manager = task_manager()
    objs: dict[str, Any] = {}
    for name in tasks:
        if name not in manager.all_tasks:
            raise DataError(f"evaluate.tasks: lm-eval {lm_eval_version()} has no task or group {name!r}",
                            fix="use lm-eval's task names (`lm-eval ls tasks`) or 'openllm-v1'")
        try:
            loaded = manager.load([name])
        except Exception as exc:  # datasets / hub / network errors of every kind
            raise hub_error(exc, [name], task_dataset(manager, name)) from exc
        obj = loaded["groups"].get(name) or loaded["tasks"].get(name)
        if obj is None:
            raise DataError(f"lm-eval loaded nothing for {name!r}", fix="use a task or group name, not a tag")
        if shots.get(name) is not None:
            for leaf in leaf_tasks(obj):
                leaf.set_config(key="num_fewshot", value=shots[name])
        objs[name] = obj
    return manager, objs


def prepare_hub_tasks(tasks: list[str], shots: dict[str, int | None], limit: int | None,
                      seed: int, offset: int = 0) -> dict[str, PreparedTask]:
    """Load lm-eval's tasks once to sample item indices (lm-eval's ``samples``) and record them."""
    _, objs = load_hub_tasks(tasks, shots)
    out = {}
    for name, obj in objs.items():
        leaves = leaf_tasks(obj)
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
