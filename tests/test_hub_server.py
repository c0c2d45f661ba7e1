"""The test Hub, driven by the unmodified huggingface_hub client; assertions read what it stored."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hub_fixtures import BAD_TOKEN, OTHER_TOKEN, TOKEN, USER

from hubsdd.testing.hub_server import HubServer, git_blob_sha1

REPO = f"{USER}/demo"
# huggingface_hub's own LFS upload passes a file object as `data=`, which httpx2 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


@pytest.fixture
def api(hub_server):  # noqa: F811
    from huggingface_hub import HfApi

    return HfApi(endpoint=hub_server.url, token=TOKEN)


def _weights(n: int = 4096) -> bytes:
    return hashlib.sha256(b"seed").digest() * (n // 32)  # binary, deterministic


def _seed_repo(api, tmp_path: Path) -> bytes:
    api.create_repo(REPO)
    api.upload_file(path_or_fileobj=b'{"a": 1}\n', path_in_repo="config.json", repo_id=REPO)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(_weights())
    api.upload_file(path_or_fileobj=str(weights), path_in_repo="model.safetensors", repo_id=REPO)
    return weights.read_bytes()


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


def test_head_metadata_ranges_and_redirects(hub_server, api, tmp_path):  # noqa: F811
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import get_session

    data = _seed_repo(api, tmp_path)
    head = hub_server.head(REPO)
    meta = get_hf_file_metadata(hf_hub_url(REPO, "config.json"))
    assert (meta.commit_hash, meta.etag, meta.size) == (head, git_blob_sha1(b'{"a": 1}\n'), 9)
    meta = get_hf_file_metadata(hf_hub_url(REPO, "model.safetensors"))
    assert (meta.commit_hash, meta.etag, meta.size) == (head, hashlib.sha256(data).hexdigest(), len(data))
    assert meta.location.startswith(hub_server.cdn_url)  # a signed URL on another origin, like the Hub's CDN

    s = get_session()
    r = s.get(hf_hub_url(REPO, "config.json"), headers={"Range": "bytes=2-4"})
    assert (r.status_code, r.content, r.headers["Content-Range"]) == (206, b'a":', "bytes 2-4/9")
    r = s.get(meta.location, headers={"Range": "bytes=-10"})
    assert (r.status_code, r.content) == (206, data[-10:])
    r = s.get(meta.location, headers={"Range": "bytes=100000-"})
    assert r.status_code == 416 and r.headers["Content-Range"] == f"bytes */{len(data)}"
    r = s.get(meta.location.replace("sig=", "sig=0"))
    assert r.status_code == 403  # the CDN URL is signed
    r = s.get(hf_hub_url(REPO, "model.safetensors"), follow_redirects=False)
    assert r.status_code == 302 and r.headers["X-Linked-Size"] == str(len(data))


def test_missing_repo_revision_and_file_raise_typed_errors(hub_server, api, tmp_path):  # noqa: F811
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    _seed_repo(api, tmp_path)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "nope.txt")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "config.json", revision="no-such-branch")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(f"{USER}/missing", "config.json")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(f"{USER}/missing")
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree(REPO, "no/such/folder"))


def test_private_repo_needs_the_owners_token(hub_server, api):  # noqa: F811
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    api.create_repo(REPO, private=True)
    api.upload_file(path_or_fileobj=b"secret", path_in_repo="s.txt", repo_id=REPO)
    assert hub_server.repo_info(REPO)["private"] is True
    assert api.model_info(REPO).private is True
    anonymous = HfApi(endpoint=hub_server.url, token=False)
    with pytest.raises(RepositoryNotFoundError) as exc:
        anonymous.model_info(REPO)
    assert exc.value.response.status_code == 401
    with pytest.raises(RepositoryNotFoundError) as exc:
        HfApi(endpoint=hub_server.url, token=OTHER_TOKEN).model_info(REPO)
    assert exc.value.response.status_code == 404
    with pytest.raises((RepositoryNotFoundError, HfHubHTTPError)):
        hf_hub_download(REPO, "s.txt", token=False)
    assert Path(hf_hub_download(REPO, "s.txt", token=TOKEN)).read_bytes() == b"secret"
    with pytest.raises(HfHubHTTPError) as exc:  # an invalid token is refused even for public reads
        HfApi(endpoint=hub_server.url, token=BAD_TOKEN).list_repo_refs(REPO)
    assert exc.value.response.status_code == 401


def test_writes_need_the_namespace_owner(hub_server, api):  # noqa: F811
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api.create_repo(REPO)
    bob = HfApi(endpoint=hub_server.url, token=OTHER_TOKEN)
    with pytest.raises(HfHubHTTPError) as exc:
        bob.create_repo(f"{USER}/bobs")
    assert exc.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as exc:
        bob.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO)
    assert exc.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as exc:
        HfApi(endpoint=hub_server.url, token=BAD_TOKEN).upload_file(path_or_fileobj=b"x", path_in_repo="x.txt",
                                                                      repo_id=REPO)
    assert exc.value.response.status_code == 401
    assert len(hub_server.commits(REPO)) == 1 and not hub_server.repo_exists(f"{USER}/bobs")
    # Any user may open a pull request on a public repository, as on the Hub.
    info = bob.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO, create_pr=True)
    assert info.pr_revision == "refs/pr/1" and hub_server.commits(REPO, "refs/pr/1")[0].author == "bob"


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


def test_validate_yaml(hub_server):  # noqa: F811
    from huggingface_hub.utils import get_session

    def check(meta: str) -> tuple[int, list[str]]:
        r = get_session().post(f"{hub_server.url}/api/validate-yaml",
                               json={"content": f"---\n{meta}\n---\n# card\n", "repoType": "model"})
        return r.status_code, [e["message"] for e in r.json()["errors"]]

    ok = "license: apache-2.0\nbase_model: org/base\nlibrary_name: transformers\npipeline_tag: text-generation"
    assert check(ok) == (200, [])
    assert check("license: not-a-license")[0] == 400
    status, errors = check("license: mit\nbase_model: ./runs/tiny/base")
    assert status == 400 and "base_model" in errors[0]
    assert check("base_model: /abs/path")[0] == 400
    assert check("- just\n- a list")[0] == 400
    assert check("license: [mit\n")[0] == 400
    status, errors = check("model-index:\n- name: x\n  results:\n  - task: {type: text-generation}\n    metrics: []")
    assert status == 400 and any("dataset" in e for e in errors)


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


def test_commit_fault_injection(hub_server, api):  # noqa: F811
    from huggingface_hub.errors import HfHubHTTPError

    api.create_repo(REPO)
    hub_server.fail_next("commit")
    with pytest.raises(HfHubHTTPError):
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO)
    assert len(hub_server.commits(REPO)) == 1
    api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO)
    assert len(hub_server.commits(REPO)) == 2


def test_command_line_server(tmp_path):
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-m", "hubsdd.testing.hub_server", "--storage", str(tmp_path / "s"),
                             "--token", f"{TOKEN}:{USER}", "--ready-file", str(ready)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 30
        while not ready.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        url = ready.read_text().strip()
        import httpx2

        r = httpx2.get(f"{url}/api/whoami-v2", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.json()["name"] == USER
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0 and out.strip() == url and not ready.exists()


def test_storage_survives_a_restart(tmp_path):
    with HubServer(tmp_path / "s", {TOKEN: USER}) as first:
        first.create_repo(REPO)
        sha = first.rewrite_file(REPO, "a.txt", b"kept")
    with HubServer(tmp_path / "s", {TOKEN: USER}) as second:
        assert second.head(REPO) == sha and second.file_bytes(REPO, "a.txt") == b"kept"
    assert os.listdir(tmp_path / "s" / "repos" / "models" / USER) == ["demo"]
