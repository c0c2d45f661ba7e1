"""Reading a recipe file: what YAML allows and a recipe never needs is refused, naming the YAML path
and line; no input makes validation crash, hang or print more than one line per problem.

Each test here is a defect the recipe fuzzer (bench/fuzz_recipe.py) found, or a class of input it
throws, pinned down.
"""

from __future__ import annotations

import pytest

from hubsdd.core.errors import RecipeError
from hubsdd.core.recipe import load_recipe, parse_recipe, resolve_path
from hubsdd.core.recipe.file import MAX_BYTES, MAX_DEPTH, MAX_PROBLEMS, MAX_VALUES

from test_recipe import MINIMAL  # noqa: E402  (the smallest valid recipe, shared)


def problems(text: str) -> list[str]:
    with pytest.raises(RecipeError) as info:
        parse_recipe(text, "r.yaml")
    return info.value.problems


def with_blocks(raw: str) -> str:
    return MINIMAL.replace("blocks: 2", f"blocks: {raw}")


# --------------------------------------------------------------------------- constructors that raised


@pytest.mark.parametrize("raw, says", [
    ("9" * 5000, "cannot read '9999"),  # int() refuses > 4300 digits: was a ValueError traceback
    ("2020-99-99", "cannot read '2020-99-99' as !!timestamp: month must be in 1..12"),  # was ValueError
    ("2001-12-14 99:00:00", "as !!timestamp: hour must be in 0..23"),
    ("!!timestamp x", "cannot read 'x' as !!timestamp"),  # was AttributeError inside PyYAML
    ("!!int abc", "cannot read 'abc' as !!int"),
    ("!!float x", "cannot read 'x' as !!float"),
])
def test_values_yaml_cannot_construct_name_their_path(raw, says):
    [p] = problems(with_blocks(raw))
    assert p.startswith("prune.blocks (line 5): ") and says in p and len(p) < 300


def test_an_integer_too_long_to_print_is_refused_by_size():
    # 0x... of 5000 digits is a valid int whose decimal repr() raises: every message must survive it.
    [p] = problems(with_blocks("0x" + "f" * 5000))
    assert p == "prune.blocks (line 5): a number this large (over 64 bits) is not a setting"
    [p] = problems(MINIMAL.replace("blocks: 2", "blocks: 2\n  layers: [1, 0x" + "f" * 5000 + "]"))
    assert p.startswith("prune.layers (line 6): a number this large")


# --------------------------------------------------------------------------- aliases, nesting, tags


