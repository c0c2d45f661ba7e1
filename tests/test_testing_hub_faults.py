"""Fault injection: a failed request changes nothing, and the next one goes through."""

from __future__ import annotations

import pytest
from hub_fixtures import DEMO_REPO as REPO, api  # noqa: F401 (a fixture)

# huggingface_hub's own LFS upload passes a file object as `data=`, which httpx2 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


def test_commit_fault_injection(hub_server, api):  # noqa: F811
    from huggingface_hub.errors import HfHubHTTPError

    api.create_repo(REPO)
    hub_server.fail_next("commit")
    with pytest.raises(HfHubHTTPError):
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO)
    assert len(hub_server.commits(REPO)) == 1
    api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO)
    assert len(hub_server.commits(REPO)) == 2
