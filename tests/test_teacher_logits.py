"""Stored teacher log-probabilities (hubsdd.core.teacher_logits): the KL from the cache against the KL
from the live teacher on the same batch, a killed build resumed, a foreign cache refused, and a
``kd`` variant trained from the cache with the teacher unloadable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import INSTRUCTIONS, make_tiny_model, make_tokenizer, save_tiny
from hubsdd.core import teacher_logits as tl
from hubsdd.core.errors import StageError, TeacherLogitsMismatchError
from hubsdd.core.recipe import FinetuneSection, TeacherLogitsSettings

VOCAB = 259
MAX_LEN = 48  # truncates some training sequences: their stored positions are found by prefix
ROWS = [{"instruction": r["question"], "input": "", "original": r["answer"],
         "selected": f"Let me compute. {r['answer']}"} for r in INSTRUCTIONS]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    yield


def build_cache(folder: Path, teacher, *, top_k: int, dtype: str = "float32", shard_size: int = 4,
                teacher_id: str = "tiny-teacher@abc", on_shard=None) -> tl.BuildResult:
    tok = make_tokenizer()
    settings = TeacherLogitsSettings(top_k=top_k, dtype=dtype, batch_size=3)
    groups = tl.sequence_groups(ROWS, settings.data, tok, shard_size)
    return tl.build(groups, model_loader=lambda: teacher, settings=settings, teacher=teacher_id,
                    tokenizer=tl.tokenizer_identity(tok), work_dir=folder, on_shard=on_shard)


def sft_batch(tmp_path: Path, data: str = "original"):
    """A batch exactly as the cached-KD trainer sees it (TRL's SFTTrainer on prompt/completion)."""
    from hubsdd.stages.finetune.stage import training_dataset
    from hubsdd.stages.finetune.training import trainer_classes, trainer_config

    from test_finetune import write_distilled

    dataset, _ = training_dataset(write_distilled(tmp_path / "d.parquet", ROWS), data)
    section = FinetuneSection(batch_size=4, max_steps=1, max_length=MAX_LEN)
    trainer = trainer_classes()[0](model=make_tiny_model(layers=2, seed=3), processing_class=make_tokenizer(),
                                   args=trainer_config(section, tmp_path / "t", device="cpu"), train_dataset=dataset)
    return next(iter(trainer.get_train_dataloader()))


def test_cache_kl_equals_live_kl_when_k_covers_the_vocabulary_and_is_below_it_by_the_tail(tmp_path: Path) -> None:
    import torch
    from trl.experimental.gkd import GKDTrainer

    from hubsdd.stages.finetune.training import completion_positions

    teacher, student = make_tiny_model(layers=4, seed=1), make_tiny_model(layers=2, seed=2)
    batch = sft_batch(tmp_path)  # max_length truncates some sequences: the prefix lookup is exercised
    assert (batch["attention_mask"].sum(1) == MAX_LEN).any()
    keep, _ = completion_positions(batch["labels"])
    kwargs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep)
    with torch.no_grad():
        s_logits, t_logits = student(**kwargs).logits, teacher(**kwargs).logits
    assert s_logits.shape == (int(keep.sum()), VOCAB)
    live = float(GKDTrainer.generalized_jsd_loss(student_logits=s_logits, teacher_logits=t_logits, beta=0.0))
    p = torch.softmax(t_logits, -1)
    log_ratio = torch.log_softmax(t_logits, -1) - torch.log_softmax(s_logits, -1)
    gaps = []
    for k in (VOCAB, 64, 8, 1):
        cache = tl.TeacherLogits(build_cache(tmp_path / f"k{k}", teacher, top_k=k).dir, teacher="tiny-teacher@abc",
                                 tokenizer=tl.tokenizer_identity(make_tokenizer()), max_length=MAX_LEN)
        ids, values, tail = cache.gather(batch["input_ids"], batch["attention_mask"], keep)
        assert ids.shape == (s_logits.shape[0], k)
        ours = float(tl.topk_kd_loss(s_logits, ids, values, tail, beta=0.0))
        if k == VOCAB:
            assert ours == pytest.approx(live, rel=1e-4, abs=1e-6)
            continue
        # The bucketed KL is the KL of coarser distributions: never above the live one, and below it by
        # the tail mass times the tail's KL, itself at most the tail's largest log-ratio.
        tail_mass = 1 - p.gather(-1, ids).sum(-1)
        assert tail_mass.min() > 0
        assert torch.allclose(tail.exp(), tail_mass, atol=1e-5)
        in_tail = torch.ones_like(p, dtype=torch.bool).scatter(-1, ids, False)
        tail_ratio = (log_ratio - torch.log(tail_mass / (1 - torch.softmax(s_logits, -1).gather(-1, ids).sum(-1)))
                      .unsqueeze(-1)).masked_fill(~in_tail, float("-inf")).amax(-1)
        bound = float((tail_mass * tail_ratio.clamp(min=0)).mean())
        gap = live - ours
        assert -1e-6 <= gap <= bound + 1e-6, (k, gap, bound)
        gaps.append(gap)
    assert gaps == sorted(gaps) and gaps[-1] > gaps[0] > 0  # fewer kept tokens, coarser, further below


