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


def test_every_chapter_file_is_in_the_toc_and_every_toc_chapter_exists():
    from spared_utils.book import chapters_in_toc

    in_toc = chapters_in_toc(ROOT)
    on_disk = [p.stem for p in CHAPTERS]
    assert len(in_toc) >= 7, f"the table of contents lists only {in_toc}"
    assert sorted(in_toc) == on_disk, (f"_toc.yml and chapters/ disagree: only in the toc {sorted(set(in_toc) - set(on_disk))}, "
                                        f"only on disk {sorted(set(on_disk) - set(in_toc))}")


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
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[1].metadata.get("tags", []), (
        "the parameters cell must be the first code cell after the setup cell")
    assert nb.cells[0].cell_type == "markdown" and "What it needs" in nb.cells[0].source


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.stem)
def test_first_code_cell_is_the_setup_cell(source):
    """The same setup cell opens every chapter (Colab, Binder): it installs the project from
    ``repository.url`` of ``_config.yml`` when ``spared_utils`` is missing, and is folded away in
    the HTML. ``tests/test_setup_cell.py`` runs it in an environment without the project."""
    from spared_utils.book import SETUP_TAGS, repository_url, setup_cell

    first = next(c for c in jupytext.read(source).cells if c.cell_type == "code")
    assert first.source == setup_cell(ROOT), (
        f"{source.name}: the first code cell differs from spared_utils.book.setup_cell(); paste it "
        "as is (tags " + repr(SETUP_TAGS) + ")")
    assert first.metadata.get("tags") == SETUP_TAGS
    assert repository_url(ROOT) in first.source


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.stem)
def test_opening_says_what_it_shows_needs_writes_and_its_runtime(source):
    opening = jupytext.read(source).cells[0].source
    for label in ("What it shows", "What it needs", "What it writes", "Measured runtime"):
        assert f"**{label}:**" in opening, f"{source.name}: the opening lacks **{label}:**"
    runtime = opening.split("**Measured runtime:**")[1].split("\n")[0]
    assert "CPU" in runtime or "seconds" in runtime, f"{source.name}: say where the runtime was measured"


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.stem)
def test_every_parameter_says_what_it_means(source):
    """Each parameter carries a comment, on its line or on the line(s) just above it."""
    import ast

    cell = next(c for c in jupytext.read(source).cells if "parameters" in c.metadata.get("tags", []))
    lines = cell.source.splitlines()
    bare = []
    for node in ast.parse(cell.source).body:
        line = lines[node.lineno - 1]
        above = lines[node.lineno - 2] if node.lineno > 1 else ""
        if "#" not in line.split("=", 1)[1] and not above.lstrip().startswith("#"):
            bare.append(node.targets[0].id)
    assert bare == [], f"{source.name}: parameters without a comment saying what they mean: {bare}"
    # papermill reads the same names (its parser gives up on a line whose comment holds "=")
    from papermill.translators import PythonTranslator

    seen = [p.name for p in PythonTranslator.inspect(nbformat.v4.new_code_cell(cell.source))]
    assert seen == list(run.chapter_parameters(source)), f"{source.name}: papermill reads {seen}"


# Chapters whose body other branches are editing; their lines are wrapped when those land.
WIDTH_PENDING = set()


@pytest.mark.parametrize("source", [
    pytest.param(p, marks=pytest.mark.xfail(strict=True, reason="long lines wrapped after merge"))
    if p.stem in WIDTH_PENDING else p for p in CHAPTERS], ids=lambda p: p.stem)
def test_code_lines_fit_the_page(source):
    """Chapter code stays within the page width of the HTML (88 characters a line)."""
    nb = jupytext.read(source)
    long = [line for c in nb.cells if c.cell_type == "code" for line in c.source.splitlines()
            if len(line) > 88]
    assert long == [], f"{source.name}: {len(long)} code lines over 88 characters, e.g. {long[:2]}"


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_ends_with_what_we_saw(source):
    """The last section of every chapter is "What we saw", written by its last code cell from
    numbers of the run (not typed in a markdown cell)."""
    nb = jupytext.read(source)
    headings = [(i, line.lstrip("#").strip()) for i, cell in enumerate(nb.cells)
                for line in cell.source.splitlines()
                if (cell.cell_type == "markdown" and line.startswith("## ")) or "## What we saw" in line]
    assert headings, f"{source.name} has no section"
    last_index, last = headings[-1]
    assert "What we saw" in last, f"{source.name}: the last section is {last!r}, not 'What we saw'"
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    assert code[-1] >= last_index, f"{source.name}: no code cell writes the 'What we saw' numbers"
    assert any(token in nb.cells[code[-1]].source for token in ("{", "%", "what_we_saw(")), (
        f"{source.name}: the last code cell must format measured numbers (or call ChapterRun.what_we_saw, "
        "which writes them from the run)")

@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.stem)
def test_code_cells_are_short(source):
    """Chapters orchestrate: a code cell longer than ~15 lines is logic that belongs in spared_utils."""
    nb = jupytext.read(source)
    long = [(i, len(c.source.splitlines())) for i, c in enumerate(nb.cells)
            if c.cell_type == "code" and "parameters" not in c.metadata.get("tags", [])
            and len(c.source.splitlines()) > 18]
    assert long == [], f"{source.name}: code cells (index, lines) over 18 lines: {long}"
