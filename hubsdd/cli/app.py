"""The ``hubsdd`` command: a thin typer layer over the library.

Errors are formatted here and nowhere else: a :class:`~hubsdd.core.errors.HubsddError` prints its
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

from .console import Output
from ..core.errors import HubsddError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Prune LLM decoder blocks, recover quality with self-data distillation, publish to the Hub.",
    pretty_exceptions_enable=False,
)

STATUS_MARK = {"cached": "cached ", "stale": "stale  ", "pending": "pending", "disabled": "-      "}
LOG_FORMATS = ("text", "json")

# One Output per invocation, set by the global options (see hubsdd.cli.console).
_out = Output()


@app.callback()
def _options(
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only results and errors."),
    log_format: str = typer.Option("text", "--log-format", help="text, or json: one JSON object per line on stdout "
                                   "(stage, event, seconds, metrics), for CI logs."),
) -> None:
    """Options for every command."""
    global _out
    if log_format not in LOG_FORMATS:
        raise typer.BadParameter(f"{log_format!r} is not one of {', '.join(LOG_FORMATS)}", param_hint="--log-format")
    _out = Output(log_format=log_format, quiet=quiet)


def _echo(msg: str = "", *, result: bool = False) -> None:
    _out.line(msg, result=result)


def _setup_logging(verbose: bool) -> None:
    _out.setup(verbose)


class _StageEvents:
    """The runner's events: a line per stage (text), a JSON object per stage (json), the summary."""

    def __init__(self, run_dir: Path) -> None:
        from .report import RunSummary

        self.run_dir = run_dir
        self.summary = RunSummary()

    def __call__(self, stage: str, status: str, seconds: float | None) -> None:
        from .report import headline
        from ..pipeline.runner import read_stage

        _out.set_stage(stage if status == "running" else None)
        result = read_stage(self.run_dir, stage) if status in ("done", "cached") else None
        self.summary.event(stage, status, seconds, result)
        _out.event(stage=stage, event=status, seconds=seconds,
                   metrics=headline(result) if result is not None else None)
        if status == "skipped":
            return
        extra = f" ({seconds:.1f}s)" if seconds is not None else ""
        label = {"cached": "cached, skipped", "running": "running...", "done": "done"}[status]
        _echo(f"[{stage}] {label}{extra}")

    def finish(self, urls: list[str] | None = None) -> None:
        rows = self.summary.rows()
        _out.event(event="summary", stages=[vars(r) for r in rows], urls=urls or [])
        if not rows:
            return
        _echo("")
        _echo(f"{'stage':<10}{'status':<9}{'seconds':>9}  output")
        for r in rows:
            secs = f"{r.seconds:.1f}" if r.seconds is not None and r.status != "skipped" else "-"
            _echo(f"{r.stage:<10}{r.status:<9}{secs:>9}  {r.output}")
        for url in urls or []:
            _echo(f"pushed: {url}", result=True)


@app.command()
def validate(recipe: Path = typer.Argument(..., help="Recipe YAML file.")) -> None:
    """Check a recipe; print every error with its YAML path and line.

    Also checks it against the base model and the data where they are on disk (a local base's layer
    count, the columns of local data files); what only the Hub can tell is checked when the run
    reaches it, before any heavy work."""
    from ..pipeline import preflight
    from ..core.recipe import load_recipe
    from ..pipeline.runner import STAGES

    r = load_recipe(recipe)
    facts = preflight.check(r, source=str(recipe))
    stages = [spec.name for spec in STAGES if spec.enabled(r)]
    _echo(f"{recipe}: ok (name: {r.name}; stages: {', '.join(stages)})", result=True)
    for line in facts.checked:
        _echo(f"  checked: {line}")
    for line in facts.later:
        _echo(f"  checked later: {line}")


@app.command()
def plan(recipe: Path = typer.Argument(..., help="Recipe YAML file.")) -> None:
    """Show each stage as cached, stale (will rerun), pending or disabled, and what will be pushed."""
    from ..pipeline import runner
    from ..core.recipe import load_recipe

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


@app.command("launch-command")
def launch_command(recipe: Path = typer.Argument(..., help="Recipe YAML file.")) -> None:
    """Print the commands that train the finetune stage over the GPUs and machines of
    `finetune.distributed` (accelerate launch; one command per machine)."""
    from ..core.errors import StageError
    from ..pipeline.launch_commands import base_config, decoder_layer_class, launch_commands
    from ..core.recipe import load_recipe

    r = load_recipe(recipe)
    if r.finetune is None:
        raise StageError(f"{recipe} has no `finetune` section", fix="add one, e.g. `finetune: {}`")
    config = base_config(r)
    commands = launch_commands(r, recipe, layer_class=decoder_layer_class(config) if config else None)
    if commands[0].startswith("hubsdd run"):  # one process: no launcher
        _echo(commands[0], result=True)
        return
    _echo(f"hubsdd run {recipe} --until distill", result=True)
    for rank, command in enumerate(commands):
        where = f"   # on machine {rank} of {len(commands)}" if len(commands) > 1 else ""
        _echo(command + where, result=True)
    _echo(f"hubsdd run {recipe}", result=True)


