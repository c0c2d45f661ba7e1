"""Fine-tuning: LoRA and full training lower the loss, the saved checkpoints are plain transformers
models (merged, no adapters, use_cache on), and finished variants survive a kill. Distillation and
fine-tuning on the real SmolLM2 are covered by tests/test_e2e_smollm2.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import INSTRUCTIONS, save_tiny
from hubsdd.core.recipe import parse_recipe
from hubsdd.pipeline.runner import StageContext, StageResult

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_distilled(path: Path, rows: list[dict]) -> Path:
    """The columns the finetune stage reads from the distill stage's parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def finetune_ctx(tmp_path: Path, finetune_yaml: str, model_dir: Path, *, out: str = "out",
                 teacher: Path | None = None) -> StageContext:
    rows = [{"instruction": r["question"], "input": "", "original": r["answer"],
             "selected": f"Let me compute. {r['answer']}"} for r in INSTRUCTIONS]
    write_distilled(tmp_path / "distill" / "data" / "train.parquet", rows)
    (tmp_path / "cal.jsonl").write_text('{"text": "x"}\n')
    recipe = parse_recipe(f"""\
name: t
runs_dir: {tmp_path / 'runs'}
base: {{path: {model_dir}}}
prune: {{blocks: 1, calibration: {{path: {tmp_path / 'cal.jsonl'}, text_column: text}}}}
distill: {{data: {{path: {tmp_path / 'cal.jsonl'}}}}}
finetune:
{finetune_yaml}""")
    base = StageResult("base", tmp_path / "base", {"fingerprint": "b", "outputs": {"model_dir": str(teacher or model_dir)}})
    prune = StageResult("prune", tmp_path / "prune", {"fingerprint": "p", "outputs": {"model_dir": str(model_dir)}})
    distill = StageResult("distill", tmp_path / "distill", {"fingerprint": "d", "outputs": {"data": "data/train.parquet"}})
    return StageContext(recipe, "finetune", tmp_path / "runs", tmp_path / out, tmp_path / "work",
                        {"base": base, "prune": prune, "distill": distill}, "finetune-fp")


def assert_plain_checkpoint(folder: Path, layers: int) -> "object":
    """Reloads with stock transformers; no adapter files, no LoRA modules, cache on."""
    from transformers import AutoModelForCausalLM

    names = {p.name for p in folder.iterdir()}
    assert "model.safetensors" in names or "model.safetensors.index.json" in names
    assert not any(n.startswith("adapter_") for n in names), names
    assert not any(n.endswith((".bin", ".pt")) for n in names), names
    config = json.loads((folder / "config.json").read_text())
    assert config["use_cache"] is True and config["num_hidden_layers"] == layers
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert not [n for n, _ in model.named_modules() if "lora" in n.lower()]
    return model


