"""Offline tasks: lm-eval's own task definitions over local files of the sampled items.

The prompts are checked against lm-eval's unmodified tasks reading the same rows from a Hub in
tests/test_evaluate_hub_mode.py; here, that the written tasks include lm-eval's definitions and
change only where the data comes from, and what the items and prompts are.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hubsdd.core.errors import DataError
from hubsdd.stages.evaluate import offline
from hubsdd.stages.evaluate.offline import prepare_offline_tasks

# What an offline task may set besides including lm-eval's definition: the data source.
DATA_SOURCE_KEYS = {"dataset_path", "dataset_name", "dataset_kwargs", "training_split", "validation_split",
                    "test_split", "fewshot_split", "num_fewshot"}
TASKS = ["arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande", "gsm8k", "mmlu"]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Every offline task, one shot, three items."""
    task_dir = tmp_path_factory.mktemp("tasks")
    prepared = prepare_offline_tasks(TASKS, {t: 1 for t in TASKS}, 3, 7, task_dir)
    return task_dir, prepared


@pytest.fixture(scope="module")
def loaded(written) -> dict:
    """The written tasks as lm-eval loads them, by leaf task name."""
    from lm_eval.tasks import TaskManager

    task_dir, prepared = written
    out = TaskManager(include_path=str(task_dir), include_defaults=False).load(TASKS)
    return out["tasks"]


def test_item_sampling_is_deterministic_and_seeded(tmp_path: Path) -> None:
    a = prepare_offline_tasks(["arc_challenge", "mmlu"], {}, 7, 1, tmp_path / "a")
    b = prepare_offline_tasks(["arc_challenge", "mmlu"], {}, 7, 1, tmp_path / "b")
    c = prepare_offline_tasks(["arc_challenge", "mmlu"], {}, 7, 2, tmp_path / "c")
    assert a["arc_challenge"].items == b["arc_challenge"].items and a["mmlu"].items == b["mmlu"].items
    assert a["arc_challenge"].items != c["arc_challenge"].items and a["mmlu"].items != c["mmlu"].items
    assert len(a["arc_challenge"].items) == 7 and len(a["mmlu"].items) == 7
    assert a["arc_challenge"].num_fewshot == 25 and a["mmlu"].num_fewshot == 5  # leaderboard defaults
    # the written items are the sampled rows; few-shot rows are held out from the scored ones
    rows = [json.loads(x)["hubsdd_row"] for x in (tmp_path / "a" / "arc_challenge" / "eval.jsonl").read_text().splitlines()]
    fewshot = [json.loads(x)["hubsdd_row"] for x in (tmp_path / "a" / "arc_challenge" / "fewshot.jsonl").read_text().splitlines()]
    assert rows == a["arc_challenge"].items and len(fewshot) >= 25 and not set(rows) & set(fewshot)
    group = yaml.safe_load((tmp_path / "a" / "mmlu_group.yaml").read_text())
    assert group["group"] == "mmlu" and sorted(group["task"]) == sorted(a["mmlu"].leaves)
    assert sum(len(v) for v in a["mmlu"].item_of.values()) == 7


def test_unknown_offline_task_and_too_many_shots(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="truthfulqa_mc2") as err:
        prepare_offline_tasks(["truthfulqa_mc2"], {}, 5, 0, tmp_path)
    assert "source: hub" in str(err.value.fix)
    with pytest.raises(DataError, match="shots"):
        prepare_offline_tasks(["mmlu"], {"mmlu": 6}, 5, 0, tmp_path)
    with pytest.raises(DataError, match="offset"):
        prepare_offline_tasks(["arc_easy"], {"arc_easy": 0}, 5, 0, tmp_path, offset=10_000)


def test_task_files_include_lm_evals_definition_and_set_only_the_data_source(written) -> None:
    from lm_eval.tasks._yaml_loader import load_yaml

    task_dir, prepared = written
    leaves = [leaf for p in prepared.values() for leaf in p.leaves]
    assert len(leaves) > len(TASKS) - 1  # the MMLU subjects
    for leaf in leaves:
        raw = yaml.safe_load((task_dir / f"{leaf}.yaml").read_text())
        upstream = Path(raw.pop("include"))
        assert "/lm_eval/tasks/" in upstream.as_posix() and upstream.is_file(), leaf
        assert raw.pop("task") == leaf
        assert set(raw) <= DATA_SOURCE_KEYS, f"{leaf} sets more than its data source: {set(raw) - DATA_SOURCE_KEYS}"
        assert raw["dataset_path"] == "json"
        # the local splits take the roles of lm-eval's: evaluated where it evaluates (its test
        # split, else validation), few-shot where it draws examples (its few-shot split, else train)
        theirs = load_yaml(upstream, resolve_func=False)
        evaluated = "test_split" if theirs.get("test_split") else "validation_split"
        fewshot = "fewshot_split" if theirs.get("fewshot_split") else "training_split"
        assert {k: v for k, v in raw.items() if k.endswith("_split") and v} == {evaluated: "eval", fewshot: "fewshot"}
        # everything else is lm-eval's, as lm-eval resolves the include
        mine = load_yaml(task_dir / f"{leaf}.yaml", resolve_func=False)
        for key, value in theirs.items():
            if key not in DATA_SOURCE_KEYS:
                assert mine[key] == value, (leaf, key)
        if leaf.startswith("mmlu_"):
            assert mine["description"].startswith("The following are multiple choice questions")


