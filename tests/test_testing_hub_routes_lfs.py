"""Uploads: preupload's remote oids and the LFS batch API let the client skip what the Hub holds."""

from __future__ import annotations

import pytest
from hub_fixtures import DEMO_REPO as REPO, api, seed_repo as _seed_repo  # noqa: F401 (a fixture)

# huggingface_hub's own LFS upload passes a file object as `data=`, which httpx2 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


def test_unchanged_files_are_not_sent_again(hub_server, api, tmp_path):  # noqa: F811
    from huggingface_hub import CommitOperationAdd

    data = _seed_repo(api, tmp_path)
    before = len(hub_server.commits(REPO))
    hub_server.reset_counts()
    api.create_commit(REPO, operations=[CommitOperationAdd("model.safetensors", data),
                                        CommitOperationAdd("config.json", b'{"a": 1}\n')], commit_message="again")
    assert len(hub_server.commits(REPO)) == before  # preupload's oids let the client skip an empty commit
    assert hub_server.counts["commit"] == 0 and hub_server.counts["lfs_upload"] == 0
    # The same LFS content under a new name: the batch API says it is already there, so no PUT.
    api.create_commit(REPO, operations=[CommitOperationAdd("copy.safetensors", data)], commit_message="copy")
    assert hub_server.counts["lfs_upload"] == 0 and hub_server.files(REPO)["copy.safetensors"]["type"] == "lfs"
