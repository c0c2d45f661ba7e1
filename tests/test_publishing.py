"""hubsdd.hub.publishing: the publish command as one library call."""

import pytest

from hubsdd.core.errors import HubError
from hubsdd.hub.publishing import publish_run, with_publish_overrides
from hubsdd.core.recipe import parse_recipe


def test_overrides_apply_to_a_copy_and_leave_the_recipe_alone(tiny_recipe_text):
    recipe = parse_recipe(tiny_recipe_text + "publish:\n  model_repo: me/original\n")
    copy = with_publish_overrides(recipe, model_repo="me/other", create_pr=True, private=None)
    assert (copy.publish.model_repo, copy.publish.create_pr) == ("me/other", True)
    assert (recipe.publish.model_repo, recipe.publish.create_pr) == ("me/original", False)
    assert copy.text() == recipe.text() and copy.run_dir == recipe.run_dir


def test_an_override_is_validated_like_the_recipe(tiny_recipe_text):
    recipe = parse_recipe(tiny_recipe_text)
    with pytest.raises(ValueError, match="model_repo"):
        with_publish_overrides(recipe, model_repo="not a repo id")


def test_dry_run_renders_the_card_for_the_overridden_repository(tiny_recipe_text):
    recipe = parse_recipe(tiny_recipe_text + "publish:\n  model_repo: me/original\n")
    done = publish_run(recipe, model_repo="me/overridden", dry_run=True)
    assert done.publish.dry_run and done.urls == []
    assert done.publish.model.repo_id == "me/overridden"
    card = (done.results["card"].path("model_dir") / "README.md").read_text()
    # the usage snippet names the repository pushed to; the recipe block still shows the recipe as written
    assert 'model_id = "me/overridden"' in card and 'model_id = "me/original"' not in card


def test_no_model_repository_is_a_clear_error_before_any_stage_runs(tiny_recipe_text):
    recipe = parse_recipe(tiny_recipe_text)
    with pytest.raises(HubError, match="publish.model_repo"):
        publish_run(recipe, dry_run=True)
    assert not (recipe.run_dir / "base").exists()