def test_the_gradient_from_a_full_cache_is_the_live_one(tmp_path: Path) -> None:
    import torch
    from trl.experimental.gkd import GKDTrainer

    from hubsdd.stages.finetune.training import completion_positions

    teacher, student = make_tiny_model(layers=4, seed=1), make_tiny_model(layers=2, seed=2)
    batch = sft_batch(tmp_path)
    keep, _ = completion_positions(batch["labels"])
    cache = tl.TeacherLogits(build_cache(tmp_path / "c", teacher, top_k=VOCAB).dir, teacher="tiny-teacher@abc",
                             tokenizer=tl.tokenizer_identity(make_tokenizer()), max_length=MAX_LEN)
    kwargs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep)
    with torch.no_grad():
        t_logits = teacher(**kwargs).logits
    grads = []
    for cached in (False, True):
        student.zero_grad()
        s_logits = student(**kwargs).logits
        loss = tl.topk_kd_loss(s_logits, *cache.gather(batch["input_ids"], batch["attention_mask"], keep), beta=0.0,
                               num_items_in_batch=40) if cached else \
            GKDTrainer.generalized_jsd_loss(student_logits=s_logits, teacher_logits=t_logits, beta=0.0,
                                            num_items_in_batch=40)
        loss.backward()
        grads.append([p.grad.clone() for p in student.parameters()])
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-6)


def test_a_killed_build_resumes_without_redoing_finished_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import load_file

    log = tmp_path / "work.log"
    monkeypatch.setenv("HUBSDD_WORK_LOG", str(log))
    teacher = make_tiny_model(layers=4, seed=1)

    class Killed(Exception):
        pass

    def kill_after_first(k: int, total: int, resumed: bool) -> None:
        if k == 1:
            raise Killed

    with pytest.raises(Killed):
        build_cache(tmp_path / "c", teacher, top_k=8, shard_size=2, on_shard=kill_after_first)
    assert not (tmp_path / "c" / tl.INDEX).exists()
    # A torn shard (a kill inside a write that was not atomic) is rebuilt, not trusted.
    (tmp_path / "c" / "shard-00002.safetensors").write_bytes(b"torn")
    loads = []
    seen: list[tuple[int, bool]] = []
    done = build_cache(tmp_path / "c", teacher, top_k=8, shard_size=2,
                       on_shard=lambda k, total, resumed: seen.append((k, resumed)))
    assert seen[:2] == [(0, True), (1, True)] and not any(r for _, r in seen[2:])
    assert done.shards == 3 and done.shards_resumed == 2
    units = [line.split(" ", 1)[1] for line in log.read_text().splitlines()]
    assert len(units) == 3 and len(set(units)) == 3, units  # each shard computed exactly once
    # Nothing to do: the teacher is not even loaded.
    again = tl.build(tl.sequence_groups(ROWS, ["distilled", "original"], make_tokenizer(), 2),
                     model_loader=lambda: loads.append(1), settings=TeacherLogitsSettings(top_k=8, dtype="float32"),
                     teacher="tiny-teacher@abc", tokenizer=tl.tokenizer_identity(make_tokenizer()),
                     work_dir=tmp_path / "c")
    assert again.shards_resumed == 3 and loads == []
    fresh = build_cache(tmp_path / "fresh", teacher, top_k=8, shard_size=2)
    for n in range(3):
        a = load_file(str(done.dir / f"shard-{n:05d}.safetensors"))
        b = load_file(str(fresh.dir / f"shard-{n:05d}.safetensors"))
        assert all((a[key] == b[key]).all() for key in a)


def test_a_cache_from_another_teacher_or_tokenizer_is_refused_naming_both(tmp_path: Path) -> None:
    teacher = make_tiny_model(layers=4, seed=1)
    folder = build_cache(tmp_path / "c", teacher, top_k=8, teacher_id="org/teacher-a@1111").dir
    tok = make_tokenizer()
    with pytest.raises(TeacherLogitsMismatchError) as exc:
        tl.TeacherLogits(folder, teacher="org/teacher-b@2222", tokenizer=tl.tokenizer_identity(tok), max_length=MAX_LEN)
    assert "org/teacher-a@1111" in str(exc.value) and "org/teacher-b@2222" in str(exc.value)
    assert exc.value.what == "teacher"
    other = make_tokenizer()
    other.chat_template = other.chat_template.replace("<|im_start|>", "<|im_start|> ")
    with pytest.raises(TeacherLogitsMismatchError) as exc:
        tl.TeacherLogits(folder, teacher="org/teacher-a@1111", tokenizer=tl.tokenizer_identity(other), max_length=MAX_LEN)
    assert exc.value.what == "tokenizer"
    assert tl.tokenizer_identity(tok) in str(exc.value) and tl.tokenizer_identity(other) in str(exc.value)
    # The same tokenizer saved and reloaded elsewhere (the pruned model's copy) is the same one.
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path / "copy")
    assert tl.tokenizer_identity(AutoTokenizer.from_pretrained(tmp_path / "copy")) == tl.tokenizer_identity(tok)


