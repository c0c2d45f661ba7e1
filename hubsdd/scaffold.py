"""``hubsdd init``: a starter recipe and, optionally, a GitHub Actions workflow that publishes it."""

from __future__ import annotations

from pathlib import Path

from .errors import HubsddError

RECIPE = """\
# A hubsdd recipe: `hubsdd validate {name}` checks it, `hubsdd plan {name}` shows what will run,
# `hubsdd publish {name}` runs everything and pushes the release.
name: my-pruned-model

base:
  model: HuggingFaceTB/SmolLM2-135M-Instruct   # Hub id of the base (teacher) model
  revision: main                                # pin a commit sha for a reproducible release
  dtype: bfloat16

prune:
  method: angular        # or: bi (Block Influence)
  blocks: 4              # decoder layers to remove
  calibration:
    dataset: allenai/c4
    config: en
    split: validation
    text_column: text
    samples: 256
    max_length: 512

distill:
  data:
    dataset: openai/gsm8k
    config: main
    split: train
    limit: 2000
  columns: {{instruction: question, response: answer}}
  template: math
  checker: final-number
  generation: {{max_new_tokens: 512, batch_size: 32}}

finetune:
  variants:
    sdd: {{data: distilled}}
    sft: {{data: original}}
  method: lora
  epochs: 1

merge:
  method: slerp
  models: [sdd, sft]

evaluate:
  source: hub
  tasks: [openllm-v1]

publish:
  model_repo: your-org/my-pruned-model
  dataset_repo: your-org/my-pruned-model-distilled-data
"""

WORKFLOW = """\
# Publishes the recipe when it changes on main, or by hand (Actions tab -> publish -> Run workflow).
# Set the repository secret HF_TOKEN (a write token); it is read from the environment only and never
# written to a file, a log or the card. Pruning and distilling a large model needs a GPU runner:
# change `runs-on` to one of yours.
name: publish
on:
  workflow_dispatch:
    inputs:
      pr:
        description: "Open a pull request on the Hub instead of writing main"
        type: boolean
        default: true
  push:
    branches: [main]
    paths: ["{recipe}"]

jobs:
  publish:
    runs-on: ubuntu-latest
    timeout-minutes: 360
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-python@v5
        with:
          python-version: "3.11"
      - name: Install
        run: pip install hubsdd
      - name: Validate
        run: hubsdd validate {recipe}
      - name: Cache the run directory (a rerun resumes finished stages)
        uses: actions/cache@v4
        with:
          path: runs
          key: hubsdd-runs-${{{{ hashFiles('{recipe}') }}}}
          restore-keys: hubsdd-runs-
      - name: Publish
        env:
          HF_TOKEN: ${{{{ secrets.HF_TOKEN }}}}
        run: hubsdd publish {recipe} ${{{{ (github.event_name == 'push' || inputs.pr) && '--pr' || '' }}}}
"""


def write_scaffold(path: Path, *, github_action: bool = False, force: bool = False) -> list[Path]:
    path = Path(path)
    targets = [(path, RECIPE.format(name=path.name))]
    if github_action:
        recipe_rel = path.name if path.parent in (Path("."), Path("")) else str(path)
        targets.append((path.parent / ".github" / "workflows" / "publish.yml" if path.parent != Path(".")
                        else Path(".github/workflows/publish.yml"), WORKFLOW.format(recipe=recipe_rel)))
    existing = [p for p, _ in targets if p.exists()]
    if existing and not force:
        raise HubsddError(f"{', '.join(map(str, existing))} already exists", fix="pass --force to overwrite")
    written = []
    for p, text in targets:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        written.append(p)
    return written