def test_lora_lowers_loss_merges_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    import trl
    from safetensors.torch import load_file

    from hubsdd.stages.finetune.stage import run_finetune, train_variant, variant_dir

    pruned = save_tiny(tmp_path / "pruned", layers=3)
    ctx = finetune_ctx(tmp_path, """\
  learning_rate: 0.02
  max_steps: 9
  batch_size: 2
  lora: {r: 4, alpha: 8, dropout: 0.0, target_modules: all-linear}
""", pruned)
    # A previous run trained `sdd`, then was killed before `sft`.
    train_variant(ctx, "sdd")
    sdd_weights = variant_dir(ctx, "sdd") / "model" / "model.safetensors"
    stamp = sdd_weights.stat().st_mtime_ns

    built = []
    real = trl.SFTTrainer

    class CountingTrainer(real):  # type: ignore[misc, valid-type]
        def __init__(self, *a, **kw):
            built.append(1)
            super().__init__(*a, **kw)

    monkeypatch.setattr(trl, "SFTTrainer", CountingTrainer)
    out = run_finetune(ctx)
    assert len(built) == 1, "the finished variant was trained again"
    assert sdd_weights.stat().st_mtime_ns == stamp

    assert out.outputs.model_dump()["variants"] == {
        "sdd": {"model_dir": "sdd/model", "data": "distilled", "loss": "ce", "learning_rate": 0.02,
                "train_log": "sdd/train_log.json"},
        "sft": {"model_dir": "sft/model", "data": "original", "loss": "ce", "learning_rate": 0.02,
                "train_log": "sft/train_log.json"},
    }
    assert out.outputs.plots.loss_curve == "loss_curve.png"
    assert out.outputs.precision == "float32 weights"  # the CPU default
    assert (ctx.out_dir / "loss_curve.png").read_bytes()[:8] == PNG_MAGIC
    for name in ("sdd", "sft"):
        m = out.metrics.variants[name].model_dump()
        assert m["steps"] == 9 and m["samples"] == len(INSTRUCTIONS)
        assert 0 < m["trainable_params"] < m["total_params"]
        log = json.loads((ctx.out_dir / name / "train_log.json").read_text())
        first, last = [sum(e["loss"] for e in part) / 3 for part in (log[:3], log[-3:])]
        assert last < first, f"{name}: loss did not go down ({first:.3f} -> {last:.3f})"
        assert m["train_loss_first"] == log[0]["loss"] and m["train_loss_last"] == log[-1]["loss"]
        model = assert_plain_checkpoint(ctx.out_dir / name / "model", layers=3)
        assert model.config.model_type == "llama"
    # Merged LoRA changed the weights, and the two data sets gave two different models.
    before = load_file(pruned / "model.safetensors")
    sdd = load_file(ctx.out_dir / "sdd" / "model" / "model.safetensors")
    sft = load_file(ctx.out_dir / "sft" / "model" / "model.safetensors")
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(before[key], sdd[key]) and not torch.equal(sdd[key], sft[key])
    assert set(before) == set(sdd)  # same tensor names: nothing LoRA-specific left


def test_full_finetuning_trains_every_weight(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from hubsdd.stages.finetune.stage import run_finetune

    pruned = save_tiny(tmp_path / "pruned", layers=2)
    ctx = finetune_ctx(tmp_path, """\
  variants: {sft: {data: original}}
  method: full
  learning_rate: 0.001
  max_steps: 2
  batch_size: 3
  gradient_accumulation_steps: 2
""", pruned)
    out = run_finetune(ctx)
    m = out.metrics.variants["sft"].model_dump()
    assert m["trainable_params"] == m["total_params"] and m["steps"] == 2
    assert_plain_checkpoint(ctx.out_dir / "sft" / "model", layers=2)
    before = load_file(pruned / "model.safetensors")
    after = load_file(ctx.out_dir / "sft" / "model" / "model.safetensors")
    assert not torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])


def test_examples_whose_prompt_fills_max_length_are_reported_not_counted(tmp_path: Path) -> None:
    """TRL drops an example whose prompt alone fills max_length (no response token is left): the
    stage counts the examples trained on, says how many were dropped, and refuses to train on none."""
    from hubsdd.core.errors import StageError
    from hubsdd.stages.finetune.stage import run_finetune

    pruned = save_tiny(tmp_path / "pruned", layers=1)
    yaml_text = """\
  variants: {sft: {data: original}}
  max_steps: 1
  batch_size: 2
  max_length: 64
  lora: {r: 2, alpha: 4, dropout: 0.0}
"""
    ctx = finetune_ctx(tmp_path, yaml_text, pruned)
    rows = [{"instruction": r["question"], "input": "", "original": r["answer"], "selected": r["answer"]}
            for r in INSTRUCTIONS]
    long_row = {"instruction": "How many letters? " + "x" * 80, "input": "", "original": "#### 80",
                "selected": "#### 80"}
    write_distilled(tmp_path / "distill" / "data" / "train.parquet", rows + [long_row])
    m = run_finetune(ctx).metrics.variants["sft"]
    assert (m.samples, m.dropped_too_long, m.dropped_rows) == (len(INSTRUCTIONS), 1, 0)

    ctx = finetune_ctx(tmp_path / "none", yaml_text, pruned)
    write_distilled(tmp_path / "none" / "distill" / "data" / "train.parquet", [long_row])
    with pytest.raises(StageError, match="finetune.max_length") as err:
        run_finetune(ctx)
    assert "raise finetune.max_length" in err.value.fix


