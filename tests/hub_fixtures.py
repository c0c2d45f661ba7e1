"""Fixtures for the Hub round-trip tests: a live test Hub and a tiny release folder.

Registered for every test by tests/conftest.py (``tests`` is on pytest's ``pythonpath``). The
``hub_server`` fixture starts :class:`hubsdd.testing.hub.HubServer` on 127.0.0.1 and points the unmodified ``huggingface_hub`` client at it. The client reads
``HF_ENDPOINT``, ``HF_HOME`` and friends once, at import, into ``huggingface_hub.constants``, so
setting the environment is not enough: the constants are patched too (and restored afterwards).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import zlib
from pathlib import Path

import pytest
import yaml

from conftest import save_tiny
from hubsdd.testing.hub import HubServer

TOKEN = "hf_test_alice_token"  # user "alice"
OTHER_TOKEN = "hf_test_bob_token"  # user "bob"
BAD_TOKEN = "hf_not_a_real_token"
USER = "alice"
BASE_MODEL = "hubsdd-tests/tiny-base"
RUN_FINGERPRINT = "3f1c9a7be2d04c5e8a6b1f2d3c4e5f60718293a4b5c6d7e8f9a0b1c2d3e4f5a6"


@pytest.fixture
def hub_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A running test Hub with users alice (TOKEN) and bob (OTHER_TOKEN), the client pointed at it."""
    from huggingface_hub import constants

    server = HubServer(tmp_path / "hub-storage", {TOKEN: USER, OTHER_TOKEN: "bob"})
    url = server.start()
    home, cache = tmp_path / "hf-home", tmp_path / "hf-home" / "hub"
    for key, value in {"HF_ENDPOINT": url, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(home),
                       "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1",
                       "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_OFFLINE": "0",
                       "HUBSDD_TRUST_FILE": str(tmp_path / "known_signers.json")}.items():  # not ~/.config
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    for name, value in {
        "ENDPOINT": url,
        "HUGGINGFACE_CO_URL_TEMPLATE": url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HUB_DISABLE_XET": True,  # preupload -> LFS batch -> commit, the protocol the server speaks
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(cache),
        "HUGGINGFACE_HUB_CACHE": str(cache),
        "HF_TOKEN_PATH": str(home / "token"),  # no stray login from the machine
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,
    }.items():
        if hasattr(constants, name):
            monkeypatch.setattr(constants, name, value)
    try:
        yield server
    finally:
        server.stop()


DEMO_REPO = f"{USER}/demo"  # the repository the server's own tests write to


@pytest.fixture
def api(hub_server):
    """An HfApi client of the test Hub acting as alice."""
    from huggingface_hub import HfApi

    return HfApi(endpoint=hub_server.url, token=TOKEN)


