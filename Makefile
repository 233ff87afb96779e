# Every target creates the virtualenv first if it is missing or older than the lock file.
# Installs come from requirements.lock (exact versions and hashes), never from the
# ranges in pyproject.toml, so what passes today passes on any day. `make lock`
# re-resolves the ranges deliberately; review and commit the new lock.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCK   := requirements.lock
UV_VERSION := 0.13.9
PYTEST_ARGS ?=

.PHONY: venv test lint format bench demo schema lock clean

$(STAMP): $(LOCK) pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --require-hashes --no-deps -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

venv: $(STAMP)

# The build backend (setuptools) is locked too, so the editable install needs no
# unpinned download.
lock:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv==$(UV_VERSION)
	echo 'setuptools>=69' | $(BIN)/uv pip compile pyproject.toml - --extra dev \
		--generate-hashes --universal --python-version 3.11 --upgrade \
		--custom-compile-command 'make lock' -o $(LOCK)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit/test_public_api.py

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python -m tests.bench.bench_hop
	$(BIN)/python -m tests.bench.bench_registry
	$(BIN)/python -m tests.bench.bench_policy
	$(BIN)/python -m tests.bench.bench_eventstore
	$(BIN)/python -m tests.bench.bench_mesh

schema: $(STAMP)
	$(BIN)/mesh contracts write

demo: $(STAMP)
	$(BIN)/mesh demo --cases 300

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
