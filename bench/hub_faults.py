"""Fault the Hub, many times: randomized faults during `hubsdd publish` of the tiny release.

    python bench/hub_faults.py --trials 60 --seed 1

Each trial draws a fault (a dropped connection mid-body or after the work, 500/503 before or after
the work, 429 with Retry-After, a response slower than the client's timeout), the request it hits
(any of the requests a publish makes, fresh or over an earlier release), which occurrence of that
request, and how many times in a row; then publishes, reruns once if the publish failed, and
checks what a user relies on (see tests/test_hub_faults.py: a hubsdd error that says what to do,
never a traceback; no partial release ever on main; in the end one new commit per repository with
every file byte for byte, and the tag). The trials are the parametrized
``test_random_fault_is_survived`` of tests/test_hub_faults.py, run by pytest; this script draws
them, runs them and prints faults survived / tried, by fault.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=60, help="faults to try (default 60)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the draw (default 1)")
    parser.add_argument("--out", type=Path, help="also write the per-trial outcomes here (JSON lines)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "faults.jsonl"
        env = dict(os.environ, HUBSDD_FAULT_TRIALS=str(args.trials), HUBSDD_FAULT_SEED=str(args.seed),
                   HUBSDD_FAULT_REPORT=str(report), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_hub_faults.py",
               "-k", "test_random_fault_is_survived"]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        outcomes = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    if args.out:
        args.out.write_text("".join(json.dumps(o) + "\n" for o in outcomes))

    by_fault: dict[str, list[bool]] = collections.defaultdict(list)
    for o in outcomes:
        fault = o["trial"].split(" on ")[0]
        by_fault[fault].append(o["survived"])
    survived = sum(o["survived"] for o in outcomes)
    first_ok = sum(o["survived"] and o.get("first_publish") == "ok" for o in outcomes)
    unfired = sum(o.get("fired") == 0 for o in outcomes)
    print(f"{'fault':40} survived / tried")
    for fault in sorted(by_fault):
        print(f"{fault:40} {sum(by_fault[fault]):>8} / {len(by_fault[fault])}")
    print(f"survived with the first publish succeeding (the client retried the request, or waited for "
          f"a slow answer): {first_ok}; with the first failing with a hubsdd error and one "
          f"rerun completing the release: {survived - first_ok}")
    if unfired:
        print(f"trials whose fault never fired: {unfired}")
    for o in outcomes:
        if not o["survived"]:
            print(f"NOT SURVIVED: {o['trial']}: {o.get('error', '')}")
    print(f"faults survived / tried: {survived} / {len(outcomes)}")
    if len(outcomes) != args.trials:
        print(f"pytest ran {len(outcomes)} of {args.trials} trials:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return 1
    return 0 if survived == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