def demo_weights(n: int = 4096) -> bytes:
    return hashlib.sha256(b"seed").digest() * (n // 32)  # binary, deterministic


def seed_repo(api, tmp_path: Path) -> bytes:
    """DEMO_REPO with a regular config.json and an LFS model.safetensors; returns the weights' bytes."""
    api.create_repo(DEMO_REPO)
    api.upload_file(path_or_fileobj=b'{"a": 1}\n', path_in_repo="config.json", repo_id=DEMO_REPO)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(demo_weights())
    api.upload_file(path_or_fileobj=str(weights), path_in_repo="model.safetensors", repo_id=DEMO_REPO)
    return weights.read_bytes()


@pytest.fixture
def datasets_hub(hub_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The test Hub, with `datasets` pointed at it too (it reads HF_ENDPOINT once, at import)."""
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", hub_server.url)
    monkeypatch.setattr(datasets.config, "HUB_DATASETS_URL",
                        hub_server.url + "/datasets/{repo_id}/resolve/{revision}/{path}")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return hub_server


CONFIGS_CARD = """---
configs:
- config_name: main
  data_files:
  - {split: train, path: main/train.jsonl}
  - {split: test, path: main/test.jsonl}
- config_name: socratic
  data_files:
  - {split: train, path: socratic/train.jsonl}
---
# a GSM8K-shaped test dataset
"""


def push_dataset(repo_id: str, files: dict[str, str], message: str) -> str:
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=TOKEN)
    api.create_repo(repo_id, repo_type="dataset", exist_ok=True)
    ops = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=text.encode()) for name, text in files.items()]
    return api.create_commit(repo_id, ops, commit_message=message, repo_type="dataset").oid


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


# --------------------------------------------------------------------------- tiny release


def tiny_png() -> bytes:
    """A valid 2x2 grey PNG (binary, so the Hub stores it in LFS)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\0" + b"\x80\x80" for _ in range(2))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def release_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every release file except README.md, as the card's hubsdd.files lists them."""
    return {p.relative_to(folder).as_posix(): sha256_of(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "README.md" and not p.name.startswith(".")}


def model_card_meta(folder: Path, *, dataset_repo: str | None = None, base_model: str = BASE_MODEL,
                    fingerprint: str = RUN_FINGERPRINT, **overrides) -> dict:
    meta = {
        "base_model": base_model,
        "base_model_relation": "finetune",
        "license": "apache-2.0",
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["hubsdd", "pruned", "self-data-distillation"],
        "model-index": [{"name": "tiny-sdd", "results": [{
            "task": {"type": "text-generation", "name": "Text Generation"},
            "dataset": {"type": "gsm8k", "name": "GSM8K"},
            "metrics": [{"type": "accuracy", "value": 0.5, "name": "accuracy"}]}]}],
        "hubsdd": {
            "version": "0.1.0",
            "run_fingerprint": fingerprint,
            "recipe_sha256": sha256_of(folder / "recipe.yaml"),
            "files": release_hashes(folder),
            "prune": {"removed_layers": [2, 3], "layers_before": 4, "layers_after": 2},
            "retention": {"value": 0.912, "ci95": [0.871, 0.95], "margin": 0.85, "margin_ci95": [0.78, 0.91],
                          "items_per_task": 400, "tasks": 6, "precise": True},
        },
    }
    if dataset_repo:
        meta["datasets"] = [dataset_repo]
    meta.update(overrides)
    return meta


def write_card(folder: Path, meta: dict, body: str = "# tiny-sdd\n\nA pruned, self-distilled test model.\n") -> str:
    text = "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n" + body
    (folder / "README.md").write_text(text, encoding="utf-8")
    return text


def refresh_model_card(folder: Path, **kwargs) -> str:
    """Re-render the model card after the release files changed (what `hubsdd card` would do)."""
    return write_card(folder, model_card_meta(folder, **kwargs))


def build_release(root: Path, *, dataset_repo: str | None = f"{USER}/tiny-sdd-data", layers: int = 2,
                  seed: int = 0) -> tuple[Path, Path]:
    """A release as the card stage lays it out: ``root/model`` and ``root/dataset``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    model_dir, dataset_dir = root / "model", root / "dataset"
    model_dir.mkdir(parents=True)
    save_tiny(model_dir, "llama", layers=layers, seed=seed)
    (model_dir / "recipe.yaml").write_text(f"name: tiny\nbase:\n  model: {BASE_MODEL}\nprune:\n  blocks: 2\n")
    (model_dir / "hubsdd").mkdir()
    (model_dir / "hubsdd" / "prune.json").write_text(json.dumps({"removed_layers": [2, 3]}) + "\n")
    (model_dir / "layer_distance.png").write_bytes(tiny_png())
    refresh_model_card(model_dir, dataset_repo=dataset_repo)

    (dataset_dir / "data").mkdir(parents=True)
    table = pa.table({"instruction": ["What is 2 + 3?"], "response": ["2 + 3 = 5"], "accepted": [True]})
    pq.write_table(table, dataset_dir / "data" / "train.parquet")
    write_card(dataset_dir, {"license": "apache-2.0", "task_categories": ["text-generation"],
                             "tags": ["hubsdd", "self-data-distillation"]},
               "# tiny-sdd-data\n\nTeacher rewrites used to fine-tune tiny-sdd.\n")
    return model_dir, dataset_dir


@pytest.fixture(scope="session")
def release_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once per session (building the model is the slow part); tests get copies."""
    root = tmp_path_factory.mktemp("release-template")
    build_release(root)
    return root


@pytest.fixture
def release(release_template: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the tiny release: (model folder, dataset folder)."""
    root = tmp_path / "card"
    shutil.copytree(release_template, root)
    return root / "model", root / "dataset"