def test_a_sequence_tokenized_otherwise_is_refused(tmp_path: Path) -> None:
    from hubsdd.stages.finetune.training import completion_positions

    folder = build_cache(tmp_path / "c", make_tiny_model(layers=4, seed=1), top_k=8).dir
    batch = sft_batch(tmp_path)
    cache = tl.TeacherLogits(folder, teacher="tiny-teacher@abc", tokenizer=tl.tokenizer_identity(make_tokenizer()),
                             max_length=MAX_LEN)
    ids = batch["input_ids"].clone()
    ids[0, 3] = (ids[0, 3] + 1) % VOCAB
    keep, _ = completion_positions(batch["labels"])
    with pytest.raises(StageError, match="not among the stored teacher log-probabilities"):
        cache.gather(ids, batch["attention_mask"], keep)
    shifted = keep.clone()
    first = int(shifted[0].nonzero()[0])
    shifted[0, first] = False
    with pytest.raises(StageError, match="completion boundary differs"):
        cache.gather(batch["input_ids"], batch["attention_mask"], shifted)


def test_kd_from_the_cache_trains_without_the_teacher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hubsdd.core.models
    from hubsdd.stages.finetune.stage import run_finetune
    from hubsdd.pipeline.runner import StageResult

    from test_finetune import finetune_ctx, response_kl

    teacher_dir = save_tiny(tmp_path / "teacher", layers=4, seed=1)
    student = save_tiny(tmp_path / "student", layers=2, seed=2)
    ctx = finetune_ctx(tmp_path, """\
  variants: {kd: {data: original, loss: kd}}
  method: full
  learning_rate: 0.01
  max_steps: 12
  batch_size: 3
""", student, teacher=teacher_dir)
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    base = ctx.inputs["base"]
    build_cache(tmp_path / "distill" / "teacher_logits", teacher, top_k=32, dtype="float16",
                teacher_id=tl.teacher_identity(base))
    del teacher
    d = ctx.inputs["distill"]
    ctx.inputs["distill"] = StageResult("distill", d.dir, {**d.data, "outputs": {
        **d.outputs, "teacher_logits": {"dir": "teacher_logits", "data": ["distilled", "original"], "top_k": 32}}})
    real = hubsdd.core.models.load_model

    def no_teacher(path, **kw):
        if Path(path).resolve() == teacher_dir.resolve():
            raise AssertionError("the teacher was loaded")
        return real(path, **kw)

    monkeypatch.setattr(hubsdd.core.models, "load_model", no_teacher)
    out = run_finetune(ctx)
    assert out.metrics.variants["kd"].teacher_logits == "cache (top 32)"  # auto found the cache
    assert out.metrics.variants["kd"].steps == 12
    before, after = response_kl(student, teacher_dir), response_kl(ctx.out_dir / "kd" / "model", teacher_dir)
    assert after < 0.8 * before, f"KL to the teacher {before:.4f} -> {after:.4f}"


def test_cache_mode_without_stored_logits_for_the_data_says_what_to_add(tmp_path: Path) -> None:
    from hubsdd.stages.finetune.stage import teacher_logits_dir

    from test_finetune import finetune_ctx

    pruned = save_tiny(tmp_path / "p", layers=2)
    ctx = finetune_ctx(tmp_path, "  variants: {kd: {data: original, loss: kd}}\n", pruned)
    ctx.section.kd.teacher_logits = "cache"  # (the recipe refuses it without distill.teacher_logits)
    with pytest.raises(StageError, match="add original to distill.teacher_logits.data"):
        teacher_logits_dir(ctx, "kd")
    ctx.section.kd.teacher_logits = "auto"
    assert teacher_logits_dir(ctx, "kd") is None  # auto: no cache, the live teacher


def test_index_records_what_the_dataset_card_describes(tmp_path: Path) -> None:
    built = build_cache(tmp_path / "c", make_tiny_model(layers=4, seed=1), top_k=8, dtype="float16")
    index = json.loads((built.dir / tl.INDEX).read_text())
    assert index["format"] == tl.FORMAT and index["top_k"] == 8 and index["dtype"] == "float16"
    assert sum(s["positions"] for s in index["shards"]) == built.positions > 0