def laughs(width: int, depth: int) -> str:
    levels = [f"&l0 [{', '.join(['lol'] * width)}]"]
    levels += [f"&l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, depth)]
    return "[" + ", ".join(levels) + "]"


def test_a_billion_laughs_is_refused_before_it_is_expanded():
    [p] = problems(with_blocks(laughs(10, 9)))  # 10**9 values once expanded
    assert p.startswith("prune.blocks[") and "(line 5): the YAML expands to more than" in p
    assert f"{MAX_VALUES:,}" in p


def test_aliases_within_reason_still_work():
    text = MINIMAL.replace("blocks: 2", "blocks: 2\n  calibration: &cal {path: cal.jsonl, samples: 4}") \
        .replace("  calibration:\n    path: cal.jsonl\n", "")
    text += "distill:\n  data: *cal\n"
    with pytest.raises(RecipeError) as info:  # DataSource has no `samples`: the alias was expanded and checked
        parse_recipe(text)
    assert info.value.problems == ["distill.data.samples (line 8): unknown key 'samples'; allowed here: dataset, "
                                   "config, split, revision, path, limit, shuffle_seed"]


@pytest.mark.parametrize("raw", ["&x [*x]", "&x {a: *x}", "&x [1, [2, *x]]"])
def test_an_alias_inside_its_own_anchor_is_refused(raw):
    [p] = problems(with_blocks(raw))  # was a cyclic structure handed to pydantic and the line index
    assert "(line 5): the alias *x is inside its own anchor" in p and p.startswith("prune.blocks")


def test_undefined_alias_names_the_path():
    assert problems(with_blocks("*nope")) == ["prune.blocks (line 5): the alias *nope has no anchor (&name) before it"]


@pytest.mark.parametrize("raw", ["[" * 5000 + "]" * 5000, "{a: " * 300 + "1" + "}" * 300])
def test_deep_nesting_is_refused_without_exhausting_the_stack(raw):
    [p] = problems(with_blocks(raw))  # was RecursionError in PyYAML's composer
    assert p.startswith("prune.blocks") and f"values nested more than {MAX_DEPTH} levels deep" in p


def test_deep_nesting_inside_a_key_is_refused_too():
    [p] = problems(MINIMAL + "? " + "[" * 5000 + "]" * 5000 + "\n: 1\n")
    assert p.startswith("(top level) (line 8): values nested more than")


@pytest.mark.parametrize("raw, tag", [("!!python/object:os.system {}", "!!python/object:os.system"),
                                      ("!!python/object/apply:os.system ['true']", "!!python/object/apply:os.system"),
                                      ("!foo bar", "!foo")])
def test_tags_that_build_objects_are_refused_naming_the_field(raw, tag):
    assert problems(with_blocks(raw)) == [f"prune.blocks (line 5): the YAML tag {tag} is not allowed in a recipe; "
                                          "write a plain value"]


def test_nul_is_refused_in_values_and_keys():
    [p] = problems(MINIMAL.replace("model: org/model", 'model: "org\\0model"'))
    assert p == "base.model (line 3): contains a NUL character (\\0), which no name, path or text may hold"
    [p] = problems(MINIMAL.replace("path: cal.jsonl", "path: !!binary Y2FsAA=="))
    assert p.startswith("prune.calibration.path (line 7): contains a NUL")


def test_duplicate_keys_are_refused_with_both_lines():
    assert problems(MINIMAL + "  blocks: 3\n") == ["prune.blocks (line 8): the key is given twice; the first is on line 5"]
    merged = MINIMAL.replace("  calibration:\n    path: cal.jsonl\n", "  calibration: &c {path: cal.jsonl}\n") \
        + "distill:\n  data: {<<: *c, path: other.jsonl}\n"
    assert parse_recipe(merged).distill.data.path == "other.jsonl"  # a merge key may be overridden


@pytest.mark.parametrize("key, kind", [("1", "!!int"), ("2020-01-01", "!!timestamp"), ("true", "!!bool"),
                                       ("null", "!!null"), ("1.5", "!!float")])
def test_keys_yaml_reads_as_numbers_or_dates_are_named_with_their_line(key, kind):
    # pydantic reported these as ['datetime.date(2020, 1, 1)'] with no line
    text = MINIMAL + "distill: {data: {path: d.jsonl}}\nfinetune:\n  variants:\n    " + key + ": {data: original}\n"
    assert problems(text) == [f"finetune.variants (line 11): the key {key} is read by YAML as {kind}, not text; "
                              "quote it if it is meant"]


# --------------------------------------------------------------------------- text and bytes


def test_non_utf8_bytes_are_named_by_line_and_column(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_bytes(MINIMAL.replace("org/model", "org/mod\xe9l").encode("latin-1"))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert info.value.problems == ["not UTF-8 text at line 3, column 17: byte 0xe9 (invalid continuation byte)"]
    assert info.value.fix == "save the recipe as UTF-8"
    path.write_bytes(MINIMAL.encode("utf-16"))
    with pytest.raises(RecipeError, match="not UTF-8 text at line 1, column 1: byte 0xff"):
        load_recipe(path)


def test_control_characters_are_named_by_line_and_column():
    assert problems(MINIMAL.replace("org/model", "org/mo\x07del")) == [
        "not valid YAML at line 3, column 16: the character U+0007 is not allowed in YAML text (inside double "
        "quotes it can be written escaped)"]


def test_an_oversized_file_is_refused_without_reading_it_all(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_bytes(MINIMAL.encode() + b"# " + b"x" * (2 * MAX_BYTES) + b"\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert info.value.problems == [f"(top level): the file has more than {MAX_BYTES:,} bytes; a recipe has a few "
                                   "thousand"]


def test_hostile_keys_are_quoted_on_one_line_and_long_values_cut():
    text = MINIMAL.replace("  model: org/model", '  model: org/model\n  "evil\\n  - prune.blocks (line 1): ok": 1')
    [p] = problems(text)
    assert p.startswith("base['evil\\n  - prune.blocks (line 1): ok'] (line 4): unknown key") and "\n" not in p
    [p] = problems(MINIMAL.replace("org/model", "x y" * 50_000))
    assert p.startswith("base.model (line 3): 'x yx y") and len(p) < 200


def test_every_problem_is_counted_but_only_the_first_are_shown():
    text = MINIMAL + "card:\n  tags: [" + ", ".join(["[1]"] * 200) + "]\n"
    ps = problems(text)
    assert len(ps) == MAX_PROBLEMS + 1 and ps[-1] == "(top level): 150 more errors like these, not shown"
    assert all(p.startswith("card.tags[") for p in ps[:-1])


# --------------------------------------------------------------------------- values pydantic would accept


@pytest.mark.parametrize("raw", ["yes", "true", "on"])
def test_booleans_are_not_numbers(raw):
    # pydantic reads True as 1: `blocks: yes` removed one layer
    assert problems(with_blocks(raw)) == ["prune.blocks (line 5): expected a number, got true (YAML reads "
                                          "true/false, yes/no and on/off as booleans)"]


@pytest.mark.parametrize("section, value", [("finetune: {epochs: .inf}", "inf"),
                                            ("distill: {data: {path: d}, generation: {temperature: .nan}}", "nan")])
def test_infinity_and_nan_are_refused(section, value):
    [p] = problems(MINIMAL + section + "\n")
    assert "Input should be a finite number" in p and f"(got {value})" in p


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_seeds_must_fit_numpy(seed):
    [p] = problems(MINIMAL.replace("name: t", f"name: t\nseed: {seed}"))
    assert p.startswith("seed (line 2): Input should be")


def test_cross_section_errors_are_placed_at_their_section():
    [p] = problems(MINIMAL + "finetune: {variants: {sdd: {data: distilled}}}\n")
    assert p == "finetune (line 8): a variant uses `data: distilled` but there is no `distill` section"


def test_release_and_evaluated_models_must_be_made_by_the_recipe():
    [p] = problems(MINIMAL + "publish: {release: sdd}\n")
    assert p == "publish.release (line 8): 'sdd' is not a checkpoint this recipe makes; use auto or one of: pruned"
    [p] = problems(MINIMAL + "evaluate: {models: [base, prunned]}\n")
    assert p.startswith("evaluate.models (line 8): ['prunned'] are not checkpoints this recipe makes")


# --------------------------------------------------------------------------- paths


def test_package_paths_must_name_a_top_level_package_and_are_never_imported(tmp_path):
    [p] = problems(MINIMAL.replace("path: cal.jsonl", "path: package:antigravity.x/data.jsonl"))
    assert p.startswith("prune.calibration.path (line 7): 'package:antigravity.x/data.jsonl': after 'package:'")
    with pytest.raises(FileNotFoundError, match="not a package name"):
        resolve_path("package:os.path/x", tmp_path)  # find_spec('os.path') would import os
    with pytest.raises(FileNotFoundError):
        resolve_path("package:/x", tmp_path)


def test_a_home_folder_of_nobody_is_a_plain_path(tmp_path):
    # Path.expanduser raised RuntimeError for an unknown user
    assert resolve_path("~no-such-user-xyz/d.jsonl", tmp_path) == tmp_path / "~no-such-user-xyz/d.jsonl"


def test_a_long_key_is_cut_between_characters_not_inside_an_escape():
    # The 10,000-case fuzz run found keys cut after a lone backslash: `['\U000b84cc\...]`.
    key = "\U000b84cc\u00bdV" * 30
    [p] = problems(MINIMAL.replace("  model: org/model", f'  model: org/model\n  "{key}": 1'))
    place = p.split(" (line 4): ")[0]
    assert place.startswith("base['\\U000b84cc½V") and place.endswith("'...]"), place
