"""Shared fixtures: every test writes under its own tmp folders, never into the repository."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SHARED_REAL = SHARED / "data" / "real"

TINY = {"n_rows": 16, "n_cols": 32, "n_genes": 64}

#: The one file whose tests read the tiny book (``make test`` gives a file to one worker).
BOOK_TESTS = "test_book.py"


def pytest_collection_modifyitems(config, items):
    """Tests that read ``../shared`` (real sample slides, the paper's tables) carry the ``shared``
    marker; where the folder is absent (a public clone) they are skipped with the reason, which
    ``-ra`` lists at the end of the run. A test outside :data:`BOOK_TESTS` that reads the tiny book
    is refused: another worker would build the book a second time."""
    skip = pytest.mark.skip(reason=f"needs ../shared beside the repository ({SHARED} not found)")
    for item in items:
        if "tiny_book" in getattr(item, "fixturenames", ()) and item.path.name != BOOK_TESTS:
            raise pytest.UsageError(f"{item.nodeid} reads the tiny book: move it to tests/{BOOK_TESTS}, where "
                                    "every such test runs on one worker (`make test`, --dist loadfile)")
        if "shared_real" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.shared)
        if item.get_closest_marker("shared") and not SHARED.is_dir():
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path_factory, monkeypatch):
    base = tmp_path_factory.mktemp("spared")
    monkeypatch.setenv("SPARED_CACHE_DIR", str(base / "cache"))
    monkeypatch.setenv("SPARED_PROCESSED_DIR", str(base / "processed"))
    monkeypatch.setenv("SPARED_RESULTS_DIR", str(base / "results"))
    monkeypatch.setenv("MPLBACKEND", "agg")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


@pytest.fixture(scope="session")
def tiny_adata():
    """A small synthetic dataset (4 slides of ~180 spots, 64 genes); copy before mutating."""
    from spared_utils.synthetic import make_dataset

    return make_dataset(seed=0, **TINY)


@pytest.fixture(scope="session")
def shared_real() -> Path:
    if not SHARED_REAL.is_dir():
        pytest.skip(f"real sample data not found at {SHARED_REAL} (../shared beside the repository)")
    return SHARED_REAL


def _snapshot(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` with its modification time (empty if the folder is absent)."""
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()} if folder.is_dir() else {}


@dataclass
class TinyBook:
    """The tiny book built once per session (``python -m spared_utils.book`` on tiny parameters)."""

    build_dir: Path
    returncode: int
    log: str
    #: files the build wrote into the project's own results/ and processed/ (should be none)
    written: dict[str, list[str]] = field(default_factory=dict)
    #: one JSON line per ``su.pl`` call while the chapters ran (``SPARED_FIGURE_CHECK``)
    figures: Path | None = None

    @property
    def html(self) -> Path:
        return self.build_dir / "html"


@pytest.fixture(scope="session")
def tiny_book(tmp_path_factory) -> TinyBook:
    """Build the whole book once on ``synthetic_tiny`` (``tests/chapter_params.yml``), for every
    test that reads it (``test_book``, ``test_browser``). Setting ``SPARED_TEST_BOOK`` to an
    existing ``_build`` folder reuses that build instead (while working on the checks)."""
    reuse = os.environ.get("SPARED_TEST_BOOK")
    if reuse:
        return TinyBook(Path(reuse).resolve(), 0, f"reused {reuse}")
    base = tmp_path_factory.mktemp("book")
    build_dir = base / "_build"
    env = {**os.environ, "SPARED_CACHE_DIR": str(base / "cache"), "SPARED_PROCESSED_DIR": str(base / "processed"),
           "SPARED_RESULTS_DIR": str(base / "results"), "MPLBACKEND": "agg",
           "SPARED_FIGURE_CHECK": str(base / "figures.jsonl")}
    # SPARED_RESULTS_DIR and SPARED_PROCESSED_DIR point into tmp: the project's own results/ and
    # processed/ (git-ignored, so git status cannot tell) must not be touched.
    own = {name: _snapshot(ROOT / name) for name in ("results", "processed")}
    # one batch run (the tour at seed 1) first, so that the book's generated "Results" part renders
    plan = base / "plan.yml"
    plan.write_text("datasets: [synthetic_tiny]\nchapters: [00_tour]\nseeds: [1]\n")
    batch = subprocess.run([sys.executable, "-m", "spared_utils.batch", str(plan)], cwd=ROOT, capture_output=True,
                           text=True, timeout=900, env=env)
    if batch.returncode != 0:
        return TinyBook(build_dir, batch.returncode, "batch run failed:\n" + batch.stdout[-2000:] + batch.stderr[-3000:])
    proc = subprocess.run(
        [sys.executable, "-m", "spared_utils.book", "--params", str(ROOT / "tests" / "chapter_params.yml"),
         "--build-dir", str(build_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=1800, env=env,
    )
    written = {}
    for name, before in own.items():
        after = _snapshot(ROOT / name)
        written[name] = sorted(set(after) - set(before)) + sorted(k for k in before if after.get(k) != before[k])
    return TinyBook(build_dir, proc.returncode, proc.stdout[-3000:] + proc.stderr[-5000:], written,
                    base / "figures.jsonl")


def in_ci() -> bool:
    """True under CI (``CI`` set to anything but empty, ``0`` or ``false``, as CI services do)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_or_fail_in_ci(reason: str) -> None:
    """Skip a test whose tool is missing, outside CI; under CI fail instead, saying why, so a
    missing tool cannot hide a failure there."""
    if in_ci():
        pytest.fail(f"{reason} [CI is set, so this fails instead of skipping]", pytrace=False)
    pytest.skip(reason)
