"""The repository API: paged tree listings and paths-info."""

from __future__ import annotations

from hub_fixtures import DEMO_REPO as REPO, api  # noqa: F401 (a fixture)


def test_tree_pagination_and_paths_info(tmp_path, hub_server, api):  # noqa: F811
    from huggingface_hub import CommitOperationAdd

    hub_server.tree_page_size = 2
    api.create_repo(REPO)
    ops = [CommitOperationAdd(f"d/f{i}.txt", f"{i}".encode()) for i in range(5)]
    api.create_commit(REPO, operations=ops, commit_message="five")
    hub_server.reset_counts()
    files = sorted(api.list_repo_files(REPO))
    assert files == [".gitattributes"] + [f"d/f{i}.txt" for i in range(5)]
    assert hub_server.counts["tree"] >= 3  # followed the Link headers
    infos = api.get_paths_info(REPO, ["d", "d/f1.txt", "missing"])
    assert [(type(i).__name__, i.path) for i in infos] == [("RepoFolder", "d"), ("RepoFile", "d/f1.txt")]
