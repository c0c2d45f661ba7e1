"""Checks that need the base model or the data, made at the first moment their facts are known.

The recipe alone cannot say whether ``prune.blocks: 30`` is possible or whether the column that
``distill.columns.response`` names exists: that takes the base model's layer count and the data's
first rows. Both are cheap to read long before any heavy work, so :func:`check` runs

* in ``hubsdd validate`` and when ``hubsdd run`` starts, with the facts on disk: a local base
  (``base.path``'s config.json, the header of ``base.gguf_file``) and local data files (their
  first rows);
* right after the base stage, before prune or distill do any work, when a Hub base's config is in
  place (the base stage records its layer count);
* when ``hubsdd run`` starts and the distill stage is going to run, whether its generation backend
  can start on this machine (:func:`check_generation`: vllm installed, enough GPUs).

A Hub dataset's columns are checked by the distill stage as it reads the rows, before the teacher
loads (:func:`hubsdd.core.data.load_rows`). Every problem names the YAML field and line and says what
to write instead; all of them are raised at once, as one :class:`~hubsdd.core.errors.RecipeError`.
Facts that cannot be read here (a file missing, unreadable, of an unknown kind) are left to the
stage that needs them, whose error names the file.
"""

from __future__ import annotations

import csv
import functools
import gzip
import importlib.util
import io
import json
import stat
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from ..core.errors import RecipeError
from ..core.recipe import DataSource, Recipe, shown

if TYPE_CHECKING:
    from ..core.stage_io import StageResult

SAMPLE_ROWS = 100  # rows of a local data file looked at: a column is missing when none of them has it
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")  # config.json spellings


@dataclass
class Problem:
    loc: tuple  # the YAML path, e.g. ("prune", "blocks")
    message: str  # what is wrong, and what to write instead


@dataclass
class Facts:
    layers: int | None = None
    layers_from: str = ""  # where the layer count was read, for messages
    rows: dict[str, list[dict]] = field(default_factory=dict)  # "prune.calibration" -> sampled rows
    checked: list[str] = field(default_factory=list)  # what was checked against what (for `validate`)
    later: list[str] = field(default_factory=list)  # checks left to a later moment, and when


def check(recipe: Recipe, base: "StageResult | None" = None, source: str | None = None) -> Facts:
    """Raise :class:`RecipeError` for every problem the known facts show; return the facts.

    ``base``: the finished base stage, whose layer count is then used; without it, only what is on
    disk is read. ``source`` names the recipe in the error (default: the recipe's file)."""
    facts = gather(recipe, base)
    problems = find_problems(recipe, facts)
    if problems:
        lines = [f"{recipe.where(*p.loc)}: {p.message}" for p in problems]
        name = source or (str(recipe._source_path) if recipe._source_path else "recipe")
        raise RecipeError(name, lines, fix="change the fields named above; nothing has run yet that depends on them"
                          if base is None else "change the fields named above; only the base stage has run")
    return facts


def check_generation(recipe: Recipe) -> None:
    """Raise :class:`RecipeError` when the distill stage, about to run, could not start its
    generation backend on this machine: the vLLM backend without vllm installed, or with fewer
    GPUs than its replicas need. Called when ``hubsdd run`` starts, before the base stage downloads
    anything (the paper's recipe would otherwise fail after a 16 GB download and the pruning); not
    by ``validate``, since a recipe written for a GPU machine validates anywhere."""
    problems = generation_problems(recipe)
    if problems:
        name = str(recipe._source_path) if recipe._source_path else "recipe"
        raise RecipeError(name, [f"{recipe.where(*p.loc)}: {p.message}" for p in problems],
                          fix="run on a machine that has what these fields need, or change them; nothing has run yet")


