"""Where the book keeps its files: downloads, processed datasets, results.

Every location can be overridden by an environment variable, so tests and CI
can redirect all writes into a temporary directory.

=====================  ===========================  ==============================
what                   environment variable         default
=====================  ===========================  ==============================
project root           ``SPARED_BOOK_ROOT``         first parent with ``_toc.yml``
download cache         ``SPARED_CACHE_DIR``         ``pooch.os_cache("spared-book")``
processed datasets     ``SPARED_PROCESSED_DIR``     ``<root>/processed``
results (store, runs)  ``SPARED_RESULTS_DIR``       ``<root>/results``
=====================  ===========================  ==============================
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent

#: Set to "1" to show the explorers (``su.pl.explore_*``) as their static first view only;
#: :func:`spared_utils.run.execute` sets it for papermill runs, where no one uses the widgets.
STATIC_VIEWS_ENV = "SPARED_STATIC_VIEWS"


def project_root() -> Path:
    """The book's root folder (holds ``_toc.yml``), or the package's parent."""
    env = os.environ.get("SPARED_BOOK_ROOT")
    if env:
        return Path(env).resolve()
    for folder in (Path.cwd(), *Path.cwd().parents):
        if (folder / "_toc.yml").is_file() and (folder / "spared_utils").is_dir():
            return folder
    return PACKAGE_DIR.parent


def data_dir() -> Path:
    """The folder with ``datasets.yml`` and the vendored annotation tables."""
    return project_root() / "data"


def cache_dir() -> Path:
    """Download cache (raw archives and extracted Space Ranger folders)."""
    env = os.environ.get("SPARED_CACHE_DIR")
    if env:
        return Path(env).expanduser().resolve()
    import pooch

    return Path(pooch.os_cache("spared-book"))


def processed_dir() -> Path:
    """Root of ``processed/<dataset>/`` (curated AnnData and patch stores)."""
    env = os.environ.get("SPARED_PROCESSED_DIR")
    return Path(env).expanduser().resolve() if env else project_root() / "processed"


def results_dir() -> Path:
    """Root of ``results/`` (executed chapters, the results store, checkpoints)."""
    env = os.environ.get("SPARED_RESULTS_DIR")
    return Path(env).expanduser().resolve() if env else project_root() / "results"


def output_dir(out_dir: str | os.PathLike | None = "results", dataset: str | None = None) -> Path:
    """Where a chapter or a run writes its files.

    ``"results"`` (every chapter's default) or ``None`` means :func:`results_dir` (so
    ``SPARED_RESULTS_DIR`` moves it); any other value is a folder, relative to the project root
    unless absolute. With ``dataset``, its sub-folder ``<dataset>/``.
    """
    root = results_dir() if out_dir is None or str(out_dir) == "results" else Path(project_root(), out_dir)
    return root / dataset if dataset else root


def shown_path(path: str | os.PathLike) -> str:
    """``path`` as a page of the book shows it: relative to the folder a reader knows
    (``<results>/…`` for :func:`results_dir`, ``<processed>/…`` for :func:`processed_dir`,
    ``<cache>/…``, else relative to the repository), never this machine's absolute path; a
    path outside all of them is shown by its name."""
    path = Path(path).expanduser().resolve()
    for name, root in (("<results>", results_dir()), ("<processed>", processed_dir()), ("<cache>", cache_dir()),
                       ("", project_root())):
        try:
            rel = path.relative_to(Path(root).resolve())
        except ValueError:
            continue
        return f"{name}/{rel}" if name else str(rel)
    return path.name
