"""The ``hubsdd`` command: a thin typer layer over the library.

Errors are formatted here and nowhere else: a :class:`~hubsdd.errors.HubsddError` prints its
message and fix, with no traceback unless ``HUBSDD_DEBUG=1``.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Optional

import typer

from .errors import HubsddError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Prune LLM decoder blocks, recover quality with self-data distillation, publish to the Hub.",
    pretty_exceptions_enable=False,
)

STATUS_MARK = {"cached": "cached ", "stale": "stale  ", "pending": "pending", "disabled": "-      "}


def _echo(msg: str = "") -> None:
    typer.echo(msg)


def _setup_logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger("hubsdd")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    if not verbose:
        _quiet_libraries()


def _quiet_libraries() -> None:
    """Library progress bars and warnings drown the stage log on a terminal (`-v` keeps them)."""
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        import datasets
        import transformers

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - both are dependencies
        pass
    for name in ("lm_eval", "lm-eval", "mergekit", "trl", "peft", "accelerate", "httpx", "httpx2"):
        logging.getLogger(name).setLevel(logging.ERROR)


@app.command()
def validate(recipe: Path = typer.Argument(..., help="Recipe YAML file.")) -> None:
    """Check a recipe; print every error with its YAML path and line."""
    from .recipe import load_recipe

    r = load_recipe(recipe)
    stages = [p for p in ("prune", "distill", "finetune", "merge", "evaluate") if getattr(r, p) is not None]
    _echo(f"{recipe}: ok (name: {r.name}; stages: base, {', '.join(stages)}, card)")


@app.command()
def plan(recipe: Path = typer.Argument(..., help="Recipe YAML file.")) -> None:
    """Show each stage as cached, stale (will rerun), pending or disabled, and what will be pushed."""
    from . import run as runner
    from .recipe import load_recipe

    r = load_recipe(recipe)
    _echo(f"run directory: {r.run_dir}")
    for st in runner.plan(r):
        fp = st.fingerprint[:12] if st.fingerprint else ""
        _echo(f"  {STATUS_MARK[st.status]}  {st.name:<9} {fp:<12}  {st.describe}")
    pub = r.publish
    _echo("publish:")
    _echo(f"  model   -> {pub.model_repo or '(publish.model_repo not set)'}"
          f"{' (private)' if pub.private else ''}{' as a pull request' if pub.create_pr else ''}; release: {pub.release}")
    if r.distill is not None and pub.push_dataset:
        _echo(f"  dataset -> {pub.dataset_repo or '(publish.dataset_repo not set)'}")


def _progress(stage: str, status: str, seconds: float | None) -> None:
    if status == "skipped":
        return
    extra = f" ({seconds:.1f}s)" if seconds is not None else ""
    label = {"cached": "cached, skipped", "running": "running...", "done": "done"}[status]
    _echo(f"[{stage}] {label}{extra}")


@app.command("run")
def run_cmd(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    until: Optional[str] = typer.Option(None, help="Stop after this stage (the card is still rendered)."),
    force: list[str] = typer.Option([], help="Rerun this stage even if cached (repeatable)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run the pipeline; cached stages are skipped, a killed run resumes."""
    from . import run as runner
    from .recipe import load_recipe

    _setup_logging(verbose)
    r = load_recipe(recipe)
    results = runner.run(r, until=until, force=tuple(force), on_event=_progress)
    card = results.get("card")
    if card is not None:
        _echo(f"release: {card.path('model_dir')} ({card.outputs.get('release')})")


@app.command()
def card(run_dir: Path = typer.Argument(..., help="A run directory, runs/<name>.")) -> None:
    """Re-render the model and dataset cards of a finished run."""
    from .card import rerender

    path = rerender(run_dir)
    _echo(f"wrote {path}")