def test_training_section_renders_from_stage_json() -> None:
    from hubsdd.stages.card.stage import render_section
    from hubsdd.core.outputs import Typed
    from hubsdd.core.recipe.sections import FinetuneSection

    cfg = FinetuneSection.model_validate({
        "method": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": "all-linear"},
        "learning_rate": 1e-4, "epochs": 1.0, "max_steps": 50, "batch_size": 4, "gradient_accumulation_steps": 2,
        "max_length": 512, "seed": 42})
    variant = {"loss": "ce", "learning_rate": 1e-4, "train_log": "x.json"}
    finetune_out = {"precision": "float32 weights", "method": "lora", "base_model_dir": "p", "data": "d",
                    "plots": {"loss_curve": "loss_curve.png"},
                    "variants": {"sdd": {"model_dir": "sdd/model", "data": "distilled", **variant},
                                 "sft": {"model_dir": "sft/model", "data": "original", **variant}}}
    finetune_metrics = {"variants": {"sdd": {"loss": "ce", "learning_rate": 1e-4, "steps": 50, "epochs": 1.0,
                                             "samples": 200, "dropped_rows": 0, "trainable_params": 4884480,
                                             "total_params": 10**8, "train_loss_first": 2.5, "train_loss_last": 1.25,
                                             "train_loss_mean": 1.5, "seconds": 60.0}}}
    distill_out = {"data": "data/train.parquet", "template_name": "math", "template_sha256": "0" * 64,
                   "template_text": "t", "teacher": "org/base", "source": {"path": "gsm8k.jsonl"},
                   "columns": {"instruction": "q", "response": "a"}, "checker": "final-number",
                   "rejection_phrases": [], "generation": {}}
    distill_metrics = {"rows": 200, "accepted": 150, "rejected": 50, "acceptance_rate": 0.75,
                       "tokens_generated": 1, "mean_rewrite_tokens": 1.0, "generation_seconds": 1.0,
                       "shards": 1, "shards_resumed": 0, "seconds": 1.0}

    def render(precision: str) -> str:
        from hubsdd.core.outputs import MODELS

        def typed(name, outputs, metrics):
            o, m = MODELS[name]
            return Typed(name=name, outputs=o.model_validate(outputs), metrics=m.model_validate(metrics))

        return render_section("sections/training.md.j2", cfg=cfg, plots={"finetune": {"loss_curve": "plots/loss.png"}},
                              ft=typed("finetune", {**finetune_out, "precision": precision}, finetune_metrics),
                              ds=typed("distill", distill_out, distill_metrics), dataset_repo="org/data")

    text = render("float32 weights")
    for needle in ("150 of 200 rewrites kept (75.0%)", "| LoRA rank / alpha / dropout | 8 / 16 / 0.05 |",
                   "| Steps | 50 |", "| Gradient accumulation | 2 |", "| `sdd` | 50 | 200 | 4,884,480 | 2.5 | 1.25 | 1.5",
                   "self-distilled responses (SDD)", "original responses (SFT baseline)", "![Training loss",
                   "plots/loss.png", "datasets/org/data", "| Seed | 42 |", "| Precision | float32 weights |"):
        assert needle in text, needle
    # the precision the stage resolved (bf16 by default on a GPU) is what the card says
    assert "| Precision | bfloat16 weights, bf16 mixed precision |" in render("bfloat16 weights, bf16 mixed precision")