def generation_problems(recipe: Recipe) -> list[Problem]:
    gen = recipe.distill.generation if recipe.distill is not None else None
    if gen is None or gen.backend != "vllm":
        return []
    if not _installed("vllm"):
        return [Problem(("distill", "generation", "backend"), "'vllm' needs the vllm package, which is not installed "
                        "here (pip install 'hubsdd[vllm]', on a machine with NVIDIA GPUs); `transformers` generates "
                        "on any machine, more slowly")]
    from ..core.devices import visible_gpus

    need = gen.data_parallel_size * gen.tensor_parallel_size
    gpus = len(visible_gpus()) if need > 1 else need
    if gpus < need:
        return [Problem(("distill", "generation", "data_parallel_size"),
                        f"data_parallel_size {gen.data_parallel_size} x tensor_parallel_size "
                        f"{gen.tensor_parallel_size} needs {need} GPUs, {gpus} visible: lower them to the GPUs this "
                        "machine has (or list more in CUDA_VISIBLE_DEVICES)")]
    return []


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: sys.modules holds None for it
        return False


# --------------------------------------------------------------------------- facts


def gather(recipe: Recipe, base: "StageResult | None" = None) -> Facts:
    facts = Facts()
    layers = base.metrics.get("num_hidden_layers") if base is not None else None
    if isinstance(layers, int):
        facts.layers, facts.layers_from = layers, "the base stage read its config"
    elif recipe.base.gguf_file:
        path = _local(recipe, recipe.base.gguf_file)
        facts.layers = gguf_block_count(*_file_key(path)) if path is not None else None
        facts.layers_from = "the header of base.gguf_file"
    elif recipe.base.path:
        path = _local(recipe, recipe.base.path)
        facts.layers = config_layer_count(*_file_key(path / "config.json")) if path is not None else None
        facts.layers_from = "base.path's config.json"
    if facts.layers is not None:
        facts.checked.append(f"prune.blocks against the base model's {facts.layers} layers ({facts.layers_from})")
    else:
        facts.later.append("prune.blocks against the base model's layers: right after the base stage, before prune")

    sources: list[tuple[str, DataSource]] = [("prune.calibration", recipe.prune.calibration)]
    if recipe.distill is not None:
        sources.append(("distill.data", recipe.distill.data))
    for name, data in sources:
        path = _local(recipe, data.path) if data.path else None
        rows = sample_rows(*_file_key(path), data.split) if path is not None else None
        stage = name.split(".")[0]
        if rows:
            facts.rows[name] = rows
            facts.checked.append(f"the columns {stage} reads against {name}.path")
        elif data.dataset:
            when = "before the teacher loads" if stage == "distill" else "after the base model loads"
            facts.later.append(f"the columns {stage} reads against {name}.dataset: when the {stage} stage reads it, "
                               f"{when}")
    return facts


def _local(recipe: Recipe, value: str) -> Path | None:
    try:
        path = recipe.resolve_path(value)
        return path if path.exists() else None
    except (FileNotFoundError, OSError, ValueError):  # package not installed, name too long, ...
        return None


def _file_key(path: Path | None) -> tuple:
    """(path, size, mtime): what the caches below are keyed by, so an edited file is read again.
    Only regular files and folders: reading /dev/stdin or a pipe named in a recipe would block."""
    try:
        st = path.stat() if path is not None else None
    except (OSError, ValueError):
        st = None
    if st is None or not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        return (None, 0, 0)
    return (str(path), st.st_size, st.st_mtime_ns)


# Reading someone else's model or data file may fail in any way (a truncated GGUF, a parquet file
# pyarrow refuses): the fact is then unknown here, and the stage that loads the file reports it.
_UNREADABLE = (OSError, ValueError, KeyError, IndexError, TypeError, UnicodeError, EOFError, struct.error,
               csv.Error, zlib.error, RecursionError)


@functools.lru_cache(maxsize=64)
def config_layer_count(path: str | None, size: int, mtime: int) -> int | None:
    """The decoder layer count a local config.json states (or its text_config's)."""
    if path is None:
        return None
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except _UNREADABLE:
        return None
    for cfg in (config, config.get("text_config") if isinstance(config, dict) else None):
        if isinstance(cfg, dict):
            for key in LAYER_KEYS:
                value = cfg.get(key)
                if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                    return value
    return None


# GGUF metadata value types (gguf.GGUFValueType) and the struct formats of the fixed-size ones.
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


