"""Fault the Hub: `hubsdd.hub.publish` against a test Hub that fails the way a real one sometimes does.

For each fault the assertions are what a user relies on: the first publish either succeeds or
fails with a hubsdd error that says to rerun; a rerun ends with exactly one new commit per
repository holding every file of the release byte for byte (and the release tag); and no commit on
main ever holds a partial file set.

What huggingface_hub does on its own, read from its code (``utils/_http.py``, ``lfs.py``,
``_commit_api.py``) and asserted below: preupload, the LFS batch call, the LFS PUT and verify go
through ``http_backoff``, which retries network errors, timeouts and 408/429/5xx up to 5 times
(waiting 1, 2, 4, 8, 8 s, or ``Retry-After`` + 1 s); the commit POST is sent once and never
retried. Its shared httpx2 client has no timeout at all (``timeout=None``); only the metadata HEAD
and the download of ``hf_hub_download`` have one (``HF_HUB_ETAG_TIMEOUT``,
``HF_HUB_DOWNLOAD_TIMEOUT``, 10 s), and after a timed-out HEAD it retries once with 60 s. The
tests give the client a short timeout through the documented hook (``set_client_factory``) and
record the backoff waits instead of sleeping them, so they stay fast.
"""

from __future__ import annotations

import json
import os
import random
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hub_fixtures import (  # noqa: F401 - fixtures
    RUN_FINGERPRINT,
    TOKEN,
    USER,
    refresh_model_card,
    release,
    release_template,  # session fixture behind `release`
)

from hubsdd.core.errors import HubError, HubsddError
from hubsdd.core.files import git_blob_sha1
from hubsdd.hub import publish

MODEL = f"{USER}/tiny-sdd"
DATASET = f"{USER}/tiny-sdd-data"
TAG = f"hubsdd-{RUN_FINGERPRINT[:12]}"
SECOND_FINGERPRINT = "9" * 64  # the fingerprint of a second release of the same run
CLIENT_TIMEOUT = 2  # seconds; the client's own default is none (uploads) or 10 s (downloads)
SLOW = 2 * CLIENT_TIMEOUT  # how long a slow request keeps the client waiting
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


# --------------------------------------------------------------------------- the client's side


@pytest.fixture
def backoff_waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """huggingface_hub's retry waits, recorded instead of slept (only its waiting is replaced)."""
    from huggingface_hub.utils import _http

    waits: list[float] = []
    clock = types.SimpleNamespace(**{n: getattr(time, n) for n in dir(time) if not n.startswith("_")})
    clock.sleep = waits.append
    monkeypatch.setattr(_http, "time", clock)
    return waits


@pytest.fixture
def client_timeout(monkeypatch: pytest.MonkeyPatch):
    """A short client timeout: the download timeouts through huggingface_hub's constants (read
    from HF_HUB_ETAG_TIMEOUT/HF_HUB_DOWNLOAD_TIMEOUT at import), every other call through an
    httpx2 client with that timeout (huggingface_hub's own has none)."""
    import httpx2
    from huggingface_hub import constants, set_client_factory
    from huggingface_hub.utils import _http

    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", CLIENT_TIMEOUT)
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", CLIENT_TIMEOUT)

    def short_timeout_client() -> httpx2.Client:
        client = _http.default_client_factory()
        client.timeout = httpx2.Timeout(CLIENT_TIMEOUT)
        return client

    set_client_factory(short_timeout_client)
    try:
        yield CLIENT_TIMEOUT
    finally:
        set_client_factory(_http.default_client_factory)


# --------------------------------------------------------------------------- what the Hub holds


def _publish(release, **kw):  # noqa: F811
    model_dir, dataset_dir = release
    return publish(model_dir, dataset_dir, model_repo=MODEL, dataset_repo=DATASET, token=TOKEN, **kw)


def _release_commits(server, repo=MODEL, repo_type="model"):
    """Commits on main other than the Hub's initial .gitattributes commit, newest first."""
    if not server.repo_exists(repo, repo_type):
        return []
    return [c for c in server.commits(repo, "main", repo_type) if c.title != "initial commit"]


def _local_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _holds(server, commit_files: dict[str, dict], local: dict[str, bytes], *, card_completed: bool) -> bool:
    """Whether a commit's tree holds exactly the release: every local file with its bytes. A
    dataset card is completed by publish (its hubsdd block), so only its presence is checked."""
    if set(commit_files) != set(local) | {".gitattributes"}:
        return False
    for path, data in local.items():
        entry = commit_files[path]
        if path == "README.md" and card_completed:
            continue
        if entry["size"] != len(data) or server.storage.entry_bytes(entry) != data:
            return False
        if entry["type"] == "regular" and entry["oid"] != git_blob_sha1(data):
            return False
    return True


