"""What a run did, in a few figures per stage: for the closing summary and ``--log-format json``.

Reads only ``stage.json`` (through :class:`~hubsdd.runner.StageResult`), like the card.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .runner import StageResult


def headline(result: StageResult) -> dict[str, Any]:
    """A stage's few figures worth a log line (the full metrics stay in its stage.json)."""
    m, o = result.metrics, result.outputs
    name = result.name
    if name == "base":
        return {k: o[k] for k in ("hub_id", "commit_sha", "license") if o.get(k)}
    if name == "prune":
        return {k: m[k] for k in ("removed_layers", "layers_before", "layers_after", "params_before", "params_after")
                if k in m}
    if name == "distill":
        return {k: m[k] for k in ("rows", "accepted", "acceptance_rate", "tokens_per_second") if k in m}
    if name == "finetune":
        return {v: {k: r.get(k) for k in ("loss", "learning_rate", "steps", "train_loss_first", "train_loss_last")}
                for v, r in (m.get("variants") or {}).items()}
    if name == "merge":
        return {k: o[k] for k in ("method", "models") if k in o}
    if name == "evaluate":
        evid = m.get("evidence") or {}
        out: dict[str, Any] = {}
        for model, row in (evid.get("models") or {}).items():
            entry = {"average": row["average"]["value"], "average_ci95": row["average"]["ci95"]}
            if "retention" in row:
                entry.update(retention=row["retention"]["value"], retention_ci95=row["retention"]["ci95"])
            out[model] = entry
        return {"models": out, "items": evid.get("items", {})}
    if name == "card":
        return {"release": o.get("release")}
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


def _ci(iv: dict | None, unit: str = "") -> str:
    if not iv:
        return "–"
    lo, hi = iv["ci95"]
    return f"{_pct(iv['value'])}{unit} ({_pct(lo)}–{_pct(hi)}{unit})"


def markdown_summary(run_dir: Path, log_lines: list[str] | None = None) -> str:
    """A run in markdown (for ``$GITHUB_STEP_SUMMARY``): what was pushed where, what was removed,
    and the evaluation with its intervals."""
    import json

    from .evaluate import evidence
    from .runner import load_results

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
        m = results["prune"].metrics
        out.append(f"- layers {m.get('layers_before')} → {m.get('layers_after')} (removed "
                   f"{', '.join(map(str, m.get('removed_layers', [])))})")
    if "card" in results:
        out.append(f"- released checkpoint: `{results['card'].outputs.get('release')}`")
    if "evaluate" in results:
        evid = results["evaluate"].metrics.get("evidence") or {}
        items = evid.get("items") or {}
        out += ["", f"### Evaluation ({', '.join(f'{t}: {n} items' for t, n in items.items())})", "",
                "| model | average (95% CI) | retention (95% CI) | margin retention (95% CI) |",
                "|---|---:|---:|---:|"]
        for name, row in (evid.get("models") or {}).items():
            out.append(f"| {name} | {_ci(row.get('average'))} | {_ci(row.get('retention'), '%')} | "
                       f"{_ci(row.get('margin_retention'), '%')} |")
        release = results["card"].outputs.get("release") if "card" in results else None
        if release and not evidence.headline_ok(evid, release):
            out += ["", "Too few items to tell these models apart: read the intervals, not the point values."]
    return "\n".join(out) + "\n"
