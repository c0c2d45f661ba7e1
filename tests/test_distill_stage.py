"""The distill stage: the dataset it writes (both verdicts, provenance), Hub sources pinned to a
commit, kill-and-resume, and the dataset card the card stage renders from its outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import pytest

from conftest import INSTRUCTIONS, save_tiny
from hubsdd.stages.distill.backends import Generation
from hubsdd.stages.distill.backends.transformers import TransformersBackend
from hubsdd.stages.distill.stage import run_distill
from hubsdd.core.errors import DataError
from hubsdd.core.recipe import parse_recipe
from hubsdd.pipeline.runner import StageContext, StageOutput, StageResult


def make_ctx(tmp_path: Path, *, distill_yaml: str, model_dir: Path | None = None, data: list[dict] | None = None,
             work: str = "work", out: str = "out", data_yaml: str = "{path: train.jsonl}",
             extra_yaml: str = "", runs: str = "runs", commit_sha: str | None = "0123abcd") -> StageContext:
    data_file = tmp_path / "train.jsonl"
    if not data_file.exists():
        data_file.write_text("".join(json.dumps(r) + "\n" for r in (data or INSTRUCTIONS)))
    (tmp_path / "short.j2").write_text("{{ instruction }} | {{ reference }}")
    model_dir = model_dir or tmp_path / "no-model"
    text = f"""\
name: t
runs_dir: {tmp_path / runs}
base: {{model: org/teacher, path: {model_dir}}}
prune: {{blocks: 1, calibration: {{path: {data_file}, text_column: question}}}}
distill:
  data: {data_yaml}
{distill_yaml}{extra_yaml}"""
    recipe = parse_recipe(text, source_path=tmp_path / "recipe.yaml")
    base = StageResult("base", tmp_path / "base", {"fingerprint": "base-fp", "outputs": {
        "model_dir": str(model_dir), "hub_id": "org/teacher", "commit_sha": commit_sha}})
    return StageContext(recipe, "distill", tmp_path / runs, tmp_path / out, tmp_path / work,
                        {"base": base}, "distill-fp")


class ScriptedBackend:
    """Answers by instruction: lets a test decide exactly what the teacher says."""

    name = "scripted"

    def __init__(self, answers: dict[str, Generation]) -> None:
        self.answers = answers
        self.seen: list[str] = []

    def generate(self, conversations: Sequence[list[dict]], *, seed: int) -> list[Generation]:
        out = []
        for conv in conversations:
            instruction = conv[0]["content"].split(" | ")[0]
            self.seen.append(instruction)
            out.append(self.answers.get(instruction, Generation("I cannot say.", 4, "stop")))
        return out

    def close(self) -> None:
        pass


def read_parquet(path: Path) -> tuple[list[dict], dict]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return table.to_pylist(), json.loads(table.schema.metadata[b"hubsdd"])


DISTILL_MATH = """\
  columns: {instruction: question, response: answer}
  template: short.j2
  checker: final-number
  shard_size: 2
  generation: {max_new_tokens: 6, batch_size: 2}
