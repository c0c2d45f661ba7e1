"""Checks that need the model or the data fail at the first moment the fact is known, naming the field.

`hubsdd validate` knows a local base's layer count and a local data file's columns; a run knows a
Hub base's layer count right after the base stage, before prune does any work; a Hub dataset's
columns are checked as distill reads them, before the teacher loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import save_tiny
from hubsdd.pipeline import preflight, runner
from hubsdd.cli import main
from hubsdd.core.errors import DataError, RecipeError
from hubsdd.core.recipe import load_recipe, parse_recipe


def validate(capsys, path: Path) -> tuple[int, str]:
    code = main(["validate", str(path)])
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.fixture(scope="module")
def thirty_layers(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("models") / "tiny-30", layers=30)


def recipe_text(tmp_path: Path, base_yaml: str, calibration_file: Path, blocks: int = 2, extra: str = "") -> str:
    return f"""\
name: pre
runs_dir: {tmp_path / 'runs'}
base:
{base_yaml}
prune:
  blocks: {blocks}
  calibration: {{path: {calibration_file}, text_column: text, samples: 4, max_length: 16}}
{extra}"""


@pytest.mark.parametrize("blocks", [30, 31])
def test_validate_refuses_removing_every_layer_of_a_local_model(tmp_path, capsys, thirty_layers, calibration_file,
                                                                 blocks):
    path = tmp_path / "r.yaml"
    path.write_text(recipe_text(tmp_path, f"  model: org/tiny\n  path: {thirty_layers}", calibration_file, blocks))
    code, out = validate(capsys, path)
    assert code == 2 and "Traceback" not in out
    assert f"prune.blocks (line 7): the base model has 30 layers (base.path's config.json); removing {blocks} " \
           "would leave none: use 1 to 29" in out
    # The same recipe runs nothing: the run stops before the base stage.
    with pytest.raises(RecipeError, match="prune.blocks"):
        runner.run(load_recipe(path))
    assert not (tmp_path / "runs").exists()


def test_validate_passes_29_of_30_and_says_what_it_checked(tmp_path, capsys, thirty_layers, calibration_file):
    path = tmp_path / "r.yaml"
    path.write_text(recipe_text(tmp_path, f"  model: org/tiny\n  path: {thirty_layers}", calibration_file, 29))
    code, out = validate(capsys, path)
    assert code == 0, out
    assert "checked: prune.blocks against the base model's 30 layers" in out
    assert "checked: the columns prune reads against prune.calibration.path" in out


def test_prune_layers_beyond_the_model_are_named(tmp_path, thirty_layers, calibration_file):
    text = recipe_text(tmp_path, f"  model: org/tiny\n  path: {thirty_layers}", calibration_file, 2)
    text = text.replace("  blocks: 2\n", "  blocks: 2\n  layers: [3, 30]\n")
    with pytest.raises(RecipeError) as info:
        preflight.check(parse_recipe(text))
    assert info.value.problems == ["prune.layers[1] (line 8): layer 30 does not exist: the base model has 30 "
                                   "layers, numbered 0 to 29"]


def _gguf(path: Path, blocks: int) -> Path:
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    # A vocabulary (string array) and scores (float array) before the block count, as real files have.
    writer.add_token_list([f"tok{i}" for i in range(500)])
    writer.add_token_scores([0.0] * 500)
    writer.add_block_count(blocks)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_block_count_is_read_from_the_header_as_the_gguf_package_reads_it(tmp_path, capsys,
                                                                               calibration_file):
    from gguf import GGUFReader

    path = _gguf(tmp_path / "m.gguf", 30)
    assert GGUFReader(path).fields["llama.block_count"].contents() == 30
    assert preflight.gguf_block_count(*preflight._file_key(path)) == 30
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text(tmp_path, f"  model: org/tiny\n  gguf_file: {path}", calibration_file, 30))
    code, out = validate(capsys, recipe)
    assert code == 2 and "prune.blocks (line 7): the base model has 30 layers (the header of base.gguf_file)" in out
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 20)  # truncated: the fact is unknown, no error
    assert preflight.gguf_block_count(*preflight._file_key(not_gguf)) is None


# --------------------------------------------------------------------------- a Hub base


def _upload(tmp_path: Path, repo_id: str, layers: int) -> None:
    from huggingface_hub import HfApi

    from hub_fixtures import TOKEN

    folder = save_tiny(tmp_path / "upload", layers=layers)
    api = HfApi(token=TOKEN)
    api.create_repo(repo_id)
    api.upload_folder(repo_id=repo_id, folder_path=folder)


@pytest.mark.parametrize("blocks", [30, 31])
def test_hub_base_fails_right_after_the_base_stage_before_prune_does_any_work(hub_server, tmp_path, capsys,
                                                                              calibration_file, monkeypatch, blocks):
    monkeypatch.setenv("HF_TOKEN", "hf_test_alice_token")
    _upload(tmp_path, "alice/tiny-30", 30)
    path = tmp_path / "r.yaml"
    path.write_text(recipe_text(tmp_path, "  model: alice/tiny-30", calibration_file, blocks))
    code, out = validate(capsys, path)  # the layer count is on the Hub: validate cannot know it
    assert code == 0 and "checked later: prune.blocks against the base model's layers" in out

    from hubsdd.stages.prune import stage as prune

    monkeypatch.setattr(prune, "run_prune", lambda ctx: pytest.fail("prune ran"))
    events = []
    with pytest.raises(RecipeError) as info:
        runner.run(load_recipe(path), on_event=lambda *e: events.append(e[:2]))
    assert info.value.problems == [f"prune.blocks (line 6): the base model has 30 layers (the base stage read its "
                                   f"config); removing {blocks} would leave none: use 1 to 29"]
    assert events == [("base", "running"), ("base", "done")]
    run_dir = tmp_path / "runs" / "pre"
    assert (run_dir / "base" / "stage.json").exists()
    assert not (run_dir / "prune").exists() and not list(run_dir.glob(".staging-*"))


# --------------------------------------------------------------------------- data columns


def test_local_distill_column_missing_fails_at_validate(tmp_path, capsys, tiny_model_dir, calibration_file,
                                                        instructions_file):
    extra = f"""\
