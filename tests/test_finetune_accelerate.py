"""Multi-process fine-tuning for real: the README's `accelerate launch` command trains on two CPU
processes (gloo), the main one installs the finetune stage, the next `hubsdd run` finds it cached
and runs merge and evaluate, and the weights equal a single process's with the same global batch.
Also: the process group gets the recipe's timeout when it is created."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CALIBRATION_TEXTS, INSTRUCTIONS, save_tiny

ROOT = Path(__file__).resolve().parents[1]

RECIPE = """\
name: tiny-ddp
runs_dir: runs
base: {{model: hubsdd-tests/tiny-llama, path: {base}, license: apache-2.0}}
prune:
  blocks: 2
  calibration: {{path: cal.jsonl, text_column: text, samples: 4, max_length: 32, batch_size: 4}}
distill:
  data: {{path: ins.jsonl}}
  columns: {{instruction: question, response: answer}}
  generation: {{max_new_tokens: 8, batch_size: 6}}
finetune:
  variants: {{sdd: {{data: distilled}}, sft: {{data: original}}}}
  learning_rate: 0.01
  max_steps: 2
  batch_size: 3
  gradient_accumulation_steps: {accumulation}
  lora: {{r: 4, alpha: 8, dropout: 0.0}}
merge: {{method: linear, models: [sdd, sft]}}
evaluate:
  tasks: [arc_easy]
  num_fewshot: {{arc_easy: 0}}
  limit: 4
  models: [pruned, sdd, merge]
  speculative: null
  fidelity: null
"""


def readme_cpu_launch() -> str:
    """The two-process CPU command of the README's accelerate section."""
    text = (ROOT / "README.md").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("accelerate launch")]
    (command,) = [line for line in lines if "--num_processes 2" in line]
    return command


def _env() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1",
            "HUBSDD_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_two_processes_train_as_one_with_the_same_global_batch(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from hubsdd.pipeline import runner
    from hubsdd.stages.finetune.stage import train_variant
    from hubsdd.core.recipe import load_recipe
    from hubsdd.pipeline.runner import StageContext, load_results

    base = save_tiny(tmp_path / "tiny-llama")
    (tmp_path / "cal.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in CALIBRATION_TEXTS))
    (tmp_path / "ins.jsonl").write_text("".join(json.dumps(r) + "\n" for r in INSTRUCTIONS))
    (tmp_path / "recipe.yaml").write_text(RECIPE.format(base=base, accumulation=1))
    cwd = Path.cwd()
    os.chdir(tmp_path)  # the README's command names recipe.yaml, and runs_dir is relative
    try:
        recipe = load_recipe("recipe.yaml")
        runner.run(recipe, until="distill")

        command = readme_cpu_launch()
        assert command == "accelerate launch --multi_gpu --num_processes 2 -m hubsdd.pipeline.launch recipe.yaml"
        proc = subprocess.run(shlex.split(command), cwd=tmp_path, env=_env(), capture_output=True, text=True,
                              timeout=1200)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

        statuses = {p.name: p.status for p in runner.plan(recipe)}
        assert statuses["finetune"] == "cached" and statuses["merge"] == "pending"
        events: list[tuple[str, str]] = []
        runner.run(recipe, on_event=lambda stage, status, s: events.append((stage, status)))
        assert ("finetune", "cached") in events and ("merge", "done") in events and ("evaluate", "done") in events
        results = load_results(recipe.run_dir)
        assert set(results["evaluate"].metrics["scores"]) == {"pruned", "sdd", "merge"}

        # One process, per-device batch 3 with 2 accumulation steps: the same global batch of 6.
        single = load_recipe_text(RECIPE.format(base=base, accumulation=2), tmp_path / "single.yaml")
        ctx = StageContext(single, "finetune", single.run_dir, tmp_path / "single-out", tmp_path / "single-work",
                           {n: results[n] for n in ("base", "prune", "distill")}, "single")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            reference = train_variant(ctx, "sdd")
        finally:
            torch.set_num_threads(threads)
    finally:
        os.chdir(cwd)
    finetune = results["finetune"]
    two = finetune.metrics["variants"]["sdd"]
    assert two["steps"] == reference["metrics"]["steps"] == 2
    assert [e["loss"] for e in json.loads((finetune.dir / "sdd" / "train_log.json").read_text())] == pytest.approx(
        [e["loss"] for e in reference["log_history"]], rel=1e-4)
    got = load_file(str(finetune.dir / "sdd" / "model" / "model.safetensors"))
    want = load_file(str(ctx.run_dir / ".cache" / "finetune" / _key_dir(ctx) / "model" / "model.safetensors"))
    pruned = load_file(str(results["prune"].path("model_dir") / "model.safetensors"))
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(got[key], pruned[key])
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5, msg=name)


