"""Recipes: every shipped recipe validates; each kind of mistake names its YAML path and line."""

from pathlib import Path

import pytest

from hubsdd.core.errors import RecipeError
from hubsdd.core.recipe import load_recipe, parse_recipe, resolve_path

ROOT = Path(__file__).parent.parent
# Shipped recipes: the user-facing ones and those the benchmarks run.
RECIPES = sorted(ROOT.glob("recipes/*.yaml")) + sorted(ROOT.glob("bench/*.yaml"))

MINIMAL = """\
name: t
base:
  model: org/model
prune:
  blocks: 2
  calibration:
    path: cal.jsonl
"""


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(ROOT)) for p in RECIPES])
def test_shipped_recipes_validate(path, capsys):
    from hubsdd.cli import main
    from hubsdd.core.recipe import HUB_ID_RE

    # the whole `hubsdd validate`, preflight included (layers and columns where they are on disk)
    assert main(["validate", str(path)]) == 0, capsys.readouterr()
    recipe = load_recipe(path)
    assert recipe.base.model and HUB_ID_RE.match(recipe.base.model)  # the card needs the Hub id


def test_shipped_recipes_exist():
    names = {p.name for p in RECIPES}
    assert {"smollm2-135m-demo.yaml", "llama3.1-8b-instruct-sdd.yaml"} <= names


def test_paper_recipe_removes_six_of_32():
    recipe = load_recipe(Path(__file__).parent.parent / "recipes" / "llama3.1-8b-instruct-sdd.yaml")
    assert recipe.base.model == "meta-llama/Llama-3.1-8B-Instruct"
    assert recipe.prune.blocks == 6 and recipe.prune.method == "angular"


def problems(text):
    with pytest.raises(RecipeError) as info:
        parse_recipe(text, "r.yaml")
    return info.value.problems


def test_minimal_recipe_defaults():
    r = parse_recipe(MINIMAL)
    assert r.base.trust_remote_code is False and r.base.allow_pickle is False
    assert r.prune.method == "angular" and r.prune.token_position == "last"
    assert r.distill is None and r.publish.release == "auto"


def test_wrong_type_names_path_and_line():
    [p] = problems(MINIMAL.replace("blocks: 2", "blocks: two"))
    assert p.startswith("prune.blocks (line 5):") and "'two'" in p


def test_unknown_key_names_path_line_and_allowed_keys():
    [p] = problems(MINIMAL.replace("  model: org/model", "  model: org/model\n  dtpye: float16"))
    assert p.startswith("base.dtpye (line 4): unknown key 'dtpye'")
    assert "dtype" in p


def test_unknown_nested_key():
    [p] = problems(MINIMAL + "    colum: text\n")
    assert p.startswith("prune.calibration.colum (line 8)")


def test_missing_base():
    [p] = problems(MINIMAL.replace("base:\n  model: org/model\n", ""))
    assert p == "base: required field is missing"


def test_base_without_any_source():
    [p] = problems(MINIMAL.replace("  model: org/model", "  dtype: float32"))
    assert p.startswith("base (line 2)") and "`model`" in p


def test_bad_yaml_names_line():
    [p] = problems(MINIMAL.replace("blocks: 2", "blocks: [2"))
    assert "not valid YAML at line" in p


def test_every_error_is_reported_at_once():
    text = MINIMAL.replace("blocks: 2", "blocks: -1").replace("  model: org/model", "  model: not a hub id")
    ps = problems(text)
    assert len(ps) == 2
    assert any(p.startswith("base.model") for p in ps) and any(p.startswith("prune.blocks") for p in ps)


def test_cross_section_merge_needs_known_variants():
    text = MINIMAL + """\
distill:
  data: {path: d.jsonl}
finetune:
  variants: {sdd: {data: distilled}}
merge:
  models: [sdd, nope]
"""
    [p] = problems(text)
    assert "merge.models" in p and "nope" in p


def test_empty_file_and_non_mapping():
    assert problems("") == ["the file is empty"]
    assert "expected a mapping" in problems("- a\n- b\n")[0]


def test_missing_file_is_a_recipe_error(tmp_path):
    with pytest.raises(RecipeError) as info:
        load_recipe(tmp_path / "nope.yaml")
    assert "file not found" in str(info.value)


def test_package_paths_resolve_without_importing(tmp_path):
    p = resolve_path("package:json/__init__.py", tmp_path)
    assert p.name == "__init__.py" and p.exists()
    assert resolve_path("rel/x.jsonl", tmp_path) == tmp_path / "rel/x.jsonl"


FINETUNE = MINIMAL + """\
distill:
  data: {path: data.jsonl}
finetune:
  variants:
    sft: {data: original}
    sdd: {data: distilled, learning_rate: 3.0e-4}
    kd: {data: original, loss: kd}
    sdd-kd: {data: distilled, loss: kd, learning_rate: 1.0e-3}
  kd: {beta: 0.0}
"""


