"""Distillation: answer extraction and selection rules, the dataset written, kill-and-resume, backends."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

import pytest

from conftest import INSTRUCTIONS, save_tiny
from hubsdd.distill import (
    REJECTION_PHRASES,
    Generation,
    TransformersBackend,
    VLLMBackend,
    extract_choice,
    extract_number,
    load_template,
    run_distill,
    select,
)
from hubsdd.errors import DataError, StageError
from hubsdd.recipe import GenerationSettings, parse_recipe
from hubsdd.runner import StageContext, StageResult

ORIGINAL = "Janet sells 16 - 3 - 4 = 9 eggs.\nShe makes 9 * 2 = $18.\n#### 18"


# --------------------------------------------------------------------------- extraction


@pytest.mark.parametrize("text, expected", [
    ("so 9 * 2 = 18\n#### 18", "18"),
    ("#### 1,234", "1234"),
    ("#### $1,000.00", "1000"),
    ("Total: 3 + 4 = 7. The final answer is \\boxed{7}.", "7"),
    ("She pays 5 dollars, so the answer is 12.", "12"),
    ("Answer: 2.50", "2.5"),
    ("First 10-4 = 6, then 6 + 2 = 8", "8"),  # last number; '-' after a digit is not a sign
    ("The temperature drops to -5 degrees", "-5"),
    ("#### 42 and later 7", "42"),  # '####' wins over the last number
    ("no numbers here", None),
    ("", None),
])
def test_extract_number(text: str, expected: str | None) -> None:
    assert extract_number(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("B", "B"), ("(c)", None), ("(C)", "C"), ("D.", "D"),
    ("Looking at each option, the answer is (B) because ...", "B"),
    ("Answer: E", "E"),
    ("Option (A) is wrong, (D) fits best.", "D"),
    ("A. Paris\nB. London", "B"),
    ("I am not sure.", None),
])
def test_extract_choice(text: str, expected: str | None) -> None:
    assert extract_choice(text) == expected


# --------------------------------------------------------------------------- selection


def test_final_number_right_answer_is_accepted() -> None:
    v = select("9 eggs are sold for $2 each: 9 * 2 = 18.\n#### 18", ORIGINAL, checker="final-number")
    assert (v.verdict, v.reason, v.label, v.answer) == ("accepted", "", "18", "18")
    assert v.selected.startswith("9 eggs")


def test_final_number_accepts_the_answer_is_form_and_label_column() -> None:
    v = select("She earns 18 dollars. The answer is 18.", ORIGINAL, checker="final-number", label="18")
    assert v.verdict == "accepted"
    v = select("The answer is $18.00", "no number in this original", checker="final-number", label="#### 18")
    assert v.verdict == "accepted"


def test_final_number_wrong_answer_falls_back_to_original() -> None:
    v = select("16 - 3 = 13, 13 * 2 = 26\n#### 26", ORIGINAL, checker="final-number")
    assert (v.verdict, v.reason, v.selected, v.answer, v.label) == ("rejected", "wrong-answer", ORIGINAL, "26", "18")


def test_final_number_missing_answer_or_label_is_rejected() -> None:
    v = select("She sells the eggs at the market.", ORIGINAL, checker="final-number")
    assert (v.verdict, v.reason, v.selected) == ("rejected", "no-answer", ORIGINAL)
    v = select("#### 18", "an original without numbers", checker="final-number")
    assert (v.verdict, v.reason) == ("rejected", "no-label")


def test_choice_letter_checker() -> None:
    assert select("Paris is in France, so the answer is (B).", "B", checker="choice-letter").verdict == "accepted"
    v = select("The answer is C.", "B", checker="choice-letter")
    assert (v.verdict, v.reason, v.selected) == ("rejected", "wrong-answer", "B")
    v = select("The answer is (A)", "irrelevant original", checker="choice-letter", label="A")
    assert v.verdict == "accepted"


@pytest.mark.parametrize("phrase", REJECTION_PHRASES)
def test_each_rejection_phrase_falls_back_to_original(phrase: str) -> None:
    rewrite = f"Compared with {phrase.upper()}, I get the same thing.\n#### 18"
    v = select(rewrite, ORIGINAL, checker="final-number")
    assert (v.verdict, v.reason, v.selected) == ("rejected", "mentions-reference", ORIGINAL)
    assert select(rewrite, "original", checker="none").reason == "mentions-reference"


def test_empty_and_truncated_rewrites_are_rejected() -> None:
    assert select("   ", ORIGINAL, checker="none").reason == "empty"
    v = select("A long answer that was cut", ORIGINAL, checker="none", finish_reason="length")
    assert (v.reason, v.selected) == ("truncated", ORIGINAL)
    assert select("A fine answer.", "orig", checker="none").verdict == "accepted"


# --------------------------------------------------------------------------- templates


def test_builtin_templates_render_instruction_input_and_reference() -> None:
    general = load_template("general")
    text = general.render("Summarize this.", "Some text.", "A summary.")
    assert "Summarize this." in text and "Some text." in text and "A summary." in text
    assert "### Input:" not in general.render("Say hi.", "", "Hi!")
    math = load_template("math")
    assert "step by step" in math.render("What is 2+2?", "", "2+2=4\n#### 4") and "####" in math.text
    assert len(general.sha256) == 64 and general.sha256 != math.sha256


def test_custom_template_path_and_missing_template(tmp_path: Path) -> None:
    (tmp_path / "t.j2").write_text("Q: {{ instruction }} R: {{ reference }}")
    t = load_template("t.j2", tmp_path)
    assert (t.name, t.render("a", "", "b")) == ("t.j2", "Q: a R: b")
    with pytest.raises(StageError, match="distill.template"):
        load_template("missing.j2", tmp_path)


# --------------------------------------------------------------------------- the stage


def make_ctx(tmp_path: Path, *, distill_yaml: str, model_dir: Path | None = None, data: list[dict] | None = None,
             work: str = "work", out: str = "out", data_yaml: str = "{path: train.jsonl}") -> StageContext:
    data_file = tmp_path / "train.jsonl"
    if not data_file.exists():
        data_file.write_text("".join(json.dumps(r) + "\n" for r in (data or INSTRUCTIONS)))
    (tmp_path / "short.j2").write_text("{{ instruction }} | {{ reference }}")
    model_dir = model_dir or tmp_path / "no-model"
    text = f"""\
