"""The test Hub's Python API: an upload/download round trip through the unmodified client, and
storage that survives a restart."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from hub_fixtures import DEMO_REPO as REPO, TOKEN, USER, api, seed_repo as _seed_repo  # noqa: F401 (a fixture)

from hubsdd.core.files import git_blob_sha1
from hubsdd.testing.hub import HubServer

# huggingface_hub's own LFS upload passes a file object as `data=`, which httpx2 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


def test_upload_list_download_roundtrip(hub_server, api, tmp_path):  # noqa: F811
    from huggingface_hub import hf_hub_download

    data = _seed_repo(api, tmp_path)
    assert sorted(api.list_repo_files(REPO)) == [".gitattributes", "config.json", "model.safetensors"]
    stored = hub_server.files(REPO)
    assert stored["config.json"] == {"type": "regular", "oid": git_blob_sha1(b'{"a": 1}\n'), "size": 9}
    assert stored["model.safetensors"]["type"] == "lfs"
    assert stored["model.safetensors"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert hub_server.file_bytes(REPO, "model.safetensors") == data
    assert hub_server.counts["lfs_upload"] == 1 and hub_server.counts["lfs_verify"] == 1

    assert Path(hf_hub_download(REPO, "model.safetensors")).read_bytes() == data
    assert Path(hf_hub_download(REPO, "config.json")).read_text() == '{"a": 1}\n'
    assert hub_server.counts["cdn"] == 1  # the LFS bytes came from the CDN origin, not /resolve
    titles = [c.title for c in hub_server.commits(REPO)]
    assert titles == ["Upload model.safetensors with huggingface_hub", "Upload config.json with huggingface_hub",
                      "initial commit"]
    commits = hub_server.commits(REPO)
    assert commits[0].parents == [commits[1].id] and commits[2].parents == []


def test_storage_survives_a_restart(tmp_path):
    with HubServer(tmp_path / "s", {TOKEN: USER}) as first:
        first.create_repo(REPO)
        sha = first.rewrite_file(REPO, "a.txt", b"kept")
    with HubServer(tmp_path / "s", {TOKEN: USER}) as second:
        assert second.head(REPO) == sha and second.file_bytes(REPO, "a.txt") == b"kept"
    assert os.listdir(tmp_path / "s" / "repos" / "models" / USER) == ["demo"]
