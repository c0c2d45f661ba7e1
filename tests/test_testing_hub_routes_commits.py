"""Commits and refs: branches, tags, pull requests, parent commits and deletions."""

from __future__ import annotations

from pathlib import Path

import pytest
from hub_fixtures import DEMO_REPO as REPO, api, seed_repo as _seed_repo  # noqa: F401 (a fixture)

# huggingface_hub's own LFS upload passes a file object as `data=`, which httpx2 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


def test_refs_tags_branches_and_pull_requests(hub_server, api, tmp_path):  # noqa: F811
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, RevisionNotFoundError

    _seed_repo(api, tmp_path)
    main = hub_server.head(REPO)
    api.create_branch(REPO, branch="dev")
    api.upload_file(path_or_fileobj=b"dev only", path_in_repo="dev.txt", repo_id=REPO, revision="dev")
    api.create_tag(REPO, tag="v1", revision=main)
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_tag(REPO, tag="v1")
    assert exc.value.response.status_code == 409
    api.create_tag(REPO, tag="v1", exist_ok=True)

    pr = api.upload_file(path_or_fileobj=b'{"a": 2}\n', path_in_repo="config.json", repo_id=REPO, create_pr=True)
    assert pr.pr_revision == "refs/pr/1" and pr.pr_url.endswith("/discussions/1")
    refs = api.list_repo_refs(REPO, include_pull_requests=True)
    assert {b.name: b.target_commit for b in refs.branches} == {"main": main, "dev": hub_server.head(REPO, "dev")}
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1", main)]
    assert [(p.ref, p.target_commit) for p in refs.pull_requests] == [("refs/pr/1", pr.oid)]

    assert hub_server.head(REPO) == main  # the PR left main alone
    assert hub_server.commits(REPO, "refs/pr/1")[0].parents == [main]
    assert hub_server.file_bytes(REPO, "config.json", "refs/pr/1") == b'{"a": 2}\n'
    assert Path(hf_hub_download(REPO, "config.json", revision="refs/pr/1")).read_bytes() == b'{"a": 2}\n'
    assert Path(hf_hub_download(REPO, "dev.txt", revision="dev")).read_bytes() == b"dev only"
    assert [c.title for c in api.list_repo_commits(REPO, revision="dev")][0] == "Upload dev.txt with huggingface_hub"
    assert hub_server.refs(REPO)["prs"][1]["base"] == "main"

    api.delete_tag(REPO, tag="v1")
    api.delete_branch(REPO, branch="dev")
    assert hub_server.refs(REPO)["tags"] == {} and list(hub_server.refs(REPO)["branches"]) == ["main"]
    with pytest.raises(RevisionNotFoundError):
        api.delete_tag(REPO, tag="v1")


def test_parent_commit_and_deletions(hub_server, api, tmp_path):  # noqa: F811
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    _seed_repo(api, tmp_path)
    old = hub_server.commits(REPO)[1].id
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_commit(REPO, operations=[CommitOperationAdd("x.txt", b"x")], commit_message="x", parent_commit=old)
    assert exc.value.response.status_code == 412
    with pytest.raises(EntryNotFoundError):
        api.create_commit(REPO, operations=[CommitOperationDelete("nope.txt")], commit_message="rm")
    api.delete_file("config.json", REPO)
    assert "config.json" not in hub_server.files(REPO)
    api.delete_repo(REPO)
    assert not hub_server.repo_exists(REPO)
