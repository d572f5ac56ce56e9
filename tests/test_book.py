"""The whole book: every chapter executes with papermill (tiny parameters), renders to HTML, and
shows right when its pages are opened in Chromium (driven by Playwright).

Every test that reads the tiny book (the session fixture ``tiny_book``) lives in this file:
``make test`` hands whole files to its two workers (pytest-xdist, ``--dist loadfile``), so one
worker builds the book, once (``tests/conftest.py`` refuses a test elsewhere that asks for it).
"""

from __future__ import annotations

import inspect
import json
import re
import shutil
from pathlib import Path

import nbformat
import pytest

from spared_utils import browser
from spared_utils.book import chapters_in_toc

from .test_browser import chromium, needs_chromium  # noqa: F401 - the fixture the page check uses
from .test_chapters import WIDTH_PENDING

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_book_builds_with_every_chapter(tiny_book):
    assert tiny_book.returncode == 0, tiny_book.log
    for name, written in tiny_book.written.items():
        assert written == [], f"the book wrote into the project's {name}/ despite SPARED_*_DIR: {written[:5]}"
    build_dir = tiny_book.build_dir
    html = build_dir / "html"
    index = html / "index.html"
    assert index.is_file()
    chapters = chapters_in_toc(ROOT)
    assert "00_tour" in chapters
    for chapter in chapters:
        page = html / "chapters" / f"{chapter}.html"
        assert page.is_file(), f"{page} missing"
        text = page.read_text()
        assert "Traceback" not in text
        # myst-nb marks each cell with its tags (class tag_<tag>): the chapter's own parameters cell
        # is shown, papermill's injected one is not
        assert "tag_parameters" in text, f"{chapter}.html lost its parameters cell"
        assert "tag_injected-parameters" not in text, f"{chapter}.html shows papermill's injected cell"
        n_img = len(re.findall(r"<img [^>]*src=\"[^\"]+\.png\"", text))
        assert n_img >= 1, f"{chapter}.html shows no figure"
    results_index = html / "results" / "synthetic_tiny" / "index.html"
    assert results_index.is_file(), "the Results part (batch notebooks) was not rendered"
    assert 'href="00_tour-1.html"' in results_index.read_text(), "the dataset page links its runs"
    run_page = (html / "results" / "synthetic_tiny" / "00_tour-1.html").read_text()
    assert len(re.findall(r"<img [^>]*src=\"[^\"]+\.png\"", run_page)) >= 4 and "Traceback" not in run_page
    assert "tag_injected-parameters" not in run_page
    tour = (html / "chapters" / "00_tour.html").read_text()
    assert len(re.findall(r"<img [^>]*src=\"[^\"]+\.png\"", tour)) >= 4
    assert "What we saw" in tour
    assert "Mejia" in tour, "citations render"
    for chapter in chapters:
        nb = nbformat.read(build_dir / "src" / "chapters" / f"{chapter}.ipynb", as_version=4)
        assert any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{chapter} was not executed"


@pytest.mark.slow
def test_book_pages_for_readers(tiny_book):
    """Citations resolve in the bibliography page, the intro shows the pipeline figure, chapters
    carry launch buttons, and the explorers show a static figure in the HTML."""
    assert tiny_book.returncode == 0, tiny_book.log
    html = tiny_book.html
    log = (tiny_book.build_dir / "jupyter-book.log").read_text()
    assert "could not find bibtex key" not in log, "a citation key is missing from references.bib"
    bibliography = (html / "bibliography.html").read_text()
    assert "enhancing gene expression prediction" in bibliography.lower()
    tour = (html / "chapters" / "00_tour.html").read_text()
    assert 'href="../bibliography.html#id' in tour, "citations link to the bibliography page"
    intro = (html / "intro.html").read_text()
    assert 'src="_images/pipeline.svg"' in intro or "pipeline.svg" in intro
    # the front page answers the benchmark's questions from the published store (book.benchmark_answers)
    assert "Does completion help?" in intro and "Does a better completion help more?" in intro
    assert "From the published benchmark (" in intro and "_benchmark_answers" not in intro
    assert "colab.research.google.com/github/spared-book/spared-book" in tour, "Colab launch button"
    assert "mybinder.org" in tour, "Binder launch button"
    assert "tag_setup" in tour and "tag_hide-cell" in tour, "the setup cell is folded away"
    for chapter in ("02_completion", "10_shufflenet"):
        nb = nbformat.read(tiny_book.build_dir / "src" / "chapters" / f"{chapter}.ipynb", as_version=4)
        explorer = [o for c in nb.cells if "su.pl.explore_" in c.source for o in c.get("outputs", [])]
        assert any("image/png" in o.get("data", {}) for o in explorer), f"{chapter}: no static explorer view"


