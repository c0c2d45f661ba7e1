"""publish/pull against the test Hub: assertions read what the server stored, never mocks."""

from __future__ import annotations

import json

import pytest
from hub_fixtures import (  # noqa: F401 - fixtures
    BAD_TOKEN,
    BASE_MODEL,
    OTHER_TOKEN,
    RUN_FINGERPRINT,
    TOKEN,
    USER,
    model_card_meta,
    refresh_model_card,
    release,
    release_template,  # session fixture behind `release`
    sha256_of,
    write_card,
)

from hubsdd.core.errors import AuthError, HubError, RepoConflictError, VerificationError
from hubsdd.hub import format_dry_run, format_publish, format_summary, parse_repo_ref, publish, pull

MODEL = f"{USER}/tiny-sdd"
DATASET = f"{USER}/tiny-sdd-data"
TAG = f"hubsdd-{RUN_FINGERPRINT[:12]}"
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


def _publish(release, **kw):  # noqa: F811
    model_dir, dataset_dir = release
    kw.setdefault("token", TOKEN)
    return publish(model_dir, dataset_dir, model_repo=MODEL, dataset_repo=DATASET, **kw)


def _release_commits(server, repo=MODEL, repo_type="model", revision="main"):
    """Commits other than the Hub's initial .gitattributes commit."""
    return [c for c in server.commits(repo, revision, repo_type) if c.title != "initial commit"]


def test_publish_one_commit_per_repo_and_stock_loading(hub_server, release):  # noqa: F811
    import torch
    from huggingface_hub import DatasetCard, ModelCard
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir, dataset_dir = release
    result = _publish(release)
    assert not result.dry_run and not result.skipped
    model_commits = _release_commits(hub_server)
    assert len(model_commits) == 1 and len(_release_commits(hub_server, DATASET, "dataset")) == 1
    assert result.model.commit_sha == model_commits[0].id == hub_server.head(MODEL)
    assert result.dataset.commit_sha == hub_server.head(DATASET, repo_type="dataset")

    # Every local file landed byte for byte; weights, parquet and PNG went through LFS.
    stored = hub_server.files(MODEL)
    local = {p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file()}
    assert set(stored) == local | {".gitattributes"}
    for rel in local:
        assert hub_server.file_bytes(MODEL, rel) == (model_dir / rel).read_bytes(), rel
    assert stored["model.safetensors"]["type"] == "lfs" and stored["layer_distance.png"]["type"] == "lfs"
    assert hub_server.files(DATASET, repo_type="dataset")["data/train.parquet"]["type"] == "lfs"
    assert hub_server.refs(MODEL)["tags"] == {TAG: result.model.commit_sha}

    # The card read back through the client equals the rendered one.
    assert ModelCard.load(MODEL).data.to_dict() == ModelCard.load(model_dir / "README.md").data.to_dict()
    ds_meta = DatasetCard.load(DATASET).data.to_dict()
    assert ds_meta["license"] == "apache-2.0"  # and hubsdd recorded which files it created there:
    assert ds_meta["hubsdd"]["files"] == {"data/train.parquet": sha256_of(dataset_dir / "data" / "train.parquet")}

    # Stock transformers loads the published checkpoint from the (test) Hub.
    remote = AutoModelForCausalLM.from_pretrained(MODEL)
    original = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = torch.tensor([[4, 5, 6, 7]])
    with torch.no_grad():
        assert torch.equal(remote(ids).logits, original(ids).logits)
    tok = AutoTokenizer.from_pretrained(MODEL)
    assert tok.apply_chat_template([{"role": "user", "content": "hello"}], tokenize=False).startswith("<|im_start|>user")
    assert MODEL in format_publish(result) and TAG in format_publish(result)


def test_dry_run_sends_nothing(hub_server, release):  # noqa: F811
    result = _publish(release, dry_run=True, token=None)
    assert result.dry_run and sum(hub_server.counts.values()) == 0 and not hub_server.repo_exists(MODEL)
    paths = dict(result.model.files)
    assert paths["model.safetensors"] == (release[0] / "model.safetensors").stat().st_size
    assert "data/train.parquet" in dict(result.dataset.files)
    text = format_dry_run(result)
    assert "nothing was sent" in text and "model.safetensors" in text and "base_model: " + BASE_MODEL in text
    assert "hubsdd:" in result.dataset.card_text  # the dataset card that would be uploaded


def test_bad_tokens_are_refused_before_any_commit(hub_server, release):  # noqa: F811
    with pytest.raises(AuthError) as exc:
        _publish(release, token=BAD_TOKEN)
    assert "hf auth login" in str(exc.value) and BAD_TOKEN not in str(exc.value)
    with pytest.raises(AuthError) as exc:
        _publish(release, token=OTHER_TOKEN)  # bob may not write to alice's namespace
    assert "'alice'" in str(exc.value)
    with pytest.raises(AuthError):
        _publish(release, token=None)  # no token anywhere (HF_TOKEN unset, isolated HF_HOME)
    assert not hub_server.repo_exists(MODEL) and hub_server.counts["commit"] == 0