def assert_no_partial_commit(server, release, *, earlier: int = 0) -> None:  # noqa: F811
    """Every commit main ever pointed at is the initial one, one of the ``earlier`` releases, or
    the whole release; none holds part of it."""
    for folder, repo, repo_type in ((release[0], MODEL, "model"), (release[1], DATASET, "dataset")):
        if not server.repo_exists(repo, repo_type):
            continue
        local = _local_files(folder)
        commits = _release_commits(server, repo, repo_type)
        for commit in commits[:len(commits) - earlier]:
            assert _holds(server, commit.files, local, card_completed=repo_type == "dataset"), \
                f"{repo_type} commit {commit.id[:12]} holds a partial release: {sorted(commit.files)}"


def assert_released_once(server, release, *, tag: str = TAG, earlier: int = 0) -> None:  # noqa: F811
    """One new commit per repository on main, holding every file byte for byte, tagged; no
    upload left half-received in the server's storage."""
    assert server.wait_idle()
    assert_no_partial_commit(server, release, earlier=earlier)
    model = _release_commits(server)
    assert len(model) == 1 + earlier, [c.title for c in model]
    assert len(_release_commits(server, DATASET, "dataset")) == 1 + earlier  # its card names the run
    assert server.refs(MODEL)["tags"][tag] == model[0].id == server.head(MODEL)
    assert list((server.storage.root / "tmp").iterdir()) == []


# --------------------------------------------------------------------------- one test per fault


def test_connection_dropped_mid_lfs_upload_is_retried_by_the_client(hub_server, release, backoff_waits):  # noqa: F811
    hub_server.drop_next("lfs_upload")
    result = _publish(release)
    assert hub_server.faults.fired["lfs_upload"] == 1
    assert hub_server.counts["lfs_upload"] == 4  # parquet, safetensors, png, and the one cut short again
    assert backoff_waits == [1]  # http_backoff waited its first second, rewound the file and sent it whole
    assert not result.skipped
    assert_released_once(hub_server, release)


def test_connection_dropped_on_every_lfs_upload_try_fails_cleanly_then_resumes(hub_server, release,  # noqa: F811
                                                                               backoff_waits):
    hub_server.drop_next("lfs_upload", times=6)  # the first try and all 5 retries
    with pytest.raises(HubError, match="cannot reach the Hub"):
        _publish(release)
    assert backoff_waits == [1, 2, 4, 8, 8]
    assert _release_commits(hub_server, DATASET, "dataset") == [] and not _release_commits(hub_server)
    assert list((hub_server.storage.root / "tmp").iterdir()) == []  # the cut upload left nothing
    _publish(release)
    assert_released_once(hub_server, release)


@pytest.mark.parametrize("status", [500, 503])
@pytest.mark.parametrize("when", ["before", "after"])
def test_server_error_on_commit(hub_server, release, backoff_waits, status, when):  # noqa: F811
    # The model's commit (the dataset's went through): the state where half a release is public.
    hub_server.fail_next("commit", status=status, after=1, when=when)
    with pytest.raises(HubError, match=str(status)) as exc:
        _publish(release)
    assert "rerun" in exc.value.fix
    assert backoff_waits == []  # the client sends a commit once, never retries it
    assert len(_release_commits(hub_server, DATASET, "dataset")) == 1
    # "before": the Hub refused the commit; "after": it made it and then answered the error.
    assert len(_release_commits(hub_server)) == (1 if when == "after" else 0)
    assert_no_partial_commit(hub_server, release)
    result = _publish(release)
    assert result.dataset.skipped and result.model.skipped == (when == "after")
    assert_released_once(hub_server, release)


def test_429_on_commit_is_not_retried_by_the_client(hub_server, release, backoff_waits):  # noqa: F811
    hub_server.fail_next("commit", status=429, retry_after=3, message="rate limited")
    with pytest.raises(HubError, match="429"):
        _publish(release)
    assert backoff_waits == [] and _release_commits(hub_server, DATASET, "dataset") == []
    _publish(release)
    assert_released_once(hub_server, release)


