"""Fine-tuning resumes the variant being trained from its last complete Trainer checkpoint: a run
SIGKILLed mid-training and rerun ends with the weights and loss log of an uninterrupted run; a
checkpoint a kill left half-written is skipped for the one before it; a finished variant keeps no
checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import save_tiny
from hubsdd.stages.finetune import trainer_checkpoints as tc

TESTS = Path(__file__).resolve().parent
CHECKPOINT_STEPS = 4
STALL_AT = CHECKPOINT_STEPS + 2  # killed two steps after the checkpoint: those two are redone

SECTIONS = {
    "ce": """\
  variants: {sdd: {data: distilled}}
  learning_rate: 0.02
  max_steps: 8
  batch_size: 2
  checkpoint_steps: 4
  lora: {r: 4, alpha: 8, dropout: 0.1, target_modules: all-linear}
""",
    "kd": """\
  variants: {kd: {data: original, loss: kd}}
  learning_rate: 0.02
  max_steps: 8
  batch_size: 2
  checkpoint_steps: 4
  lora: {r: 4, alpha: 8, dropout: 0.1, target_modules: all-linear}
""",
}

# The child trains one variant and, STALL_AT steps in, says so and waits to be killed.
CHILD = """\
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
import transformers.trainer_callback as tcb
real = tcb.CallbackHandler.on_step_end

def on_step_end(self, args, state, control):
    control = real(self, args, state, control)
    if state.global_step == {stall}:
        Path({flag!r}).write_text("stalled")
        time.sleep(600)
    return control

tcb.CallbackHandler.on_step_end = on_step_end
from test_finetune import finetune_ctx
from hubsdd.stages.finetune.stage import train_variant
ctx = finetune_ctx(Path({root!r}), {section!r}, Path({student!r}), teacher=Path({teacher!r}))
train_variant(ctx, {variant!r})
"""


def _write_checkpoint(folder: Path, step: int, *, mark: bool = True) -> Path:
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (folder / "optimizer.pt").write_bytes(b"x" * 100)
    (folder / "adapter").mkdir()
    (folder / "adapter" / "adapter_model.safetensors").write_bytes(b"y" * 50)
    if mark:
        (folder / tc.MARKER).write_text(json.dumps({"step": step, "files": tc._files(folder)}))
    return folder


def test_the_newest_complete_checkpoint_is_chosen_and_partial_ones_discarded(tmp_path: Path) -> None:
    root = tmp_path / "trainer"
    _write_checkpoint(root / "checkpoint-4", 4)
    _write_checkpoint(root / "checkpoint-8", 8)
    _write_checkpoint(root / "checkpoint-12", 12, mark=False)  # killed while the Trainer wrote it
    truncated = _write_checkpoint(root / "checkpoint-16", 16)  # marked, then a file lost its tail
    (truncated / "optimizer.pt").write_bytes(b"x" * 10)
    rotated = _write_checkpoint(root / "checkpoint-20", 20)  # rotation deleting it when the kill came
    (rotated / "adapter" / "adapter_model.safetensors").unlink()
    (root / "checkpoint-9x").mkdir()
    assert tc.last_complete(root) == root / "checkpoint-8"
    removed = tc.discard_partial(root)
    assert sorted(p.name for p in removed) == ["checkpoint-12", "checkpoint-16", "checkpoint-20", "checkpoint-9x"]
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-4", "checkpoint-8"]
    assert tc.resumed_step(tc.last_complete(root)) == 8
    assert tc.last_complete(tmp_path / "none") is None and tc.resumed_step(None) == 0


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize("loss", ["ce", "kd"])
def test_a_killed_variant_resumes_and_ends_as_an_uninterrupted_run(tmp_path: Path, loss: str) -> None:
    import torch

    from hubsdd.stages.finetune.stage import train_variant, variant_dir
    from test_finetune import finetune_ctx

    variant = "sdd" if loss == "ce" else "kd"
    student = save_tiny(tmp_path / "student", layers=2, seed=2)
    teacher = save_tiny(tmp_path / "teacher", layers=3, seed=1)
    killed_root, reference_root = tmp_path / "killed", tmp_path / "reference"
    killed_root.mkdir()
    reference_root.mkdir()
    flag = tmp_path / "stalled"
    code = CHILD.format(tests=str(TESTS), stall=STALL_AT, flag=str(flag), root=str(killed_root),
                        section=SECTIONS[loss], student=str(student), teacher=str(teacher), variant=variant)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HUBSDD_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while not flag.exists():
            assert child.poll() is None, child.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the child never reached the step it stalls at"
            time.sleep(0.2)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    ctx = finetune_ctx(killed_root, SECTIONS[loss], student, teacher=teacher)
    trainer_dir = variant_dir(ctx, variant) / "trainer"
    assert tc.is_complete(trainer_dir / f"checkpoint-{CHECKPOINT_STEPS}")
    assert not (variant_dir(ctx, variant) / "result.json").exists()
    # A later checkpoint the kill cut short while writing: it must not be resumed from.
    partial = trainer_dir / f"checkpoint-{STALL_AT}"
    partial.mkdir()
    (partial / "trainer_state.json").write_text(json.dumps({"global_step": STALL_AT}))
    (partial / "optimizer.pt").write_bytes(b"\0" * 16)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        resumed = train_variant(ctx, variant)
        reference = train_variant(finetune_ctx(reference_root, SECTIONS[loss], student, teacher=teacher), variant)
    finally:
        torch.set_num_threads(threads)

    assert resumed["metrics"]["resumed_from_step"] == CHECKPOINT_STEPS
    assert reference["metrics"]["resumed_from_step"] == 0
    assert resumed["metrics"]["steps"] == reference["metrics"]["steps"] == 8
    assert [e["step"] for e in resumed["log_history"]] == [e["step"] for e in reference["log_history"]]
    assert [e["loss"] for e in resumed["log_history"]] == pytest.approx(
        [e["loss"] for e in reference["log_history"]], rel=1e-5, abs=1e-6)
    assert resumed["metrics"]["train_loss_mean"] == pytest.approx(reference["metrics"]["train_loss_mean"], rel=1e-5)
    got = _weights(variant_dir(ctx, variant) / "model")
    want = _weights(variant_dir(finetune_ctx(reference_root, SECTIONS[loss], student, teacher=teacher), variant)
                    / "model")
    before = _weights(student)
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(got[key], before[key])  # trained
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5, msg=name)
    # a finished variant keeps no checkpoints
    assert not trainer_dir.exists()
