"""Kill anywhere, the short run CI does: SIGKILL `hubsdd run` a few times across the pipeline, rerun,
and check the finished run equals an uninterrupted one with nothing left behind or done twice.
`bench/kill_anywhere.py` runs the long version (hundreds of kills)."""

import os

import pytest

from hubsdd.testing.kill import attempt, run_sequence, snapshot
from kill_recipe import write_kill_recipe


@pytest.mark.slow
def test_killed_three_times_the_run_ends_as_an_uninterrupted_one(tmp_path):
    recipe = write_kill_recipe(tmp_path)
    run_dir = tmp_path / "runs" / "kill-anywhere"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference_run = attempt(recipe, env, None)
    assert reference_run.returncode == 0, reference_run.output[-3000:]
    reference = snapshot(run_dir)
    assert {"base", "prune", "distill", "finetune", "merge", "evaluate", "card"} <= set(reference.fingerprints)
    total = reference_run.seconds
    # three kills at growing depths: each attempt resumes the last one and gets further in
    seq = run_sequence(recipe, run_dir, reference, [0.3 * total, 0.4 * total, 0.5 * total],
                       env={"OMP_NUM_THREADS": "1"})
    assert seq.kills == 3, [(a.killed_after, a.returncode) for a in seq.attempts]
    assert seq.problems == []
