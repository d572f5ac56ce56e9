"""A second build reuses the executed chapters that nothing changed (spared_utils.book stamps)."""

from __future__ import annotations

from pathlib import Path

import pytest

from spared_utils import book


@pytest.fixture
def fake_book(tmp_path, monkeypatch):
    """A book root with two chapters and an ``execute`` that records its calls."""
    root = tmp_path / "book"
    (root / "chapters").mkdir(parents=True)
    (root / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n"
                                   "  - file: chapters/00_a\n  - file: chapters/01_b\n")
    for name in ("00_a", "01_b"):
        (root / "chapters" / f"{name}.py").write_text(f"# %%\nname = {name!r}\n")
    calls: list[tuple[str, str, dict]] = []

    def execute(chapter, dataset, parameters, progress=True):
        calls.append((chapter, dataset, dict(parameters)))
        out = book.output_path(chapter, dataset)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("{}")
        return out

    monkeypatch.setattr(book, "execute", execute)
    return root, calls


def _run(root: Path, params: dict | None = None, force: bool = False) -> None:
    book.execute_all("synthetic_tiny", params or {}, root, force=force)


def test_unchanged_chapters_are_reused_and_changed_ones_rerun(fake_book):
    root, calls = fake_book
    _run(root)
    assert [c[0] for c in calls] == ["00_a", "01_b"]
    calls.clear()
    _run(root)
    assert calls == [], "nothing changed, yet chapters were executed again"
    (root / "chapters" / "01_b.py").write_text("# %%\nname = 'changed'\n")
    _run(root)
    assert [c[0] for c in calls] == ["01_b"], "only the edited chapter should re-run"
    calls.clear()
    _run(root, {"00_a": {"seed": 3}})
    assert calls == [("00_a", "synthetic_tiny", {"seed": 3})], "a new parameter re-runs its chapter"
    calls.clear()
    _run(root, {"00_a": {"seed": 3}}, force=True)
    assert [c[0] for c in calls] == ["00_a", "01_b"]


def test_package_change_or_lost_notebook_reruns(fake_book, monkeypatch):
    root, calls = fake_book
    _run(root)
    calls.clear()
    book.output_path("00_a", "synthetic_tiny").unlink()
    _run(root)
    assert [c[0] for c in calls] == ["00_a"], "a missing executed notebook must be re-created"
    calls.clear()
    monkeypatch.setattr(book, "package_digest", lambda: "another version")
    _run(root)
    assert [c[0] for c in calls] == ["00_a", "01_b"], "a package change re-runs every chapter"


def test_failed_chapter_leaves_no_stamp(fake_book, monkeypatch):
    root, calls = fake_book
    _run(root)

    def failing(chapter, dataset, parameters, progress=True):
        raise RuntimeError("cell failed")

    (root / "chapters" / "00_a.py").write_text("# %%\nraise SystemExit\n")
    monkeypatch.setattr(book, "execute", failing)
    with pytest.raises(RuntimeError):
        _run(root)
    assert not book.stamp_path(book.output_path("00_a", "synthetic_tiny")).exists()


def test_package_digest_follows_the_sources(tmp_path, monkeypatch):
    from spared_utils import paths

    package = tmp_path / "pkg" / "spared_utils"
    package.mkdir(parents=True)
    (package / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(paths, "PACKAGE_DIR", package)
    first = book.package_digest()
    assert first == book.package_digest()
    (package / "a.py").write_text("x = 2\n")
    second = book.package_digest()
    assert second != first, "an edited module must change the digest"
    (package / "browser.py").write_text("# tooling no chapter runs\n")
    assert book.package_digest() == second, "book tooling does not change what chapters compute"
