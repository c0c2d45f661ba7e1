"""The rewrite prompt templates, and the user turn students are trained on."""

from __future__ import annotations

from pathlib import Path

import pytest

from hubsdd.stages.distill.prompts import load_template, user_message
from hubsdd.core.errors import StageError


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


def test_user_message_appends_the_input_only_when_there_is_one() -> None:
    assert user_message("Translate to French.", "Good morning") == "Translate to French.\n\nGood morning"
    assert user_message("Say hi.", "") == user_message("Say hi.", None) == "Say hi."
