"""Who may read and write: private repositories, namespaces, pull requests by others."""

from __future__ import annotations

from pathlib import Path

import pytest
from hub_fixtures import BAD_TOKEN, DEMO_REPO as REPO, OTHER_TOKEN, TOKEN, USER, api  # noqa: F401 (a fixture)

# huggingface_hub's own LFS upload passes a file object as `data=`, which httpx2 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


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
