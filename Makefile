# One entry point. `make book` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATASET ?= synthetic

.PHONY: book lab test test-fast env sync chapters benchmark clean help
JOBS ?= 2

help:
	@echo "make book   # create .venv, install, run every chapter with papermill, render _build/html"
	@echo "make test   # create .venv, install, run the test suite (what CI runs)"
	@echo "make lab    # open the chapters in JupyterLab with the project's environment"
	@echo "make benchmark  # run workflow/benchmark.yml (hours; resumable) and publish it to data/benchmark"

# The environment (torch's CUDA build among it) needs about 8 GB; pip's own message on a full
# disk comes minutes later and names neither, so look first.
$(STAMP): pyproject.toml
	@free=$$(df -Pk . | awk 'NR==2 {print int($$4/1048576)}'); if [ "$$free" -lt 9 ]; then \
	  echo "error: $(VENV) needs about 9 GB free on $$(df -P . | awk 'NR==2 {print $$6}'), which has $$free GB; free some space and run make again" >&2; exit 1; fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

env: $(STAMP)

book: $(STAMP)
	$(BIN)/python -m spared_utils.book --dataset $(DATASET)

# JupyterLab on the chapters, in the project's environment (jupytext opens each .py as a
# notebook; its pairing keeps the .ipynb in step). JupyterLab is installed on first use.
lab: $(STAMP)
	@$(BIN)/python -c "import jupyterlab" 2>/dev/null || $(BIN)/pip install --quiet -e '.[dev,lab]'
	$(BIN)/jupyter lab --notebook-dir=. chapters/00_tour.py

# pytest's exit code 5 ("no tests collected") is non-zero, so it fails here as it should.
# Two worker processes (pytest-xdist), one per core of the CI machine, each taking whole files:
# the tests of the tiny book are one file (tests/test_book.py), so one worker builds it, once.
test: $(STAMP)
	$(BIN)/python -m pytest -m "slow or not slow" -p no:cacheprovider -n 2 --dist loadfile

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

# The benchmark the book publishes: every notebook of workflow/benchmark.yml not yet finished
# (JOBS at once), then its rows and provenance written to data/benchmark/ in one step. Resumable:
# run it again after an interruption. Chapters 90 and 91 read data/benchmark/results.csv.
benchmark: $(STAMP)
	$(BIN)/python -m spared_utils.batch workflow/benchmark.yml --results-dir results/benchmark --jobs $(JOBS) --publish

# Re-pair every chapter's .ipynb with its .py source (the .py is the one to edit).
sync: $(STAMP)
	$(BIN)/jupytext --sync chapters/[0-9][0-9]_*.py

# Write the predictor chapters (10-20) from chapters/templates/predictor.py, the records and
# chapters/predictors/<name>.md (edit those, not the generated chapters).
chapters: $(STAMP)
	$(BIN)/python -m spared_utils.template

clean:
	rm -rf _build results processed
