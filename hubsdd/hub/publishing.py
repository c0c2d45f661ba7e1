"""``hubsdd publish`` as one library call: run every stage, then push the release.

What the command line may override (repositories, pull-request mode, privacy, branch) is applied to a
copy of the recipe, so the caller's recipe is never changed; the card stage sees the repositories
actually pushed to (its fingerprint covers the publish section, so a new target re-renders the card,
which links them). The dataset rule: a run that distilled a dataset pushes it beside the model unless
``publish.push_dataset`` is false, and then needs a dataset repository.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..core.errors import HubError
from . import PublishResult, publish
from ..core.recipe import Recipe
from ..pipeline.runner import StageResult, run


@dataclass
class PublishedRun:
    results: dict[str, StageResult]
    publish: PublishResult

    @property
    def urls(self) -> list[str]:
        """Where the release can be seen: the pull request, else the repository (none in a dry run)."""
        return [] if self.publish.dry_run else [r.pr_url or r.url for r in self.publish.repos]


def with_publish_overrides(recipe: Recipe, **overrides: Any) -> Recipe:
    """A copy of ``recipe`` whose ``publish`` section has the non-None ``overrides`` applied."""
    changes = {k: v for k, v in overrides.items() if v is not None}
    if not changes:
        return recipe
    unknown = set(changes) - set(type(recipe.publish).model_fields)
    if unknown:
        raise TypeError(f"not publish settings: {sorted(unknown)}")
    section = recipe.publish.model_validate({**recipe.publish.model_dump(), **changes})
    copy = recipe.model_copy(update={"publish": section})
    return copy


def publish_run(recipe: Recipe, *, model_repo: str | None = None, dataset_repo: str | None = None,
                create_pr: bool | None = None, private: bool | None = None, revision: str | None = None,
                dry_run: bool = False, overwrite: bool = False, token: str | None = None,
                signing_key: Path | None = None, on_event: Callable[[str, str, float | None], None] | None = None) -> PublishedRun:
    """Run the recipe (resuming what is cached), then publish its release in one commit per repo."""
    recipe = with_publish_overrides(recipe, model_repo=model_repo, dataset_repo=dataset_repo,
                                    create_pr=create_pr, private=private, revision=revision)
    pub = recipe.publish
    if not pub.model_repo:
        raise HubError("publish.model_repo is not set",
                       fix="add `publish: {model_repo: org/name}` to the recipe or pass --model-repo")
    results = run(recipe, on_event=on_event)
    card = results["card"]
    dataset_dir = card.path("dataset_dir") if card.typed.outputs.dataset_dir and pub.push_dataset else None
    if dataset_dir is not None and not pub.dataset_repo:
        raise HubError("publish.dataset_repo is not set but the run distilled a dataset",
                       fix="set publish.dataset_repo, or publish.push_dataset: false")
    result = publish(
        card.path("model_dir"), dataset_dir,
        model_repo=pub.model_repo, dataset_repo=pub.dataset_repo if dataset_dir is not None else None,
        private=pub.private, create_pr=pub.create_pr, revision=pub.revision,
        dry_run=dry_run, overwrite=overwrite, commit_message=pub.commit_message, token=token,
        signing=pub.signing, signing_key=signing_key,
    )
    return PublishedRun(results=results, publish=result)
