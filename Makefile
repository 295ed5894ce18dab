# neqtune: two commands on a fresh machine.
#   make demo   set up (.venv) and run the default search (digits, no download)
#   make test   set up (.venv) and run lint, type checks and the test suite
#   make test-fast   the unit and contract tests only (no search, no Ray cluster, no benchmark run)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

# pytest-xdist workers (each runs torch on one thread: tests/conftest.py); 1 runs the suite in this process.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest $(if $(filter 1,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist worksteal)

.PHONY: demo test test-fast setup lint typecheck-tree

setup: $(VENV)/.installed

# torch==2.14.1 / torchvision==0.29.1 come from the machine's wheel cache via pip.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: setup
	$(PY) run_search.py

# mypy reads neqtune.<part> through links to the top-level folders (see [tool.mypy] in pyproject.toml).
typecheck-tree:
	rm -rf build/typecheck && mkdir -p build/typecheck/neqtune
	for f in neqtune/*.py; do ln -s ../../../$$f build/typecheck/$$f; done
	for d in datasets results search trainables; do ln -s ../../../$$d build/typecheck/neqtune/$$d; done

lint: setup typecheck-tree
	$(PY) -m ruff check .
	$(PY) -m mypy

test: lint
	$(PYTEST)

test-fast: setup
	$(PYTEST) -m "not search and not benchmark"
