"""Chapters: paired with their notebooks, one parameters cell, runnable through papermill."""

from __future__ import annotations

from pathlib import Path

import jupytext
import nbformat
import pytest

from spared_utils import run

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.py"))
SYNC_HINT = "run `make sync` (jupytext --sync chapters/*.py) and commit both files"


def _cells(nb):
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def test_there_are_chapters():
    assert CHAPTERS, "no chapters/NN_name.py found"


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.stem)
def test_py_and_ipynb_are_paired_and_in_sync(source):
    ipynb = source.with_suffix(".ipynb")
    assert ipynb.is_file(), f"{ipynb.name} is missing: {SYNC_HINT}"
    from_py = jupytext.read(source)
    from_nb = nbformat.read(ipynb, as_version=4)
    assert _cells(from_py) == _cells(from_nb), f"{source.name} and {ipynb.name} differ: {SYNC_HINT}"
    assert all(not c.get("outputs") for c in from_nb.cells if c.cell_type == "code"), (
        f"{ipynb.name} is committed with outputs; clear them (jupytext --sync regenerates it without)"
    )


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.stem)
def test_one_parameters_cell_with_plain_literals(source):
    params = run.chapter_parameters(source)
    assert params.get("dataset") == "synthetic", "the default dataset is the embedded one"
    assert all(isinstance(v, (str, int, float, bool, type(None), list)) for v in params.values())
    nb = jupytext.read(source)
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert "parameters" in first_code.metadata.get("tags", []), "the parameters cell must be the first code cell"
    assert nb.cells[0].cell_type == "markdown" and "What it needs" in nb.cells[0].source


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_ends_with_what_we_saw(source):
    text = source.read_text()
    assert "What we saw" in text, f"{source.name} should end with a 'What we saw' summary of measured numbers"
