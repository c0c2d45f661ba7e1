"""bench/paired_tasks.py: models of different screens paired from the run's evaluation cache."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import paired_tasks  # noqa: E402
from hubsdd.core.models import model_content_id  # noqa: E402


def model(folder: Path, weights: bytes) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(weights)
    return folder


def cache_record(cache: Path, folder: Path, scores: dict[str, list[float]], name: str, first_id: int = 0) -> None:
    tasks = {t: {"item_ids": list(range(first_id, first_id + len(s))),
                 "item_scores": {str(first_id + i): x for i, x in enumerate(s)}} for t, s in scores.items()}
    cache.mkdir(parents=True, exist_ok=True)
    (cache / f"{name}.json").write_text(json.dumps({"model_content_id": model_content_id(folder), "mode": "packed",
                                                    "seed": 1, "tasks": tasks}))


def test_models_evaluated_apart_are_paired_on_the_items_they_share(tmp_path: Path) -> None:
    cache = tmp_path / "evaluate"
    a, b = model(tmp_path / "a", b"aaaa"), model(tmp_path / "b", b"bbbb")
    cache_record(cache, a, {"piqa": [1, 0, 1, 0], "arc_easy": [1, 1, 0, 0]}, "a-test")
    cache_record(cache, b, {"piqa": [1, 1, 1, 0], "arc_easy": [1, 1, 1, 0]}, "b-test")
    # b's evaluation on other (dev) items is not paired with a's test items
    cache_record(cache, b, {"piqa": [0] * 8, "arc_easy": [0] * 8}, "b-dev", first_id=100)
    figures = paired_tasks.paired(paired_tasks.cached_scores({"a": a, "b": b}, cache), "a")
    assert figures["a"]["average"] == 50.0 and figures["b"]["average"] == 75.0 and figures["b"]["items"] == 8
    d = figures["b"]["diff"]
    assert d["diff"] == 25.0 and d["ci95"][0] <= 25.0 <= d["ci95"][1]
    assert "diff" not in figures["a"]


def test_a_model_never_evaluated_is_named(tmp_path: Path) -> None:
    cache = tmp_path / "evaluate"
    a, b = model(tmp_path / "a", b"aaaa"), model(tmp_path / "b", b"bbbb")
    cache_record(cache, a, {"piqa": [1, 0]}, "a")
    with pytest.raises(SystemExit, match="no evaluation of b"):
        paired_tasks.cached_scores({"a": a, "b": b}, cache)
    cache_record(cache, b, {"piqa": [1, 0]}, "b", first_id=50)
    with pytest.raises(SystemExit, match="never evaluated on the same items"):
        paired_tasks.cached_scores({"a": a, "b": b}, cache)
