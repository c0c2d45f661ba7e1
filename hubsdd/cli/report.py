"""What a run did, in a few figures per stage: for the closing summary and ``--log-format json``.

Reads only ``stage.json`` (through :class:`~hubsdd.pipeline.runner.StageResult`), like the card.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..pipeline.runner import StageResult


def headline(result: StageResult) -> dict[str, Any]:
    """A stage's few figures worth a log line (the full metrics stay in its stage.json)."""
    typed = result.typed
    m, o = typed.metrics, typed.outputs
    name = result.name
    if name == "base":
        return {k: v for k, v in o.model_dump(include={"hub_id", "commit_sha", "license"}).items() if v}
    if name == "prune":
        return m.model_dump(include={"removed_layers", "layers_before", "layers_after", "params_before", "params_after"})
    if name == "distill":
        return m.model_dump(include={"rows", "accepted", "acceptance_rate", "tokens_per_second"})
    if name == "finetune":
        return {v: r.model_dump(include={"loss", "learning_rate", "steps", "train_loss_first", "train_loss_last"})
                for v, r in m.variants.items()}
    if name == "merge":
        return o.model_dump(include={"method", "models"})
    if name == "evaluate":
        if m.evidence is None:
            return {"models": {}, "items": {}}
        out: dict[str, Any] = {}
        for model, row in m.evidence.models.items():
            entry = {"average": row.average.value, "average_ci95": row.average.ci95}
            if row.retention is not None:
                entry.update(retention=row.retention.value, retention_ci95=row.retention.ci95)
            out[model] = entry
        return {"models": out, "items": m.evidence.items}
    if name == "card":
        return {"release": o.release}
    return {}


@dataclass
class StageLine:
    stage: str
    status: str  # ran | cached | skipped
    seconds: float | None = None
    output: str = ""


@dataclass
class RunSummary:
    """Collects the runner's events into the closing table."""

    lines: dict[str, StageLine] = field(default_factory=dict)
    urls: list[str] = field(default_factory=list)

    def event(self, stage: str, status: str, seconds: float | None, result: StageResult | None = None) -> None:
        if status == "running":
            return
        kind = {"done": "ran", "cached": "cached", "skipped": "skipped"}.get(status, status)
        self.lines[stage] = StageLine(stage, kind, seconds, _short(result.dir) if result is not None else "")

    def rows(self) -> list[StageLine]:
        return list(self.lines.values())


def _short(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _pct(x: Any) -> str:
    return "–" if x is None or x != x else f"{100 * x:.1f}"


def _ci(iv: Any, unit: str = "") -> str:
    """An interval (hubsdd.core.evaluate_outputs.Interval) as "value (low–high)"."""
    if iv is None:
        return "–"
    lo, hi = iv.ci95
    return f"{_pct(iv.value)}{unit} ({_pct(lo)}–{_pct(hi)}{unit})"


def markdown_summary(run_dir: Path, log_lines: list[str] | None = None) -> str:
    """A run in markdown (for ``$GITHUB_STEP_SUMMARY``): what was pushed where, what was removed,
    and the evaluation with its intervals."""
    import json

    from ..core import evidence
    from ..pipeline.runner import load_results

    results = load_results(run_dir)
    events = []
    for line in log_lines or []:
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    out = [f"## hubsdd: {Path(run_dir).name}", ""]
    for e in events:
        if e.get("event") == "publish":
            for repo in e.get("repos", []):
                where = repo.get("pr_url") or repo.get("url")
                state = "unchanged" if repo.get("skipped") else ("pull request" if repo.get("pr_url") else "committed")
                out.append(f"- {repo.get('type')} **{repo.get('repo')}**: {state} — {where}")
        if e.get("event") == "error":
            out.append(f"- **failed**: {e.get('message')}" + (f" (fix: {e['fix']})" if e.get("fix") else ""))
    if "prune" in results:
        m = results["prune"].typed.metrics
        out.append(f"- layers {m.layers_before} → {m.layers_after} (removed {', '.join(map(str, m.removed_layers))})")
    release = results["card"].typed.outputs.release if "card" in results else None
    if release:
        out.append(f"- released checkpoint: `{release}`")
    evid = results["evaluate"].typed.metrics.evidence if "evaluate" in results else None
    if evid is not None:
        out += ["", f"### Evaluation ({', '.join(f'{t}: {n} items' for t, n in evid.items.items())})", "",
                "| model | average (95% CI) | retention (95% CI) | margin retention (95% CI) |",
                "|---|---:|---:|---:|"]
        for name, row in evid.models.items():
            out.append(f"| {name} | {_ci(row.average)} | {_ci(row.retention, '%')} | {_ci(row.margin_retention, '%')} |")
        if release and not evidence.headline_ok(evid.model_dump(), release):
            out += ["", "Too few items to tell these models apart: read the intervals, not the point values."]
    return "\n".join(out) + "\n"
