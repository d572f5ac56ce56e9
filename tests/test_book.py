"""The whole book: every chapter executes with papermill (tiny parameters) and renders to HTML."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from spared_utils.book import chapters_in_toc

ROOT = Path(__file__).resolve().parents[1]


def _snapshot(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` with its modification time (empty if the folder is absent)."""
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()} if folder.is_dir() else {}


@pytest.mark.slow
def test_book_builds_with_every_chapter(tmp_path, monkeypatch):
    build_dir = tmp_path / "_build"
    # SPARED_RESULTS_DIR and SPARED_PROCESSED_DIR point into tmp (conftest): the project's own
    # results/ and processed/ (git-ignored, so git status cannot tell) must not be touched.
    own = {name: _snapshot(ROOT / name) for name in ("results", "processed")}
    # one batch run (the tour at seed 1) so that the book's generated "Results" part renders too
    plan = tmp_path / "plan.yml"
    plan.write_text("datasets: [synthetic_tiny]\nchapters: [00_tour]\nseeds: [1]\n")
    batch = subprocess.run([sys.executable, "-m", "spared_utils.batch", str(plan)], cwd=ROOT, capture_output=True,
                           text=True, timeout=600)
    assert batch.returncode == 0, batch.stdout[-2000:] + batch.stderr[-3000:]
    proc = subprocess.run(
        [sys.executable, "-m", "spared_utils.book", "--params", str(ROOT / "tests" / "chapter_params.yml"),
         "--build-dir", str(build_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    for name, before in own.items():
        after = _snapshot(ROOT / name)
        written = sorted(set(after) - set(before)) + sorted(k for k in before if after.get(k) != before[k])
        assert written == [], f"the book wrote into the project's {name}/ despite SPARED_*_DIR: {written[:5]}"
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
