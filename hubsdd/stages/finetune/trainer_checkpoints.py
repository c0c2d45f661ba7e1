"""Resumable fine-tuning: the Trainer checkpoints of the variant being trained, and which one a
rerun resumes from.

Every ``finetune.checkpoint_steps`` optimizer steps the Trainer writes ``checkpoint-<step>/`` under
the variant's folder in the run's cache (the trainable weights, optimizer, scheduler, every
process's RNG state, and the TrainerState with the loss log), keeping the last :data:`KEPT`. A kill
can land while one is being written, leaving a folder that looks like a checkpoint and is not; so
once every process has written its part, the main process marks the folder complete with a list of
its files and their sizes (:func:`completion_callback`). A rerun deletes unmarked folders
(:func:`discard_partial`) and resumes from the newest marked one (:func:`last_complete`):
``Trainer.train(resume_from_checkpoint=...)`` restores the weights, optimizer, scheduler, RNG and
the position in the data, so the variant ends as an uninterrupted run would have.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from ...core.files import atomic_write_json

MARKER = "hubsdd-complete.json"
# The newest checkpoint and the one before it: rotation deletes older ones only after a new one is
# written, so a kill at any moment leaves at least one complete checkpoint once the first exists.
KEPT = 2


def checkpoint_step(folder: Path) -> int | None:
    match = re.fullmatch(r"checkpoint-(\d+)", folder.name)
    return int(match.group(1)) if match else None


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MARKER}


def is_complete(folder: Path) -> bool:
    """Marked complete, and every file the mark lists is still there at its size (a folder that
    rotation was deleting when a kill came keeps its mark but not all its files)."""
    try:
        mark = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    files = mark.get("files") or {}
    if mark.get("step") != checkpoint_step(folder) or "trainer_state.json" not in files:
        return False
    for name, size in files.items():
        try:
            if (folder / name).stat().st_size != size:
                return False
        except OSError:
            return False
    return True


def last_complete(trainer_dir: Path) -> Path | None:
    """The newest complete checkpoint under ``trainer_dir``, or None."""
    found = [(checkpoint_step(p), p) for p in Path(trainer_dir).glob("checkpoint-*") if p.is_dir()]
    complete = [(step, p) for step, p in found if step is not None and is_complete(p)]
    return max(complete)[1] if complete else None


def discard_partial(trainer_dir: Path) -> list[Path]:
    """Delete the checkpoint folders a kill left unfinished (the Trainer would otherwise write the
    same step into one later, or rotate a complete one away in its favour)."""
    removed = []
    for folder in sorted(Path(trainer_dir).glob("checkpoint-*")):
        if folder.is_dir() and not is_complete(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def resumed_step(checkpoint: Path | None) -> int:
    if checkpoint is None:
        return 0
    return int(json.loads((checkpoint / "trainer_state.json").read_text()).get("global_step", 0))


def completion_callback() -> Any:
    """A TrainerCallback that marks each checkpoint complete once every process has saved its part,
    and skips the Trainer's checkpoint of the last step (the stage saves the final model itself)."""
    from accelerate import PartialState
    from transformers import TrainerCallback

    class CheckpointCompletion(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step >= state.max_steps:
                control.should_save = False

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            # Every process writes its RNG state: mark only when all of them have.
            PartialState().wait_for_everyone()
            if state.is_world_process_zero:
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                atomic_write_json(folder / MARKER, {"step": state.global_step, "files": _files(folder)})
            PartialState().wait_for_everyone()

    return CheckpointCompletion()
