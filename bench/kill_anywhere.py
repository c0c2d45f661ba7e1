"""Kill anywhere, the long run: SIGKILL `hubsdd run` at random moments, hundreds of times.

    python bench/kill_anywhere.py --kills 200 [--seed 0] [--max-per-sequence 4]

Builds the harness recipe (tests/kill_recipe.py: every stage on tiny models), times one
uninterrupted run as the reference, then runs sequences of 1..N kills, each at a uniformly random
moment between 0.5 s and the reference's duration after an attempt starts, and lets the last
attempt finish. Each sequence's final run directory must equal the reference (stage fingerprints,
released files' sha256 with wall-clock figures masked), hold no staging/temporary files, and have
done no finished unit of work twice (hubsdd.core.worklog). Prints kills survived / tried, the kills that
landed in each stage, and every problem found.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from hubsdd.testing.kill import attempt, run_sequence, snapshot  # noqa: E402
from kill_recipe import write_kill_recipe  # noqa: E402

STAGE_LINE = re.compile(r"^\[(\w+)\] running", re.M)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-per-sequence", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None, help="write the summary as JSON here")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    env = {"OMP_NUM_THREADS": "1"}
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="hubsdd-kill-") as tmp:
        recipe = write_kill_recipe(Path(tmp))
        run_dir = Path(tmp) / "runs" / "kill-anywhere"
        ref = attempt(recipe, {**os.environ, **env}, None)
        if ref.returncode != 0:
            print(ref.output[-3000:])
            return 1
        reference = snapshot(run_dir)
        print(f"reference run: {ref.seconds:.1f} s, stages {', '.join(reference.fingerprints)}", flush=True)
        tried = survived = sequences = 0
        where: Counter[str] = Counter()
        problems: list[str] = []
        while tried < args.kills:
            n = min(rng.randint(1, args.max_per_sequence), args.kills - tried)
            times = [rng.uniform(0.5, ref.seconds) for _ in range(n)]
            seq = run_sequence(recipe, run_dir, reference, times, env=env)
            sequences += 1
            landed = [a for a in seq.attempts if a.killed_after is not None and a.returncode == -9]
            for a in landed:
                stages = STAGE_LINE.findall(a.output)
                where[stages[-1] if stages else "start-up"] += 1
            tried += len(landed)
            if not landed:
                continue
            if seq.problems:
                found = [f"sequence {sequences} (kills at {[round(t, 1) for t in times]} s): {p}" for p in seq.problems]
                problems += found
                print("\n".join(found), flush=True)
            else:
                survived += len(landed)
            print(f"sequence {sequences}: {len(landed)} kills, {'ok' if not seq.problems else 'PROBLEMS'}; "
                  f"{survived}/{tried} survived so far", flush=True)
    summary = {"kills_survived": survived, "kills_tried": tried, "sequences": sequences,
               "kills_by_stage": dict(where), "problems": problems, "reference_seconds": round(ref.seconds, 1),
               "wall_seconds": round(time.time() - started), "command": " ".join(["python"] + sys.argv)}
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if survived == tried else 1


if __name__ == "__main__":
    raise SystemExit(main())
