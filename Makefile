# The two commands of the README:
#   make demo   set up (first time) and run the main job on the bundled models
#   make test   set up (first time) and run the tests: the fast tier, then the end-to-end one
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast test-e2e test-all clean

# torch first and pinned to the tested 2.13.0: pyproject.toml allows a range (a library must
# not pin it), but the CPU build of 2.13.0 lies on the project machines' disk, while an
# unpinned resolve could pull a multi-GB CUDA build. Raise it together with pyproject's bound.
# -qq: pip prints errors only. A single -q still prints a "Location 'file:///...' is ignored"
# warning for every package that a machine-configured local index lacks; errors (and a
# non-zero exit) still show with -qq.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -qq torch==2.13.0
	$(BIN)/pip install -qq -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/d3llm demo

# The tests in two tiers (README, "Two commands"): the fast one (unit/ and equivalence/, a few
# minutes), then the end-to-end one (integration/: whole commands, servers, training runs and
# subprocesses; marked `e2e` in tests/conftest.py). `make test` runs both, still without `slow`.
FAST := -m 'not slow and not e2e'
E2E := -m 'e2e and not slow'

test: $(STAMP)
	$(BIN)/python -m pytest -q $(FAST)
	$(BIN)/python -m pytest -q $(E2E)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q $(FAST)

test-e2e: $(STAMP)
	$(BIN)/python -m pytest -q $(E2E)

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ''

clean:
	rm -rf $(VENV) .pytest_cache