@functools.lru_cache(maxsize=16)
def gguf_block_count(path: str | None, size: int, mtime: int) -> int | None:
    """``<architecture>.block_count`` from a GGUF file's metadata, reading only the header.

    ``gguf.GGUFReader`` would also parse every tensor's description and the whole vocabulary into
    numpy arrays (8 s for SmolLM2-135M on this machine); this stops at the two keys it needs."""
    if path is None:
        return None
    try:
        with open(path, "rb") as fh:
            return _gguf_block_count(fh)
    except _UNREADABLE:
        return None


def _gguf_block_count(fh: BinaryIO) -> int | None:
    if fh.read(4) != b"GGUF":
        return None
    endian = "<"
    version = struct.unpack("<I", fh.read(4))[0]
    if version & 0xFFFF == 0:  # written big-endian
        endian = ">"
    _tensors, kv_count = struct.unpack(endian + "QQ", fh.read(16))

    def read(fmt: str) -> Any:
        fmt = endian + fmt
        return struct.unpack(fmt, fh.read(struct.calcsize(fmt)))[0]

    def string() -> str:
        return fh.read(read("Q")).decode("utf-8", "replace")

    def value(kind: int) -> Any:
        if kind in _GGUF_SCALARS:
            return read(_GGUF_SCALARS[kind])
        if kind == _GGUF_STRING:
            return string()
        if kind == _GGUF_ARRAY:
            item, count = read("I"), read("Q")
            if item in _GGUF_SCALARS:  # skip the array: only scalars are needed here
                fh.seek(count * struct.calcsize(_GGUF_SCALARS[item]), io.SEEK_CUR)
            else:
                for _ in range(count):
                    value(item)
            return None
        raise ValueError(f"unknown GGUF value type {kind}")

    architecture = None
    counts: dict[str, int] = {}
    for _ in range(min(kv_count, 1 << 16)):
        key = string()
        found = value(read("I"))
        if key == "general.architecture" and isinstance(found, str):
            architecture = found
        elif key.endswith(".block_count") and isinstance(found, int):
            counts[key] = found
        if architecture is not None and f"{architecture}.block_count" in counts:
            return counts[f"{architecture}.block_count"]
    return None


@functools.lru_cache(maxsize=64)
def sample_rows(path: str | None, size: int, mtime: int, split: str = "train") -> list[dict] | None:
    """Up to SAMPLE_ROWS first rows of a local data file (or the columns of a ``save_to_disk``
    folder, as a row of None values); None when the kind of file is not cheap to sample."""
    if path is None:
        return None
    p = Path(path)
    try:
        if p.is_dir():
            return _saved_dataset_row(p, split)
        name = p.name.lower().removesuffix(".gz")
        if name.endswith((".jsonl", ".ndjson")):
            rows = []
            with _open_text(p) as fh:
                for line in fh:
                    if line.strip():
                        rows.append(json.loads(line))
                    if len(rows) >= SAMPLE_ROWS:
                        break
        elif name.endswith(".csv"):
            with _open_text(p) as fh:
                reader = csv.DictReader(fh)
                rows = [dict(row) for _, row in zip(range(SAMPLE_ROWS), reader)]
        elif name.endswith(".txt"):
            rows = [{"text": ""}]
        elif name.endswith(".parquet") and not p.name.lower().endswith(".gz"):
            import pyarrow.parquet as pq

            batch = next(pq.ParquetFile(p).iter_batches(batch_size=SAMPLE_ROWS), None)
            rows = batch.to_pylist() if batch is not None else []
        else:
            return None  # .json: one document, read whole by the stage
    except _UNREADABLE:
        return None
    rows = [r for r in rows if isinstance(r, dict)]
    return rows or None


def _open_text(path: Path) -> Any:
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8", newline="")


def _saved_dataset_row(folder: Path, split: str) -> list[dict] | None:
    if (folder / "dataset_dict.json").exists():
        splits = json.loads((folder / "dataset_dict.json").read_text()).get("splits") or []
        if split not in splits:
            return None  # the stage names the splits there are
        folder = folder / split
    info = json.loads((folder / "dataset_info.json").read_text())
    features = info.get("features")
    return [_feature_row(features)] if isinstance(features, dict) and features else None