name: t
runs_dir: {tmp_path / 'runs'}
base: {{model: org/teacher, path: {model_dir}}}
prune: {{blocks: 1, calibration: {{path: {data_file}, text_column: question}}}}
distill:
  data: {data_yaml}
{distill_yaml}"""
    recipe = parse_recipe(text, source_path=tmp_path / "recipe.yaml")
    base = StageResult("base", tmp_path / "base", {"fingerprint": "base-fp", "outputs": {
        "model_dir": str(model_dir), "hub_id": "org/teacher", "commit_sha": "0123abcd"}})
    return StageContext(recipe, "distill", tmp_path / "runs", tmp_path / out, tmp_path / work,
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
    rows, meta = read_parquet(ctx.out_dir / out.outputs["data"])
    assert list(rows[0]) == ["instruction", "input", "original", "rewrite", "selected", "verdict", "reason",
                             "label", "answer", "finish_reason", "tokens"]
    by_q = {r["instruction"]: r for r in rows}
    assert [by_q[q["question"]]["verdict"] for q in INSTRUCTIONS] == [
        "accepted", "rejected", "rejected", "rejected", "accepted", "rejected"]
    for r in rows:
        assert r["selected"] == (r["rewrite"] if r["verdict"] == "accepted" else r["original"])
    assert by_q["What is 10 - 4?"]["reason"] == "wrong-answer" and by_q["What is 10 - 4?"]["label"] == "6"
    assert out.metrics["rows"] == 6 and out.metrics["accepted"] == 2
    assert out.metrics["acceptance_rate"] == pytest.approx(2 / 6, abs=1e-3)
    assert out.metrics["rejection_reasons"] == {"truncated": 1, "mentions-reference": 1, "wrong-answer": 1,
                                                "no-answer": 1}
    assert out.metrics["tokens_generated"] == 9 + 9 + 12 + 6 + 6 + 4
    assert out.metrics["shards"] == 3
    o = out.outputs
    assert (o["teacher"], o["teacher_sha"], o["template_name"], o["checker"]) == (
        "org/teacher", "0123abcd", "short.j2", "final-number")
    assert o["template_text"] == "{{ instruction }} | {{ reference }}"
    assert o["source"]["path"] == "train.jsonl" and o["generation"]["max_new_tokens"] == 6
    assert meta["teacher"] == "org/teacher" and meta["template_sha256"] == o["template_sha256"]


def test_hub_dataset_is_read_at_a_pinned_commit_and_the_commit_recorded(datasets_hub, tmp_path: Path) -> None:
    from hub_fixtures import CONFIGS_CARD, jsonl, push_dataset

    sha = push_dataset("alice/gsm-mini", {"README.md": CONFIGS_CARD, "main/train.jsonl": jsonl(INSTRUCTIONS),
                                          "main/test.jsonl": jsonl(INSTRUCTIONS[:1]),
                                          "socratic/train.jsonl": jsonl(INSTRUCTIONS[:1])}, "v1")
    ctx = make_ctx(tmp_path, distill_yaml=DISTILL_MATH, data_yaml="{dataset: alice/gsm-mini, config: main}")
    datasets_hub.requests.clear()
    out = run_distill(ctx, backend=ScriptedBackend({"What is 2 + 3?": Generation("It is 5.\n#### 5", 7, "stop")}))
    assert out.outputs["source_sha"] == sha and out.outputs["source"]["dataset"] == "alice/gsm-mini"
    # The default branch is resolved once by hubsdd; `datasets` then asks once about that commit.
    lookups = [path for _, path, kind, _ in datasets_hub.requests if kind == "repo_info"]
    assert lookups == ["/api/datasets/alice/gsm-mini", f"/api/datasets/alice/gsm-mini/revision/{sha}"]
    assert out.metrics["rows"] == len(INSTRUCTIONS) and out.metrics["accepted"] == 1
    rows, meta = read_parquet(ctx.out_dir / "data/train.parquet")
    assert meta["source_sha"] == sha and rows[0]["original"] == INSTRUCTIONS[0]["answer"]
    text = str(render_dataset_card(ctx, out))
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
    full = make_ctx(tmp_path, distill_yaml=yaml, model_dir=model_dir, work="w-full", out="o-full")
    reference = run_distill(full)
    ref_rows, _ = read_parquet(full.out_dir / "data/train.parquet")
    assert reference.metrics["shards_resumed"] == 0 and reference.metrics["tokens_generated"] > 0

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

    from hubsdd.models import load_model, load_tokenizer

    settings = ctx.recipe.distill.generation
    counting = Counting(TransformersBackend(load_model(model_dir), load_tokenizer(model_dir), settings))
    resumed = run_distill(ctx, backend=counting)
    assert counting.prompts == len(INSTRUCTIONS) - 2  # the first shard (2 rows) was not regenerated
    assert shards[0].read_bytes() == first_bytes
    assert resumed.metrics["shards_resumed"] == 1
    rows, _ = read_parquet(ctx.out_dir / "data/train.parquet")
    assert rows == ref_rows


@pytest.mark.parametrize("model_type", ["llama", "gemma2"])
def test_left_padded_batches_match_one_by_one_generation(model_type: str) -> None:
    from conftest import make_tiny_model, make_tokenizer

    prompts = [[{"role": "user", "content": c}] for c in ("hi", "a much longer prompt here", "mid size")]
    model, tok = make_tiny_model(model_type, layers=2), make_tokenizer()
    one = TransformersBackend(model, tok, GenerationSettings(max_new_tokens=6, batch_size=1))
    batched = TransformersBackend(model, tok, GenerationSettings(max_new_tokens=6, batch_size=3))
    # gemma2's sliding-window cache cannot take refilled rows: it runs in static batches instead.
    assert batched.continuous is (model_type == "llama")
    expected = [g.text for g in one.generate(prompts, seed=0)]
    assert [g.text for g in batched.generate(prompts, seed=0)] == expected
    static = TransformersBackend(model, tok, GenerationSettings(max_new_tokens=6, batch_size=3), continuous=False)
    assert [g.text for g in static.generate(prompts, seed=0)] == expected
    if model_type == "gemma2":
        with pytest.raises(StageError, match="sliding-window"):
            TransformersBackend(model, tok, GenerationSettings(), continuous=True)


SHARED_HEAD = "Rewrite the answer below in your own words, step by step. "
QUESTIONS = ["2+3?", "What is ten minus four, please?", "3*3", "Half of eight is what number?", "7+1=?",
             "Is six minus six zero or one?", "x"]


def _varied_tiny_model():
    """A tiny random model with large weights, so its answers depend on the prompt (at the default
    init every prompt gets the same few tokens, and no row would end before another)."""
    import torch
    from transformers import AutoModelForCausalLM

    from conftest import tiny_config

    config = tiny_config(layers=2)
    config.initializer_range = 0.5
    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.generation_config.eos_token_id = None
    return model


def _stock_greedy(model, tok, conversation: list[dict], max_new_tokens: int) -> list[int]:
    """transformers' own generate, one prompt at a time, never stopping early: the reference."""
    import torch

    ids = tok.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tok(ids, add_special_tokens=False)["input_ids"]])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             min_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None)
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("head", [SHARED_HEAD, ""], ids=["shared-prefix", "no-shared-prefix"])
def test_continuous_batching_matches_stock_generate_as_rows_finish_and_refill(head: str) -> None:
    """7 prompts through 3 rows: rows end at different steps and newcomers take their places. Every
    answer must equal transformers' own one-prompt-at-a-time greedy answer, cut at its end token."""
    from conftest import make_tokenizer

    model, tok = _varied_tiny_model(), make_tokenizer()
    conversations = [[{"role": "user", "content": head + q}] for q in QUESTIONS]
    max_new = 10
    full = [_stock_greedy(model, tok, c, max_new) for c in conversations]

    def ends(token: int) -> list[int]:  # how many tokens each answer has when `token` ends a turn
        return [seq.index(token) + 1 if token in seq else max_new for seq in full]

    # An end-of-turn token that stops the answers at as many different lengths as possible.
    end = max(sorted({t for seq in full for t in seq}), key=lambda t: len(set(ends(t))))
    assert len(set(ends(end))) >= 3, "the tiny model's answers are too uniform to exercise refills"

    backend = TransformersBackend(model, tok, GenerationSettings(max_new_tokens=max_new, batch_size=3))
    backend.eos_ids = [end]
    assert backend.continuous
    calls: list[tuple[int, int]] = []  # (rows, new tokens) of every forward pass
    forward = model.forward

    def spy(*args, **kwargs):
        calls.append(tuple(kwargs["input_ids"].shape))
        return forward(*args, **kwargs)

    model.forward = spy
    try:
        got = backend.generate(conversations, seed=0)
    finally:
        del model.forward
    for seq, n, g in zip(full, ends(end), got):
        kept = seq[:n - 1] if n - 1 < len(seq) and seq[n - 1] == end else seq[:n]
        assert g.text == tok.decode(kept, skip_special_tokens=True).strip()
        assert g.tokens == n
        assert g.finish_reason == ("stop" if end in seq else "length")
    assert max(rows for rows, _ in calls) <= 3
    prefills = [c for c in calls if c[1] > 1]
    assert len(prefills) >= 3  # newcomers were admitted while other rows were still generating
    shared = bool(head)
    # The shared head is prefilled once (one row), not with every prompt.
    assert (prefills[0][0] == 1 and prefills[0][1] >= len(head)) is shared


