"""Shared fixtures: every test writes under its own tmp folders, never into the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SHARED_REAL = SHARED / "data" / "real"

TINY = {"n_rows": 16, "n_cols": 32, "n_genes": 64}


def pytest_collection_modifyitems(config, items):
    """Tests that read ``../shared`` (real sample slides, the paper's tables) carry the ``shared``
    marker; where the folder is absent (a public clone) they are skipped with the reason, which
    ``-ra`` lists at the end of the run."""
    skip = pytest.mark.skip(reason=f"needs ../shared beside the repository ({SHARED} not found)")
    for item in items:
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