def test_variants_name_their_loss_and_learning_rate():
    ft = parse_recipe(FINETUNE).finetune
    assert {n: (v.data, v.loss) for n, v in ft.variants.items()} == {
        "sft": ("original", "ce"), "sdd": ("distilled", "ce"), "kd": ("original", "kd"), "sdd-kd": ("distilled", "kd")}
    assert ft.variants["sdd"].learning_rate == 3e-4 and ft.variants["sft"].learning_rate is None
    assert ft.kd.beta == 0.0


def test_bad_loss_and_kd_settings_name_their_path():
    [p] = problems(FINETUNE.replace("loss: kd}", "loss: kl}", 1))
    assert p.startswith("finetune.variants.kd.loss (line 14):") and "available: ce, kd, gkd" in p
    [p] = problems(FINETUNE.replace("beta: 0.0", "beta: 1.5"))
    assert p.startswith("finetune.kd.beta (line 16):")
    [p] = problems(FINETUNE.replace("learning_rate: 3.0e-4", "learning_rate: -1"))
    assert p.startswith("finetune.variants.sdd.learning_rate (line 13):")


def test_teacher_logits_settings_name_their_path():
    stored = FINETUNE.replace("  data: {path: data.jsonl}\n", "  data: {path: data.jsonl}\n  teacher_logits: {top_k: 32}\n")
    r = parse_recipe(stored.replace("kd: {beta: 0.0}", "kd: {beta: 0.0, teacher_logits: cache}"))
    assert r.distill.teacher_logits.top_k == 32 and r.finetune.kd.teacher_logits == "cache"
    assert parse_recipe(FINETUNE).finetune.kd.teacher_logits == "auto" and parse_recipe(FINETUNE).distill.teacher_logits is None
    [p] = problems(stored.replace("top_k: 32", "top_k: 0"))
    assert p.startswith("distill.teacher_logits.top_k (line 10):")
    [p] = problems(stored.replace("top_k: 32", "top_k: 32, data: [original, original]"))
    assert p.startswith("distill.teacher_logits.data (line 10):") and "twice" in p
    [p] = problems(stored.replace("top_k: 32", "dtype: int8"))
    assert p.startswith("distill.teacher_logits.dtype (line 10):")
    [p] = problems(FINETUNE.replace("kd: {beta: 0.0}", "kd: {beta: 0.0, teacher_logits: offline}"))
    assert p.startswith("finetune.kd.teacher_logits (line 16):") and "'auto', 'cache' or 'live'" in p
    # cache needs the stored log-probabilities of every kd variant's data
    [p] = problems(FINETUNE.replace("kd: {beta: 0.0}", "kd: {beta: 0.0, teacher_logits: cache}"))
    assert p.startswith("finetune.kd.teacher_logits") and "distilled and original" in p
    [p] = problems(stored.replace("top_k: 32", "top_k: 32, data: [distilled]").replace(
        "kd: {beta: 0.0}", "kd: {beta: 0.0, teacher_logits: cache}"))
    assert "on the original responses" in p


def test_gkd_settings_and_accepted_data_validate():
    r = parse_recipe(FINETUNE.replace("loss: kd}", "loss: gkd}", 1).replace("beta: 0.0", "beta: 0.0}\n  gkd: {lmbda: 1.0"))
    assert r.finetune.variants["kd"].loss == "gkd" and r.finetune.gkd.lmbda == 1.0
    [p] = problems(FINETUNE.replace("beta: 0.0", "beta: 0.0}\n  gkd: {lmbda: 0"))
    assert p.startswith("finetune.gkd.lmbda (line 17):")
    r = parse_recipe(FINETUNE.replace("data: distilled", "data: accepted", 1))
    assert "accepted" in {v.data for v in r.finetune.variants.values()}


def test_evaluate_dev_needs_a_limit():
    r = parse_recipe(MINIMAL + "evaluate: {limit: 100, dev: 50}\n")
    assert r.evaluate.dev == 50
    [p] = problems(MINIMAL + "evaluate: {dev: 50}\n")
    assert p.startswith("evaluate (line 8):") and "set `limit` too" in p


def test_evaluate_offset_and_fidelity_validate():
    r = parse_recipe(MINIMAL + "evaluate: {limit: 100, offset: 400, fidelity: {prompts: 16}}\n")
    assert r.evaluate.offset == 400 and r.evaluate.fidelity.prompts == 16
    [p] = problems(MINIMAL + "evaluate: {offset: -1}\n")
    assert p.startswith("evaluate.offset (line 8):")


def test_parallel_sizes_are_refused_for_the_transformers_backend():
    with pytest.raises(RecipeError) as err:
        parse_recipe(MINIMAL + "distill:\n  data: {path: x.jsonl}\n  generation: {data_parallel_size: 8}\n")
    assert "distill.generation (line 10): data_parallel_size: 8 applies to `backend: vllm` only" in str(err.value)
    ok = parse_recipe(MINIMAL + "distill:\n  data: {path: x.jsonl}\n  generation: {backend: vllm, data_parallel_size: 8}\n")
    assert ok.distill.generation.data_parallel_size == 8
