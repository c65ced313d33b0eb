# The two commands of the README: `make demo` and `make test`. Both set up the environment first
# (a virtual environment in .venv with `pip install -e ".[dev]"`), and reuse it on later runs.
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sevdino-installed
PYTHON ?= python3

.PHONY: install demo test lint test-slow docs-check export clean

install: $(STAMP)

$(STAMP): settings.ini setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sevdino demo

# Notebook tests first (their cells are the library's inline tests), then pytest, whose closing
# line ends the run. Two at a time, each on one thread: on a 2-core machine two torch processes of
# two threads each fight over the cores and the whole suite takes about twice as long.
TEST_WORKERS ?= 2
test: $(STAMP) lint
	OMP_NUM_THREADS=1 $(BIN)/nbdev_test --n_workers $(TEST_WORKERS) --timing
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --durations=15 tests

# Lint and format check (settings in pyproject.toml); `make export` formats.
lint: $(STAMP)
	$(BIN)/ruff check nbs sevdino tests tools
	$(BIN)/ruff format --check nbs tests tools

# Cells marked `#| slow` (real weights, real training) run only here.
test-slow: $(STAMP)
	$(BIN)/nbdev_test --n_workers 1 --timing --flags slow

# Before committing a notebook change: export the library, clean the notebooks, refresh the
# README (from nbs/index.ipynb) and the docs sidebar.
export: $(STAMP)
	$(BIN)/ruff format nbs tests tools
	$(BIN)/nbdev_export && $(BIN)/nbdev_clean
	$(BIN)/python tools/sync_readme.py
	$(BIN)/python tools/sync_sidebar.py

# The docs check that runs without Quarto (nbdev_proc_nbs, HTML, a Chromium screenshot).
docs-check: $(STAMP)
	$(BIN)/python -m pytest -q tests/test_docs.py

clean:
	rm -rf _proc _docs .pytest_cache
