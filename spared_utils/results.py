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
import textwrap
import time
from collections.abc import Iterable, Mapping, Sequence
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
def cpu_kernels() -> str:
    """Which CPU kernels computed a row: PyTorch's vector instruction set and the BLAS core type
    NumPy dispatches to (e.g. ``torch:AVX512;openblas:SkylakeX``). Two machines that agree here
    and in the thread count reproduce a CPU run bit for bit; machines that differ round float sums
    differently, and training grows that into a model of the same quality but other numbers."""
    parts = []
    try:
        import torch

        parts.append(f"torch:{torch.backends.cpu.get_cpu_capability()}")
    except (ImportError, AttributeError):  # pragma: no cover
        pass
    try:
        from threadpoolctl import threadpool_info

        parts += [f"{i['internal_api']}:{i.get('architecture')}" for i in threadpool_info()
                  if i.get("user_api") == "blas"]
    except ImportError:  # pragma: no cover
        pass
    return ";".join(sorted(set(parts)))


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


def published_dir() -> Path:
    """``data/benchmark/``: the benchmark the book publishes (``results.csv`` and its
    ``provenance.yml``; ``make benchmark`` writes them)."""
    return paths.project_root() / "data" / "benchmark"


def read_benchmark(path: str | os.PathLike | None = None, published: bool | str | os.PathLike = True) -> pd.DataFrame:
    """The rows chapters 90 and 91 read: the published benchmark and the local store together.

    Every row gets a ``source``: ``published`` (``<published>/results.csv``; ``True`` means
    :func:`published_dir`, ``False`` leaves it out) or ``local`` (the store at ``path``, default
    ``results/results.csv``). Where both hold the same run, the analysis keeps the newer row
    (:func:`spared_utils.analysis.latest_runs`).
    """
    frames = []
    if published is not False:
        folder = published_dir() if published is True else Path(published)
        pub = read(folder / STORE_NAME)
        if len(pub):
            frames.append(pub.assign(source="published"))
    local = read(path)
    if len(local) and (published is False or store_path(path).resolve() != (
            (published_dir() if published is True else Path(published)) / STORE_NAME).resolve()):
        frames.append(local.assign(source="local"))
    if not frames:
        return pd.DataFrame(columns=[*KEY_COLUMNS, "source"])
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def benchmark_provenance(published: bool | str | os.PathLike = True) -> dict:
    """The published benchmark's ``provenance.yml`` as a dict (empty when there is none)."""
    import yaml

    if published is False:
        return {}
    path = (published_dir() if published is True else Path(published)) / "provenance.yml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def newest(rows: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """The newest row (by ``timestamp``; on a tie, the later in the store) of each combination of
    ``keys``, in ``rows``' order and with their values unchanged."""
    if rows.empty:
        return rows
    when = (pd.to_datetime(rows["timestamp"], utc=True, errors="coerce", format="mixed").reset_index(drop=True)
            if "timestamp" in rows else pd.Series(0, index=range(len(rows))))
    order = when.sort_values(kind="stable").index.to_numpy()  # positions, oldest first
    last = ~rows.iloc[order].reset_index(drop=True).duplicated(list(keys), keep="last").to_numpy()
    keep = np.zeros(len(rows), dtype=bool)
    keep[order[last]] = True
    return rows[keep]


def describe_provenance(provenance: Mapping, width: int = 88) -> str:
    """A few lines on where the published rows come from (for a chapter to print), each wrapped
    at ``width`` characters (a printed line wider than the page hides behind a scroll)."""
    if not provenance:
        return "no published benchmark: every row is from the local store (make benchmark publishes one)"
    runs, machine = provenance.get("runs", {}), provenance.get("machine", {})
    state = "complete" if provenance.get("complete") else (
        f"partial: {runs.get('finished', '?')} of {runs.get('planned', '?')} runs")
    threads = provenance.get("threads_per_run") or ["?"]
    lines = [
        f"published benchmark: {provenance.get('rows', '?')} rows from plan {provenance.get('plan')} ({state}), "
        f"published {provenance.get('date')}",
        f"code: commit {str(provenance.get('commit') or '?')[:12]}; rows written by "
        f"{', '.join(str(c) for c in provenance.get('row_commits', [])) or '?'}",
        f"machine: {machine.get('cpus', '?')} CPUs, {machine.get('memory_gib', '?')} GiB, devices "
        f"{', '.join(provenance.get('devices', [])) or '?'}, {'/'.join(str(t) for t in threads)} thread(s) per run",
        f"software: {'; '.join(v.replace(';', '; ') for v in provenance.get('versions', [])) or '?'}",
    ]
    return "\n".join(textwrap.fill(line, width, subsequent_indent="  ", break_on_hyphens=False,
                                     break_long_words=False) for line in lines)


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