def test_missing_lm_eval_definition_names_the_file_and_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(offline.UPSTREAM_YAML, "piqa", "piqa/renamed.yaml")
    with pytest.raises(DataError, match="piqa/renamed.yaml") as err:
        prepare_offline_tasks(["piqa"], {}, 2, 0, tmp_path)
    assert "lm-eval==0.4.13" in err.value.fix


def test_prompts_and_targets_are_lm_evals_on_the_sampled_rows(written, loaded) -> None:
    _, prepared = written
    arc = loaded["arc_easy"]
    for doc, row in zip(arc.eval_docs, prepared["arc_easy"].docs, strict=True):
        assert doc["hubsdd_row"] == row["hubsdd_row"]
        assert arc.doc_to_text(doc) == f"Question: {row['question']}\nAnswer:"
        assert arc.doc_to_choice(doc) == row["choices"]["text"]
        assert arc.doc_to_target(doc) == row["choices"]["label"].index(row["answerKey"])
    # HellaSwag through lm-eval's own process_docs: "<activity>: <context>" with the brackets
    # of WikiHow removed, the gold ending's index as the target
    hs = loaded["hellaswag"]
    for doc, row in zip(hs.eval_docs, prepared["hellaswag"].docs, strict=True):
        assert hs.doc_to_text(doc).startswith(f"{row['activity_label']}: ")
        assert "[" not in hs.doc_to_text(doc) and len(hs.doc_to_choice(doc)) == len(row["endings"])
        assert hs.doc_to_target(doc) == int(row["label"])
    # Winogrande's partial scoring: one context per option, the shared continuation scored
    wg = loaded["winogrande"]
    for doc, row in zip(wg.eval_docs, prepared["winogrande"].docs, strict=True):
        blank = row["sentence"].index("_")
        assert wg.doc_to_choice(doc) == [row["sentence"][:blank] + row["option1"], row["sentence"][:blank] + row["option2"]]
        assert wg.doc_to_target(doc) == row["sentence"][blank + 1:].strip()
        assert wg.doc_to_text(doc) == int(row["answer"]) - 1
    gsm = loaded["gsm8k"]
    doc = gsm.eval_docs[0]
    assert gsm.doc_to_text(doc) == f"Question: {doc['question']}\nAnswer:" and gsm.doc_to_target(doc) == doc["answer"]
    piqa = loaded["piqa"]
    doc = piqa.eval_docs[0]
    assert piqa.doc_to_choice(doc) == [doc["sol1"], doc["sol2"]] and piqa.doc_to_target(doc) == doc["label"]


def test_few_shot_examples_come_from_the_held_out_rows(written, loaded) -> None:
    """The one-shot context of an item is a held-out row's question and answer, then the item's."""
    task_dir, prepared = written
    held_out = {json.loads(line)["question"] for line in (task_dir / "arc_easy" / "fewshot.jsonl").read_text().splitlines()}
    arc = loaded["arc_easy"]
    arc.set_fewshot_seed(seed=1)
    doc = arc.eval_docs[0]
    context = arc.fewshot_context(doc, num_fewshot=1)
    shot, _, question = context.partition("\n\n")
    assert question == f"Question: {doc['question']}\nAnswer:"
    assert shot.startswith("Question: ") and shot.split("\n")[0][len("Question: "):] in held_out
    # MMLU: the subject's description, then its first dev example (lm-eval's first_n sampler)
    leaf = prepared["mmlu"].leaves[0]
    mmlu = loaded[leaf]
    subject = leaf[len("mmlu_"):]
    dev = json.loads((task_dir / "mmlu" / subject / "fewshot.jsonl").read_text().splitlines()[0])
    context = mmlu.fewshot_context(mmlu.eval_docs[0], num_fewshot=1)
    assert context.startswith(f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
                              f"{dev['question'].strip()}\nA. {dev['choices'][0]}")
