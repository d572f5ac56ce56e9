"""The rendered book as a reader sees it: every page opened in headless Chromium.

Chromium is Debian's ``chromium`` package; ``.ci/run`` installs it with apt when it is missing.
The check of every page of the tiny book is in ``test_book`` (with the other tests that read
that book); this file tests the check itself.
"""

from __future__ import annotations

import pytest

from spared_utils import browser

from .conftest import skip_or_fail_in_ci

CHROMIUM = browser.find_chromium()
needs_chromium = pytest.mark.usefixtures("chromium")


@pytest.fixture
def chromium() -> str:
    """The Chromium executable; without one the test is skipped, or fails under CI."""
    if CHROMIUM is None:
        skip_or_fail_in_ci("chromium not installed: apt-get install chromium (Debian; .ci/run does it as root), "
                           "or set $CHROMIUM to a Chromium/Chrome executable")
    return CHROMIUM


def test_static_check_finds_broken_links_missing_images_and_tracebacks(tmp_path):
    html = tmp_path / "html"
    (html / "chapters").mkdir(parents=True)
    (html / "_images").mkdir()
    (html / "_images" / "ok.png").write_bytes(b"png")
    (html / "index.html").write_text(
        '<html><body><h1 id="top">Book</h1><a href="chapters/a.html#part">a</a>'
        '<a href="#top">top</a><a href="https://example.org/x">out</a></body></html>')
    (html / "chapters" / "a.html").write_text(
        '<html><body><h2 id="part">A</h2><img src="../_images/ok.png">'
        '<a href="../index.html#top">home</a></body></html>')
    assert browser.static_problems(html) == {}
    (html / "chapters" / "b.html").write_text(
        '<html><body><img src="../_images/gone.png"><a href="a.html#nowhere">x</a>'
        '<a href="c.html">c</a><div class="cell_output docutils container">'
        '<div class="output traceback highlight-ipythontb">ValueError: boom</div></div></body></html>')
    problems = browser.static_problems(html)
    assert list(problems) == ["chapters/b.html"]
    found = " | ".join(problems["chapters/b.html"])
    for expected in ("gone.png", "'nowhere'", "c.html", "error output cell"):
        assert expected in found, f"{expected!r} not reported: {found}"


@needs_chromium
def test_browser_sees_a_missing_image(tmp_path):
    """A page whose ``<img>`` file does not decode is reported, and each page gets a screenshot."""
    from PIL import Image

    html = tmp_path / "_build" / "html"
    html.mkdir(parents=True)
    Image.new("RGB", (40, 30), "teal").save(html / "fig.png")
    (html / "index.html").write_text('<html><body><p>fine</p><img src="fig.png"></body></html>')
    (html / "bad.html").write_text('<html><body><p>broken</p><img src="nothing.png"></body></html>')
    reports = {r.page: r for r in browser.browse(html)}
    assert reports["index.html"].problems == []
    assert reports["index.html"].images[0][1:3] == (40, 30)
    assert any("nothing.png" in p for p in reports["bad.html"].problems)
    assert (tmp_path / "_build" / "screenshots" / "bad.png").stat().st_size > 0


@needs_chromium
def test_playwright_drives_chromium_and_reports_stderr_machine_paths_and_wide_tables(tmp_path):
    """Playwright's Python package with Debian's chromium: a warning on stderr, an output naming
    the build machine's folder and a table wider than the column are each a problem; a table
    folded in a closed ``<details>`` (the full table below a short one) is not."""
    import playwright

    assert playwright.__name__ == "playwright"
    html = tmp_path / "_build" / "html"
    html.mkdir(parents=True)
    wide = "".join(f"<th>column_{k}</th>" for k in range(40))
    (html / "index.html").write_text(
        '<html><body><main><article class="bd-article" style="width:600px"><p>page</p>'
        '<div class="cell_output"><div class="output stderr"><pre>FutureWarning: going away</pre></div>'
        f'<div class="output text_plain"><pre>wrote {tmp_path}/x.h5ad</pre></div>'
        f'<table><tr>{wide}</tr></table>'
        f'<details><summary>all columns</summary><table><tr>{wide}{wide}</tr></table></details>'
        '</div></article></main></body></html>')
    (report,) = browser.browse(html)
    assert report.explorers == [] and report.figure_numbers == []
    assert report.stderr == ["FutureWarning: going away"]
    assert report.machine_paths == [f"{tmp_path}/x.h5ad"]
    assert len(report.wide_tables) == 1 and "600-px column" in report.wide_tables[0]
    assert len(report.problems) == 3
    assert browser.machine_paths("see data/benchmark/results.csv and chapter 02") == []
    assert browser.machine_paths("in /usr/lib/python3/site-packages/x.py") == ["/usr/lib/python3/site-packages/x.py"]


def test_the_check_takes_the_build_folder_or_its_html_and_refuses_a_missing_book_in_one_line(tmp_path, capsys):
    from spared_utils import browser

    (tmp_path / "_build" / "html").mkdir(parents=True)
    assert browser.book_html(tmp_path / "_build") is None
    assert browser.main([str(tmp_path / "_build")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "make book" in err[0] and "_build" in err[0]
    (tmp_path / "_build" / "html" / "index.html").write_text("<html></html>")
    assert browser.book_html(tmp_path / "_build") == tmp_path / "_build" / "html"
    assert browser.book_html(tmp_path / "_build" / "html") == tmp_path / "_build" / "html"
