"""Sign a model release at publish time with OpenSSF model-signing (``model_signing`` 1.1.x).

Two methods, chosen by the recipe's ``publish.signing``:

* ``key``: an elliptic-curve private key (PEM) from an environment variable (its text, or the path
  of its file) or ``hubsdd publish --signing-key PATH``. The key is read once into memory and handed
  to model_signing through a pipe (``/dev/fd/N``): it is never written to a file, and neither it nor
  its path appears in a message. The release carries the public key (``signing-key.pub``) and the
  card names its fingerprint (sha256 of the public key's PEM, the same hint model_signing puts in
  the signature).
* ``sigstore``: keyless, with the ambient OIDC token of a GitHub Actions job; the certificate binds
  the workflow's identity (``https://github.com/<owner>/<repo>/.github/workflows/<file>@<ref>``).
  Without those credentials signing fails before anything is uploaded (no browser flow).

The card gets a ``hubsdd.signature`` block and a section saying who signed and how to verify with
``model_signing`` alone; then the folder (card included) is signed, ``model.sig`` excluded from the
hashing (model_signing's ignored paths), as is ``.cache`` (huggingface_hub's ``--local-dir``
bookkeeping).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from ..core.errors import SigningError
from ..core.files import link_or_copy
from .release import Release, ReleaseFile

SIGNATURE_FILE = "model.sig"
PUBLIC_KEY_FILE = "signing-key.pub"
IGNORED_PATHS = (SIGNATURE_FILE, ".cache")
SUPPORTED_CURVES = ("secp256r1", "secp384r1", "secp521r1")


@dataclass
class Signer:
    """Who signs a release. The private key and the OIDC token are kept out of ``repr``."""

    method: str  # key | sigstore
    signer: str  # "sha256:<hex>" (key) or the certificate identity (sigstore)
    issuer: str | None = None
    public_key_pem: bytes | None = None
    _key_pem: bytes | None = field(default=None, repr=False)
    _password: str | None = field(default=None, repr=False)
    _token: str | None = field(default=None, repr=False)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "signer": self.signer, "file": SIGNATURE_FILE}
        if self.issuer:
            out["issuer"] = self.issuer
        if self.public_key_pem:
            out["public_key"] = PUBLIC_KEY_FILE
        return out


def key_fingerprint(public_pem: bytes) -> str:
    """``sha256:<hex>`` of a public key's PEM (SubjectPublicKeyInfo): what model_signing records as the hint."""
    return "sha256:" + hashlib.sha256(public_pem).hexdigest()


def public_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(encoding=serialization.Encoding.PEM,
                            format=serialization.PublicFormat.SubjectPublicKeyInfo)


def hashing_config(*, allow_symlinks: bool = False) -> Any:
    """model_signing's hashing configuration for a release: sha256 per file, the signature and
    ``.cache`` ignored (git paths too, model_signing's default)."""
    from model_signing import hashing

    return hashing.Config().set_ignored_paths(paths=list(IGNORED_PATHS)).set_allow_symlinks(allow_symlinks)


def _read_key_source(value: str, where: str) -> bytes:
    if value.lstrip().startswith("-----BEGIN"):
        return value.encode()
    path = Path(value).expanduser()
    try:
        return path.read_bytes()
    except OSError:
        # The path itself is not repeated: it is part of the secret.
        raise SigningError(f"the private key file named by {where} cannot be read",
                           fix=f"set {where} to the PEM text of the key, or the path of a readable PEM file") from None


def _load_key(pem: bytes, password: str | None, where: str) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_private_key(pem, password.encode() if password else None)
    except (ValueError, TypeError) as exc:
        reason = "it is encrypted: set publish.signing.password_env" if "encrypted" in str(exc).lower() or \
            "password" in str(exc).lower() else "it is not a PEM private key (or the password is wrong)"
        raise SigningError(f"the private key from {where} cannot be read: {reason}",
                           fix="generate one with `openssl ecparam -name prime256v1 -genkey -noout -out key.pem`") \
            from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name not in SUPPORTED_CURVES:
        raise SigningError(f"the private key from {where} is not an elliptic-curve key on P-256, P-384 or P-521",
                           fix="model-signing signs with EC keys: `openssl ecparam -name prime256v1 -genkey -noout`")
    return key


def _github_token() -> tuple[str, dict]:
    if not (os.environ.get("ACTIONS_ID_TOKEN_REQUEST_URL") and os.environ.get("ACTIONS_ID_TOKEN_REQUEST_TOKEN")):
        raise SigningError(
            "publish.signing.method is sigstore, but this job has no ambient OIDC credentials "
            "(ACTIONS_ID_TOKEN_REQUEST_URL/TOKEN are not set); nothing was uploaded",
            fix="publish from the GitHub Actions workflow `hubsdd init --github-action` writes (it has "
                "`permissions: id-token: write`), or sign with a key: publish.signing.method: key")
    import id as oidc

    try:
        token = oidc.detect_credential("sigstore")
    except oidc.IdentityError as exc:
        raise SigningError(f"the GitHub Actions OIDC token could not be obtained: {exc}",
                           fix="give the job `permissions: id-token: write`") from None
    if not token:
        raise SigningError("the GitHub Actions OIDC token could not be obtained",
                           fix="give the job `permissions: id-token: write`")
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        raise SigningError("the OIDC token GitHub returned is not a JWT") from None
    return token, claims


