"""Generation shards: a finished shard is reused only for the same inputs; a torn one is redone."""

from __future__ import annotations

from pathlib import Path

from hubsdd.stages.distill.shards import SHARD_SCHEMA_FIELDS, read_shard, shard_key, write_parquet
from hubsdd.core.recipe import GenerationSettings

ROWS = [{"row": 0, "rewrite": "It is 5.", "tokens": 4, "finish_reason": "stop"},
        {"row": 1, "rewrite": "Ten minus", "tokens": 6, "finish_reason": "length"}]


def test_a_written_shard_reads_back_for_its_own_key_only(tmp_path: Path) -> None:
    key = shard_key(["p0", "p1"], GenerationSettings(), "org/teacher@abc", 0)
    path = tmp_path / "shard-00000.parquet"
    write_parquet(path, ROWS, SHARD_SCHEMA_FIELDS, {"key": key, "seconds": 1.5})
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    rows, meta = read_shard(path, key)
    assert rows == ROWS and meta == {"key": key, "seconds": 1.5}
    other = shard_key(["p0", "p1"], GenerationSettings(max_new_tokens=8), "org/teacher@abc", 0)
    assert read_shard(path, other) is None


def test_a_torn_or_missing_shard_is_not_reused(tmp_path: Path) -> None:
    key = shard_key(["p0"], GenerationSettings(), "t", 0)
    path = tmp_path / "shard-00000.parquet"
    write_parquet(path, ROWS[:1], SHARD_SCHEMA_FIELDS, {"key": key})
    path.write_bytes(path.read_bytes()[:-20])  # a write cut short
    assert read_shard(path, key) is None
    assert read_shard(tmp_path / "absent.parquet", key) is None


def test_the_key_covers_prompts_settings_teacher_and_position() -> None:
    settings = GenerationSettings()
    key = shard_key(["a", "b"], settings, "org/t@1", 0)
    assert shard_key(["a", "b"], GenerationSettings(), "org/t@1", 0) == key
    assert len({key, shard_key(["a", "c"], settings, "org/t@1", 0), shard_key(["b", "a"], settings, "org/t@1", 0),
                shard_key(["a", "b"], GenerationSettings(do_sample=True), "org/t@1", 0),
                shard_key(["a", "b"], settings, "org/t@2", 0), shard_key(["a", "b"], settings, "org/t@1", 1)}) == 6