def test_foreign_repo_is_refused_unless_pr_or_overwrite(hub_server, release):  # noqa: F811
    hub_server.create_repo(MODEL)
    hub_server.rewrite_file(MODEL, "notes.md", b"# someone else's notes\n", author=USER)
    before = hub_server.head(MODEL)
    with pytest.raises(RepoConflictError) as exc:
        _publish(release)
    assert "notes.md" in str(exc.value) and "--pr" in str(exc.value) and "--overwrite" in str(exc.value)
    assert hub_server.head(MODEL) == before and hub_server.counts["commit"] == 0

    pr = _publish(release, create_pr=True)
    assert hub_server.head(MODEL) == before  # main untouched
    assert pr.model.pr_ref == "refs/pr/1" and hub_server.refs(MODEL)["prs"][1]["sha"] == pr.model.commit_sha
    assert hub_server.files(MODEL, "refs/pr/1")["notes.md"]  # never deleted
    assert hub_server.refs(MODEL)["tags"] == {}  # no tag in PR mode
    again = _publish(release, create_pr=True)  # a rerun finds the open PR instead of opening another
    assert again.model.skipped and again.model.pr_ref == "refs/pr/1" and list(hub_server.refs(MODEL)["prs"]) == [1]

    done = _publish(release, overwrite=True)
    assert hub_server.commits(MODEL)[0].id == done.model.commit_sha and hub_server.commits(MODEL)[1].id == before
    assert hub_server.file_bytes(MODEL, "notes.md") == b"# someone else's notes\n"


def test_republish_makes_no_second_commit(hub_server, release):  # noqa: F811
    first = _publish(release)
    hub_server.reset_counts()
    second = _publish(release)
    assert second.skipped and second.model.commit_sha == first.model.commit_sha
    assert len(_release_commits(hub_server)) == 1 and len(_release_commits(hub_server, DATASET, "dataset")) == 1
    assert hub_server.counts["commit"] == 0 and hub_server.counts["lfs_upload"] == 0
    assert "unchanged" in format_publish(second)


def test_publish_to_a_new_branch(hub_server, release):  # noqa: F811
    result = _publish(release, revision="release")
    assert _release_commits(hub_server) == []  # main untouched
    assert hub_server.head(MODEL, "release") == result.model.commit_sha
    assert hub_server.commits(MODEL, "release")[0].parents == [hub_server.head(MODEL)]
    assert _publish(release, revision="release").skipped


def test_interrupted_upload_resumes_without_duplicates(hub_server, release):  # noqa: F811
    # The dataset commit lands; the model commit fails after the model's LFS objects were uploaded.
    hub_server.fail_next("commit", after=1)
    with pytest.raises(HubError) as exc:
        _publish(release)
    assert "rerun" in str(exc.value)
    assert hub_server.counts["lfs_upload"] == 3  # parquet, safetensors, png
    assert len(_release_commits(hub_server, DATASET, "dataset")) == 1 and _release_commits(hub_server) == []
    hub_server.reset_counts()
    result = _publish(release)
    assert hub_server.counts["lfs_upload"] == 0  # the LFS batch API reported them present: not re-sent
    assert hub_server.counts["commit"] == 1  # the model's; the dataset already matched
    assert result.dataset.skipped and not result.model.skipped
    assert len(_release_commits(hub_server)) == 1 and len(_release_commits(hub_server, DATASET, "dataset")) == 1
    assert hub_server.refs(MODEL)["tags"] == {TAG: result.model.commit_sha}


def test_failed_lfs_upload_is_a_hub_error_and_resumes(hub_server, release):  # noqa: F811
    hub_server.fail_next("lfs_upload", status=400, after=1)  # 400: the client does not retry it
    with pytest.raises(HubError, match="400"):
        _publish(release)
    assert _release_commits(hub_server) == []
    _publish(release)
    assert len(_release_commits(hub_server)) == 1 and len(_release_commits(hub_server, DATASET, "dataset")) == 1


def test_new_release_deletes_only_its_own_stale_files(hub_server, release):  # noqa: F811
    model_dir, _ = release
    _publish(release)
    hub_server.rewrite_file(MODEL, "notes.md", b"mine\n", author=USER)  # the owner adds a file by hand
    (model_dir / "hubsdd" / "prune.json").unlink()
    (model_dir / "generation_config.json").write_text('{"max_new_tokens": 8}\n')
    refresh_model_card(model_dir, dataset_repo=DATASET)
    with pytest.raises(RepoConflictError):
        _publish(release)
    result = _publish(release, overwrite=True)
    files = hub_server.files(MODEL)
    assert "hubsdd/prune.json" not in files and "notes.md" in files
    assert hub_server.file_bytes(MODEL, "generation_config.json") == b'{"max_new_tokens": 8}\n'
    assert result.model.deleted == ["hubsdd/prune.json"] and result.model.foreign == ["notes.md"]
    assert sorted(result.model.changed) == ["README.md", "generation_config.json"]
    assert hub_server.commits(MODEL)[0].id == result.model.commit_sha


