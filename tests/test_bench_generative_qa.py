"""bench/generative_qa.py: what counts as an answer, and how written answers are compared."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import generative_qa  # noqa: E402


@pytest.mark.parametrize("response, answer, counted", [
    ("The theory was proposed by Charles Darwin in 1859.", "darwin", True),
    ("It is called the Nervous Tissue.", "nervous tissue", True),
    ("Inactive transport moves it.", "active", False),  # whole words only
    ("The answer is 42", "42", True),
    ("a", "the", False),  # an answer that normalizes to nothing never counts
])
def test_an_answer_counts_when_the_gold_answer_is_there_as_whole_words(response: str, answer: str,
                                                                        counted: bool) -> None:
    assert generative_qa.answer_matches(response, answer) is counted


def test_gsm8k_markup_is_the_calculator_notes_and_the_final_answer_line() -> None:
    assert generative_qa.has_gsm8k_markup("She has 48/2 = <<48/2=24>>24 left")
    assert generative_qa.has_gsm8k_markup("so 5 apples.\n#### 5")
    assert not generative_qa.has_gsm8k_markup("Photosynthesis makes glucose << slowly.")


def test_a_bare_number_answer_is_the_shape_of_a_gsm8k_answer_only_rewrite() -> None:
    assert generative_qa.bare_number("The answer to the problem is 10.")
    assert generative_qa.bare_number(" #### 8\n\nThe answer is 8.")
    assert generative_qa.bare_number("The answer is $12.")
    assert not generative_qa.bare_number("The answer is photosynthesis.")
    assert not generative_qa.bare_number("Mitochondria make ATP; the answer is 2 of them.")  # not how it opens


def test_a_response_that_says_a_sentence_twice_repeats_itself() -> None:
    assert generative_qa.repeats_itself("Amino acids build proteins.\nAmino acids build proteins.\nAmino")
    assert generative_qa.repeats_itself("It is made of cells. It is made of cells. It is")
    assert not generative_qa.repeats_itself("Darwin proposed it. He wrote a book about it.")
    assert not generative_qa.repeats_itself("Yes.\nYes.")  # too short to call a loop


def rows(correct: list[int], markup: int = 0) -> list[dict]:
    return [{"id": f"q{i}", "response": "", "correct": bool(c), "markup": i < markup, "finished": True}
            for i, c in enumerate(correct)]


def test_summary_compares_each_variant_with_the_pruned_model_item_by_item() -> None:
    per_model = {"base": rows([1] * 40), "pruned": rows([1] * 10 + [0] * 30),
                 "sft": rows([1] * 30 + [0] * 10, markup=8), "same": rows([1] * 10 + [0] * 30)}
    got = generative_qa.summarize(per_model)
    assert got["pruned"]["sciq_answer"] == 25.0 and got["base"]["sciq_answer"] == 100.0
    assert "generative_forgetting" not in got["base"] and "generative_forgetting" not in got["pruned"]
    sft = got["sft"]["generative_forgetting"]
    assert sft["diff"] == 50.0 and sft["significant"] and sft["ci95"][0] > 0
    assert got["sft"]["gsm8k_markup_share"] == 20.0 and got["sft"]["repeats_share"] == 0.0
    per_model["sdd"] = [{**r, "response": "The answer to the problem is 10."} if i < 10 else r
                        for i, r in enumerate(rows([0] * 40))]
    assert generative_qa.summarize(per_model)["sdd"]["bare_number_share"] == 25.0
    assert got["sft"]["bare_number_share"] == 0.0
    # the same answers as the pruned model: no difference, and the paired interval is exactly zero
    assert got["same"]["generative_forgetting"] == {"diff": 0.0, "ci95": [0.0, 0.0], "significant": False}


def test_sciq_items_are_a_fixed_sample_with_the_passage_when_there_is_one() -> None:
    items = generative_qa.sciq_items(50)
    assert items == generative_qa.sciq_items(50) and len({i["id"] for i in items}) == 50
    assert all(i["prompt"].rstrip().endswith("Answer in a few words.") and i["answer"] for i in items)
    assert any("\n\nQuestion: " in i["prompt"] for i in items)  # with the supporting passage
    assert any(i["prompt"].startswith("Question: ") for i in items)  # closed-book


def test_the_cli_names_a_model_argument_it_cannot_use(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        generative_qa.main(["--model", f"sft={tmp_path}"])
    assert "--model 'sft=" in capsys.readouterr().err


def test_the_cli_refuses_a_reference_that_is_not_one_of_its_models(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SystemExit):
        generative_qa.main(["--model", f"sft={tmp_path}", "--reference", "pruned"])
    assert "--reference 'pruned' is not one of the --model labels: sft" in capsys.readouterr().err
