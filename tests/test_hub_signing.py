"""Signed releases on the test Hub: publish signs with a key made in the test (model-signing), pull
verifies it, pins the signer on first use, and refuses tampered, re-signed and unsigned releases."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hub_fixtures import TOKEN, USER, refresh_model_card, release, release_template  # noqa: F401
from hubsdd.core.errors import SignerChangedError, SigningError, VerificationError
from hubsdd.hub import publish, pull
from hubsdd.hub.signing import PUBLIC_KEY_FILE, SIGNATURE_FILE
from hubsdd.core.recipe.signing import SigningSection

MODEL = f"{USER}/tiny-signed"


def make_key(folder: Path, name: str) -> tuple[Path, Path, str]:
    """An EC P-256 key pair as PEM files; returns (private, public, fingerprint)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    priv, pub = folder / f"{name}.pem", folder / f"{name}.pub"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    pub.write_bytes(pem)
    return priv, pub, "sha256:" + hashlib.sha256(pem).hexdigest()


@pytest.fixture
def keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    folder = tmp_path / "keys"
    folder.mkdir()
    monkeypatch.setenv("HUBSDD_TRUST_FILE", str(tmp_path / "trust" / "known_signers.json"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return make_key(folder, "a"), make_key(folder, "b")


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".partial-" in p.name)


def server_edit(files: dict[str, bytes | None], message: str) -> None:
    """A new commit on the Hub: add/replace (bytes) or delete (None) files, as an attacker with write
    access to the repository would."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    ops = [CommitOperationDelete(path_in_repo=p) if d is None else CommitOperationAdd(path_in_repo=p, path_or_fileobj=d)
           for p, d in files.items()]
    HfApi(token=TOKEN).create_commit(MODEL, ops, commit_message=message)


def remote_card(folder: Path) -> tuple[dict, str]:
    from huggingface_hub import hf_hub_download

    text = Path(hf_hub_download(MODEL, "README.md", local_dir=folder)).read_text()
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


def card_text(meta: dict, body: str) -> bytes:
    return ("---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n" + body).encode()


def test_signed_release_round_trip_and_tampering(hub_server, release, keys, tmp_path):  # noqa: F811
    (priv_a, pub_a, fp_a), _ = keys
    model_dir, _ = release
    done = publish(model_dir, model_repo=MODEL, signing_key=priv_a)
    # the signature and the public key are in the one commit with the weights and the card
    assert len([c for c in hub_server.commits(MODEL) if c.parents]) == 1
    from huggingface_hub import HfApi

    files = set(HfApi(token=TOKEN).list_repo_files(MODEL))
    assert {SIGNATURE_FILE, PUBLIC_KEY_FILE, "model.safetensors", "README.md"} <= files
    assert fp_a in done.model.card_text and "model_signing verify key" in done.model.card_text

    got = pull(MODEL, local_dir=tmp_path / "p1")
    assert got.signature.status == "first-use" and got.signature.signer == fp_a
    assert "first use" in got.signature.message and fp_a in Path(got.signature.trust_file).read_text()
    assert pull(MODEL, local_dir=tmp_path / "p2").signature.status == "verified"

    # the card's own instructions verify the download with model_signing alone (no hubsdd)
    snippet = done.model.card_text.split("```python\n")[-1].split("```")[0].replace("release", str(tmp_path / "p1"))
    proc = subprocess.run([sys.executable, "-I", "-c", "import sys; sys.modules['hubsdd'] = None\n" + snippet],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    # and so does its command line, on a folder pulled as the card says (huggingface_hub's .cache inside)
    command = done.model.card_text.split("```bash\n")[-1].split("```")[0].strip().splitlines()[-1]
    assert command.startswith("model_signing verify key ")
    pull(MODEL, local_dir=tmp_path / "cli" / "release")
    assert (tmp_path / "cli" / "release" / ".cache").is_dir()
    cli = Path(sys.executable).with_name("model_signing")
    proc = subprocess.run([str(cli), *command.split()[1:]], cwd=tmp_path / "cli", capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "Verification succeeded" in proc.stdout, proc.stdout + proc.stderr

    # one byte of one weight changed on the server, the card's hashes rewritten to match: refused
    weights = bytearray((tmp_path / "p1" / "model.safetensors").read_bytes())
    weights[-1] ^= 1
    meta, body = remote_card(tmp_path / "card")
    meta["hubsdd"]["files"]["model.safetensors"] = hashlib.sha256(weights).hexdigest()
    server_edit({"model.safetensors": bytes(weights), "README.md": card_text(meta, body)}, "tamper")
    with pytest.raises(VerificationError) as err:
        pull(MODEL, local_dir=tmp_path / "t1")
    assert "model.safetensors" in str(err.value) and "signature does not match" in str(err.value)
    assert not (tmp_path / "t1").exists() and leftovers(tmp_path) == []
    # the same into a folder that already holds an earlier download: it is left as it was
    before = {p: p.read_bytes() for p in (tmp_path / "p2").rglob("*") if p.is_file()}
    with pytest.raises(VerificationError):
        pull(MODEL, local_dir=tmp_path / "p2")
    assert {p: p.read_bytes() for p in (tmp_path / "p2").rglob("*") if p.is_file()} == before

    # back to the signed files, then a file added, and (separately) a file removed from repo and card
    server_edit({"model.safetensors": (tmp_path / "p1" / "model.safetensors").read_bytes(),
                 "README.md": (tmp_path / "p1" / "README.md").read_bytes()}, "restore")
    assert pull(MODEL, local_dir=tmp_path / "p3").signature.status == "verified"
    server_edit({"extra.py": b"print('hi')\n"}, "add")
    with pytest.raises(VerificationError, match="extra.py"):
        pull(MODEL, local_dir=tmp_path / "t2")
    meta, body = remote_card(tmp_path / "card2")
    del meta["hubsdd"]["files"]["hubsdd/prune.json"]
    server_edit({"extra.py": None, "hubsdd/prune.json": None, "README.md": card_text(meta, body)}, "remove")
    with pytest.raises(VerificationError, match="hubsdd/prune.json"):
        pull(MODEL, local_dir=tmp_path / "t3")
    # without a local folder (the cache), a refused revision is removed from the cache
    with pytest.raises(VerificationError):
        pull(MODEL)
    from huggingface_hub import scan_cache_dir

    assert not [r for r in scan_cache_dir().repos if r.repo_id == MODEL and r.revisions]


def test_a_new_signer_is_refused_until_accepted_deliberately(hub_server, release, keys, tmp_path):  # noqa: F811
    (priv_a, pub_a, fp_a), (priv_b, pub_b, fp_b) = keys
    model_dir, _ = release
    publish(model_dir, model_repo=MODEL, signing_key=priv_a)
    assert pull(MODEL, local_dir=tmp_path / "p1").signature.status == "first-use"

    # tampered weights, card re-rendered, re-signed with another key: a consistent release by someone else
    weights = model_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    refresh_model_card(model_dir, dataset_repo=f"{USER}/tiny-sdd-data")
    publish(model_dir, model_repo=MODEL, signing_key=priv_b)

    with pytest.raises(SignerChangedError) as err:
        pull(MODEL, local_dir=tmp_path / "t1")
    text = str(err.value)
    assert fp_a in text and fp_b in text and f"--accept-signer {fp_b}" in text
    with pytest.raises(VerificationError, match="not by the public key given"):
        pull(MODEL, local_dir=tmp_path / "t2", public_key=pub_a)
    with pytest.raises(SignerChangedError):  # accepting some other signer is not accepting this one
        pull(MODEL, local_dir=tmp_path / "t3", accept_signer=fp_a)
    assert not any((tmp_path / f"t{i}").exists() for i in (1, 2, 3)) and leftovers(tmp_path) == []

    got = pull(MODEL, local_dir=tmp_path / "ok", accept_signer=fp_b)
    assert got.signature.status == "accepted-new-signer" and fp_a in got.signature.message
    assert pull(MODEL, local_dir=tmp_path / "ok2").signature.status == "verified"  # the pin moved
    assert pull(MODEL, local_dir=tmp_path / "ok3", public_key=pub_b).signature.signer == fp_b


def test_unsigned_release_needs_allow_unsigned(hub_server, release, keys, tmp_path, capsys):  # noqa: F811
    from hubsdd.cli import main

    model_dir, _ = release
    publish(model_dir, model_repo=MODEL)
    with pytest.raises(VerificationError, match="is not signed"):
        pull(MODEL, local_dir=tmp_path / "t1")
    assert not (tmp_path / "t1").exists()
    assert main(["pull", MODEL, "--local-dir", str(tmp_path / "t1")]) == 1
    assert "--allow-unsigned" in capsys.readouterr().err
    assert main(["pull", MODEL, "--local-dir", str(tmp_path / "ok"), "--allow-unsigned"]) == 0
    out = capsys.readouterr()
    assert "NOT SIGNED" in out.err and "signature:       NOT SIGNED" in out.out
    assert (tmp_path / "ok" / "model.safetensors").is_file()


def test_key_from_environment_and_bad_keys(hub_server, release, keys, tmp_path, monkeypatch):  # noqa: F811
    (priv_a, _, fp_a), _ = keys
    model_dir, _ = release
    section = SigningSection(method="key")
    with pytest.raises(SigningError, match=r"\$HUBSDD_SIGNING_KEY is not set"):
        publish(model_dir, model_repo=MODEL, signing=section)
    monkeypatch.setenv("HUBSDD_SIGNING_KEY", str(tmp_path / "nowhere.pem"))
    with pytest.raises(SigningError) as err:
        publish(model_dir, model_repo=MODEL, signing=section)
    assert "nowhere" not in str(err.value)  # the path is part of the secret
    monkeypatch.setenv("HUBSDD_SIGNING_KEY", "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    with pytest.raises(SigningError, match="cannot be read") as err:
        publish(model_dir, model_repo=MODEL, signing=section)
    assert "not a key" not in str(err.value)
    assert not hub_server.repo_exists(MODEL)
    monkeypatch.setenv("HUBSDD_SIGNING_KEY", priv_a.read_text())  # the PEM text itself
    publish(model_dir, model_repo=MODEL, signing=section)
    assert pull(MODEL, local_dir=tmp_path / "p").signature.signer == fp_a
    # publishing the same release again signs again but commits nothing
    assert publish(model_dir, model_repo=MODEL, signing=section).skipped


def test_sigstore_without_oidc_credentials_fails_before_any_upload(hub_server, release, keys, monkeypatch):  # noqa: F811
    from hubsdd.core.recipe import Recipe

    model_dir, _ = release
    for var in ("ACTIONS_ID_TOKEN_REQUEST_URL", "ACTIONS_ID_TOKEN_REQUEST_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    section = Recipe.model_validate({"name": "x", "base": {"model": "a/b"}, "prune": {"blocks": 1, "calibration": {
        "path": "x.txt"}}, "publish": {"signing": {"method": "sigstore"}}}).publish.signing
    with pytest.raises(SigningError, match="no ambient OIDC credentials") as err:
        publish(model_dir, model_repo=MODEL, signing=section)
    assert "id-token: write" in err.value.fix
    assert not hub_server.repo_exists(MODEL)


def test_signing_section_refuses_secrets_in_the_recipe() -> None:
    from pydantic import ValidationError

    for bad in ("/home/me/key.pem", "-----BEGIN EC PRIVATE KEY-----"):
        with pytest.raises(ValidationError, match="NAME of an environment variable"):
            SigningSection(method="key", key_env=bad)
    with pytest.raises(ValidationError, match="password_env only applies"):
        SigningSection(method="sigstore", password_env="PW")

