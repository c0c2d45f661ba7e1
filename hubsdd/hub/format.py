"""What the CLI prints after a publish, a dry run or a pull."""

from __future__ import annotations

from typing import Any

from .publish import PublishResult
from .pull import PullResult


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def format_dry_run(result: PublishResult) -> str:
    """What a dry run would push: per repository the files with sizes, then each rendered card."""
    lines = [f"Dry run: nothing was sent to {result.endpoint}."]
    for r in result.repos:
        mode = f"a pull request against {r.revision}" if r.create_pr else f"branch {r.revision}"
        total = sum(s for _, s in r.files)
        lines.append(f"\n{r.repo_type} repository {r.repo_id} ({'private' if r.private else 'public'}), "
                     f"one commit to {mode}: {len(r.files)} files, {_size(total)}")
        lines += [f"  {_size(size):>10}  {path}" for path, size in r.files]
    for r in result.repos:
        lines.append(f"\n----- {r.repo_type} card: {r.repo_id}/README.md -----\n{r.card_text.rstrip()}")
    return "\n".join(lines)


def format_publish(result: PublishResult) -> str:
    """A short report of a real publish."""
    if result.dry_run:
        return format_dry_run(result)
    lines = []
    for r in result.repos:
        if r.skipped and r.pr_ref:
            state = f"unchanged: {r.pr_ref} already proposes this release ({r.pr_url})"
        elif r.skipped:
            state = f"unchanged: the Hub already holds this release at {r.commit_sha[:12]}"  # type: ignore[index]
        else:
            state = (f"committed {r.commit_sha[:12]} ({len(r.changed)} changed, {len(r.deleted)} deleted)"  # type: ignore[index]
                     + (f" as pull request {r.pr_ref}: {r.pr_url}" if r.pr_ref else ""))
        lines.append(f"{r.repo_type:7} {r.url}  {state}")
        if r.foreign:
            lines.append(f"        left {len(r.foreign)} file(s) hubsdd did not create untouched")
        if r.tag:
            lines.append(f"        tag {r.tag}")
    return "\n".join(lines)


def _pct(x: Any) -> str:
    return f"{x:.1%}" if isinstance(x, (int, float)) else str(x)


def format_retention(ret: Any) -> str:
    """A card's retention block as one line: the figure, its 95% interval and what it rests on; a
    figure from too few items is said to be so rather than given alone."""
    if isinstance(ret, (int, float)):  # releases of hubsdd < 0.2: a bare figure, no interval
        return f"{ret:.1%} of the base model's average (no interval recorded)"
    if not isinstance(ret, dict) or "value" not in ret:
        return str(ret)
    lo, hi = (ret.get("ci95") or [None, None])[:2]
    text = f"{_pct(ret['value'])} of the base model's average (95% CI {_pct(lo)} to {_pct(hi)})"
    if "margin" in ret:
        text += f"; above chance: {_pct(ret['margin'])}"
    items, tasks = ret.get("items_per_task"), ret.get("tasks")
    if items:
        text += f"; {items} items per task" + (f" x {tasks} tasks" if tasks else "")
    if ret.get("precise") is False:
        text += " -- too few items to tell the models apart: read the interval, not the figure"
    return text


def format_summary(result: PullResult) -> str:
    """What `hubsdd pull` prints after a verified download."""
    sig = result.signature
    lines = [f"Verified {result.repo_id}@{result.commit_sha[:12]} ({result.revision}): "
             f"{result.files_verified} files and the recipe match the card",
             f"  local path:      {result.local_path}",
             f"  base model:      {result.base_model}",
             f"  license:         {result.license}",
             f"  run fingerprint: {result.run_fingerprint}"]
    if sig is not None:
        lines.insert(1, f"  signature:       {sig.message}")
    if result.prune:
        p = result.prune
        removed = p.get("removed_layers")
        lines.append(f"  layers:          {p.get('layers_before')} -> {p.get('layers_after')}"
                     + (f" (removed {', '.join(map(str, removed))})" if removed else ""))
    if result.retention is not None:
        lines.append(f"  retention:       {format_retention(result.retention)}")
    if result.unlisted:
        lines.append(f"  not covered by the card: {', '.join(result.unlisted)}")
    lines.append(f"  load with:       AutoModelForCausalLM.from_pretrained({str(result.local_path)!r})")
    return "\n".join(lines)


