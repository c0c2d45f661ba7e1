"""Hub mode: lm-eval's own task definitions, unmodified, with their datasets from the Hub.

``source: hub`` (or the task ``openllm-v1``: the Open LLM Leaderboard v1 set, ARC-Challenge 25-shot,
HellaSwag 10, MMLU 5, TruthfulQA-MC2 0, Winogrande 5, GSM8K 5) loads tasks by lm-eval's names
through its ``TaskManager``; ``datasets`` downloads their data from ``HF_ENDPOINT``. Items are
subsampled with lm-eval's ``samples`` (explicit indices), for the reason given in :mod:`.tasks`.
"""

from __future__ import annotations

from typing import Any

from ..errors import DataError, HubError
from .tasks import DATASETS, PreparedTask, lm_eval_version, sample_items

def hub_error(exc: BaseException, tasks: list[str]) -> HubError:
    return HubError(
        f"cannot fetch the evaluation data of {tasks} from the Hub: {type(exc).__name__}: {str(exc)[:300]}",
        fix="check the network and HF_ENDPOINT / HF_TOKEN (some datasets are gated), or use the offline tasks "
            "(`evaluate.source: offline` with arc_easy, arc_challenge, hellaswag, piqa, winogrande, mmlu, gsm8k)",
    )


def leaf_tasks(obj: Any) -> list[Any]:
    return list(obj.get_all_tasks()) if hasattr(obj, "get_all_tasks") else [obj]


def load_hub_tasks(tasks: list[str], shots: dict[str, int | None]) -> tuple[Any, dict[str, Any]]:
    """lm-eval's own tasks by name (datasets downloaded from the Hub), shots set per task
    (``None``: the task's own default)."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager()
    objs: dict[str, Any] = {}
    for name in tasks:
        if name not in manager.all_tasks:
            raise DataError(f"evaluate.tasks: lm-eval {lm_eval_version()} has no task or group {name!r}",
                            fix="use lm-eval's task names (`lm-eval ls tasks`) or 'openllm-v1'")
        try:
            loaded = manager.load([name])
        except Exception as exc:  # datasets / hub / network errors of every kind
            raise hub_error(exc, [name]) from exc
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