"""


def test_dataset_keeps_both_verdicts_and_provenance(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, distill_yaml=DISTILL_MATH)
    backend = ScriptedBackend({
        "What is 2 + 3?": Generation("Adding gives 5.\n#### 5", 9, "stop"),                 # right
        "What is 10 - 4?": Generation("Subtracting gives 7.\n#### 7", 9, "stop"),            # wrong
        "What is 3 * 3?": Generation("As the reference answer says, 9.\n#### 9", 12, "stop"),  # phrase
        "What is 8 / 2?": Generation("Half of 8 is", 6, "length"),                           # truncated
        "What is 7 + 1?": Generation("The answer is 8.", 6, "stop"),                         # right
    })
    out = run_distill(ctx, backend=backend)
    rows, meta = read_parquet(ctx.out_dir / out.outputs.data)
    assert list(rows[0]) == ["instruction", "input", "original", "rewrite", "selected", "verdict", "reason",
                             "label", "answer", "finish_reason", "tokens"]
    by_q = {r["instruction"]: r for r in rows}
    assert [by_q[q["question"]]["verdict"] for q in INSTRUCTIONS] == [
        "accepted", "rejected", "rejected", "rejected", "accepted", "rejected"]
    for r in rows:
        assert r["selected"] == (r["rewrite"] if r["verdict"] == "accepted" else r["original"])
    assert by_q["What is 10 - 4?"]["reason"] == "wrong-answer" and by_q["What is 10 - 4?"]["label"] == "6"
    assert out.metrics.rows == 6 and out.metrics.accepted == 2
    assert out.metrics.acceptance_rate == pytest.approx(2 / 6, abs=1e-3)
    assert out.metrics.rejection_reasons == {"truncated": 1, "mentions-reference": 1, "wrong-answer": 1,
                                                "no-answer": 1}
    assert out.metrics.tokens_generated == 9 + 9 + 12 + 6 + 6 + 4
    assert out.metrics.shards == 3
    o = out.outputs
    assert (o.teacher, o.teacher_sha, o.template_name, o.checker) == (
        "org/teacher", "0123abcd", "short.j2", "final-number")
    assert o.template_text == "{{ instruction }} | {{ reference }}"
    assert o.source.path == "train.jsonl" and o.generation.max_new_tokens == 6
    assert meta["teacher"] == "org/teacher" and meta["template_sha256"] == o.template_sha256


def test_hub_dataset_is_read_at_a_pinned_commit_and_the_commit_recorded(datasets_hub, tmp_path: Path) -> None:
    from hub_fixtures import CONFIGS_CARD, jsonl, push_dataset

    sha = push_dataset("alice/gsm-mini", {"README.md": CONFIGS_CARD, "main/train.jsonl": jsonl(INSTRUCTIONS),
                                          "main/test.jsonl": jsonl(INSTRUCTIONS[:1]),
                                          "socratic/train.jsonl": jsonl(INSTRUCTIONS[:1])}, "v1")
    ctx = make_ctx(tmp_path, distill_yaml=DISTILL_MATH, data_yaml="{dataset: alice/gsm-mini, config: main}")
    datasets_hub.requests.clear()
    out = run_distill(ctx, backend=ScriptedBackend({"What is 2 + 3?": Generation("It is 5.\n#### 5", 7, "stop")}))
    assert out.outputs.source_sha == sha and out.outputs.source.dataset == "alice/gsm-mini"
    # The default branch is resolved once by hubsdd; `datasets` then asks once about that commit.
    lookups = [path for _, path, kind, _ in datasets_hub.requests if kind == "repo_info"]
    assert lookups == ["/api/datasets/alice/gsm-mini", f"/api/datasets/alice/gsm-mini/revision/{sha}"]
    assert out.metrics.rows == len(INSTRUCTIONS) and out.metrics.accepted == 1
    rows, meta = read_parquet(ctx.out_dir / "data/train.parquet")
    assert meta["source_sha"] == sha and rows[0]["original"] == INSTRUCTIONS[0]["answer"]
    text = str(dataset_card(ctx, out))
    assert f"[alice/gsm-mini](https://huggingface.co/datasets/alice/gsm-mini) (`main`), split `train` @ `{sha[:12]}`" in text


def test_data_errors_name_the_recipe_field(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, distill_yaml="  columns: {instruction: question, response: answer2}\n")
    with pytest.raises(DataError, match=r"^distill\.columns\.response: column 'answer2' not in train\.jsonl"):
        run_distill(ctx, backend=ScriptedBackend({}))


class Killed(Exception):
    pass


class Counting:
    """Wraps a backend and records how many prompts it was asked to generate."""

    def __init__(self, inner: TransformersBackend) -> None:
        self.inner, self.name, self.prompts = inner, inner.name, 0

    def generate(self, conversations, *, seed):
        self.prompts += len(conversations)
        return self.inner.generate(conversations, seed=seed)

    def close(self) -> None:
        pass


def test_killed_run_resumes_without_regenerating_and_matches_uninterrupted(tmp_path: Path) -> None:
    model_dir = save_tiny(tmp_path / "teacher", layers=2)
    yaml = DISTILL_MATH.replace("max_new_tokens: 6", "max_new_tokens: 5")
    # uninterrupted, through the recipe's own backend (the base model, transformers, greedy)
    # (a run directory of its own: the killed run must not find these rewrites in its cache)
    full = make_ctx(tmp_path, distill_yaml=yaml, model_dir=model_dir, work="w-full", out="o-full", runs="runs-full")
    reference = run_distill(full)
    ref_rows, _ = read_parquet(full.out_dir / "data/train.parquet")
    assert reference.metrics.shards_resumed == 0 and reference.metrics.tokens_generated > 0

    ctx = make_ctx(tmp_path, distill_yaml=yaml, model_dir=model_dir, work="w-kill", out="o-kill")

    def kill_after_first(index: int, total: int, resumed: bool) -> None:
        if index == 0:
            raise Killed

    with pytest.raises(Killed):
        run_distill(ctx, on_shard=kill_after_first)
    shards = sorted((ctx.work_dir / "shards").glob("shard-*.parquet"))
    assert [p.name for p in shards] == ["shard-00000.parquet"]
    first_bytes = shards[0].read_bytes()
    assert not (ctx.out_dir / "data/train.parquet").exists()

    from hubsdd.core.models import load_model, load_tokenizer

    settings = ctx.recipe.distill.generation
    counting = Counting(TransformersBackend(load_model(model_dir), load_tokenizer(model_dir), settings))
    resumed = run_distill(ctx, backend=counting)
    assert counting.prompts == len(INSTRUCTIONS) - 2  # the first shard (2 rows) was not regenerated
    assert shards[0].read_bytes() == first_bytes
    assert resumed.metrics.shards_resumed == 1
    rows, _ = read_parquet(ctx.out_dir / "data/train.parquet")
    assert rows == ref_rows


PUBLISH = """\
  data_license: apache-2.0
