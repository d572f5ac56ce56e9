"""The results store: one CSV row per evaluated run, shared by every chapter.

A row says what was run (``stage``, ``dataset``, ``model``, ``scenario``, ``learning_rate``,
``seed``, ``split``, ``config_hash``), how it did (``mse``, ``pcc_gene``, ...), what it cost
(``n_params``, ``wall_time_s``, ``device``) and with which software (``versions``).

Appending is atomic: under an exclusive file lock the store is read, the row added and the
whole file written to a temporary sibling that replaces the original, so an interrupted run
never leaves a half-written line and two processes never interleave rows.
"""

from __future__ import annotations

import functools
import os
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from . import paths
from .utils import atomic_path, file_lock

STORE_NAME = "results.csv"
KEY_COLUMNS = ["timestamp", "stage", "dataset", "model", "scenario", "learning_rate", "seed", "split"]


def store_path(path: str | os.PathLike | None = None) -> Path:
    """The store's file: ``path`` if given, else ``<results_dir>/results.csv``."""
    return Path(path) if path is not None else paths.results_dir() / STORE_NAME


def versions() -> str:
    """Versions of the packages that produce results, as one compact string."""
    import importlib.metadata as md

    out = []
    for name in ("spared-utils", "torch", "timm", "scanpy", "squidpy", "anndata"):
        try:
            out.append(f"{name}={md.version(name)}")
        except md.PackageNotFoundError:
            pass
    return ";".join(out)


@functools.lru_cache(maxsize=1)
def commit() -> str:
    """The project's git commit (``<sha>+changes`` when tracked files differ from it; empty
    outside a git checkout): the code that made a row."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=paths.project_root(), capture_output=True, text=True,
                                  check=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    sha = git("rev-parse", "--short=12", "HEAD")
    return f"{sha}+changes" if sha and git("status", "--porcelain", "--untracked-files=no") else sha


def append(rows: Mapping | Iterable[Mapping], path: str | os.PathLike | None = None) -> Path:
    """Add one row (a mapping) or several to the store; new columns are added as needed.

    ``timestamp``, ``versions`` and ``commit`` (:func:`commit`) are filled in when absent.
    """
    if isinstance(rows, Mapping):
        rows = [rows]
    rows = [dict(r) for r in rows]
    if not rows:
        return store_path(path)
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    vers = versions()
    code = commit()
    for r in rows:
        r.setdefault("timestamp", now)
        r.setdefault("versions", vers)
        r.setdefault("commit", code)
    target = store_path(path)
    with file_lock(target):
        old = read(target)
        new = pd.DataFrame(rows)
        # a column the new rows leave empty (None) where the store holds numbers takes the store's
        # float dtype: what pandas' concat does now, written out (its future rule, object, warns)
        empty = [c for c in new.columns if c in old.columns and new[c].isna().all() and pd.api.types.is_float_dtype(old[c])]
        new = new.astype({c: old[c].dtype for c in empty})
        table = new if old.empty else pd.concat([old, new], ignore_index=True)
        front = [c for c in KEY_COLUMNS if c in table.columns]
        table = table[front + [c for c in table.columns if c not in front]]
        with atomic_path(target, fsync=True) as tmp:
            table.to_csv(tmp, index=False)
    return target


def read(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """The whole store as a DataFrame (empty, with the key columns, when nothing is stored yet)."""
    target = store_path(path)
    if not target.is_file() or target.stat().st_size == 0:
        return pd.DataFrame(columns=KEY_COLUMNS)
    try:
        return pd.read_csv(target)
    except pd.errors.ParserError as err:
        raise ValueError(
            f"the results store {target} cannot be parsed ({err}); move it aside to start a new one"
        ) from err


def select(path: str | os.PathLike | None = None, **where) -> pd.DataFrame:
    """The rows of the store whose columns equal the given values (floats compared with a tolerance).

    ``select(stage="completion", masking=0.3)`` → every completion row at 30% masking.
    A column the store does not have selects nothing.
    """
    table = read(path)
    keep = np.ones(len(table), dtype=bool)
    for column, value in where.items():
        if column not in table:
            return table.iloc[:0]
        col = table[column]
        if isinstance(value, float) and pd.api.types.is_numeric_dtype(col):
            keep &= np.isclose(col.astype(float), value)
        else:
            keep &= (col == value).to_numpy()
    return table[keep].reset_index(drop=True)