distill:
  data: {{path: {instructions_file}}}
  columns: {{instruction: question, response: answer2}}
"""
    path = tmp_path / "r.yaml"
    path.write_text(recipe_text(tmp_path, f"  model: org/tiny\n  path: {tiny_model_dir}", calibration_file, 2, extra))
    code, out = validate(capsys, path)
    assert code == 2
    assert "distill.columns.response (line 11): column 'answer2' is not in distill.data.path (columns: question, " \
           "answer)" in out
    fixed = path.read_text().replace("answer2", "answer")
    path.write_text(fixed)
    assert validate(capsys, path)[0] == 0


def test_a_vllm_teacher_that_cannot_start_here_stops_the_run_before_the_base_stage(
        tmp_path, capsys, tiny_model_dir, calibration_file, instructions_file, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "vllm", None)  # not installed, whatever this machine has
    extra = f"""\
distill:
  data: {{path: {instructions_file}}}
  columns: {{instruction: question, response: answer}}
  generation: {{backend: vllm, data_parallel_size: 4}}
"""
    path = tmp_path / "r.yaml"
    path.write_text(recipe_text(tmp_path, f"  model: org/tiny\n  path: {tiny_model_dir}", calibration_file, 2, extra))
    assert validate(capsys, path)[0] == 0  # a recipe written for a GPU machine validates anywhere
    with pytest.raises(RecipeError) as err:
        runner.run(load_recipe(path))
    assert err.value.problems == [
        "distill.generation.backend (line 12): 'vllm' needs the vllm package, which is not installed here (pip install "
        "'hubsdd[vllm]', on a machine with NVIDIA GPUs); `transformers` generates on any machine, more slowly"]
    assert not (tmp_path / "runs" / "pre" / "base").exists()
    assert "distill" not in runner.run(load_recipe(path), until="prune")  # pruning needs no teacher

    # installed, but with fewer GPUs than its replicas
    monkeypatch.setattr(preflight, "_installed", lambda module: True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(RecipeError) as err:
        runner.run(load_recipe(path))
    assert err.value.problems == [
        "distill.generation.data_parallel_size (line 12): data_parallel_size 4 x tensor_parallel_size 1 needs 4 "
        "GPUs, 2 visible: lower them to the GPUs this machine has (or list more in CUDA_VISIBLE_DEVICES)"]


def test_calibration_column_and_template_are_checked(tmp_path, tiny_model_dir, calibration_file):
    text = recipe_text(tmp_path, f"  model: org/tiny\n  path: {tiny_model_dir}", calibration_file)
    with pytest.raises(RecipeError) as info:
        preflight.check(parse_recipe(text.replace("text_column: text", "text_column: body")))
    assert info.value.problems[0].startswith("prune.calibration.text_column (line 8): column 'body' is not in "
                                             "prune.calibration.path (columns: text)")
    with pytest.raises(RecipeError) as info:
        preflight.check(parse_recipe(text.replace("text_column: text", "text_template: '{{ text }} {{ titel }}'")))
    assert info.value.problems[0].startswith("prune.calibration.text_template (line 8): uses titel, not columns")
    with pytest.raises(RecipeError) as info:
        preflight.check(parse_recipe(text.replace("text_column: text", "text_template: '{{ text '")))
    assert "not a valid Jinja template" in info.value.problems[0]
    preflight.check(parse_recipe(text.replace("text_column: text", "text_template: '{{ text | upper }}'")))


def test_missing_template_file_is_named(tmp_path, tiny_model_dir, calibration_file, instructions_file):
    extra = f"distill:\n  data: {{path: {instructions_file}}}\n  columns: {{instruction: question, response: answer}}\n" \
            "  template: prompts/nope.j2\n"
    text = recipe_text(tmp_path, f"  model: org/tiny\n  path: {tiny_model_dir}", calibration_file, 2, extra)
    with pytest.raises(RecipeError) as info:
        preflight.check(parse_recipe(text))
    assert info.value.problems == ["distill.template (line 12): 'prompts/nope.j2' is neither 'general' nor 'math' "
                                   "nor a file (relative to the recipe)"]


def test_nested_columns_of_a_saved_dataset_and_parquet_are_read_without_loading(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    saved = tmp_path / "saved"
    datasets.Dataset.from_list([{"doc": {"question": "q", "answer": "a"}, "idx": 1}]).save_to_disk(str(saved))
    assert preflight.sample_rows(*preflight._file_key(saved)) == [{"doc": {"question": None, "answer": None},
                                                                   "idx": None}]
    pq.write_table(pa.Table.from_pylist([{"q": "x", "a": "y"}] * 3), tmp_path / "d.parquet")
    assert preflight.sample_rows(*preflight._file_key(tmp_path / "d.parquet")) == [{"q": "x", "a": "y"}] * 3
    (tmp_path / "bad.jsonl").write_bytes(b"\xff\xfe not json\n")
    assert preflight.sample_rows(*preflight._file_key(tmp_path / "bad.jsonl")) is None  # left to the stage


def test_hub_dataset_column_fails_as_distill_reads_it_before_the_teacher_loads(datasets_hub, tmp_path,
                                                                               tiny_model_dir, calibration_file,
                                                                               monkeypatch):
    from hub_fixtures import CONFIGS_CARD, jsonl, push_dataset

    from conftest import INSTRUCTIONS
    from hubsdd.stages.distill import stage as distill_stage

    push_dataset("alice/gsm-mini", {"README.md": CONFIGS_CARD, "main/train.jsonl": jsonl(INSTRUCTIONS),
                                    "main/test.jsonl": jsonl(INSTRUCTIONS[:1])}, "v1")
    extra = "distill:\n  data: {dataset: alice/gsm-mini, config: main}\n" \
            "  columns: {instruction: question, response: answer2}\n"
    recipe = parse_recipe(recipe_text(tmp_path, f"  model: org/tiny\n  path: {tiny_model_dir}", calibration_file,
                                      2, extra))
    monkeypatch.setattr(distill_stage, "make_backend", lambda *a, **k: pytest.fail("the teacher was loaded"))
    with pytest.raises(DataError, match=r"^distill\.columns\.response: column 'answer2' not in alice/gsm-mini"):
        runner.run(recipe, until="distill")
    run_dir = tmp_path / "runs" / "pre"
    assert not (run_dir / "distill").exists()
    assert not any(run_dir.glob(".work/distill-*/shards/*.parquet"))


def test_config_layer_count_reads_text_config_and_ignores_junk(tmp_path):
    cases = {"a": {"num_hidden_layers": 12}, "b": {"text_config": {"num_hidden_layers": 7}}, "c": {"n_layer": 3},
             "d": {"num_hidden_layers": True}, "e": ["not", "a", "config"]}
    for name, config in cases.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(config))
    got = {name: preflight.config_layer_count(*preflight._file_key(tmp_path / f"{name}.json")) for name in cases}
    assert got == {"a": 12, "b": 7, "c": 3, "d": None, "e": None}
    (tmp_path / "broken.json").write_text("{")
    assert preflight.config_layer_count(*preflight._file_key(tmp_path / "broken.json")) is None


def test_a_template_too_deep_to_parse_is_a_problem_not_a_crash(tmp_path, tiny_model_dir, calibration_file):
    text = recipe_text(tmp_path, f"  model: org/tiny\n  path: {tiny_model_dir}", calibration_file)
    deep = "{{" + "(" * 5000 + "text" + ")" * 5000 + "}}"
    with pytest.raises(RecipeError) as info:  # was RecursionError inside jinja2's parser
        preflight.check(parse_recipe(text.replace("text_column: text", f"text_template: '{deep}'")))
    assert info.value.problems == ["prune.calibration.text_template (line 8): the template nests too deeply to parse"]
