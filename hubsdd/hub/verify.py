"""Check a downloaded release's model_signing signature, and who made it, before ``pull`` succeeds.

* ``--public-key`` (key signatures) or ``--identity``/``--issuer`` (Sigstore) say whom to expect;
* with neither, the signer seen at the first pull of a repository is pinned in a local trust file
  (``known_signers.json``, like SSH's known hosts: ``$HUBSDD_TRUST_FILE``, else
  ``$XDG_CONFIG_HOME/hubsdd/``, else ``~/.config/hubsdd/``); a later release signed by anyone else
  is refused until the user accepts the new signer by name (``--accept-signer``);
* an unsigned release is refused unless ``allow_unsigned``; a signature that does not cover exactly
  the downloaded files is refused, naming each file (model_signing's own comparison).
"""

from __future__ import annotations

import ast
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import SignerChangedError, VerificationError
from ..core.files import atomic_write_json
from .signing import PUBLIC_KEY_FILE, SIGNATURE_FILE, hashing_config, key_fingerprint

SIGSTORE_ISSUER_OIDS = ("1.3.6.1.4.1.57264.1.8", "1.3.6.1.4.1.57264.1.1")


@dataclass
class SignatureCheck:
    """How a pulled release's signature was checked."""

    status: str  # verified | first-use | accepted-new-signer | unsigned-allowed
    method: str | None = None
    signer: str | None = None
    issuer: str | None = None
    pinned: str | None = None  # the signer the trust file held before this pull
    trust_file: Path | None = None

    @property
    def message(self) -> str:
        who = f"{self.signer}" + (f" (issuer {self.issuer})" if self.issuer else "")
        if self.status == "unsigned-allowed":
            extra = f"; this repository was signed by {self.pinned} before" if self.pinned else ""
            return f"NOT SIGNED: downloaded only because of --allow-unsigned{extra}"
        if self.status == "first-use":
            return (f"first use: trusting signer {who} for this repository from now on "
                    f"(pinned in {self.trust_file}); later releases signed by anyone else will be refused")
        if self.status == "accepted-new-signer":
            return f"accepted new signer {who} in place of {self.pinned} (pinned in {self.trust_file})"
        return f"signed by {who}" + (" (pinned signer)" if self.pinned else "")


def trust_file() -> Path:
    if os.environ.get("HUBSDD_TRUST_FILE"):
        return Path(os.environ["HUBSDD_TRUST_FILE"]).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "hubsdd" / "known_signers.json"


def _load_trust(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise VerificationError(f"the trust file {path} cannot be read: {exc}",
                                fix="fix or remove it (removing it forgets every pinned signer)") from None
    return data if isinstance(data, dict) else {}


def _signature_kind(bundle: dict) -> str:
    material = bundle.get("verificationMaterial") or {}
    if "publicKey" in material:
        return "key"
    if "certificate" in material or "x509CertificateChain" in material:
        return "sigstore"
    raise VerificationError(f"{SIGNATURE_FILE} is neither a key nor a Sigstore signature")


def _sigstore_signer(sig_path: Path) -> tuple[str, str]:
    """The identity and OIDC issuer in a Sigstore bundle's certificate (checked by the verifier)."""
    from cryptography import x509
    from sigstore.models import Bundle

    cert = Bundle.from_json(sig_path.read_bytes()).signing_certificate
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = san.get_values_for_type(x509.UniformResourceIdentifier) + san.get_values_for_type(x509.RFC822Name)
    issuer = ""
    for oid in SIGSTORE_ISSUER_OIDS:
        try:
            raw = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid)).value.value
        except x509.ExtensionNotFound:
            continue
        issuer = raw[2:].decode() if oid.endswith(".8") else raw.decode()  # .8 is a DER UTF8String
        break
    return (names[0] if names else ""), issuer


def _mismatch_lines(exc: Exception) -> list[str]:
    """model_signing's list of differences, one per line, without the temporary folder's name."""
    text = str(exc)
    if text.startswith("Signature mismatch: "):
        try:
            lines = [str(x) for x in ast.literal_eval(text[len("Signature mismatch: "):])]
            return [re.sub(r" in model '[^']*'", "", line) for line in lines]
        except (ValueError, SyntaxError):
            pass
    return [text]