def load_recipe_text(text: str, path: Path):
    from hubsdd.core.recipe import load_recipe

    path.write_text(text)
    return load_recipe(path)


def _key_dir(ctx) -> str:
    from hubsdd.stages.finetune.stage import variant_key

    return variant_key(ctx, "sdd")[:24]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_process_group_gets_the_recipe_timeout(tmp_path: Path) -> None:
    """Created by hubsdd.stages.finetune.stage before the Trainer could set its own, so created with the
    recipe's `finetune.ddp_timeout`: rank 0 merges and saves while the others wait."""
    model_dir = save_tiny(tmp_path / "m", layers=2)
    (tmp_path / "cal.jsonl").write_text('{"text": "x"}\n')
    (tmp_path / "r.yaml").write_text(f"""\
name: t
runs_dir: {tmp_path / 'runs'}
base: {{path: {model_dir}}}
prune: {{blocks: 1, calibration: {{path: cal.jsonl, text_column: text}}}}
distill: {{data: {{path: cal.jsonl}}}}
finetune: {{ddp_timeout: 4321}}
""")
    code = f"""\
import torch, torch.distributed as dist
from hubsdd.core.errors import StageError
from hubsdd.pipeline.launch import main
try:
    main([{str(tmp_path / 'r.yaml')!r}])
except StageError as exc:
    print("stage error:", exc.message)
backend = dist.distributed_c10d._get_default_group()._get_backend(torch.device("cpu"))
print("world", dist.get_world_size(), "timeout", backend.options._timeout.total_seconds())
"""
    env = {**_env(), "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stage error: stages ['base', 'prune', 'distill'] have not finished" in proc.stdout
    assert re.search(r"world 1 timeout 4321\.0", proc.stdout), proc.stdout


FSDP_SCRIPT = """\
import sys, torch, torch.distributed as dist
from types import SimpleNamespace
from torch.distributed.fsdp import fully_shard
from peft import get_peft_model
from transformers import AutoModelForCausalLM
from hubsdd.core.recipe.sections import FinetuneSection
from hubsdd.stages.finetune.training import lora_config, whole_model

model_dir, out, sharded = sys.argv[1], sys.argv[2], sys.argv[3] == "fsdp"
if sharded:
    dist.init_process_group("gloo")
section = FinetuneSection.model_validate({"lora": {"r": 4, "alpha": 8, "dropout": 0.0}})

def rebuild():
    return get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), lora_config(section))

torch.manual_seed(0)
model = rebuild()
if sharded:
    for layer in model.base_model.model.model.layers:
        fully_shard(layer)
    fully_shard(model)
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
x = torch.arange(2 * 12).reshape(2, 12) % 90 + 5  # every rank the same batch: the same mean gradient
for _ in range(2):
    model(input_ids=x, labels=x).loss.backward()
    opt.step()
    opt.zero_grad()
whole = whole_model(SimpleNamespace(model=model, is_fsdp_enabled=sharded), rebuild)
if whole is not None:
    whole.merge_and_unload().save_pretrained(out)
print("rank", dist.get_rank() if sharded else 0, "whole" if whole is not None else "none", flush=True)
if sharded:
    dist.destroy_process_group()
"""


def test_fsdp_on_two_cpu_processes_gathers_a_whole_merged_model(tmp_path: Path) -> None:
    """FSDP2 (torch's fully_shard, per decoder layer) over gloo on two CPU processes: the shards are
    gathered onto rank 0 by hubsdd.stages.finetune.training.whole_model, the LoRA merged, and the saved model reloads
    with stock transformers and equals one unsharded process's. (accelerate 1.15 itself applies FSDP
    to GPU processes only: `accelerate launch --use_fsdp` on the CPU silently trains DDP.)"""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    model_dir = save_tiny(tmp_path / "m", layers=2)
    (tmp_path / "fsdp.py").write_text(FSDP_SCRIPT)
    env = {**_env(), "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(_free_port()), str(tmp_path / "fsdp.py"), str(model_dir), str(tmp_path / "sharded"),
                           "fsdp"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-5000:]
    assert "rank 0 whole" in proc.stdout and "rank 1 none" in proc.stdout
    one = subprocess.run([sys.executable, str(tmp_path / "fsdp.py"), str(model_dir), str(tmp_path / "one"), "one"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-5000:]

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "sharded")
    assert reloaded.config.num_hidden_layers == 2 and not any("lora" in n for n, _ in reloaded.named_modules())
    got, want = load_file(str(tmp_path / "sharded" / "model.safetensors")), load_file(str(tmp_path / "one" / "model.safetensors"))
    before = load_file(str(model_dir / "model.safetensors"))
    key = "model.layers.0.self_attn.q_proj.weight"
    assert got[key].shape == before[key].shape and not torch.equal(got[key], before[key])
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5, msg=name)
