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


def _parted_book(tmp_path: Path, parts: dict[str, list[str]]) -> Path:
    root = tmp_path / "book"
    (root / "chapters").mkdir(parents=True)
    toc = "format: jb-book\nroot: intro\nparts:\n"
    for caption, names in parts.items():
        toc += f"  - caption: {caption}\n    chapters:\n" + "".join(f"      - file: chapters/{n}\n" for n in names)
        for name in names:
            (root / "chapters" / f"{name}.py").write_text(PARAMETERS)
    (root / "_toc.yml").write_text(toc)
    return root


def _recording_workers(monkeypatch, seconds: dict[str, float], fail: tuple[str, ...] = ()):
    """Chapters run apart as sleeps of ``seconds[chapter]`` (``fail`` exit 1); returns the events."""
    import threading
    import time

    events, lock = [], threading.Lock()

    def apart(chapter, dataset, parameters, threads):
        with lock:
            events.append(("start", chapter, threads))
        time.sleep(seconds.get(chapter, 0.1))
        if chapter in fail:
            return 1, "boom"
        out = book.output_path(chapter, dataset)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("{}")
        with lock:
            events.append(("end", chapter, threads))
        return 0, ""

    monkeypatch.setattr(book, "_execute_apart", apart)
    monkeypatch.setattr(book.os, "cpu_count", lambda: 4)
    return events


def test_a_part_waits_only_for_the_parts_it_reads_and_an_unlisted_part_for_all_before_it(tmp_path, monkeypatch):
    root = _parted_book(tmp_path, {"A": ["00_a"], "B": ["02_b"], "C": ["10_c"], "D": ["99_d"], "E": ["90_e"]})
    monkeypatch.setattr(book, "PART_NEEDS", {"A": (), "B": (), "C": ("B",), "D": ()})
    assert book.chapter_parts(root)[2] == ("C", ["10_c"])
    assert book.chapter_needs(root) == {"00_a": set(), "02_b": set(), "10_c": {"02_b"}, "99_d": set(),
                                        "90_e": {"00_a", "02_b", "10_c", "99_d"}}
    assert book.waited_for(book.chapter_needs(root)) == {"00_a": 1, "02_b": 2, "10_c": 1, "99_d": 1, "90_e": 0}


def test_the_chapter_most_others_wait_for_runs_first_alone_on_every_core(tmp_path, monkeypatch):
    """With two workers: the long chapter others wait for (02_b) starts first although it is not
    first in the table of contents, alone and with all four cores; then the others run two at a
    time, the one that reads 02_b only after it."""
    root = _parted_book(tmp_path, {"A": ["00_a", "01_b"], "B": ["02_b"], "C": ["10_c"], "D": ["99_d"]})
    monkeypatch.setattr(book, "PART_NEEDS", {"A": (), "B": (), "C": ("B",), "D": ()})
    events = _recording_workers(monkeypatch, {"02_b": 0.5})
    # the order the scheduler hands chapters to the pool (two workers' own "start" records may
    # interleave either way, so they cannot show it)
    import concurrent.futures

    submitted, submit = [], concurrent.futures.ThreadPoolExecutor.submit
    monkeypatch.setattr(concurrent.futures.ThreadPoolExecutor, "submit",
                        lambda pool, fn, item: submitted.append(item[0]) or submit(pool, fn, item))
    done = book.execute_all("synthetic_tiny", {}, root, jobs=2)
    assert list(done) == ["00_a", "01_b", "02_b", "10_c", "99_d"], "the table of contents' order"
    assert events[:2] == [("start", "02_b", 4), ("end", "02_b", 4)], events
    assert submitted[0] == "02_b" and submitted[1:3] == ["00_a", "01_b"], \
        "then the table of contents' order, two at a time"
    starts = [e[1] for e in events if e[0] == "start"]
    assert sorted(starts[1:3]) == ["00_a", "01_b"], "both started before anything else"
    threads = {chapter: n for _, chapter, n in events}
    assert threads == {"02_b": 4, "00_a": 2, "01_b": 2, "10_c": 2, "99_d": 2}, \
        "two chapters at once share four cores out; the one others wait for has all four"
    assert all(book.stamp_path(p).is_file() for p in done.values())


def test_no_chapter_gets_every_core_when_several_gate_the_same_number(tmp_path, monkeypatch):
    root = _parted_book(tmp_path, {"A": ["00_a", "01_b"], "C": ["10_c"]})
    monkeypatch.setattr(book, "PART_NEEDS", {"A": (), "C": ("A",)})
    events = _recording_workers(monkeypatch, {})
    book.execute_all("synthetic_tiny", {}, root, jobs=2)
    assert {chapter: n for _, chapter, n in events} == {"00_a": 2, "01_b": 2, "10_c": 2}


def test_a_failed_chapter_skips_those_waiting_for_it_and_not_the_others(tmp_path, monkeypatch):
    root = _parted_book(tmp_path, {"A": ["00_a"], "B": ["02_b"], "C": ["10_c"], "D": ["99_d"]})
    monkeypatch.setattr(book, "PART_NEEDS", {"A": (), "B": (), "C": ("B",), "D": ()})
    events = _recording_workers(monkeypatch, {}, fail=("02_b",))
    with pytest.raises(RuntimeError) as error:
        book.execute_all("synthetic_tiny", {}, root, jobs=2)
    assert "chapter 02_b failed" in str(error.value)
    assert "chapter 10_c was not run: it waits for 02_b" in str(error.value)
    assert {e[1] for e in events if e[0] == "end"} == {"00_a", "99_d"}
    assert {chapter: n for _, chapter, n in events} == {"02_b": 4, "00_a": 2, "99_d": 2}
    assert book.stamp_path(book.output_path("99_d", "synthetic_tiny")).is_file()


def test_every_part_of_the_book_says_what_it_reads():
    """A part missing from PART_NEEDS (a new or renamed caption) would silently wait for all before it."""
    from spared_utils import paths

    root = paths.project_root()
    parts = book.chapter_parts(root)
    assert {caption for caption, _ in parts} <= book.PART_NEEDS.keys()
    needs = book.chapter_needs(root)
    predictors = next(names for caption, names in parts if caption == "Prediction")
    assert set(predictors) <= needs["90_benchmark"] and "02_completion" in needs["10_shufflenet"]
    assert needs["95_your_slide"] == {"02_completion", "10_shufflenet"}


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


def test_the_front_page_answers_come_from_the_published_store_only(tmp_path, monkeypatch):
    from spared_utils import analysis, results

    text = book.benchmark_answers()
    store = results.read(results.published_dir() / results.STORE_NAME)
    answers = analysis.completion_answers(analysis.scenario_differences(store, split="test"),
                                          analysis.completion_by_dataset(store, "test"))
    assert all(line in text for lines in answers.values() for line in lines)
    assert f"{store['dataset'].nunique()} datasets" in text
    # a local store with other numbers changes nothing; an empty published folder says so
    local = store.copy()
    local["mse"] = local["mse"] + 1.0
    local.to_csv(tmp_path / "results.csv", index=False)
    monkeypatch.setenv("SPARED_RESULTS_DIR", str(tmp_path))
    assert book.benchmark_answers() == text
    assert "holds no runs yet" in book.benchmark_answers(tmp_path / "empty")