@app.command()
def publish(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    pr: Optional[bool] = typer.Option(None, "--pr/--no-pr", help="Open a pull request instead of writing the branch."),
    private: Optional[bool] = typer.Option(None, "--private/--public", help="Create the repos private."),
    revision: Optional[str] = typer.Option(None, help="Branch to commit to (default: main)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List files and print the card; push nothing."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Allow writing into a repo holding files hubsdd did not create."),
    model_repo: Optional[str] = typer.Option(None, help="Override publish.model_repo."),
    dataset_repo: Optional[str] = typer.Option(None, help="Override publish.dataset_repo."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run every stage, then push model + card (+ dataset) to the Hub in one commit per repo."""
    from . import hub
    from . import run as runner
    from .errors import HubError
    from .recipe import load_recipe

    _setup_logging(verbose)
    r = load_recipe(recipe)
    pub = r.publish
    model_repo = model_repo or pub.model_repo
    dataset_repo = dataset_repo or pub.dataset_repo
    if not model_repo:
        raise HubError("publish.model_repo is not set", fix="add `publish: {model_repo: org/name}` to the recipe or pass --model-repo")
    if model_repo != pub.model_repo or dataset_repo != pub.dataset_repo:
        # The card links the repos: render it with the names actually pushed to.
        r.publish.model_repo, r.publish.dataset_repo = model_repo, dataset_repo
    results = runner.run(r, on_event=_progress)
    card_res = results["card"]
    dataset_dir = card_res.path("dataset_dir") if "dataset_dir" in card_res.outputs and pub.push_dataset else None
    if dataset_dir is not None and not dataset_repo:
        raise HubError("publish.dataset_repo is not set but the run distilled a dataset",
                       fix="set publish.dataset_repo, or publish.push_dataset: false")
    result = hub.publish(
        card_res.path("model_dir"), dataset_dir,
        model_repo=model_repo, dataset_repo=dataset_repo,
        private=pub.private if private is None else private,
        create_pr=pub.create_pr if pr is None else pr,
        revision=revision or pub.revision,
        dry_run=dry_run, overwrite=overwrite,
        tag=f"hubsdd-{card_res.fingerprint[:12]}",
        commit_message=pub.commit_message,
    )
    _echo(hub.format_publish_result(result))


@app.command()
def pull(
    repo: str = typer.Argument(..., help="org/name or org/name@revision"),
    local_dir: Optional[Path] = typer.Option(None, help="Download into this folder instead of the cache."),
    revision: Optional[str] = typer.Option(None, help="Branch, tag, commit or refs/pr/N."),
) -> None:
    """Download a released checkpoint and verify its files and recipe against its card."""
    from . import hub

    result = hub.pull(repo, revision=revision, local_dir=local_dir)
    _echo(hub.format_pull_summary(result))


@app.command()
def init(
    path: Path = typer.Argument(Path("recipe.yaml"), help="Where to write the recipe."),
    github_action: bool = typer.Option(False, "--github-action", help="Also write .github/workflows/publish.yml."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files."),
) -> None:
    """Scaffold a recipe (and a GitHub Actions workflow that publishes it)."""
    from .scaffold import write_scaffold

    for written in write_scaffold(path, github_action=github_action, force=force):
        _echo(f"wrote {written}")


def main(argv: list[str] | None = None) -> int:
    """Console entry point: formats every HubsddError in one place."""
    debug = os.environ.get("HUBSDD_DEBUG", "") not in ("", "0")
    try:
        app(args=argv, standalone_mode=False)
    except HubsddError as exc:
        if debug:
            traceback.print_exc()
        typer.echo(f"error: {exc.message}", err=True)
        if exc.fix:
            typer.echo(f"  fix: {exc.fix}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        typer.echo("interrupted; rerun the same command to resume", err=True)
        return 130
    except Exception as exc:  # click usage errors come as exceptions in non-standalone mode
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            return exc.exit_code
        if isinstance(exc, click.exceptions.Abort):
            return 1
        if debug:
            traceback.print_exc()
        typer.echo(f"internal error: {type(exc).__name__}: {exc}", err=True)
        typer.echo("  this is a bug in hubsdd or a library; rerun with HUBSDD_DEBUG=1 for the traceback", err=True)
        return 1
    return 0


def _entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    _entry()
