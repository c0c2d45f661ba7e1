"""A release folder as it will land in a repository, checked locally and by the Hub before upload.

A *release* is what the card stage writes: ``runs/<name>/card/model/`` (config, safetensors,
tokenizer, README.md with front matter, recipe.yaml, ``hubsdd/*.json``, plots) and optionally
``runs/<name>/card/dataset/`` (README.md, ``data/*.parquet``). The model card's front matter holds a
``hubsdd`` mapping ``{version, run_fingerprint, recipe_sha256, files: {relative path: sha256}}``
covering every file of the release except README.md; that block is the contract ``pull`` verifies
and the record of which files on the Hub hubsdd created.

The card is validated by POSTing it to the endpoint's ``/api/validate-yaml`` by hand:
``RepoCard.validate()`` and ``card.push_to_hub()`` have called huggingface.co directly whatever
``HF_ENDPOINT`` said in some huggingface_hub versions, and a release must be checked by the Hub it is
published to.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.version import __version__
from ..core.errors import HubError, StageError, VerificationError
from ..core.files import sha256_file
from ..core.hub_errors import endpoint, hub_errors
from ..core.recipe import HUB_ID_RE

log = logging.getLogger("hubsdd.hub")

REQUIRED_MODEL_KEYS = ("base_model", "license", "library_name", "pipeline_tag")
URL_PREFIX = {"model": "", "dataset": "datasets/"}


@dataclass
class ReleaseFile:
    """One file of a local release folder."""

    path: str  # relative, POSIX separators, as it lands in the repository
    size: int
    sha256: str
    local: Path | None = None  # None for a README whose text hubsdd completed (see `data`)
    data: bytes | None = None

    def read(self) -> bytes:
        return self.data if self.data is not None else Path(self.local).read_bytes()  # type: ignore[arg-type]


def repo_url(repo_id: str, repo_type: str) -> str:
    return f"{endpoint()}/{URL_PREFIX.get(repo_type, repo_type + 's/')}{repo_id}"


@dataclass
class Release:
    kind: str  # model | dataset
    folder: Path
    files: list[ReleaseFile]
    card_text: str
    meta: dict

    @property
    def by_path(self) -> dict[str, ReleaseFile]:
        return {f.path: f for f in self.files}


def _release_files(folder: Path) -> list[ReleaseFile]:
    """Every file under ``folder`` except hidden ones (editor/OS droppings, .cache folders)."""
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if not p.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        out.append(ReleaseFile(path=rel.as_posix(), size=p.stat().st_size, sha256=sha256_file(p), local=p))
    return out


def _is_local_path(ref: str) -> bool:
    return (ref.startswith(("/", "./", "../", "~", ".")) or "\\" in ref or re.match(r"^[A-Za-z]:", ref) is not None
            or not HUB_ID_RE.match(ref))


def _check_model_meta(meta: dict, where: str) -> list[str]:
    problems = []
    for key in REQUIRED_MODEL_KEYS:
        if not meta.get(key):
            problems.append(f"`{key}` is missing")
    base = meta.get("base_model")
    for ref in (base if isinstance(base, list) else [base] if base else []):
        if not isinstance(ref, str) or _is_local_path(ref):
            problems.append(f"`base_model` must be the base model's Hub id (org/name), not {ref!r}")
    return [f"{where}: {p}" for p in problems]


def check_hubsdd_block(block: Any, where: str, *, model: bool) -> list[str]:
    if not isinstance(block, dict):
        return [f"{where}: the `hubsdd` metadata block is missing"]
    problems = []
    keys = ("version", "run_fingerprint", "recipe_sha256", "files") if model else ("files",)
    for key in keys:
        if key not in block:
            problems.append(f"{where}: `hubsdd.{key}` is missing")
    if "files" in block and not isinstance(block["files"], dict):
        problems.append(f"{where}: `hubsdd.files` must map relative paths to sha256 digests")
    return problems


def _compare_listing(listed: dict[str, str], actual: dict[str, str], where: str) -> list[str]:
    """Lines naming each file whose sha256 differs from the card, is missing, or is not covered."""
    problems = []
    for path, expected in sorted(listed.items()):
        if path not in actual:
            problems.append(f"{path}: listed in {where} but missing")
        elif actual[path] != expected:
            problems.append(f"{path}: expected sha256 {expected}, got {actual[path]}")
    for path in sorted(set(actual) - set(listed) - {"README.md"}):
        problems.append(f"{path}: present but not listed in {where}")
    return problems


def _load_card(text: str, kind: str, where: str):
    from huggingface_hub import DatasetCard, ModelCard

    try:
        return (ModelCard if kind == "model" else DatasetCard)(text)
    except Exception as exc:  # noqa: BLE001 - yaml and card errors come in several types
        raise HubError(f"{where}: the front matter cannot be read: {exc}",
                       fix="re-render the cards with `hubsdd card runs/<name>`") from None


def prepare_release(folder: Path, kind: str, *, run_fingerprint: str | None = None) -> Release:
    """Read a release folder and check it is complete and consistent with its card, locally."""
    folder = Path(folder)
    readme = folder / "README.md"
    if not folder.is_dir() or not readme.is_file():
        raise StageError(f"{folder} is not a {kind} release folder (no README.md)",
                         fix="run the card stage first: `hubsdd card runs/<name>`")
    files = _release_files(folder)
    text = readme.read_text(encoding="utf-8")
    where = f"{kind} card ({readme})"
    card = _load_card(text, kind, where)
    meta = card.data.to_dict()
    problems = _check_model_meta(meta, where) if kind == "model" else []
    block = meta.get("hubsdd")
    if kind == "model" or block is not None:
        problems += check_hubsdd_block(block, where, model=kind == "model")
    if problems:
        raise HubError("card metadata is not publishable:\n  - " + "\n  - ".join(problems),
                       fix="fix the recipe's card settings and run `hubsdd card runs/<name>` again")
    actual = {f.path: f.sha256 for f in files if f.path != "README.md"}
    if block is None:
        # A dataset card without a hubsdd block: record which files this release created, so a
        # later publish knows what it may replace or delete. The uploaded README carries it.
        card.data.hubsdd = {"version": __version__, "run_fingerprint": run_fingerprint, "files": actual}
        text = str(card)
        meta = card.data.to_dict()
        data = text.encode()
        files = [f for f in files if f.path != "README.md"]
        files.append(ReleaseFile(path="README.md", size=len(data), sha256=hashlib.sha256(data).hexdigest(), data=data))
        files.sort(key=lambda f: f.path)
    else:
        mismatch = _compare_listing({str(k): str(v) for k, v in block["files"].items()}, actual, "the card")
        if kind == "model":
            recipe = actual.get("recipe.yaml")
            if recipe is None:
                mismatch.append("recipe.yaml: missing from the release")
            elif recipe != block["recipe_sha256"]:
                mismatch.append(f"recipe.yaml: expected sha256 {block['recipe_sha256']} (hubsdd.recipe_sha256), "
                                f"got {recipe}")
        if mismatch:
            raise VerificationError(f"the {kind} release in {folder} does not match its card:\n  - "
                                    + "\n  - ".join(mismatch),
                                    fix="re-render the release with `hubsdd card runs/<name>`; do not edit it by hand")
    return Release(kind=kind, folder=folder, files=files, card_text=text, meta=meta)


def validate_remote(release: Release, token: str) -> None:
    """POST the card to the Hub's validate-yaml endpoint (at HF_ENDPOINT) before any upload."""
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    with hub_errors(f"validating the {release.kind} card"):
        resp = get_session().post(f"{endpoint()}/api/validate-yaml",
                                  json={"content": release.card_text, "repoType": release.kind},
                                  headers=build_hf_headers(token=token))
        try:
            body = resp.json()
        except ValueError:
            body = {}
        if resp.status_code == 400:
            errors = [str(e.get("message")) for e in body.get("errors", []) if isinstance(e, dict)] or [resp.text]
            raise HubError(f"the Hub rejected the {release.kind} card metadata:\n  - " + "\n  - ".join(errors),
                           fix="fix the recipe's card settings and run `hubsdd card runs/<name>` again")
        hf_raise_for_status(resp)
        for warning in body.get("warnings", []) if isinstance(body, dict) else []:
            log.warning("%s card: %s", release.kind, warning.get("message") if isinstance(warning, dict) else warning)