@pytest.mark.slow
def test_no_figure_of_the_book_prints_a_label_over_another(tiny_book):
    """Every ``su.pl`` call the chapters made while the book was built (on the embedded data) was
    checked for texts drawn over each other (``SPARED_FIGURE_CHECK``); with the benchmark figures
    that test_plots draws at the published benchmark's size, every ``su.pl`` function is covered."""
    from spared_utils import plots
    from tests.test_plots import BENCHMARK_FIGURES

    if tiny_book.figures is None:
        pytest.skip("a reused build (SPARED_TEST_BOOK) has no figure log")
    assert tiny_book.returncode == 0, tiny_book.log
    calls = [json.loads(line) for line in tiny_book.figures.read_text().splitlines()]
    crowded = {c["function"]: c["overlaps"][:3] for c in calls if c["overlaps"]}
    assert crowded == {}, f"labels drawn over each other: {crowded}"
    functions = {n for n in plots.__all__ if inspect.isfunction(getattr(plots, n)) and n != "spot_size"}
    unchecked = functions - {c["function"] for c in calls} - set(BENCHMARK_FIGURES)
    assert unchecked == set(), f"su.pl functions no chapter of the tiny book draws: {sorted(unchecked)}"


@pytest.mark.slow
@needs_chromium
def test_every_page_of_the_book_in_chromium(tiny_book):
    assert tiny_book.returncode == 0, tiny_book.log
    html = tiny_book.html
    static = browser.static_problems(html)
    assert static == {}, f"broken links, missing files or error outputs: {static}"
    shots = tiny_book.build_dir / "screenshots"
    shutil.rmtree(shots, ignore_errors=True)
    reports = browser.browse(html, shots)
    pages = browser.html_pages(html)
    assert len(reports) == len(pages) >= 16
    bad = {r.page: r.problems for r in reports if r.problems}
    assert bad == {}, f"pages that do not show right in Chromium: {bad}"
    by_page = {r.page: r for r in reports}
    assert by_page["index.html"].redirect == "intro.html"
    for page, report in by_page.items():
        if report.redirect:
            continue
        assert report.screenshot is not None and report.screenshot.stat().st_size > 1000, page
        if page.startswith("chapters/"):
            figures = [img for img in report.images if "_images/" in img[0] and img[0].endswith(".png")]
            assert figures, f"{page} shows no figure"
            assert all(min(img[3:]) > 0 for img in figures), f"{page}: a figure laid out with zero size"
    wide = {page: r.wide_code for page, r in by_page.items()
            if r.wide_code and not any(name in page for name in WIDTH_PENDING)}
    assert wide == {}, f"code cells wider than the page (longest line of each): {wide}"
    # figures are numbered per chapter (Fig. <chapter>.<figure>), and every chapter's first is .1
    numbers = {page: r.figure_numbers for page, r in by_page.items() if r.figure_numbers and page.startswith("chapters/")}
    assert numbers, "no numbered figure caption found"
    for page, found in numbers.items():
        assert all(re.fullmatch(r"Fig\. \d+\.\d+", n.strip()) for n in found), f"{page}: {found}"
        assert found[0].strip().endswith(".1"), f"{page}: numbering does not restart per chapter: {found}"
    # the explorers answer a reader without a kernel (every one changed its view: else a problem above)
    assert sum(len(r.explorers) for r in reports) >= 2, "no kernel-free explorer found in the book"
    overview = [img for img in by_page["intro.html"].images if img[0].endswith("pipeline.svg")]
    assert overview and min(overview[0][1:]) > 0, "the intro's overview figure"
