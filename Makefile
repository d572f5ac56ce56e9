# One entry point. `make book` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATASET ?= synthetic

.PHONY: book test test-fast env sync clean help

help:
	@echo "make book   # create .venv, install, run every chapter with papermill, render _build/html"
	@echo "make test   # create .venv, install, run the test suite (what CI runs)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

env: $(STAMP)

book: $(STAMP)
	$(BIN)/python -m spared_utils.book --dataset $(DATASET)

# pytest's exit code 5 ("no tests collected") is non-zero, so it fails here as it should.
test: $(STAMP)
	$(BIN)/python -m pytest -m "slow or not slow" -p no:cacheprovider

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

# Re-pair every chapter's .ipynb with its .py source (the .py is the one to edit).
sync: $(STAMP)
	$(BIN)/jupytext --sync chapters/[0-9][0-9]_*.py

clean:
	rm -rf _build results processed