@pytest.mark.parametrize("kind", ["preupload", "lfs_batch", "lfs_upload"])
def test_429_with_retry_after_on_uploads_is_waited_out_by_the_client(hub_server, release, backoff_waits,  # noqa: F811
                                                                     kind):
    hub_server.fail_next(kind, status=429, retry_after=3, message="rate limited")
    _publish(release)  # succeeds the first time
    assert hub_server.faults.fired[kind] == 1
    assert backoff_waits == [3 + 1]  # Retry-After, plus the second huggingface_hub adds
    assert_released_once(hub_server, release)


def test_slow_commit_past_the_client_timeout_lands_and_the_rerun_makes_no_second(hub_server, release,  # noqa: F811
                                                                                 client_timeout, backoff_waits):
    hub_server.slow_next("commit", SLOW, after=1)  # the model's commit
    with pytest.raises(HubError, match="ReadTimeout"):
        _publish(release)
    assert hub_server.wait_idle()
    # The client gave up, the Hub did not: the commit landed, untagged.
    assert len(_release_commits(hub_server)) == 1 and hub_server.refs(MODEL)["tags"] == {}
    result = _publish(release)
    assert result.model.skipped and result.dataset.skipped  # recognized, not committed again
    assert_released_once(hub_server, release)


def test_rerun_while_a_timed_out_commit_is_still_running_never_duplicates_it(hub_server, release,  # noqa: F811
                                                                             client_timeout, backoff_waits):
    hub_server.slow_next("commit", SLOW)  # the dataset's commit; rerun at once, before it lands
    with pytest.raises(HubError, match="ReadTimeout"):
        _publish(release)
    for _ in range(2):  # the commit that loses the race is refused (its parent moved): rerun once more
        try:
            _publish(release)
            break
        except HubError as exc:
            assert "412" in str(exc)
    assert_released_once(hub_server, release)


def test_slow_lfs_upload_past_the_client_timeout_is_retried_by_the_client(hub_server, release,  # noqa: F811
                                                                          client_timeout, backoff_waits):
    hub_server.slow_next("lfs_upload", SLOW)
    _publish(release)
    assert hub_server.faults.fired["lfs_upload"] == 1 and backoff_waits == [1]
    assert_released_once(hub_server, release)


def _second_release(release) -> None:  # noqa: F811
    """Change the model release in place, as a new run of the same recipe would."""
    model_dir, _ = release
    (model_dir / "generation_config.json").write_text('{"max_new_tokens": 8}\n')
    (model_dir / "hubsdd" / "scores.bin").write_bytes(bytes(range(256)) * 4)  # binary: a new LFS upload
    refresh_model_card(model_dir, dataset_repo=DATASET, fingerprint=SECOND_FINGERPRINT)


def test_slow_card_download_past_hf_hub_etag_timeout_is_retried_by_the_client(hub_server, release,  # noqa: F811
                                                                              client_timeout, backoff_waits):
    _publish(release)
    _second_release(release)
    # Publishing over a release reads the previous card with hf_hub_download: its HEAD times out.
    hub_server.slow_next("resolve", SLOW)
    hub_server.reset_counts()
    result = _publish(release)  # succeeds the first time
    assert hub_server.faults.fired["resolve"] == 1 and not result.model.skipped
    # Its HEAD and GET for each card, plus the HEAD it sent again (with its own 60 s timeout).
    assert hub_server.counts["resolve"] == UPDATE_KINDS["resolve"] + 1 and backoff_waits == []
    assert_released_once(hub_server, release, tag=f"hubsdd-{SECOND_FINGERPRINT[:12]}", earlier=1)


# --------------------------------------------------------------------------- randomized faults

# The faults a trial draws from: (behaviour, moment, extra arguments of the server call).
FAULTS = [
    ("drop", "mid_body", {}), ("drop", "after", {}),
    ("status", "before", {"status": 500}), ("status", "after", {"status": 500}),
    ("status", "before", {"status": 503}), ("status", "after", {"status": 503}),
    ("status", "before", {"status": 429, "retry_after": 2}),
    ("slow", "before", {}), ("slow", "after", {}),
]
# The requests a publish makes (counted on the test Hub), fresh or over an earlier release.
FRESH_KINDS = {"whoami": 1, "validate_yaml": 4, "repo_info": 4, "create_repo": 2, "preupload": 2, "lfs_batch": 2,
               "lfs_upload": 3, "lfs_verify": 3, "commit": 2, "refs": 1, "create_tag": 1}