def check_signature(path: Path, repo_id: str, where: str, *, public_key: Path | None = None,
                    identity: str | None = None, issuer: str | None = None, allow_unsigned: bool = False,
                    accept_signer: str | None = None, allow_symlinks: bool = False) -> tuple[SignatureCheck, Any]:
    """Verify the release downloaded at ``path``; returns the check and a function that records
    the signer in the trust file (called by ``pull`` once everything else has passed)."""
    import model_signing

    store_path = trust_file()
    pinned = _load_trust(store_path).get(repo_id)
    pinned_signer = pinned.get("signer") if isinstance(pinned, dict) else None
    sig = path / SIGNATURE_FILE
    if not sig.is_file():
        if allow_unsigned:
            return SignatureCheck("unsigned-allowed", pinned=pinned_signer, trust_file=store_path), lambda: None
        raise VerificationError(f"{where} is not signed: it has no {SIGNATURE_FILE}"
                                + (f" (earlier releases were signed by {pinned_signer})" if pinned_signer else ""),
                                fix="ask the publisher to sign releases (publish.signing), or pass --allow-unsigned "
                                    "to download it anyway")
    try:
        bundle = json.loads(sig.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise VerificationError(f"{where}: {SIGNATURE_FILE} is not a signature bundle") from None
    kind = _signature_kind(bundle)
    config = model_signing.verifying.Config().set_hashing_config(hashing_config(allow_symlinks=allow_symlinks))
    seen_issuer = None
    if kind == "key":
        if identity or issuer:
            raise VerificationError(f"{where} is signed with a key, not by a Sigstore identity",
                                    fix="verify it with --public-key")
        key_path = public_key or path / PUBLIC_KEY_FILE
        if not key_path.is_file():
            raise VerificationError(f"{where} is signed with a key but carries no {PUBLIC_KEY_FILE}",
                                    fix="pass the publisher's public key with --public-key")
        seen = "sha256:" + str((bundle["verificationMaterial"]["publicKey"] or {}).get("hint", ""))
        if public_key is not None and key_fingerprint(public_key.read_bytes()) != seen:
            raise VerificationError(f"{where} is signed by {seen}, not by the public key given ({public_key}, "
                                    f"{key_fingerprint(public_key.read_bytes())})",
                                    fix="pass the right public key, or ask the publisher who signed this release")
        config.use_elliptic_key_verifier(public_key=key_path)
    else:
        seen, seen_issuer = _sigstore_signer(sig)
        if (identity and identity != seen) or (issuer and issuer != seen_issuer):
            raise VerificationError(f"{where} is signed by {seen} (issuer {seen_issuer}), not by "
                                    f"{identity or seen} (issuer {issuer or seen_issuer})",
                                    fix="check --identity/--issuer against the workflow that publishes it")
        config.use_sigstore_verifier(identity=seen, oidc_issuer=seen_issuer)
    try:
        config.verify(path, sig)
    except Exception as exc:  # noqa: BLE001 - model_signing raises ValueError, sigstore its own errors
        lines = _mismatch_lines(exc)
        raise VerificationError(f"{where}: the signature does not match the files:\n  - " + "\n  - ".join(lines),
                                fix="the release was changed after it was signed; do not use it, and tell the "
                                    "publisher") from None
    if pinned_signer and pinned_signer != seen:
        if accept_signer != seen:
            raise SignerChangedError(
                f"{repo_id}: the signer changed. Pinned since the first pull: {pinned_signer}; this release "
                f"({where}) is signed by {seen}. Refused",
                fix=f"if the publisher confirms the new signer through another channel, rerun with "
                    f"`--accept-signer {seen}`; the pin lives in {store_path}")
        status = "accepted-new-signer"
    else:
        status = "verified" if pinned_signer else "first-use"
    check = SignatureCheck(status, method=kind, signer=seen, issuer=seen_issuer, pinned=pinned_signer,
                           trust_file=store_path)

    def record() -> None:
        if status in ("first-use", "accepted-new-signer"):
            store = _load_trust(store_path)
            store[repo_id] = {"method": kind, "signer": seen, "issuer": seen_issuer,
                              "pinned_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            atomic_write_json(store_path, store)

    return check, record
