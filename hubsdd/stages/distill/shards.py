"""Parquet files of the distill stage: the resumable generation shards and the dataset.

Generation runs in shards of ``distill.shard_size`` rows, each written atomically to the stage's
work folder as soon as it is done; a shard is reused only when its key (its prompts, the decoding
settings, the teacher, its index) matches, so a resumed run never mixes outputs of other inputs.
Both kinds of file carry a JSON ``hubsdd`` entry in their schema metadata.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ...core.files import atomic_write_bytes
from ...core.recipe import GenerationSettings, canonical_json

SHARD_SCHEMA_FIELDS = (("row", "int64"), ("rewrite", "string"), ("tokens", "int64"), ("finish_reason", "string"))
DATA_FIELDS = (("instruction", "string"), ("input", "string"), ("original", "string"), ("rewrite", "string"),
               ("selected", "string"), ("verdict", "string"), ("reason", "string"), ("label", "string"),
               ("answer", "string"), ("finish_reason", "string"), ("tokens", "int64"))


def arrow_schema(fields: tuple[tuple[str, str], ...]) -> Any:
    import pyarrow as pa

    return pa.schema([(name, getattr(pa, kind)()) for name, kind in fields])


def write_parquet(path: Path, records: list[dict], fields: tuple[tuple[str, str], ...], meta: dict) -> None:
    """Atomically: a reader (or a resumed run) sees a whole file or none."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(records, schema=arrow_schema(fields))
    table = table.replace_schema_metadata({b"hubsdd": json.dumps(meta, sort_keys=True, default=str).encode()})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def read_shard(path: Path, key: str) -> tuple[list[dict], dict] | None:
    """A finished shard's rows and metadata, or None when it is absent, torn, or from other inputs."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
        meta = json.loads((table.schema.metadata or {}).get(b"hubsdd", b"{}"))
    except (OSError, ValueError):
        return None
    if meta.get("key") != key:
        return None
    return table.to_pylist(), meta


def shard_key(prompts: list[str], settings: GenerationSettings, teacher: str, index: int) -> str:
    """What a shard's content depends on: its prompts, the decoding settings, the teacher, its seed."""
    payload = {"prompts": prompts, "generation": settings.model_dump(mode="json"), "teacher": teacher, "index": index}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()
