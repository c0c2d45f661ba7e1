"""How many architectures layer surgery prunes: the full sweep over transformers' causal LMs.

    .venv/bin/python bench/prune_architectures.py [--json bench/results/prune_architectures.json] [TYPE ...]

For every model type in ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`` (or the ones named): build it from a
tiny config (hubsdd.testing.architectures), remove its two middle layers with
``hubsdd.stages.prune.surgery.remove_layers``, save as safetensors, reload with plain
``AutoModelForCausalLM.from_pretrained``, and compare logits and 12-token greedy generations
(cached and uncached, in memory and reloaded) with the unpruned model run with those two layers
passed through. Prints one line per architecture, then
"N architectures pass / M buildable / K refused with a clear error / S skipped (reasons)".
Exit status 1 if any architecture fails (neither passes nor gets the clear error).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
import tempfile
import time
import warnings
from dataclasses import asdict
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_types", nargs="*", help="default: every causal-LM model type")
    ap.add_argument("--json", type=Path, help="write every outcome here")
    args = ap.parse_args()

    import transformers
    from transformers.utils import logging as hf_logging

    from hubsdd.testing.architectures import causal_lm_architectures, check_architecture, summarize

    # Tiny random models make transformers warn about everything; the outcome lines are the output.
    warnings.filterwarnings("ignore")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.disable(logging.WARNING)

    model_types = args.model_types or causal_lm_architectures()
    outcomes = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hubsdd-archs-") as workdir:
        for model_type in model_types:
            t = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # a few models print warnings
                outcome = check_architecture(model_type, Path(workdir))
            outcomes.append(outcome)
            detail = outcome.detail.replace("\n", " ")
            print(f"{model_type:28s} {outcome.status:8s} {time.perf_counter() - t:5.1f}s  {detail[:200]}", flush=True)
    print(f"\ntransformers {transformers.__version__}, {time.perf_counter() - started:.0f} s")
    print(summarize(outcomes))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"transformers": transformers.__version__, "summary": summarize(outcomes),
                                         "outcomes": [asdict(o) for o in outcomes]}, indent=1) + "\n")
    return 1 if any(o.status == "fail" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
