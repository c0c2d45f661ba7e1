"""Hostile strings never reach a card unescaped: every string that flows from a recipe, a dataset row
or the base model's card into README.md (front matter and body) or the dataset card is refused at
validation or escaped, and a release built from them is published and read back unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import save_tiny
from hubsdd.core.errors import RecipeError
from hubsdd.core.recipe import parse_recipe

FENCE_BREAKER = "```\n---\nlicense: mit\n---\n</details></summary><script>alert(1)</script>\n~~~"
ROWS = [
    {"question": "Close the fence?\n" + FENCE_BREAKER, "answer": "<b>bold</b> & `code` ``` more\n#### 5"},
    {"question": "---\ntags: [evil]\n---", "answer": "<!-- comment --> {{ jinja }} {% raw %}\n#### 3"},
    {"question": "What is 1 + 1?", "answer": "| a | b |\n|---|---|\n#### 2"},
]
DESCRIPTION = "A <script>alert('x')</script> model.\n\n---\nlicense: mit\n---\n\n```\nnot closed"


def _recipe(tmp_path: Path, card: str, base_readme: str | None = None) -> str:
    base = save_tiny(tmp_path / "tiny-llama")
    if base_readme is not None:
        (base / "README.md").write_text(base_readme)
    (tmp_path / "cal.jsonl").write_text("".join(json.dumps({"text": f"calibration text {i}"}) + "\n" for i in range(8)))
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "template.j2").write_text("```\n{{ instruction }}\n~~~\nReference: {{ reference }}\n</details>")
    return f"""\
name: hostile
runs_dir: {tmp_path / 'runs'}
base: {{model: alice/tiny-base, path: {base}}}
prune:
  blocks: 2
  calibration: {{path: {tmp_path / 'cal.jsonl'}, text_column: text, samples: 4, max_length: 16, batch_size: 4}}
distill:
  data: {{path: {tmp_path / 'rows.jsonl'}}}
  columns: {{instruction: question, response: answer}}
  template: {tmp_path / 'template.j2'}
  generation: {{max_new_tokens: 4, batch_size: 4}}
card:
{card}
publish: {{model_repo: alice/hostile, dataset_repo: alice/hostile-data}}
"""


@pytest.mark.parametrize("field, value, words", [
    ("model_name", '"Tiny\\n---\\nlicense: mit"', "line breaks"),
    ("model_name", '"Tiny\\u0007"', "control characters"),
    ("tags", '["ok", "a tag with spaces"]', "a tag is"),
    ("tags", '["---"]', "a tag is"),
    ("tags", '["<script>"]', "a tag is"),
    ("language", '["en\\nlicense: mit"]', "language codes"),
    ("license", '"mit\\ntags: [x]"', "not a license id"),
    ("license", '"Apache 2.0"', "not a license id"),
    ("description", '"text\\u001b[31m red"', "control characters"),
])
def test_hostile_card_fields_are_refused_naming_the_field(tmp_path, field, value, words) -> None:
    with pytest.raises(RecipeError) as err:
        parse_recipe(_recipe(tmp_path, f"  {field}: {value}"))
    assert f"card.{field}" in str(err.value) and words in str(err.value)


def test_a_release_of_hostile_strings_publishes_and_reads_back_unchanged(tmp_path, hub_server, monkeypatch) -> None:
    from huggingface_hub import DatasetCard, ModelCard

    from hub_fixtures import TOKEN
    from hubsdd.hub.publishing import publish_run

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    card = ("  model_name: 'Tiny *SDD* <b>\"v1\"</b> & co'\n"
            "  tags: ['custom:tag/with+chars', 'x.y_z-1']\n"
            f"  description: {json.dumps(DESCRIPTION)}\n")
    # the base model's card is the base author's: a license that is not an id does not become metadata
    base_readme = "---\nlicense: \"mit\\nfoo: bar\"\n---\n# base\n"
    recipe = parse_recipe(_recipe(tmp_path, card, base_readme))
    done = publish_run(recipe)
    assert not done.publish.dry_run

    model = ModelCard.load("alice/hostile")
    meta = model.data.to_dict()
    assert meta["license"] == "other" and meta["base_model"] == "alice/tiny-base"
    assert {"custom:tag/with+chars", "x.y_z-1"} <= set(meta["tags"])
    assert set(meta) >= {"base_model", "license", "library_name", "pipeline_tag", "tags", "hubsdd"}
    assert "foo" not in meta and "evil" not in str(meta["tags"])
    text = model.text
    title = next(line for line in text.splitlines() if line.startswith("# "))
    assert title == "# Tiny *SDD* &lt;b&gt;&#34;v1&#34;&lt;/b&gt; &amp; co"
    # outside code blocks (the recipe shows the description as written, inside one) no raw HTML
    blocks, html = _markdown(text)
    assert not [h for h in html if "<script" in h] and "&lt;script&gt;" in text
    assert any(DESCRIPTION.replace("\n", "\\n") in b or "not closed" in b for b in blocks)

    dataset = DatasetCard.load("alice/hostile-data", repo_type="dataset")
    dmeta = dataset.data.to_dict()
    assert set(dmeta) == {"license", "language", "task_categories", "tags", "pretty_name", "size_categories",
                          "configs", "hubsdd"}
    assert "evil" not in str(dmeta["tags"])
    dtext = dataset.text
    blocks, html = _markdown(dtext)
    assert not [h for h in html if "<script" in h]
    # each hostile row and the template are shown whole, each inside one code block
    assert any(FENCE_BREAKER in b for b in blocks) and any(ROWS[1]["question"] in b for b in blocks)
    assert any(b.startswith("```\n{{ instruction }}\n~~~") for b in blocks)
    opened = sum(h.count("<details>") for h in html)
    assert opened >= 3 and opened == sum(h.count("</details>") for h in html)


def _markdown(text: str) -> tuple[list[str], list[str]]:
    """A card as a CommonMark reader (the Hub's renderer) sees it: the contents of its code blocks,
    and the raw HTML outside them."""
    from markdown_it import MarkdownIt

    def walk(tokens):
        for t in tokens:
            yield t
            yield from walk(t.children or [])

    tokens = list(walk(MarkdownIt("commonmark").parse(text)))
    return ([t.content for t in tokens if t.type in ("fence", "code_block")],
            [t.content for t in tokens if t.type in ("html_block", "html_inline")])
