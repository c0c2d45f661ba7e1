"""The trainers' guards: one process trains on one GPU whatever it sees, sharded training (FSDP,
DeepSpeed) is refused before any work with the fix, and the Trainer gets the run's device."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from hubsdd.core.errors import StageError
from hubsdd.core.recipe import FinetuneSection


def test_a_process_that_sees_several_gpus_trains_on_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Faked on CPU: torch reports 4 GPUs, which is what makes the Trainer wrap the model in
    nn.DataParallel and multiply the batch by 4 in one process."""
    import torch
    from trl import SFTTrainer

    from conftest import make_tiny_model, make_tokenizer
    from hubsdd.stages.finetune.training import lora_config, trainer_config

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    section = FinetuneSection(batch_size=3, max_steps=1, lora={"r": 4, "alpha": 8, "dropout": 0.0})
    with caplog.at_level(logging.WARNING, logger="hubsdd.finetune"):
        args = trainer_config(section, tmp_path / "t", device="cuda")
    assert args.n_gpu == 1 and args.train_batch_size == 3
    assert "accelerate launch --num_processes 4 -m hubsdd.pipeline.launch" in caplog.text
    from datasets import Dataset

    data = Dataset.from_list([{"prompt": [{"role": "user", "content": "hi"}],
                               "completion": [{"role": "assistant", "content": "hello"}]}] * 3)
    trainer = SFTTrainer(model=make_tiny_model(layers=1), args=args, train_dataset=data,
                         processing_class=make_tokenizer(), peft_config=lora_config(section))
    assert not isinstance(trainer._wrap_model(trainer.model), torch.nn.DataParallel)


def test_deepspeed_is_refused_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hubsdd.stages.finetune.stage import train_variant
    from hubsdd.pipeline.launch import main
    from test_finetune import accelerate_recipe, finetune_ctx

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    # `accelerate launch` with a DeepSpeed config: refused before the process group starts.
    recipe = accelerate_recipe(tmp_path)
    model_dir = tmp_path / "m"
    with pytest.raises(StageError, match="configured for DeepSpeed") as err:
        main([str(recipe)])
    assert "strategy: fsdp" in err.value.fix and "hubsdd launch-command" in err.value.fix
    # ... and `hubsdd run` in such an environment, before loading anything.
    ctx = finetune_ctx(tmp_path / "stage", "  variants: {sft: {data: original}}\n  max_steps: 1\n", model_dir)
    with pytest.raises(StageError, match="configured for DeepSpeed"):
        train_variant(ctx, "sft")
    assert not (ctx.run_dir / ".cache").exists()


def test_fsdp_is_refused_only_with_a_live_teacher(monkeypatch: pytest.MonkeyPatch) -> None:
    from hubsdd.stages.finetune.training import refuse_sharded_training

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    refuse_sharded_training()  # cross-entropy, or KD from stored log-probabilities: trained under FSDP
    with pytest.raises(StageError, match="live teacher under FSDP") as err:
        refuse_sharded_training(live_teacher=True)
    assert "teacher_logits: cache" in err.value.fix
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    refuse_sharded_training(live_teacher=True)


def test_the_trainer_runs_where_the_recipe_says(tmp_path: Path) -> None:
    from hubsdd.stages.finetune.training import trainer_config

    section = FinetuneSection(checkpoint_steps=7, ddp_timeout=123)
    cpu = trainer_config(section, tmp_path / "t", device="cpu")
    assert cpu.use_cpu and not cpu.dataloader_pin_memory and cpu.device.type == "cpu"
    assert cpu.save_strategy == "steps" and cpu.save_steps == 7 and cpu.save_total_limit == 2
    assert cpu.ddp_timeout == 123
    assert trainer_config(FinetuneSection(checkpoint_steps=0), tmp_path / "t", device="cpu").save_strategy == "no"
    assert trainer_config(section, tmp_path / "t", device="cpu", bf16=True).bf16
