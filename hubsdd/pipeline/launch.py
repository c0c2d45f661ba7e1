"""``accelerate launch -m hubsdd.pipeline.launch RECIPE``: the process entry of data-parallel fine-tuning.

Pipeline code (it reads the run's records and installs the stage through the runner), so it lives
here rather than in the finetune stage, which never imports the runner (until the move into layer packages
this was ``-m hubsdd.finetune``). See :mod:`hubsdd.stages.finetune.stage` for what runs on each process.
"""

from __future__ import annotations

from datetime import timedelta

from ..core.errors import StageError
from ..stages.finetune.stage import train_all
from ..core.models import default_device
from ..core.recipe import load_recipe
from .runner import expected_fingerprints, load_results, run, stage_work_dir
from ..core.stage_io import StageContext
from ..stages.finetune.training import refuse_sharded_training


def main(argv: list[str] | None = None) -> int:
    """``accelerate launch -m hubsdd.pipeline.launch RECIPE``: train the variants on every process, then
    install the finetune stage from the main one (see the module docstring)."""
    import argparse

    from accelerate import PartialState

    parser = argparse.ArgumentParser(prog="python -m hubsdd.pipeline.launch", description=main.__doc__)
    parser.add_argument("recipe", help="recipe YAML whose prune and distill stages have finished")
    args = parser.parse_args(argv)
    recipe = load_recipe(args.recipe)
    if recipe.finetune is None:
        raise StageError(f"{args.recipe} has no `finetune` section", fix="add one, e.g. `finetune: {}`")
    refuse_sharded_training()
    # The process group is created here, before the Trainer could set its timeout: every process
    # waits (up to this) while the main one merges and saves each variant. On the CPU the
    # processes talk over gloo (accelerate picks NCCL only for GPUs).
    state = PartialState(cpu=default_device(recipe) == "cpu", timeout=timedelta(seconds=recipe.finetune.ddp_timeout))
    fps = expected_fingerprints(recipe)
    results = load_results(recipe.run_dir)
    stale = [n for n in ("base", "prune", "distill") if n not in results or results[n].fingerprint != fps[n]]
    if stale:
        raise StageError(f"stages {stale} have not finished for this recipe",
                         fix=f"run `hubsdd run {args.recipe} --until distill` first (one process)")
    fp = fps["finetune"]
    # Variants are trained into the run's cache (variant_dir), where the stage finds them done.
    ctx = StageContext(recipe=recipe, name="finetune", run_dir=recipe.run_dir, out_dir=recipe.run_dir / ".unused",
                       work_dir=stage_work_dir(recipe.run_dir, "finetune", fp),
                       inputs={n: results[n] for n in ("base", "prune", "distill")}, fingerprint=fp)
    train_all(ctx, is_main=state.is_main_process)
    state.wait_for_everyone()
    if state.is_main_process:
        run(recipe, until="finetune")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