def _feature_row(features: dict) -> dict:
    """A row of None values shaped like ``datasets`` features (nested records become dicts)."""
    row: dict[str, Any] = {}
    for name, feature in features.items():
        nested = isinstance(feature, dict) and "_type" not in feature and feature
        row[name] = _feature_row(feature) if nested else None
    return row


# --------------------------------------------------------------------------- problems


def find_problems(recipe: Recipe, facts: Facts) -> list[Problem]:
    return _layer_problems(recipe, facts) + _calibration_problems(recipe, facts) + _distill_problems(recipe, facts)


def _layer_problems(recipe: Recipe, facts: Facts) -> list[Problem]:
    n, prune = facts.layers, recipe.prune
    if n is None:
        return []
    out = []
    if n < 2:
        out.append(Problem(("prune", "blocks"), f"the base model has {n} layer ({facts.layers_from}); there is "
                                                "nothing to remove"))
    elif prune.blocks >= n:
        out.append(Problem(("prune", "blocks"), f"the base model has {n} layers ({facts.layers_from}); removing "
                                                f"{prune.blocks} would leave none: use 1 to {n - 1}"))
    for i, layer in enumerate(prune.layers or []):
        if layer >= n:
            out.append(Problem(("prune", "layers", i), f"layer {layer} does not exist: the base model has {n} "
                                                       f"layers, numbered 0 to {n - 1}"))
    return out


def _columns(rows: list[dict]) -> str:
    from ..core.data import column_names

    names = column_names(rows[0])
    text = ", ".join(shown(n, 40, quote=False) for n in names[:30]) + (", ..." if len(names) > 30 else "")
    return text if len(text) <= 400 else text[:397] + "..."


def _calibration_problems(recipe: Recipe, facts: Facts) -> list[Problem]:
    cal = recipe.prune.calibration
    rows = facts.rows.get("prune.calibration")
    if not rows:
        return []
    if cal.text_template:
        import jinja2
        from jinja2 import meta

        env = jinja2.Environment()
        try:
            names = meta.find_undeclared_variables(env.parse(cal.text_template)) - set(env.globals)
        except jinja2.TemplateSyntaxError as exc:
            return [Problem(("prune", "calibration", "text_template"),
                            f"not a valid Jinja template: {shown(exc.message, 200, quote=False)} (template line {exc.lineno})")]
        except RecursionError:  # Jinja's parser recurses once per nested bracket
            return [Problem(("prune", "calibration", "text_template"), "the template nests too deeply to parse")]
        missing = sorted(n for n in names if not any(n in row for row in rows))
        if missing:
            return [Problem(("prune", "calibration", "text_template"),
                            f"uses {shown(', '.join(missing), 200, quote=False)}, not columns of prune.calibration.path "
                            f"(columns: {_columns(rows)})")]
        return []
    column = cal.text_column or "text"
    if any(column in row for row in rows):
        return []
    loc = ("prune", "calibration", "text_column") if cal.text_column else ("prune", "calibration")
    return [Problem(loc, f"column {shown(column)} is not in prune.calibration.path (columns: {_columns(rows)}); "
                         "set `text_column` to one of them, or write a `text_template`")]


def _distill_problems(recipe: Recipe, facts: Facts) -> list[Problem]:
    from ..core.data import MISSING, get_value
    from ..stages.distill.prompts import BUILTIN_TEMPLATES

    distill = recipe.distill
    if distill is None:
        return []
    out = []
    if distill.template not in BUILTIN_TEMPLATES:
        path = _local(recipe, distill.template)
        if path is None or not path.is_file():
            out.append(Problem(("distill", "template"), f"{shown(distill.template)} is neither "
                               f"{' nor '.join(map(repr, BUILTIN_TEMPLATES))} nor a file (relative to the recipe)"))
    rows = facts.rows.get("distill.data")
    if rows:
        cols = distill.columns
        for name in ("instruction", "response", "input", "label"):
            column = getattr(cols, name)
            if column is not None and all(get_value(row, column, MISSING) is MISSING for row in rows):
                out.append(Problem(("distill", "columns", name), f"column {shown(column)} is not in distill.data.path "
                                   f"(columns: {_columns(rows)}); dotted names reach into nested ones"))
    return out
