"""Downloads: /resolve headers, ranges, the signed CDN redirect, typed errors."""

from __future__ import annotations

import hashlib

import pytest
from hub_fixtures import DEMO_REPO as REPO, USER, api, seed_repo as _seed_repo  # noqa: F401 (a fixture)

from hubsdd.core.files import git_blob_sha1

# huggingface_hub's own LFS upload passes a file object as `data=`, which httpx2 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


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