def test_sampling_is_reproducible_per_seed() -> None:
    from conftest import make_tokenizer

    model, tok = _varied_tiny_model(), make_tokenizer()
    settings = GenerationSettings(max_new_tokens=8, batch_size=2, do_sample=True, temperature=1.0, top_p=0.9)
    conversations = [[{"role": "user", "content": SHARED_HEAD + q}] for q in QUESTIONS[:5]]
    backend = TransformersBackend(model, tok, settings)
    first = [g.text for g in backend.generate(conversations, seed=7)]
    assert [g.text for g in backend.generate(conversations, seed=7)] == first
    assert [g.text for g in backend.generate(conversations, seed=8)] != first
    greedy = TransformersBackend(model, tok, GenerationSettings(max_new_tokens=8, batch_size=2))
    assert [g.text for g in greedy.generate(conversations, seed=7)] != first


def test_vllm_backend_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(StageError) as err:
        VLLMBackend(tmp_path, GenerationSettings(backend="vllm"))
    assert err.value.fix == "pip install 'hubsdd[vllm]'"


def render_dataset_card(ctx: StageContext, out) -> "object":
    import importlib.resources

    from huggingface_hub import DatasetCard, DatasetCardData

    rows, _ = read_parquet(ctx.out_dir / "data/train.parquet")
    stage = {"stage": "distill", "config": ctx.recipe.section_dict("distill"), "outputs": out.outputs,
             "metrics": out.metrics}
    template = importlib.resources.files("hubsdd.templates").joinpath("dataset_card.md.j2").read_text()
    assert template.startswith("---\n{{ card_data }}\n---")
    return DatasetCard.from_template(DatasetCardData(license="apache-2.0", tags=["sdd"]), template_str=template,
                                     distill=stage, sample_rows=rows[:3], dataset_repo="org/data",
                                     model_repo="org/model", license="apache-2.0", recipe_name="t")


def test_dataset_card_template_renders_through_huggingface_hub(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, distill_yaml=DISTILL_MATH)
    out = run_distill(ctx, backend=ScriptedBackend({"What is 2 + 3?": Generation("It is 5.\n#### 5", 7, "stop")}))
    card = render_dataset_card(ctx, out)
    text = str(card)
    assert card.data.license == "apache-2.0"
    for needle in ("org/teacher", "`short.j2`", "1 (16.7%)", "`final-number`", "load_dataset(\"org/data\"",
                   "2410.09982", "2402.13669", "{{ instruction }} | {{ reference }}", "What is 2 + 3?", "wrong-answer"):
        assert needle in text, needle
