"""Fault injection: each behaviour at each moment does to a request what it says, over raw HTTP."""

from __future__ import annotations

import base64
import hashlib
import json

import httpx2
import pytest
from hub_fixtures import DEMO_REPO as REPO, TOKEN, api  # noqa: F401 (a fixture)

from hubsdd.testing.hub.faults import Fault

# huggingface_hub's own LFS upload passes a file object as `data=`, which httpx2 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_commit_fault_injection(hub_server, api):  # noqa: F811
    from huggingface_hub.errors import HfHubHTTPError

    api.create_repo(REPO)
    hub_server.fail_next("commit")
    with pytest.raises(HfHubHTTPError):
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO)
    assert len(hub_server.commits(REPO)) == 1
    api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO)
    assert len(hub_server.commits(REPO)) == 2


def _commit(hub_server, path: str, data: bytes, timeout: float | None = 30) -> httpx2.Response:
    """One NDJSON commit, as huggingface_hub sends it."""
    lines = [{"key": "header", "value": {"summary": f"add {path}"}},
             {"key": "file", "value": {"path": path, "content": base64.b64encode(data).decode(), "encoding": "base64"}}]
    return httpx2.post(f"{hub_server.url}/api/models/{REPO}/commit/main", headers=AUTH, timeout=timeout,
                       content=b"".join(json.dumps(x).encode() + b"\n" for x in lines))


def _upload_href(hub_server, data: bytes) -> str:
    """The signed PUT URL the LFS batch API hands out for ``data``."""
    objects = [{"oid": hashlib.sha256(data).hexdigest(), "size": len(data)}]
    r = httpx2.post(f"{hub_server.url}/{REPO}.git/info/lfs/objects/batch", headers=AUTH,
                    json={"operation": "upload", "objects": objects})
    return r.json()["objects"][0]["actions"]["upload"]["href"]


def test_status_before_changes_nothing_and_after_answers_the_error_for_work_done(hub_server):
    hub_server.create_repo(REPO)
    hub_server.fail_next("commit", status=503, message="overloaded", retry_after=7)
    r = _commit(hub_server, "a.txt", b"a")
    assert (r.status_code, r.headers["Retry-After"], r.headers["X-Error-Message"]) == (503, "7", "overloaded")
    assert "a.txt" not in hub_server.files(REPO)
    hub_server.fail_next("commit", status=500, when="after")
    assert _commit(hub_server, "b.txt", b"b").status_code == 500
    assert hub_server.file_bytes(REPO, "b.txt") == b"b"  # committed, though the answer said otherwise
    assert _commit(hub_server, "c.txt", b"c").status_code == 200  # the fault is spent
    assert hub_server.faults.fired["commit"] == 2 and hub_server.faults.pending() == {}


def test_drop_mid_body_stores_nothing_and_after_loses_only_the_answer(hub_server):
    hub_server.create_repo(REPO)
    data = hashlib.sha256(b"weights").digest() * 2048  # 64 KiB
    oid = hashlib.sha256(data).hexdigest()
    href = _upload_href(hub_server, data)
    hub_server.drop_next("lfs_upload")
    with pytest.raises(httpx2.TransportError):
        httpx2.put(href, content=data)
    assert hub_server.wait_idle()
    assert not hub_server.storage.lfs_path(oid).exists()
    assert list((hub_server.storage.root / "tmp").iterdir()) == []  # the half received is gone
    assert httpx2.put(href, content=data).status_code == 200 and hub_server.storage.lfs_path(oid).exists()

    hub_server.drop_next("commit", when="after")
    with pytest.raises(httpx2.TransportError):
        _commit(hub_server, "a.txt", b"a")
    assert hub_server.file_bytes(REPO, "a.txt") == b"a"  # the commit was made; only its answer was lost
    hub_server.drop_next("whoami")  # no body to cut in the middle of: dropped at once
    with pytest.raises(httpx2.TransportError):
        httpx2.get(f"{hub_server.url}/api/whoami-v2", headers=AUTH)


def test_slow_request_outlives_the_client_and_still_takes_effect(hub_server):
    hub_server.create_repo(REPO)
    hub_server.slow_next("commit", 1.5)
    with pytest.raises(httpx2.ReadTimeout):
        _commit(hub_server, "late.txt", b"late", timeout=0.3)
    assert hub_server.wait_idle(timeout=30)
    assert hub_server.file_bytes(REPO, "late.txt") == b"late"
    hub_server.slow_next("whoami", 0.2, when="after")  # within the client's patience: just slower
    assert httpx2.get(f"{hub_server.url}/api/whoami-v2", headers=AUTH).json()["name"] == "alice"


def test_skip_and_times_choose_which_requests_are_hit(hub_server):
    hub_server.fail_next("whoami", times=2, status=502, after=1)
    statuses = [httpx2.get(f"{hub_server.url}/api/whoami-v2", headers=AUTH).status_code for _ in range(4)]
    assert statuses == [200, 502, 502, 200]


def test_stopping_cuts_a_slow_request_short(tmp_path):
    from hubsdd.testing.hub import HubServer

    server = HubServer(tmp_path / "s", {TOKEN: "alice"})
    server.start()
    server.slow_next("whoami", 600)
    with pytest.raises(httpx2.ReadTimeout):
        httpx2.get(f"{server.url}/api/whoami-v2", headers=AUTH, timeout=0.3)
    server.stop()
    assert server.wait_idle(timeout=30)  # not 600 s: the wait ended with the server


def test_unknown_kinds_and_moments_are_refused(hub_server):
    with pytest.raises(ValueError, match="unknown request kind"):
        hub_server.fail_next("comit")
    with pytest.raises(ValueError, match="mid_body or after"):
        hub_server.drop_next("commit", when="before")
    with pytest.raises(ValueError, match="unknown fault behaviour"):
        Fault(behaviour="explode")


def test_a_fault_after_the_work_also_replaces_or_cuts_an_error_answer(hub_server):
    hub_server.create_repo(REPO)
    stale = "0" * 40
    lines = [{"key": "header", "value": {"summary": "x", "parentCommit": stale}}]
    body = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    url = f"{hub_server.url}/api/models/{REPO}/commit/main"
    assert httpx2.post(url, headers=AUTH, content=body).status_code == 412  # the route's own error
    hub_server.fail_next("commit", status=503, when="after")
    assert httpx2.post(url, headers=AUTH, content=body).status_code == 503
    hub_server.drop_next("commit", when="after")
    with pytest.raises(httpx2.TransportError):
        httpx2.post(url, headers=AUTH, content=body)
    assert httpx2.get(f"{hub_server.url}/api/whoami-v2", headers=AUTH).status_code == 200  # still serving