UPDATE_KINDS = {"whoami": 1, "validate_yaml": 4, "repo_info": 4, "tree": 2, "resolve": 4, "preupload": 2,
                "lfs_batch": 2, "lfs_upload": 1, "lfs_verify": 1, "commit": 2, "refs": 1, "create_tag": 1}


@dataclass
class Trial:
    behaviour: str
    when: str
    kind: str
    after: int
    times: int
    update: bool  # publish over an earlier release (reads its card and file list)
    extra: dict = field(default_factory=dict)

    def inject(self, server) -> None:
        if self.behaviour == "drop":
            server.drop_next(self.kind, self.times, self.after, when=self.when)
        elif self.behaviour == "slow":
            server.slow_next(self.kind, SLOW, self.times, self.after, when=self.when)
        else:
            server.fail_next(self.kind, self.times, after=self.after, when=self.when, **self.extra)

    def __str__(self) -> str:
        extra = "".join(f" {k}={v}" for k, v in self.extra.items())
        return (f"{self.behaviour} {self.when}{extra} on {self.kind} #{self.after + 1} x{self.times}"
                + (" (update)" if self.update else ""))


def draw_trials(count: int, seed: int) -> list[Trial]:
    rng = random.Random(seed)
    trials = []
    for _ in range(count):
        behaviour, when, extra = rng.choice(FAULTS)
        update = rng.random() < 0.3
        kinds = UPDATE_KINDS if update else FRESH_KINDS
        kind = rng.choice(sorted(kinds))
        trials.append(Trial(behaviour, when, kind, after=rng.randrange(kinds[kind]),
                            times=rng.choice([1, 1, 2, 6]), update=update, extra=dict(extra)))
    return trials


TRIALS = draw_trials(int(os.environ.get("HUBSDD_FAULT_TRIALS", "6")), int(os.environ.get("HUBSDD_FAULT_SEED", "0")))


@pytest.mark.parametrize("trial", TRIALS, ids=[f"{i}-{t.behaviour}-{t.when}-{t.kind}" for i, t in enumerate(TRIALS)])
def test_random_fault_is_survived(hub_server, release, client_timeout, backoff_waits, trial):  # noqa: F811
    """One drawn fault: the first publish succeeds or fails with a hubsdd error that says what to
    do, showing no partial release; after one rerun the release is on main once, whole.
    ``bench/hub_faults.py`` runs many of these (HUBSDD_FAULT_TRIALS, HUBSDD_FAULT_SEED) and reads
    the outcomes from HUBSDD_FAULT_REPORT."""
    outcome: dict = {"trial": str(trial), "survived": False}
    try:
        earlier, tag = 0, TAG
        if trial.update:
            _publish(release)
            _second_release(release)
            earlier, tag = 1, f"hubsdd-{SECOND_FINGERPRINT[:12]}"
        trial.inject(hub_server)
        try:
            _publish(release)
            outcome["first_publish"] = "ok"
        except HubsddError as exc:  # anything else (a traceback) fails the trial
            outcome["first_publish"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            assert exc.fix, "a publish error says what to do"
            assert hub_server.wait_idle()
            assert_no_partial_commit(hub_server, release, earlier=earlier)
            hub_server.faults.clear()  # what is left of the fault passes; the user reruns
            _publish(release)
        outcome["fired"] = sum(hub_server.faults.fired.values())
        outcome["backoff_waits"] = list(backoff_waits)
        assert_released_once(hub_server, release, tag=tag, earlier=earlier)
        outcome["survived"] = True
    except BaseException as exc:
        outcome["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        raise
    finally:
        if os.environ.get("HUBSDD_FAULT_REPORT"):
            with open(os.environ["HUBSDD_FAULT_REPORT"], "a", encoding="utf-8") as fh:
                fh.write(json.dumps(outcome) + "\n")


def test_trials_cover_every_fault_and_are_reproducible() -> None:
    drawn = draw_trials(200, 0)
    assert {(t.behaviour, t.when) for t in drawn} == {(b, w) for b, w, _ in FAULTS}
    assert [str(t) for t in draw_trials(20, 7)] == [str(t) for t in draw_trials(20, 7)]


def test_trials_target_the_requests_a_publish_makes(hub_server, release):  # noqa: F811
    """So a drawn fault fires: the kinds and counts trials draw from are those a publish sends."""
    _publish(release)
    assert dict(hub_server.counts) == FRESH_KINDS
    hub_server.reset_counts()
    _second_release(release)
    _publish(release)
    assert dict(hub_server.counts) == UPDATE_KINDS
