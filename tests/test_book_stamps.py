"""A second build reuses the executed chapters that nothing changed (spared_utils.book stamps)."""

from __future__ import annotations

from pathlib import Path

import pytest

from spared_utils import book


#: The parameters cell every chapter opens with (the build checks values against it first).
PARAMETERS = '# %% tags=["parameters"]\ndataset = "synthetic"\nseed = 0\n'


@pytest.fixture
def fake_book(tmp_path, monkeypatch):
    """A book root with two chapters and an ``execute`` that records its calls."""
    root = tmp_path / "book"
    (root / "chapters").mkdir(parents=True)
    (root / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n"
                                   "  - file: chapters/00_a\n  - file: chapters/01_b\n")
    for name in ("00_a", "01_b"):
        (root / "chapters" / f"{name}.py").write_text(PARAMETERS + f"# %%\nname = {name!r}\n")
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
    (root / "chapters" / "01_b.py").write_text(PARAMETERS + "# %%\nname = 'changed'\n")
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

    (root / "chapters" / "00_a.py").write_text(PARAMETERS + "# %%\nraise SystemExit\n")
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


def test_a_wrong_dataset_or_parameter_is_refused_before_any_chapter_runs(fake_book):
    root, calls = fake_book
    with pytest.raises(book.ChapterError, match="iterations"):
        _run(root, {"01_b": {"iterations": 3}})
    with pytest.raises(book.ChapterError, match="seed"):
        _run(root, {"01_b": {"seed": "abc"}})
    with pytest.raises(book.ChapterError, match="no_such_dataset"):
        _run(root, {"00_a": {"dataset": "no_such_dataset"}})
    assert calls == [], "a chapter ran before the parameters of every chapter were checked"


def test_parts_run_in_order_and_chapters_of_a_part_together(tmp_path, monkeypatch):
    """With ``jobs`` > 1 the chapters of a part run at once, each in its own process with the cores
    shared out; the next part waits for them (it may read what they wrote)."""
    import threading
    import time

    root = tmp_path / "book"
    (root / "chapters").mkdir(parents=True)
    (root / "_toc.yml").write_text(
        "format: jb-book\nroot: intro\nparts:\n"
        "  - caption: One\n    chapters:\n      - file: chapters/00_a\n      - file: chapters/01_b\n"
        "  - caption: Two\n    chapters:\n      - file: chapters/90_c\n")
    for name in ("00_a", "01_b", "90_c"):
        (root / "chapters" / f"{name}.py").write_text(PARAMETERS)
    assert book.chapter_parts(root) == [["00_a", "01_b"], ["90_c"]]
    events, lock = [], threading.Lock()

    def apart(chapter, dataset, parameters, threads):
        with lock:
            events.append(("start", chapter, threads))
        time.sleep(0.3)
        out = book.output_path(chapter, dataset)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("{}")
        with lock:
            events.append(("end", chapter, threads))
        return 0, ""

    def here(chapter, dataset, parameters, progress=True):
        events.append(("start", chapter, None))
        out = book.output_path(chapter, dataset)
        out.write_text("{}")
        events.append(("end", chapter, None))
        return out

    monkeypatch.setattr(book, "_execute_apart", apart)
    monkeypatch.setattr(book, "execute", here)
    monkeypatch.setattr(book.os, "cpu_count", lambda: 4)
    done = book.execute_all("synthetic_tiny", {}, root, jobs=2)
    assert list(done) == ["00_a", "01_b", "90_c"]
    starts = [e for e in events if e[0] == "start"]
    assert {e[1] for e in starts[:2]} == {"00_a", "01_b"}, "the first part's chapters run together"
    assert all(e[2] == 2 for e in starts[:2]), "two chapters at once share four cores out"
    assert events.index(("start", "90_c", None)) > max(events.index(e) for e in events if e[0] == "end"
                                                      and e[1] != "90_c"), "the second part waited"
    assert all(book.stamp_path(p).is_file() for p in done.values())


def test_a_chapter_that_fails_in_a_parallel_part_stops_the_build_and_keeps_no_stamp(fake_book, monkeypatch):
    root, _ = fake_book
    monkeypatch.setattr(book, "_execute_apart",
                        lambda chapter, *a: (1, "boom") if chapter == "00_a" else (0, ""))
    book.output_path("01_b", "synthetic_tiny").parent.mkdir(parents=True, exist_ok=True)
    book.output_path("01_b", "synthetic_tiny").write_text("{}")
    with pytest.raises(RuntimeError, match="00_a failed"):
        book.execute_all("synthetic_tiny", {}, root, jobs=2)
    assert not book.stamp_path(book.output_path("00_a", "synthetic_tiny")).exists()
    assert book.stamp_path(book.output_path("01_b", "synthetic_tiny")).exists()