def accelerate_recipe(tmp_path: Path) -> Path:
    """A recipe file for `accelerate launch -m hubsdd.pipeline.launch` over a 2-layer tiny model."""
    model_dir = save_tiny(tmp_path / "m", layers=2)
    (tmp_path / "cal.jsonl").write_text('{"text": "x"}\n')
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""\
name: t
runs_dir: {tmp_path / 'runs'}
base: {{path: {model_dir}}}
prune: {{blocks: 1, calibration: {{path: cal.jsonl, text_column: text}}}}
distill: {{data: {{path: cal.jsonl}}}}
finetune: {{}}
""")
    return recipe


def test_accelerate_entry_refuses_to_start_before_distill(tmp_path: Path) -> None:
    from hubsdd.core.errors import StageError
    from hubsdd.pipeline.launch import main

    recipe = accelerate_recipe(tmp_path)
    with pytest.raises(StageError, match=r"stages \['base', 'prune', 'distill'\] have not finished") as err:
        main([str(recipe)])
    assert "--until distill" in err.value.fix


def response_kl(student_dir: Path, teacher_dir: Path) -> float:
    """Mean KL(teacher || student) per response token over the training examples."""
    import torch
    from transformers import AutoModelForCausalLM

    from conftest import make_tokenizer

    tok = make_tokenizer()
    student = AutoModelForCausalLM.from_pretrained(student_dir).eval()
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    total, n = 0.0, 0
    for r in INSTRUCTIONS:
        prompt = tok.apply_chat_template([{"role": "user", "content": r["question"]}], add_generation_prompt=True,
                                         tokenize=False)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p_ids + tok(r["answer"] + "<|im_end|>", add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            q = torch.log_softmax(student(ids).logits[0, len(p_ids) - 1:-1], -1)
            p = torch.log_softmax(teacher(ids).logits[0, len(p_ids) - 1:-1], -1)
        total += float(torch.nn.functional.kl_div(q, p, log_target=True, reduction="sum"))
        n += q.shape[0]
    return total / n


@pytest.mark.parametrize("method", ["lora", "full"])
def test_kd_moves_the_student_towards_its_teacher(tmp_path: Path, method: str) -> None:
    from hubsdd.stages.finetune.stage import run_finetune

    teacher = save_tiny(tmp_path / "teacher", layers=4, seed=1)
    student = save_tiny(tmp_path / "student", layers=2, seed=2)
    lora = "  lora: {r: 8, alpha: 16, dropout: 0.0, target_modules: all-linear}\n" if method == "lora" else ""
    ctx = finetune_ctx(tmp_path, f"""\
  variants: {{kd: {{data: original, loss: kd}}, sdd-kd: {{data: distilled, loss: kd, learning_rate: 0.01}}}}
  method: {method}
  learning_rate: 0.01
  max_steps: 12
  batch_size: 3
{lora}""", student, teacher=teacher)
    out = run_finetune(ctx)
    before = response_kl(student, teacher)
    after = response_kl(ctx.out_dir / "kd" / "model", teacher)
    assert after < 0.8 * before, f"KL to the teacher {before:.4f} -> {after:.4f}"
    for name in ("kd", "sdd-kd"):
        assert out.outputs.variants[name].loss == "kd"
        assert out.metrics.variants[name].loss == "kd" and out.metrics.variants[name].steps == 12
        assert_plain_checkpoint(ctx.out_dir / name / "model", layers=2)
    assert out.outputs.kd.model_dump() == {"beta": 0.0}


def test_a_trained_variant_is_reused_when_variants_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import trl

    from hubsdd.stages.finetune.stage import run_finetune

    pruned = save_tiny(tmp_path / "pruned", layers=2)
    common = "  learning_rate: 0.01\n  max_steps: 2\n  batch_size: 2\n"
    first = finetune_ctx(tmp_path, "  variants: {sft: {data: original}}\n" + common, pruned, out="out1")
    run_finetune(first)
    built = []
    real = trl.SFTTrainer

    class CountingTrainer(real):  # type: ignore[misc, valid-type]
        def __init__(self, *a, **kw):
            built.append(kw["train_dataset"][0]["completion"][0]["content"])
            super().__init__(*a, **kw)

    monkeypatch.setattr(trl, "SFTTrainer", CountingTrainer)
    # `sft` renamed `baseline` and a new variant added: only the new one trains
    second = finetune_ctx(tmp_path, "  variants: {baseline: {data: original}, sdd: {data: distilled}}\n" + common,
                          pruned, out="out2")
    run_finetune(second)
    assert len(built) == 1 and built[0].startswith("Let me compute.")
    assert (first.out_dir / "sft" / "model" / "model.safetensors").read_bytes() == \
        (second.out_dir / "baseline" / "model" / "model.safetensors").read_bytes()
    # another learning rate is another variant
    third = finetune_ctx(tmp_path, "  variants: {sft: {data: original, learning_rate: 0.02}}\n" + common, pruned,
                         out="out3")
    run_finetune(third)
    assert len(built) == 2


@pytest.mark.parametrize("kd", [False, True])
def test_response_only_losses_equal_trl_own(tmp_path: Path, kd: bool) -> None:
    """The leaner losses give TRL's own loss and gradients on the same batch."""
    import torch
    from trl import SFTTrainer
    from trl.experimental.gkd import GKDTrainer

    from conftest import make_tiny_model, make_tokenizer
    from hubsdd.stages.finetune.stage import training_dataset
    from hubsdd.core.recipe import FinetuneSection
    from hubsdd.stages.finetune.losses import distillation_config
    from hubsdd.stages.finetune.training import lora_config, trainer_classes, trainer_config

    rows = [{"instruction": r["question"], "input": "", "original": r["answer"], "selected": r["answer"]}
            for r in INSTRUCTIONS]
    dataset, _ = training_dataset(write_distilled(tmp_path / "d.parquet", rows), "original", messages=kd)
    section = FinetuneSection(batch_size=3, max_steps=1, gradient_accumulation_steps=2,
                              lora={"r": 4, "alpha": 8, "dropout": 0.0})
    ours_class = trainer_classes()[1 if kd else 0]
    config_class, extra = distillation_config(beta=section.kd.beta) if kd else (None, None)
    theirs_class = GKDTrainer if kd else SFTTrainer
    losses, grads = [], []
    for cls in (theirs_class, ours_class):
        kwargs = {"teacher_model": make_tiny_model(layers=4, seed=9)} if kd else {}
        trainer = cls(model=make_tiny_model(layers=2, seed=1), args=trainer_config(section, tmp_path / "t", config_class=config_class,
                                                                          extra=extra, messages=kd),
                      train_dataset=dataset, processing_class=make_tokenizer(), peft_config=lora_config(section),
                      **kwargs)
        trainer.model.train()
        batch = next(iter(trainer.get_train_dataloader()))
        for n in (None, 17):
            loss = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=n)
            losses.append(float(loss))
        trainer.model.zero_grad()
        trainer.compute_loss(trainer.model, dict(batch)).backward()
        grads.append([p.grad.clone() for p in trainer.model.parameters() if p.requires_grad])
    assert losses[0] > 0
    assert losses[:2] == pytest.approx(losses[2:], rel=1e-5)
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


