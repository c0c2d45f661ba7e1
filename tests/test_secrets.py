"""No secret anywhere: a canary token serves a whole publish and pull, failing ones included, and is
then searched for in every file the run, the Hub, the client's HF_HOME and the logs hold, and in the
text of every error hubsdd raised (tracebacks shown with HUBSDD_DEBUG=1 included)."""

import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

CANARY = "hf_canary_7f3d0c9e1b2a4d5c8e6f"


def _hubsdd(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hubsdd.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def _files_holding(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and needle in p.read_bytes()]


def test_a_canary_token_is_nowhere_after_publishing_and_pulling(tmp_path, tiny_recipe_text, hub_server, monkeypatch):
    from hubsdd import hub
    from hubsdd.errors import HubsddError

    hub_server.tokens[CANARY] = "alice"
    monkeypatch.setenv("HF_TOKEN", CANARY)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(tiny_recipe_text + "publish:\n  model_repo: alice/canary\n")
    debug = {"HUBSDD_DEBUG": "1"}
    logs: list[str] = []

    def step(expect_ok: bool, *args: str, env: dict | None = None) -> None:
        proc = _hubsdd(*args, env=env)
        logs.extend([proc.stdout, proc.stderr])
        assert (proc.returncode == 0) == expect_ok, proc.stdout + proc.stderr

    step(True, "publish", str(recipe), "-v")
    step(True, "--log-format", "json", "publish", str(recipe))  # unchanged: no new commit
    step(False, "publish", str(recipe), "--model-repo", "bob/canary", env=debug)  # 403 territory
    hub_server.fail_next("commit", status=500, message="injected")
    step(False, "publish", str(recipe), "--model-repo", "alice/canary-2", env=debug)
    hub_server.fail_next("lfs_upload", status=503, message="injected")  # the client retries, and logs the retry
    step(True, "publish", str(recipe), "--model-repo", "alice/canary-3", "-v", env=debug)
    step(True, "pull", "alice/canary", "--local-dir", str(tmp_path / "pulled"))
    step(False, "pull", "alice/does-not-exist", env=debug)
    step(False, "pull", "bob/private-or-missing@nope", env=debug)

    # in-process too: the text of the exception and of its traceback
    errors = []
    for call in (lambda: hub.publish(tmp_path / "runs" / "tiny" / "card" / "model", model_repo="bob/canary"),
                 lambda: hub.pull("alice/does-not-exist")):
        with pytest.raises(HubsddError) as err:
            call()
        errors.append("".join(traceback.format_exception(err.value)) + repr(err.value))

    assert logs and CANARY not in "\n".join(logs)
    assert all(CANARY not in text for text in errors)
    # every file under the test's folder: the run, the release, the Hub's storage, HF_HOME, the pull
    for root in (tmp_path, Path(os.environ["HF_HOME"])):
        assert _files_holding(root, CANARY.encode()) == [], root
    # and the canary did work: the release is on the Hub, pushed with it
    assert hub_server.repo_exists("alice/canary")
