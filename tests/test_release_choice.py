"""publish.release: auto on hand-made per-item dev results: the significant winner, the stated
tie-break when none is significant, and the card's words for both."""

from __future__ import annotations

from hubsdd.stages.card.stage import render_section
from hubsdd.core import evidence
from hubsdd.core.release_choice import choose

ITEMS = 300


def outcomes(correct: int, shift: int = 0) -> dict[str, dict[str, float]]:
    """One task of ITEMS two-choice items, the first ``correct`` (rotated by ``shift``) right."""
    return {"arc_easy": {str(i): 1.0 if (i + shift) % ITEMS < correct else 0.0 for i in range(ITEMS)}}


def dev_evidence(**models: dict) -> dict:
    chance = {"arc_easy": {str(i): 0.5 for i in range(ITEMS)}}
    return evidence.build(models, chance, iterations=2000)


FIDELITY = {"pruned": {"kl": 0.70, "top1_agreement": 0.64}, "sft": {"kl": 0.69, "top1_agreement": 0.66},
            "sdd": {"kl": 0.61, "top1_agreement": 0.67}, "kd": {"kl": 0.56, "top1_agreement": 0.69}}


def test_a_significant_winner_is_released_whatever_its_fidelity() -> None:
    dev = dev_evidence(base=outcomes(250), pruned=outcomes(150), sft=outcomes(155, 7), sdd=outcomes(210, 3),
                       kd=outcomes(160, 11))
    found = choose(dev, FIDELITY)
    assert found["release"] == "sdd" and found["rule"] == "significant"
    assert found["contenders"] == ["sdd"]
    assert {c["b"] for c in found["comparisons"]} == {"pruned", "sft", "kd"}
    assert all(c["significant"] and c["diff"] > 0 for c in found["comparisons"])
    assert "base" not in found["candidates"]


def test_no_significant_difference_is_broken_by_fidelity_and_said_so() -> None:
    # sft leads the dev average by a point, not significantly; kd is closest to the base
    dev = dev_evidence(base=outcomes(250), pruned=outcomes(120), sft=outcomes(160, 5), sdd=outcomes(158, 9),
                       kd=outcomes(157, 13))
    found = choose(dev, FIDELITY)
    assert found["leader"] == "sft"
    assert found["rule"] == "fidelity" and found["release"] == "kd"
    assert set(found["contenders"]) == {"sft", "sdd", "kd"}  # pruned is significantly behind
    assert not any(c["significant"] for c in found["comparisons"] if c["b"] != "pruned")
    # without fidelity figures, the stated fallback: the highest dev average
    plain = choose(dev, {})
    assert plain["rule"] == "dev-average" and plain["release"] == "sft"


def test_the_card_states_the_rule_and_the_figures_behind_it() -> None:
    dev = dev_evidence(base=outcomes(250), pruned=outcomes(120), sft=outcomes(160, 5), sdd=outcomes(158, 9),
                       kd=outcomes(157, 13))
    text = render_section("sections/release.md.j2", choice=choose(dev, FIDELITY))
    assert "chose **`kd`** by the rule `fidelity`" in text
    assert "no significant difference on the dev items" in text and "lowest KL" in text
    assert "dev items** (arc_easy 300)" in text
    assert "| `kd` **← released** | 52.3 (" in text and "| 0.560 | 69.0 |" in text
    assert "- `sft`: -1.0 (" in text and "not significant" in text
    significant = dev_evidence(base=outcomes(250), pruned=outcomes(150), sdd=outcomes(210, 3))
    text = render_section("sections/release.md.j2", choice=choose(significant, FIDELITY))
    assert "by the rule `significant`" in text and ", significant" in text
    default = {"release": "merge", "rule": "default", "statement": "no dev items were evaluated"}
    text = render_section("sections/release.md.j2", choice=default)
    assert "chose **`merge`** by the rule `default`: no dev items were evaluated." in text
