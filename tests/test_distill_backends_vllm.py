"""The vLLM backend, on CPU, against a stand-in for vLLM: what each engine is given (dtype, stop
tokens, context length), how replicas run (non-daemon, pinned to their GPUs, in order), and what a
user sees when a replica fails or dies, or the machine has too few GPUs.

The stand-in is a real module on ``sys.path`` (replicas are spawned processes and import it
afresh). Like vLLM >= 0.8, its engine starts a child process even at tensor-parallel 1, which a
daemon process may not do; it records every engine and request in a JSON-lines file.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from conftest import INSTRUCTIONS, save_tiny
from hubsdd.stages.distill.backends import vllm as vllm_backend
from hubsdd.stages.distill.backends.vllm import VLLMBackend, engine_dtype
from hubsdd.core.errors import StageError
from hubsdd.core.recipe import GenerationSettings, parse_recipe
from hubsdd.pipeline.runner import StageContext, StageResult

FAKE_VLLM = textwrap.dedent('''
    """A stand-in for vLLM: records what it is given; its engine runs a child process, as vLLM's does."""
    import json
    import multiprocessing
    import os


    def _record(kind, **data):
        with open(os.environ["FAKE_VLLM_LOG"], "a") as f:
            f.write(json.dumps({"kind": kind, "pid": os.getpid(),
                                "devices": os.environ.get("CUDA_VISIBLE_DEVICES"), **data}) + "\\n")


    def _failing(where):
        """FAKE_VLLM_FAIL="<where>:<devices>": fail there, in the replica pinned to those GPUs."""
        spec = os.environ.get("FAKE_VLLM_FAIL", "")
        return spec == f"{where}:{os.environ.get('CUDA_VISIBLE_DEVICES')}"


    def _engine_core():
        pass


    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs


    class _Completion:
        def __init__(self, ids):
            self.text = " ".join(map(str, ids))  # the prompt back, so a test can check the order
            self.token_ids = [0] * (1 + len(ids) % 5)
            self.finish_reason = "stop"


    class _Output:
        def __init__(self, ids):
            self.outputs = [_Completion(ids)]


    class LLM:
        def __init__(self, **kwargs):
            _record("llm", kwargs=kwargs)
            core = multiprocessing.get_context("fork").Process(target=_engine_core)
            core.start()  # AssertionError: daemonic processes are not allowed to have children
            core.join()
            if _failing("init"):
                raise RuntimeError("CUDA out of memory (fake)")

        def shutdown(self):
            _record("shutdown")

        def generate(self, prompts, params, use_tqdm=True):
            if _failing("generate"):
                os._exit(3)
            ids = [p["prompt_token_ids"] for p in prompts]
            _record("generate", prompts=ids, params=[p.kwargs for p in params])
            return [_Output(i) for i in ids]