def test_pull_verifies_and_detects_tampering(hub_server, release, tmp_path):  # noqa: F811
    from transformers import AutoModelForCausalLM

    published = _publish(release)
    got = pull(f"{MODEL}@{TAG}", local_dir=tmp_path / "pulled", allow_unsigned=True)
    assert got.commit_sha == published.model.commit_sha and got.base_model == BASE_MODEL
    assert got.prune == {"removed_layers": [2, 3], "layers_before": 4, "layers_after": 2}
    assert got.retention["value"] == 0.912 and got.retention["ci95"] == [0.871, 0.95]
    assert got.files_verified == len(model_card_meta(release[0])["hubsdd"]["files"])
    model = AutoModelForCausalLM.from_pretrained(got.local_path)
    assert model.config.num_hidden_layers == 2
    summary = format_summary(got)
    assert "2 -> 2" not in summary and "4 -> 2" in summary
    assert "retention:       91.2% of the base model's average (95% CI 87.1% to 95.0%); above chance: 85.0%; " \
           "400 items per task x 6 tasks" in summary and "too few" not in summary

    config = json.loads(hub_server.file_bytes(MODEL, "config.json"))
    config["num_hidden_layers"] = 3
    hub_server.rewrite_file(MODEL, "config.json", json.dumps(config).encode())
    with pytest.raises(VerificationError) as exc:
        pull(MODEL, local_dir=tmp_path / "tampered", allow_unsigned=True)
    msg = str(exc.value)
    assert "config.json" in msg and sha256_of(release[0] / "config.json") in msg
    assert "model.safetensors" not in msg
    hub_server.rewrite_file(MODEL, "model.safetensors", b"\0" * 64)
    with pytest.raises(VerificationError, match="model.safetensors"):
        pull(MODEL, allow_unsigned=True)
    assert pull(MODEL, revision=published.model.commit_sha, allow_unsigned=True).commit_sha == published.model.commit_sha


def test_metadata_is_validated_before_any_upload(hub_server, release):  # noqa: F811
    model_dir, _ = release
    write_card(model_dir, model_card_meta(model_dir, base_model="./runs/tiny/base"))
    with pytest.raises(HubError, match="base_model"):
        _publish(release)
    assert sum(hub_server.counts.values()) == 0  # refused locally
    write_card(model_dir, model_card_meta(model_dir, license="not-a-license"))
    with pytest.raises(HubError, match="license"):
        _publish(release)
    assert hub_server.counts["validate_yaml"] >= 1  # the Hub's check refused it...
    assert hub_server.counts["create_repo"] == 0 and hub_server.counts["lfs_upload"] == 0  # ...before any upload


def test_release_folder_must_match_its_card(hub_server, release):  # noqa: F811
    model_dir, _ = release
    (model_dir / "recipe.yaml").write_text("name: edited by hand\n")
    with pytest.raises(VerificationError, match="recipe.yaml"):
        _publish(release)
    assert sum(hub_server.counts.values()) == 0


def test_parse_repo_ref():
    assert parse_repo_ref("org/name@v1") == ("org/name", "v1")
    assert parse_repo_ref("org/name", "main") == ("org/name", "main")
    with pytest.raises(HubError):
        parse_repo_ref("/abs/path")
    with pytest.raises(HubError):
        parse_repo_ref("org/name@v1", "v2")


def test_pull_summary_says_when_items_are_too_few() -> None:
    from hubsdd.hub import format_retention

    few = {"value": 1.143, "ci95": [0.78, 1.52], "items_per_task": 20, "tasks": 3, "precise": False}
    text = format_retention(few)
    assert text.startswith("114.3% of the base model's average (95% CI 78.0% to 152.0%); 20 items per task")
    assert "too few items to tell the models apart" in text
    assert format_retention(0.9) == "90.0% of the base model's average (no interval recorded)"


class RecordingReporter:
    def __init__(self):
        self.tasks, self.done = {}, {}

    def start(self, key, description, total, unit):
        self.tasks[key] = [description, total, unit]
        self.done[key] = 0

    def advance(self, key, amount, fields):
        self.done[key] += amount

    def set_total(self, key, total):
        self.tasks[key][1] = total

    def finish(self, key):
        pass


def test_publish_and_pull_report_bytes_and_files_as_progress(hub_server, release, tmp_path):  # noqa: F811
    from hubsdd.core import progress

    rec = RecordingReporter()
    with progress.reporting(rec):
        _publish(release)
        pull(MODEL, local_dir=tmp_path / "pulled", allow_unsigned=True)
    uploads = {k: v for k, v in rec.tasks.items() if v[0].startswith("uploading")}
    assert {v[0] for v in uploads.values()} == {f"uploading {MODEL}", f"uploading {DATASET}"}
    model_upload = next(k for k, v in uploads.items() if v[0] == f"uploading {MODEL}")
    total = rec.tasks[model_upload][1]
    assert rec.tasks[model_upload][2] == "byte" and total > 100_000  # the weights
    assert rec.done[model_upload] >= total  # every file went up (LFS ones read once more for the PUT)
    downloads = [k for k, v in rec.tasks.items() if not v[0].startswith("uploading")]
    assert downloads and any(rec.done[k] > 0 for k in downloads)