def test_no_model_of_a_trained_variant_outlives_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each variant's models (and the Trainer holding them in reference cycles) are freed before
    the next variant loads its own: on a GPU both would not fit."""
    import weakref

    from hubsdd.core import models
    from hubsdd.stages.finetune.stage import run_finetune

    pruned = save_tiny(tmp_path / "pruned", layers=2)
    ctx = finetune_ctx(tmp_path, "  variants: {a: {data: original}, b: {data: distilled}}\n"
                                 "  max_steps: 1\n  batch_size: 2\n", pruned)
    loaded: list[weakref.ref] = []
    alive_at_load: list[int] = []
    real = models.load_model

    def load_model(*args, **kwargs):
        alive_at_load.append(sum(ref() is not None for ref in loaded))
        model = real(*args, **kwargs)
        loaded.append(weakref.ref(model))
        return model

    monkeypatch.setattr(models, "load_model", load_model)
    run_finetune(ctx)
    assert alive_at_load == [0, 0]
    assert all(ref() is None for ref in loaded)


def test_data_parallel_processes_are_part_of_a_variants_identity(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """N processes train on N x batch_size examples a step: a variant trained under `accelerate
    launch --num_processes 2` is another variant, and DDP is told every parameter gets a gradient."""
    from hubsdd.stages.finetune.stage import training_processes, variant_key
    from hubsdd.stages.finetune.training import trainer_config

    pruned = save_tiny(tmp_path / "pruned", layers=2)
    ctx = finetune_ctx(tmp_path, "  variants: {sft: {data: original}}\n  max_steps: 2\n", pruned)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    one = variant_key(ctx, "sft")
    assert training_processes() == 1
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert training_processes() == 2 and variant_key(ctx, "sft") != one
    monkeypatch.delenv("WORLD_SIZE")
    config = trainer_config(ctx.section, tmp_path / "t", device="cpu")
    assert config.ddp_find_unused_parameters is False
    assert config.include_num_input_tokens_seen == "non_padding"


def test_gkd_trains_on_the_students_own_responses(tmp_path: Path) -> None:
    """loss: gkd with lmbda 1: every batch's responses are sampled from the student (TRL's on-policy
    path, counted), and the student still moves towards its teacher."""
    from hubsdd.stages.finetune.stage import run_finetune

    teacher = save_tiny(tmp_path / "teacher", layers=4, seed=1)
    student = save_tiny(tmp_path / "student", layers=2, seed=2)
    ctx = finetune_ctx(tmp_path, """\
  variants: {gkd: {data: original, loss: gkd}}
  gkd: {lmbda: 1.0, max_new_tokens: 8}
  method: full
  learning_rate: 0.01
  max_steps: 6
  batch_size: 3
