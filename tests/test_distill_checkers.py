"""Answer extraction and the rules that keep a rewrite or fall back to the original response."""

from __future__ import annotations

import pytest

from hubsdd.stages.distill.checkers import REJECTION_PHRASES, extract_choice, extract_number, select

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


def test_too_short_rewrites_fall_back_only_when_the_rule_is_on() -> None:
    """A bare final answer passes the answer check but drops the working (a 135M teacher wrote 220
    of its 418 correct GSM8K rewrites that way): ``min_length_ratio`` rejects it."""
    bare = "#### 18\n\nThe answer is 18."
    assert select(bare, ORIGINAL, checker="final-number").verdict == "accepted"  # off by default
    v = select(bare, ORIGINAL, checker="final-number", min_length_ratio=0.5)
    assert (v.verdict, v.reason, v.selected) == ("rejected", "too-short", ORIGINAL)
    # a rewrite as long as half the original's words stays; words, not characters, are counted
    worked = "16 - 3 - 4 = 9 eggs, at $2: $18.\n#### 18"
    assert len(worked.split()) >= 0.5 * len(ORIGINAL.split())
    assert select(worked, ORIGINAL, checker="final-number", min_length_ratio=0.5).verdict == "accepted"
    # it fires before the answer check: a short wrong answer is too short first
    assert select("#### 26", ORIGINAL, checker="final-number", min_length_ratio=0.5).reason == "too-short"