def resolve_signer(section: Any, *, key_path: Path | None = None) -> Signer | None:
    """The signer a ``publish.signing`` section (or ``--signing-key``) asks for; checked now, before
    any upload: a missing key or missing OIDC credentials is a :class:`SigningError`."""
    method = "key" if key_path is not None else getattr(section, "method", "none")
    if method == "none":
        return None
    if method == "key":
        key_env = getattr(section, "key_env", "HUBSDD_SIGNING_KEY")
        if key_path is not None:
            where, pem = "--signing-key", _read_key_source(str(key_path), "--signing-key")
        else:
            where = f"${key_env}"
            value = os.environ.get(key_env)
            if not value:
                raise SigningError(f"publish.signing.method is key, but {where} is not set; nothing was uploaded",
                                   fix=f"export {key_env}=<path of a PEM EC private key> (in GitHub Actions: from a "
                                       "secret), or pass `--signing-key PATH`")
            pem = _read_key_source(value, where)
        password_env = getattr(section, "password_env", None)
        password = os.environ.get(password_env) if password_env else None
        key = _load_key(pem, password, where)
        pub = public_pem(key.public_key())
        return Signer("key", key_fingerprint(pub), public_key_pem=pub, _key_pem=pem, _password=password)
    token, claims = _github_token()
    workflow_ref = claims.get("job_workflow_ref") or claims.get("workflow_ref")
    identity = f"https://github.com/{workflow_ref}" if workflow_ref else str(claims.get("sub", "unknown"))
    return Signer("sigstore", identity, issuer=str(claims.get("iss", "")), _token=token)


@contextmanager
def _pipe_path(data: bytes) -> Iterator[Path]:
    """A path whose reading yields ``data``, backed by a pipe: nothing touches a disk."""
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, data)  # a PEM key is far below the pipe's buffer
        os.close(write_fd)
        write_fd = -1
        yield Path(f"/dev/fd/{read_fd}")
    finally:
        if write_fd >= 0:
            os.close(write_fd)
        os.close(read_fd)


def _with_signature_block(card_text: str, block: dict, section: str) -> str:
    """The card with ``hubsdd.signature`` in its front matter and the signing section appended."""
    _, front, body = card_text.split("---\n", 2)
    meta = yaml.safe_load(front) or {}
    meta.setdefault("hubsdd", {})["signature"] = block
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n" + \
        body.rstrip("\n") + "\n\n" + section.strip("\n") + "\n"


def signing_section(signer: Signer, model_repo: str) -> str:
    from ..stages.card.stage import render_section

    return render_section("sections/signing.md.j2", s=signer.describe(), repo=model_repo,
                          sig=SIGNATURE_FILE, pub=PUBLIC_KEY_FILE)


def sign_release(release: Release, signer: Signer, model_repo: str) -> Release:
    """The release with the signing section in its card, the public key (key method) and
    ``model.sig``, signed by model_signing over exactly the files that will be uploaded."""
    import model_signing

    text = _with_signature_block(release.card_text, signer.describe(), signing_section(signer, model_repo))
    extra = {"README.md": text.encode()}
    if signer.public_key_pem:
        extra[PUBLIC_KEY_FILE] = signer.public_key_pem
    files = [f for f in release.files if f.path not in extra and f.path != SIGNATURE_FILE]
    files += [ReleaseFile(path=p, size=len(d), sha256=hashlib.sha256(d).hexdigest(), data=d) for p, d in extra.items()]
    with tempfile.TemporaryDirectory(prefix="hubsdd-signing-") as tmp:
        folder = Path(tmp) / "model"
        for f in files:
            if f.data is not None:
                (folder / f.path).parent.mkdir(parents=True, exist_ok=True)
                (folder / f.path).write_bytes(f.data)
            else:
                link_or_copy(Path(f.local), folder / f.path)  # type: ignore[arg-type]
        config = model_signing.signing.Config().set_hashing_config(hashing_config())
        try:
            if signer.method == "key":
                with _pipe_path(signer._key_pem or b"") as key_path:
                    config.use_elliptic_key_signer(private_key=key_path, password=signer._password)
                    config.sign(folder, folder / SIGNATURE_FILE)
            else:
                config.use_sigstore_signer(use_ambient_credentials=True, identity_token=signer._token)
                config.sign(folder, folder / SIGNATURE_FILE)
        except Exception as exc:  # noqa: BLE001 - model_signing and sigstore raise many kinds
            raise SigningError(f"signing the release failed ({type(exc).__name__}: {exc}); nothing was uploaded",
                               fix="check publish.signing; with sigstore, that the job can reach Sigstore") from None
        sig = (folder / SIGNATURE_FILE).read_bytes()
    files.append(ReleaseFile(path=SIGNATURE_FILE, size=len(sig), sha256=hashlib.sha256(sig).hexdigest(), data=sig))
    files.sort(key=lambda f: f.path)
    meta = dict(release.meta)
    meta["hubsdd"] = {**meta.get("hubsdd", {}), "signature": signer.describe()}
    return replace(release, files=files, card_text=text, meta=meta)