@app.command("run")
def run_cmd(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    until: Optional[str] = typer.Option(None, help="Stop after this stage (the card is still rendered)."),
    force: list[str] = typer.Option([], help="Rerun this stage even if cached (repeatable)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run the pipeline; cached stages are skipped, a killed run resumes."""
    from ..pipeline import runner
    from ..core.recipe import load_recipe

    _setup_logging(verbose)
    r = load_recipe(recipe)
    events = _StageEvents(r.run_dir)
    with _out.progress():
        results = runner.run(r, until=until, force=tuple(force), on_event=events)
    _out.close()
    events.finish()
    card = results.get("card")
    if card is not None:
        release = card.typed.outputs.release
        _echo(f"release: {card.path('model_dir')} ({release})", result=True)
        _out.event(event="release", path=str(card.path("model_dir")), release=release)


@app.command()
def card(run_dir: Path = typer.Argument(..., help="A run directory, runs/<name>.")) -> None:
    """Re-render the model and dataset cards of a finished run."""
    from ..pipeline.runner import rerender_card as rerender

    path = rerender(run_dir)
    _echo(f"wrote {path}", result=True)


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
    signing_key: Optional[Path] = typer.Option(None, "--signing-key", help="Sign with this EC private key (PEM), "
                                               "whatever publish.signing says; the path is never recorded."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run every stage, then push model + card (+ dataset) to the Hub in one commit per repo."""
    from .. import hub
    from ..hub.publishing import publish_run
    from ..core.recipe import load_recipe

    _setup_logging(verbose)
    r = load_recipe(recipe)
    events = _StageEvents(r.run_dir)
    with _out.progress():
        done = publish_run(r, model_repo=model_repo, dataset_repo=dataset_repo, create_pr=pr, private=private,
                           revision=revision, dry_run=dry_run, overwrite=overwrite, signing_key=signing_key,
                           on_event=events)
    _out.close()
    events.finish(done.urls)
    _echo(hub.format_publish(done.publish), result=True)
    _out.event(event="publish", dry_run=dry_run, repos=[
        {"repo": r.repo_id, "type": r.repo_type, "url": r.url, "commit": r.commit_sha, "pr_url": r.pr_url,
         "skipped": r.skipped} for r in done.publish.repos])


@app.command()
def summary(
    recipe: Path = typer.Argument(..., help="Recipe YAML file of the run."),
    log: Optional[Path] = typer.Option(None, help="The JSON lines of `hubsdd --log-format json publish`."),
) -> None:
    """Print a finished run as markdown: what was pushed where, and the evaluation with intervals
    (for $GITHUB_STEP_SUMMARY)."""
    from ..core.recipe import load_recipe
    from .report import markdown_summary

    r = load_recipe(recipe)
    lines = log.read_text().splitlines() if log is not None and log.exists() else []
    _echo(markdown_summary(r.run_dir, lines).rstrip(), result=True)


@app.command()
def pull(
    repo: str = typer.Argument(..., help="org/name or org/name@revision"),
    local_dir: Optional[Path] = typer.Option(None, help="Download into this folder instead of the cache."),
    revision: Optional[str] = typer.Option(None, help="Branch, tag, commit or refs/pr/N."),
    public_key: Optional[Path] = typer.Option(None, "--public-key", help="Expect a signature by this EC public key (PEM)."),
    identity: Optional[str] = typer.Option(None, "--identity", help="Expect a Sigstore signature by this identity "
                                           "(e.g. https://github.com/org/repo/.github/workflows/publish.yml@refs/heads/main)."),
    issuer: Optional[str] = typer.Option(None, "--issuer", help="The OIDC issuer of --identity "
                                         "(GitHub Actions: https://token.actions.githubusercontent.com)."),
    allow_unsigned: bool = typer.Option(False, "--allow-unsigned", help="Download a release that has no signature."),
    accept_signer: Optional[str] = typer.Option(None, "--accept-signer", help="Accept this new signer (as the refusal "
                                                "names it) in place of the one pinned for the repository."),
) -> None:
    """Download a released checkpoint, verify its signature (pinning the signer on first use) and
    its files and recipe against its card."""
    from .. import hub

    _setup_logging(False)
    result = hub.pull(repo, revision=revision, local_dir=local_dir, public_key=public_key, identity=identity,
                      issuer=issuer, allow_unsigned=allow_unsigned, accept_signer=accept_signer)
    sig = result.signature
    if sig is not None and sig.status != "verified":
        _out.warn(sig.message, red=sig.status == "unsigned-allowed")
    _echo(hub.format_summary(result), result=True)
    _out.event(event="pull", repo=result.repo_id, commit=result.commit_sha, path=str(result.local_path),
               retention=result.retention, signature=None if sig is None else {
                   "status": sig.status, "method": sig.method, "signer": sig.signer, "issuer": sig.issuer})


@app.command()
def init(
    path: Path = typer.Argument(Path("recipe.yaml"), help="Where to write the recipe."),
    github_action: bool = typer.Option(False, "--github-action", help="Also write .github/workflows/publish.yml."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files."),
    install_from: Optional[str] = typer.Option(None, "--install-from", help="What the workflow installs, pinned: "
                                               "git+URL@<commit or tag>, a wheel's path in the repository, or "
                                               "hubsdd==X.Y.Z. Default: where this hubsdd came from."),
) -> None:
    """Scaffold a recipe (and a GitHub Actions workflow that publishes it)."""
    from .scaffold import write_scaffold

    for written in write_scaffold(path, github_action=github_action, force=force, install_from=install_from):
        _echo(f"wrote {written}", result=True)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: formats every HubsddError in one place."""
    debug = os.environ.get("HUBSDD_DEBUG", "") not in ("", "0")
    # Called in-process (tests, notebooks), the command must not leave its handlers on the
    # library's logger, bound to streams that may be closed by the time the library logs again.
    logger = logging.getLogger("hubsdd")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    try:
        return _main(argv, debug)
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved


def _main(argv: list[str] | None, debug: bool) -> int:
    try:
        app(args=argv, standalone_mode=False)
    except HubsddError as exc:
        if debug:
            traceback.print_exc()
        _out.error(exc.message, exc.fix)
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