publish: {model_repo: org/model, dataset_repo: org/data}
"""


def dataset_card(ctx: StageContext, out: StageOutput):
    """The dataset card exactly as the card stage renders it from the distill stage's record."""
    from hubsdd.stages.card.stage import render_dataset_card

    record = {"stage": "distill", "fingerprint": ctx.fingerprint, "config": ctx.recipe.section_dict("distill"),
              "outputs": out.outputs.model_dump(mode="json"), "metrics": out.metrics.model_dump(mode="json")}
    results = {"distill": StageResult("distill", ctx.out_dir, record)}
    return render_dataset_card(ctx.recipe, results, [out.outputs.data])


def test_changing_only_the_checks_reuses_the_rewrites_and_new_weights_are_written_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The teacher's finished shards outlive the stage in the run's cache, keyed by what they depend
    on: a new checking rule reruns the stage without the teacher; another teacher does not reuse them."""
    import hubsdd.stages.distill.stage as distill_stage

    model_dir = save_tiny(tmp_path / "teacher", layers=2)
    # a local teacher (no Hub commit): its identity beyond the stage is its files' hashes
    first = run_distill(make_ctx(tmp_path, distill_yaml=DISTILL_MATH, model_dir=model_dir, work="w1", out="o1",
                                 commit_sha=None))
    assert first.metrics.shards_reused == 0 and first.metrics.tokens_generated > 0
    written, _ = read_parquet(tmp_path / "o1/data/train.parquet")

    real_backend = distill_stage.make_backend
    monkeypatch.setattr(distill_stage, "make_backend", lambda *a, **k: pytest.fail("the teacher wrote again"))
    checked = make_ctx(tmp_path, distill_yaml=DISTILL_MATH.replace("final-number", "none") + "  min_length_ratio: 0.9\n",
                       model_dir=model_dir, work="w2", out="o2", commit_sha=None)
    again = run_distill(checked)
    assert again.metrics.shards_reused == again.metrics.shards == 3 and again.metrics.shards_resumed == 0
    rows, meta = read_parquet(tmp_path / "o2/data/train.parquet")
    assert [r["rewrite"] for r in rows] == [r["rewrite"] for r in written]
    assert meta["checker"] == "none" and meta["min_length_ratio"] == 0.9  # the new rule is the one applied
    assert again.metrics.tokens_generated == first.metrics.tokens_generated

    # the same path, other weights: the teacher writes again
    save_tiny(model_dir, layers=2, seed=1)
    monkeypatch.setattr(distill_stage, "make_backend", real_backend)
    fresh = run_distill(make_ctx(tmp_path, distill_yaml=DISTILL_MATH, model_dir=model_dir, work="w3", out="o3",
                                 commit_sha=None))
    assert fresh.metrics.shards_reused == 0
    # a backend passed in (a notebook's, a test's) neither reads nor feeds the cache
    scripted = ScriptedBackend({"What is 2 + 3?": Generation("#### 5", 2, "stop")})
    out = run_distill(make_ctx(tmp_path, distill_yaml=DISTILL_MATH, model_dir=model_dir, work="w4", out="o4",
                               commit_sha=None), backend=scripted)
    assert out.metrics.shards_reused == 0 and len(scripted.seen) == len(INSTRUCTIONS)


def test_min_length_ratio_rejects_bare_answers_and_the_card_says_so(tmp_path: Path) -> None:
    """``distill.min_length_ratio``: a correct but bare answer falls back to the original response,
    is counted as ``too-short``, and the dataset card states the rule; unset, the section's dump
    (and so every distill fingerprint) is what it was."""
    answers = {"What is 2 + 3?": Generation("Two plus three makes 5.\n#### 5", 9, "stop"),  # kept
               "What is 7 + 1?": Generation("#### 8", 3, "stop")}                          # bare
    ctx = make_ctx(tmp_path, distill_yaml=DISTILL_MATH + "  min_length_ratio: 0.5\n" + PUBLISH)
    out = run_distill(ctx, backend=ScriptedBackend(answers))
    by_q = {r["instruction"]: r for r in read_parquet(ctx.out_dir / out.outputs.data)[0]}
    assert (by_q["What is 7 + 1?"]["verdict"], by_q["What is 7 + 1?"]["reason"]) == ("rejected", "too-short")
    assert by_q["What is 7 + 1?"]["selected"] == "7 + 1 = 8\n#### 8"
    assert by_q["What is 2 + 3?"]["verdict"] == "accepted"
    # the scripted teacher's "I cannot say." to the other four is too short as well
    assert out.metrics.rejection_reasons["too-short"] == 5 and out.outputs.min_length_ratio == 0.5
    assert "`too-short`: the rewrite has fewer words than 50% of the original response's" in str(dataset_card(ctx, out))
    off = make_ctx(tmp_path, distill_yaml=DISTILL_MATH, out="out-off", work="work-off")
    assert "min_length_ratio" not in off.recipe.distill.model_dump(mode="json")
    assert ctx.recipe.distill.model_dump(mode="json")["min_length_ratio"] == 0.5
    out_off = run_distill(off, backend=ScriptedBackend(answers))
    assert "too-short" not in str(dataset_card(off, out_off))


def test_dataset_card_describes_the_distilled_data(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, distill_yaml=DISTILL_MATH + PUBLISH)
    out = run_distill(ctx, backend=ScriptedBackend({"What is 2 + 3?": Generation("It is 5.\n#### 5", 7, "stop")}))
    card = dataset_card(ctx, out)
    text = str(card)
    assert card.data.license == "apache-2.0"
    assert card.data.configs == [{"config_name": "default", "data_files": [{"split": "train",
                                                                          "path": "data/train.parquet"}]}]
    for needle in ("# org/data", "[org/model](https://huggingface.co/org/model)",
                   "[org/teacher](https://huggingface.co/org/teacher) @ `0123abcd`", "`short.j2`",
                   "| Rows | 6 |", "| Rewrites kept | 1 (16.7%) |", "`final-number`", "greedy; at most 6 new tokens",
                   "| `no-answer` | 5 |", 'load_dataset("org/data"', "2410.09982", "2402.13669",
                   "{{ instruction }} | {{ reference }}", "What is 2 + 3?"):
        assert needle in text, needle


def test_teacher_logits_are_stored_resumed_and_described(tmp_path: Path) -> None:
    from hubsdd.core import teacher_logits as tl

    model_dir = save_tiny(tmp_path / "teacher", layers=2, seed=1)
    ctx = make_ctx(tmp_path, model_dir=model_dir, distill_yaml=DISTILL_MATH + PUBLISH.replace(
        "publish:", "  teacher_logits: {top_k: 16, batch_size: 2}\npublish:"))
    answers = {"What is 2 + 3?": Generation("It is 5.\n#### 5", 7, "stop")}
    out = run_distill(ctx, backend=ScriptedBackend(answers))
    stored = out.outputs.teacher_logits
    assert (stored.top_k, stored.dtype, stored.data) == (16, "float16", ["distilled", "original"])
    assert stored.sequences == 7  # six originals, one accepted rewrite; the rejected ones equal their original
    assert out.metrics.teacher_logits_positions == stored.positions > 0
    folder = ctx.out_dir / stored.dir
    index = json.loads((folder / tl.INDEX).read_text())
    assert index["teacher"] == "org/teacher@0123abcd" and len(index["shards"]) == 3
    assert sorted(p.name for p in folder.iterdir()) == [tl.INDEX] + [f"shard-{n:05d}.safetensors" for n in range(3)]
    # A rerun with the same work folder (a kill after the shards) computes none of them again.
    again = run_distill(make_ctx(tmp_path, model_dir=model_dir, out="out2", distill_yaml=DISTILL_MATH + PUBLISH.replace(
        "publish:", "  teacher_logits: {top_k: 16, batch_size: 2}\npublish:")), backend=ScriptedBackend(answers))
    assert again.metrics.teacher_logits_shards_resumed == 3
    text = str(dataset_card(ctx, out))
    for needle in ("## Teacher log-probabilities", "top-16 next-token log-probabilities", "`selected` and `original`",
                   f"{stored.sequences} sequences, {stored.positions} positions", "`tail_logprob`", "16 + 1 outcomes",
                   "positions x 16, float16", tl.FORMAT):
        assert needle in text, needle
    # The release's dataset folder carries them, and the card's file list covers them.
    from hubsdd.stages.card.stage import assemble_release

    record = {"stage": "distill", "fingerprint": ctx.fingerprint, "config": ctx.recipe.section_dict("distill"),
              "outputs": out.outputs.model_dump(mode="json"), "metrics": out.metrics.model_dump(mode="json")}
    (ctx.out_dir / "stage.json").write_text(json.dumps(record))
    assemble_release(ctx.recipe, {"distill": StageResult("distill", ctx.out_dir, record)}, tmp_path / "card", "fp")
    released = tmp_path / "card" / "dataset"
    assert (released / stored.dir / tl.INDEX).read_bytes() == (folder / tl.INDEX).read_bytes()
    card_text = (released / "README.md").read_text()
    assert f"{stored.dir}/shard-00002.safetensors" in card_text and "## Teacher log-probabilities" in card_text
    # Off by default: not in the section's dump, so recipes without it keep their fingerprints.
    plain = make_ctx(tmp_path, distill_yaml=DISTILL_MATH, out="out3")
    assert "teacher_logits" not in plain.recipe.section_dict("distill")
    assert "teacher_logits" in ctx.recipe.section_dict("distill")