''')


@pytest.fixture
def fake_vllm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Installs the stand-in; returns a function that reads back what it recorded."""
    folder = tmp_path / "fake-vllm"
    (folder / "vllm").mkdir(parents=True)
    (folder / "vllm" / "__init__.py").write_text(FAKE_VLLM)
    log = tmp_path / "fake-vllm.jsonl"
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    monkeypatch.setenv("FAKE_VLLM_LOG", str(log))
    monkeypatch.delenv("FAKE_VLLM_FAIL", raising=False)
    monkeypatch.setattr(vllm_backend, "POLL_SECONDS", 0.2)

    def records(kind: str) -> list[dict]:
        lines = log.read_text().splitlines() if log.exists() else []
        return [r for r in map(json.loads, lines) if r["kind"] == kind]

    yield records
    assert multiprocessing.active_children() == [], "a replica was left running"


@pytest.fixture
def teacher(tmp_path: Path) -> Path:
    """A tiny teacher whose generation config ends a turn with a token (1) that is not the
    tokenizer's eos (2, <|im_end|>), as Llama-3.1's <|eot_id|> is not its <|end_of_text|>."""
    from transformers import GenerationConfig

    folder = save_tiny(tmp_path / "teacher", layers=2)
    GenerationConfig(eos_token_id=1, bos_token_id=1, pad_token_id=0).save_pretrained(folder)
    return folder


CONVERSATIONS = [[{"role": "user", "content": q["question"]}] for q in INSTRUCTIONS[:5]]


def prompt_ids(folder: Path, conversation: list[dict]) -> list[int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    return tok(tok.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False),
               add_special_tokens=False)["input_ids"]


def test_vllm_backend_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(StageError) as err:
        VLLMBackend(tmp_path, GenerationSettings(backend="vllm"))
    assert err.value.fix == "pip install 'hubsdd[vllm]'"


# --------------------------------------------------------------------------- what an engine gets


def distill_ctx(tmp_path: Path, teacher: Path, generation: str, shard_size: str = "",
                dtype: str = "dtype: bfloat16") -> StageContext:
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in INSTRUCTIONS))
    recipe = parse_recipe(f"""\
name: t
runs_dir: {tmp_path / 'runs'}
base: {{model: org/teacher, path: {teacher}{", " + dtype if dtype else ""}}}
prune: {{blocks: 1, calibration: {{path: {data}, text_column: question}}}}
distill:
  data: {{path: {data}}}
  columns: {{instruction: question, response: answer}}
  checker: final-number
  generation: {generation}
{shard_size}""", source_path=tmp_path / "recipe.yaml")
    base = StageResult("base", tmp_path / "base", {"fingerprint": "base-fp", "outputs": {"model_dir": str(teacher)}})
    return StageContext(recipe, "distill", tmp_path / "runs", tmp_path / "out", tmp_path / "work", {"base": base}, "fp")


def test_the_engine_gets_the_teachers_dtype_stop_tokens_and_a_context_sized_to_the_prompts(
        tmp_path: Path, teacher: Path, fake_vllm) -> None:
    from hubsdd.stages.distill.backends.transformers import TransformersBackend
    from hubsdd.stages.distill.prompts import load_template
    from hubsdd.stages.distill.stage import run_distill
    from hubsdd.core.models import load_model, load_tokenizer

    ctx = distill_ctx(tmp_path, teacher, "{backend: vllm, max_new_tokens: 40}")
    out = run_distill(ctx)
    assert out.metrics.rows == len(INSTRUCTIONS) and out.metrics.shards == 1

    (llm,) = fake_vllm("llm")
    template = load_template("general")
    longest = max(len(prompt_ids(teacher, [{"role": "user", "content": template.render(q["question"], "", q["answer"])}]))
                  for q in INSTRUCTIONS)
    assert llm["kwargs"] == {"model": str(teacher), "tensor_parallel_size": 1, "seed": 0,
                             "gpu_memory_utilization": 0.9, "dtype": "bfloat16", "trust_remote_code": False,
                             "max_model_len": longest + 40, "max_num_seqs": 8}
    # the engine was shut down when the stage ended, in the process that started it
    (stop,) = fake_vllm("shutdown")
    assert stop["pid"] == llm["pid"]
    # Every prompt in one call (a vllm shard is 1024 rows), greedy, stopping where transformers stops.
    (call,) = fake_vllm("generate")
    assert len(call["prompts"]) == len(INSTRUCTIONS)
    stops = TransformersBackend(load_model(teacher), load_tokenizer(teacher), GenerationSettings()).eos_ids
    assert stops == [1, 2]
    for params in call["params"]:
        assert (params["stop_token_ids"], params["temperature"], params["max_tokens"]) == (stops, 0.0, 40)


def test_an_unset_dtype_reaches_vllm_as_the_runs_dtype_and_the_batch_as_max_num_seqs(
        tmp_path: Path, teacher: Path, fake_vllm) -> None:
    """`base.dtype` unset: vLLM gets the dtype every other stage loads the model in (float32 on
    this CPU, bfloat16 on a GPU: hubsdd.core.models.model_dtype), never None; its max_num_seqs is the
    recipe's batch size."""
    from hubsdd.stages.distill.stage import run_distill
    from hubsdd.core.models import model_dtype

    ctx = distill_ctx(tmp_path, teacher, "{backend: vllm, max_new_tokens: 8, batch_size: 3}", dtype="")
    assert ctx.recipe.base.dtype is None
    run_distill(ctx)
    (llm,) = fake_vllm("llm")
    assert llm["kwargs"]["dtype"] == model_dtype(ctx.recipe) == "float32"
    assert llm["kwargs"]["max_num_seqs"] == 3
    assert len(fake_vllm("shutdown")) == 1


def test_auto_dtype_is_the_checkpoints_as_transformers_loads_it(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "dtype": "bfloat16"}))
    assert engine_dtype("auto", tmp_path) == "bfloat16"
    assert engine_dtype("float32", tmp_path) == "float32"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert engine_dtype("auto", tmp_path) == "float32"  # not vLLM's float16


def test_shard_size_defaults_to_1024_for_vllm_and_stays_64_for_transformers(tmp_path: Path, teacher: Path) -> None:
    vllm_ctx = distill_ctx(tmp_path, teacher, "{backend: vllm}")
    assert vllm_ctx.recipe.distill.shard_size == 1024
    assert distill_ctx(tmp_path, teacher, "{backend: vllm}", "  shard_size: 16").recipe.distill.shard_size == 16
    # A transformers recipe hashes exactly as before: its section is the one with 64 written out.
    implicit = distill_ctx(tmp_path, teacher, "{max_new_tokens: 8}").recipe
    explicit = distill_ctx(tmp_path, teacher, "{max_new_tokens: 8}", "  shard_size: 64").recipe
    assert implicit.section_dict("distill") == explicit.section_dict("distill")
    assert implicit.section_dict("distill")["shard_size"] == 64


# --------------------------------------------------------------------------- replicas


def test_replicas_run_pinned_to_their_gpus_and_answer_in_order(teacher: Path, fake_vllm, monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    backend = VLLMBackend(teacher, GenerationSettings(backend="vllm", data_parallel_size=2, max_new_tokens=8))
    try:
        got = backend.generate(CONVERSATIONS, seed=0)
    finally:
        backend.close()
    assert [list(map(int, g.text.split())) for g in got] == [prompt_ids(teacher, c) for c in CONVERSATIONS]
    engines = fake_vllm("llm")
    assert sorted(e["devices"] for e in engines) == ["3", "5"]
    assert os.getpid() not in {e["pid"] for e in engines}  # each engine in its own process
    assert sorted(len(c["prompts"]) for c in fake_vllm("generate")) == [2, 3]


def test_a_replica_that_fails_is_named_with_its_error(teacher: Path, fake_vllm, monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    monkeypatch.setenv("FAKE_VLLM_FAIL", "init:5")
    with pytest.raises(StageError) as err:
        VLLMBackend(teacher, GenerationSettings(backend="vllm", data_parallel_size=2))
    assert str(err.value).startswith(
        "distill.generation: vLLM replica 1 (GPUs 5) failed: RuntimeError: CUDA out of memory (fake)")
    assert "data_parallel_size: 1" in err.value.fix


def test_a_replica_that_dies_is_noticed_not_waited_for(teacher: Path, fake_vllm, monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    monkeypatch.setenv("FAKE_VLLM_FAIL", "generate:3")
    backend = VLLMBackend(teacher, GenerationSettings(backend="vllm", data_parallel_size=2))
    raised: list[BaseException] = []

    def generate() -> None:
        try:
            backend.generate(CONVERSATIONS, seed=0)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            raised.append(exc)

    worker = threading.Thread(target=generate, daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "generate() hung on a dead replica"
    backend.close()
    (exc,) = raised
    assert isinstance(exc, StageError)
    assert str(exc).startswith("distill.generation: vLLM replica 0 (GPUs 3) exited with code 3")


@pytest.mark.parametrize("dp, tp", [(2, 1), (1, 2)])
def test_too_few_gpus_is_a_clear_error_before_any_engine_starts(teacher: Path, fake_vllm, monkeypatch,
                                                                dp: int, tp: int) -> None:
    import torch

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    settings = GenerationSettings(backend="vllm", data_parallel_size=dp, tensor_parallel_size=tp)
    with pytest.raises(StageError, match=rf"data_parallel_size {dp} x tensor_parallel_size {tp} needs 2 GPUs, 1 visible"):
        VLLMBackend(teacher, settings)
    assert fake_vllm("llm") == []