""", student, teacher=teacher)
    out = run_finetune(ctx)
    m = out.metrics.variants["gkd"]
    assert m.loss == "gkd" and m.steps == 6
    assert m.on_policy_batches == 6, "the on-policy generation path did not run on every batch"
    assert out.outputs.gkd.lmbda == 1.0 and out.outputs.kd is None
    before = response_kl(student, teacher)
    after = response_kl(ctx.out_dir / "gkd" / "model", teacher)
    assert after < before, f"KL to the teacher {before:.4f} -> {after:.4f}"
    assert_plain_checkpoint(ctx.out_dir / "gkd" / "model", layers=2)


def test_gkd_settings_decide_only_gkd_variants(tmp_path: Path) -> None:
    from hubsdd.stages.finetune.stage import variant_key

    pruned = tmp_path / "pruned"
    keys = {}
    for lmbda in (0.5, 1.0):
        ctx = finetune_ctx(tmp_path, f"""\
  variants: {{sft: {{data: original}}, gkd: {{data: original, loss: gkd}}}}
  gkd: {{lmbda: {lmbda}}}
""", pruned)
        keys[lmbda] = {n: variant_key(ctx, n) for n in ("sft", "gkd")}
    assert keys[0.5]["sft"] == keys[1.0]["sft"]
    assert keys[0.5]["gkd"] != keys[1.0]["gkd"]


def test_accepted_data_drops_rejected_rewrites_instead_of_falling_back(tmp_path: Path) -> None:
    from hubsdd.stages.finetune.stage import training_dataset

    rows = [{"instruction": "q1", "original": "o1", "selected": "rewrite 1", "verdict": "accepted"},
            {"instruction": "q2", "original": "o2", "selected": "o2", "verdict": "rejected"},
            {"instruction": "q3", "original": "o3", "selected": "rewrite 3", "verdict": "accepted"}]
    parquet = write_distilled(tmp_path / "train.parquet", rows)
    accepted, dropped = training_dataset(parquet, "accepted")
    assert [r["completion"][0]["content"] for r in accepted] == ["rewrite 1", "rewrite 3"] and dropped == 1
    fallback, dropped = training_dataset(parquet, "distilled")
    assert [r["completion"][0]["content"] for r in fallback] == ["rewrite 1", "o2", "rewrite 3"] and dropped == 0
