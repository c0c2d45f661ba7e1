"""Trusted publishing (OIDC) for real: the unmodified huggingface_hub client exchanges a CI id token
with the test Hub's /oauth/token, and hubsdd publishes with one scoped token per repository."""

from __future__ import annotations

import pytest
from hub_fixtures import USER, release, release_template  # noqa: F401 - fixtures

from hubsdd.core.errors import AuthError
from hubsdd.hub import publish

MODEL = f"{USER}/tiny-sdd"
DATASET = f"{USER}/tiny-sdd-data"
WORKFLOW = {"repository": "alice/pruning-project", "workflow": "publish.yml"}
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


@pytest.fixture
def ci(hub_server, monkeypatch: pytest.MonkeyPatch):
    """Both repos exist with this workflow as their trusted publisher; the job has an id token."""
    import huggingface_hub.utils._auth as auth

    hub_server.create_repo(MODEL)
    hub_server.create_repo(DATASET, repo_type="dataset")
    hub_server.trusted.add_publisher(MODEL, USER, **WORKFLOW)
    hub_server.trusted.add_publisher(f"datasets/{DATASET}", USER, **WORKFLOW)
    monkeypatch.setattr(auth, "_OIDC_TOKEN_CACHE", None)  # one exchange per test, not per process
    monkeypatch.setenv("HF_OIDC_ID_TOKEN", hub_server.trusted.mint_id_token(WORKFLOW))
    monkeypatch.setenv("HF_OIDC_RESOURCE", MODEL)
    return hub_server


def commits(server, repo, repo_type="model"):
    return [c for c in server.commits(repo, "main", repo_type) if c.title != "initial commit"]


def test_an_oidc_token_publishes_both_repos_with_one_exchange_each(ci, release) -> None:  # noqa: F811
    result = publish(*release, model_repo=MODEL, dataset_repo=DATASET)
    assert not result.skipped
    assert len(commits(ci, MODEL)) == 1 and len(commits(ci, DATASET, "dataset")) == 1
    assert ci.counts["oauth_token"] == 2
    grants = sorted(g["resource"] for g in ci.trusted.issued.values())
    assert grants == sorted([f"datasets/{DATASET}", MODEL])


def test_a_workflow_that_is_not_the_publisher_is_refused_and_nothing_is_pushed(ci, release, monkeypatch) -> None:  # noqa: F811
    monkeypatch.setenv("HF_OIDC_ID_TOKEN", ci.trusted.mint_id_token({**WORKFLOW, "repository": "mallory/fork"}))
    with pytest.raises(AuthError, match="refused to exchange the OIDC token") as err:
        publish(*release, model_repo=MODEL, dataset_repo=DATASET)
    assert "not a trusted publisher" in err.value.message and "HF_TOKEN" in err.value.fix
    assert commits(ci, MODEL) == [] and commits(ci, DATASET, "dataset") == []


def test_an_expired_or_foreign_id_token_is_refused(ci, release, monkeypatch) -> None:  # noqa: F811
    monkeypatch.setenv("HF_OIDC_ID_TOKEN", ci.trusted.mint_id_token(WORKFLOW, ttl=-10))
    with pytest.raises(AuthError, match="expired"):
        publish(*release, model_repo=MODEL, dataset_repo=DATASET)
    monkeypatch.setenv("HF_OIDC_ID_TOKEN", ci.trusted.mint_id_token(WORKFLOW, audience="https://huggingface.co"))
    with pytest.raises(AuthError, match="audience"):
        publish(*release, model_repo=MODEL, dataset_repo=DATASET)
    assert commits(ci, MODEL) == []


def test_a_token_scoped_to_one_repo_cannot_write_another(ci, tmp_path) -> None:
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    scoped = get_token()  # exchanged by huggingface_hub for HF_OIDC_RESOURCE = the model repo
    assert scoped.startswith("hf_oidc_")
    api = HfApi(token=scoped)
    (tmp_path / "note.txt").write_text("hello")
    api.upload_file(path_or_fileobj=str(tmp_path / "note.txt"), path_in_repo="note.txt", repo_id=MODEL)
    with pytest.raises(HfHubHTTPError) as err:
        api.upload_file(path_or_fileobj=str(tmp_path / "note.txt"), path_in_repo="note.txt", repo_id=DATASET,
                        repo_type="dataset")
    assert err.value.response.status_code == 403 and "scoped to" in str(err.value)
    assert commits(ci, DATASET, "dataset") == []
