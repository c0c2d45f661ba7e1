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


def _signing_key(folder: Path) -> tuple[Path, bytes]:
    """A P-256 private key in a PEM file whose name is a canary too."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder.mkdir(parents=True)
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path = folder / "key_canary_5e1d9b.pem"
    path.write_bytes(pem)
    return path, pem


def test_a_canary_token_is_nowhere_after_publishing_and_pulling(tmp_path, tiny_recipe_text, hub_server, monkeypatch):
    from hubsdd import hub
    from hubsdd.core.errors import HubsddError

    hub_server.tokens[CANARY] = "alice"
    monkeypatch.setenv("HF_TOKEN", CANARY)
    # Releases are signed with a private key given by path in the environment: neither its bytes
    # (nor any line of them) nor its path may appear anywhere either.
    key_path, key_pem = _signing_key(tmp_path.parent / f"{tmp_path.name}-secret")
    monkeypatch.setenv("HUBSDD_SIGNING_KEY", str(key_path))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(tiny_recipe_text + "publish:\n  model_repo: alice/canary\n  signing: {method: key}\n")
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
    step(False, "publish", str(recipe), "--model-repo", "alice/canary-4", env={**debug, "HUBSDD_SIGNING_KEY": str(
        key_path) + ".missing"})  # an unreadable key: the error must not repeat its path
    step(False, "publish", str(recipe), "--model-repo", "alice/canary-5", env={**debug, "HUBSDD_SIGNING_KEY": key_pem[
        :-40].decode()})  # a damaged key given as text: the error must not repeat it

    # in-process too: the text of the exception and of its traceback
    errors = []
    for call in (lambda: hub.publish(tmp_path / "runs" / "tiny" / "card" / "model", model_repo="bob/canary"),
                 lambda: hub.pull("alice/does-not-exist")):
        with pytest.raises(HubsddError) as err:
            call()
        errors.append("".join(traceback.format_exception(err.value)) + repr(err.value))

    key_lines = [line for line in key_pem.splitlines() if line and not line.startswith(b"-----")]
    needles = [CANARY.encode(), str(key_path).encode(), key_path.name.encode(), *key_lines]
    assert logs and CANARY not in "\n".join(logs)
    assert not [n for n in needles if n.decode() in "\n".join(logs + errors)]
    # every file under the test's folder: the run, the release, the Hub's storage (commits), HF_HOME, the pull
    for root in (tmp_path, Path(os.environ["HF_HOME"])):
        for needle in needles:
            assert _files_holding(root, needle) == [], (root, needle)
    # and the key did work: the pulled release was verified against its signature
    assert (tmp_path / "pulled" / "model.sig").is_file() and any("signed by sha256:" in log or "first use" in log
                                                                  for log in logs)
    # and the canary did work: the release is on the Hub, pushed with it
    assert hub_server.repo_exists("alice/canary")
