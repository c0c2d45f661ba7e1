"""Which teacher rewrites become training data: answer extraction and the selection rules.

Selection keeps a rewrite only if it is usable training data; otherwise the original response is
used. The rules, in order (the first that fires is the ``reason``):

``empty``               the rewrite is blank.
``truncated``           generation stopped at ``max_new_tokens``: an incomplete answer.
``mentions-reference``  the rewrite talks about the prompt scaffolding instead of answering
                        (any of :data:`REJECTION_PHRASES`, case-insensitive).
``too-short``           with ``distill.min_length_ratio`` set: the rewrite has fewer words than that
                        share of the original response's. A 135M teacher answered 220 of its 418
                        correct GSM8K rewrites with a bare "#### 8 The answer is 8."; trained on,
                        they taught the student to answer science questions "The answer to the
                        problem is 10." (BENCHMARKS.md, Regimes).
``no-label``            the checker cannot find a gold answer in the label (or original response).
``no-answer``           the checker cannot find an answer in the rewrite.
``wrong-answer``        the rewrite's answer differs from the gold one.

Checkers (``distill.checker``): ``final-number`` (GSM8K: the gold number is after ``####`` in the
label or original response; the rewrite's is its last ``#### N``, else ``\\boxed{N}``, else "the
answer is N", else its last number; compared numerically with commas and ``$`` stripped),
``choice-letter`` (A-E), ``none`` (only the phrase and length rules apply).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Callable

# A rewrite containing one of these talks about the prompt instead of answering it: trained on, it
# would teach the student to mention a reference that never exists at inference time.
REJECTION_PHRASES: tuple[str, ...] = (
    "reference answer",
    "reference solution",
    "reference response",
    "the reference",
    "original answer",
    "original response",
    "original solution",
    "your response",
    "the given answer",
    "the provided answer",
    "the provided solution",
    "as a guide",
)

REASONS = ("empty", "truncated", "mentions-reference", "too-short", "no-label", "no-answer", "wrong-answer")


# --------------------------------------------------------------------------- final numbers

_NUM = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_HASH_RE = re.compile(r"####\s*\$?\s*(" + _NUM + ")")
_BOXED_RE = re.compile(r"\\boxed\{\s*\$?\s*(" + _NUM + ")")
_ANSWER_IS_RE = re.compile(r"answer\s*(?:is|:|=)\s*(?:\*\*)?\s*\$?\s*(" + _NUM + ")", re.IGNORECASE)
# The last number: a '-' is a sign only when it does not follow a word character ("10-4" is 10, 4).
_LAST_NUM_RE = re.compile(r"(?:(?<![\w.])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def extract_number(text: str) -> str | None:
    """The final numeric answer of a response, normalized ("1,000.0" -> "1000"), or None.

    In order: the last ``#### N`` (GSM8K), ``\\boxed{N}``, "the answer is N" / "answer: N", the
    last number in the text."""
    if not text:
        return None
    for pattern in (_HASH_RE, _BOXED_RE, _ANSWER_IS_RE, _LAST_NUM_RE):
        found = pattern.findall(text)
        if found:
            return normalize_number(found[-1])
    return None


def normalize_number(value: str) -> str | None:
    try:
        number = Decimal(value.replace(",", "").replace("$", "").strip())
    except InvalidOperation:
        return None
    if number == number.to_integral_value():
        return str(int(number))
    return format(number.normalize(), "f")


# --------------------------------------------------------------------------- choice letters

_LETTER_ONLY_RE = re.compile(r"^\s*\(?([A-E])\)?[.:)]?\s*$")
_ANSWER_LETTER_RE = re.compile(r"answer\s*(?:is|:)\s*(?:option\s*)?(?:\*\*)?\(?([A-E])\)?(?![A-Za-z])", re.IGNORECASE)
_PAREN_LETTER_RE = re.compile(r"\(([A-E])\)")
_LEADING_LETTER_RE = re.compile(r"^\s*([A-E])[.):]\s", re.MULTILINE)


def extract_choice(text: str) -> str | None:
    """The chosen option letter (A-E) of a response, or None.

    In order: the whole text is a letter ("B", "(B)", "B."), the last "answer is B"/"answer: (B)",
    the last "(B)", the last line starting "B." or "B)"."""
    if not text:
        return None
    m = _LETTER_ONLY_RE.match(text)
    if m:
        return m.group(1)
    for pattern in (_ANSWER_LETTER_RE, _PAREN_LETTER_RE, _LEADING_LETTER_RE):
        found = pattern.findall(text)
        if found:
            return found[-1].upper()
    return None


EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "final-number": extract_number,
    "choice-letter": extract_choice,
}


# --------------------------------------------------------------------------- selection


def find_rejection_phrase(text: str) -> str | None:
    low = text.lower()
    return next((p for p in REJECTION_PHRASES if p in low), None)


@dataclass(frozen=True)
class Verdict:
    verdict: str  # "accepted" | "rejected"
    reason: str  # "" when accepted, else one of REASONS
    selected: str
    label: str | None  # the gold answer the checker compared against
    answer: str | None  # the answer found in the rewrite


def select(rewrite: str, original: str, *, checker: str, label: str | None = None,
           finish_reason: str = "stop", min_length_ratio: float | None = None) -> Verdict:
    """Keep the rewrite or fall back to the original response, and say why.

    ``label`` is the gold answer column if the recipe names one; otherwise the checker parses the
    gold answer out of the original response (GSM8K's ``#### N``)."""
    extractor = EXTRACTORS.get(checker)
    gold = None
    if extractor is not None:
        gold = extractor(label if label not in (None, "") else original)
    elif label not in (None, ""):
        gold = str(label)
    answer = extractor(rewrite) if extractor is not None and rewrite else None

    def reject(reason: str) -> Verdict:
        return Verdict("rejected", reason, original, gold, answer)

    if not rewrite or not rewrite.strip():
        return reject("empty")
    if finish_reason == "length":
        return reject("truncated")
    if find_rejection_phrase(rewrite):
        return reject("mentions-reference")
    if min_length_ratio is not None and len(rewrite.split()) < min_length_ratio * len(original.split()):
        return reject("too-short")
    if extractor is not None:
        if gold is None:
            return reject("no-label")
        if answer is None:
            return reject("no-answer")
        if answer != gold:
            return reject("wrong-answer")
    return Verdict("accepted", "", rewrite.strip(), gold, answer)
