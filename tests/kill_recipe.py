"""The recipe the kill-anywhere harness runs: every stage on tiny models, small enough to run dozens
of times, with at least two units of each kind of resumable work (shards, variants, checkpoints,
evaluated models). Shared by tests/test_kill_anywhere.py and bench/kill_anywhere.py."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import CALIBRATION_TEXTS, INSTRUCTIONS, save_tiny


def write_kill_recipe(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    base = save_tiny(folder / "tiny-llama")
    (folder / "cal.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in CALIBRATION_TEXTS))
    (folder / "ins.jsonl").write_text("".join(json.dumps(r) + "\n" for r in INSTRUCTIONS))
    recipe = folder / "recipe.yaml"
    recipe.write_text(f"""\
name: kill-anywhere
runs_dir: {folder / 'runs'}
base: {{model: hubsdd-tests/tiny-llama, path: {base}, license: apache-2.0}}
prune:
  blocks: 2
  calibration: {{path: {folder / 'cal.jsonl'}, text_column: text, samples: 8, max_length: 32, batch_size: 4}}
distill:
  data: {{path: {folder / 'ins.jsonl'}}}
  columns: {{instruction: question, response: answer}}
  generation: {{max_new_tokens: 12, batch_size: 2}}
  shard_size: 3
finetune:
  variants:
    sft: {{data: original}}
    kd: {{data: distilled, loss: kd}}
  learning_rate: 0.01
  max_steps: 6
  checkpoint_steps: 2
  batch_size: 2
  lora: {{r: 4, alpha: 8, dropout: 0.0}}
merge: {{method: slerp, models: [kd, sft]}}
evaluate:
  tasks: [arc_easy]
  num_fewshot: {{arc_easy: 0}}
  limit: 8
  speculative: null
  fidelity: {{prompts: 2, max_new_tokens: 4}}
publish: {{model_repo: me/kill, dataset_repo: me/kill-data}}
""")
    return recipe
