"""SpaCKLE+'s ablation (chapter 02), read from ``data/ablations/``.

The candidates' options and the decision each led to live in ``data/ablations/spackle_plus.yml``
(the chosen one marked ``chosen: true``, how they were measured in its ``measured`` block); their
measured results in ``data/ablations/spackle_plus_results.csv``; the other measurements chapter 02
quotes (the completion benchmark across datasets, runs on other datasets) in
``data/ablations/spackle_plus_measured.csv``. The library keeps no measurement of its own.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ..paths import data_dir

#: The candidates' options and decisions, and their measured results (relative to ``data/``).
CANDIDATES_FILE = Path("ablations") / "spackle_plus.yml"
RESULTS_FILE = Path("ablations") / "spackle_plus_results.csv"
MEASURED_FILE = Path("ablations") / "spackle_plus_measured.csv"


def label(entry: dict[str, Any]) -> str:
    """A candidate's label in the tables: ``"<name>: <changes>"`` (the name alone without changes)."""
    return f"{entry['name']}: {entry['changes']}" if entry.get("changes") else str(entry["name"])


@lru_cache(maxsize=1)
def _document() -> dict[str, Any]:
    return yaml.safe_load((data_dir() / CANDIDATES_FILE).read_text(encoding="utf-8"))


def _entries() -> tuple[dict[str, Any], ...]:
    path = data_dir() / CANDIDATES_FILE
    entries = _document()["candidates"]
    if sum(bool(e.get("chosen")) for e in entries) != 1:
        raise ValueError(f"{path}: exactly one candidate must carry 'chosen: true' (SpaCKLE+'s options)")
    return tuple(entries)


def _options(entry: dict[str, Any]) -> dict[str, Any]:
    # YAML has no tuples; SpackleConfig keeps ranges as tuples, so the options compare equal to it
    return {k: tuple(v) if isinstance(v, list) else v for k, v in (entry.get("options") or {}).items()}


def candidates() -> dict[str, dict[str, Any]]:
    """The candidates' options by label, in the order they were tried (a fresh copy)."""
    return {label(e): _options(e) for e in _entries()}


def chosen_options() -> dict[str, Any]:
    """The options of the candidate marked ``chosen`` (SpaCKLE+)."""
    return next(_options(e) for e in _entries() if e.get("chosen"))


def setup() -> dict[str, Any]:
    """How the recorded ablation was measured: dataset, splits, levels, budget, seed, machine, runs."""
    return dict(_document()["measured"])


def measured() -> pd.DataFrame:
    """The other measurements chapter 02 quotes, one row per ``key``: ``value``, ``unit``, ``dataset``,
    ``measured`` (date) and ``how`` (the command or table that produced it)."""
    return pd.read_csv(data_dir() / MEASURED_FILE).set_index("key")


def recorded_ablation() -> pd.DataFrame:
    """The ablation as measured (one row per candidate, index ``candidate``).

    Returns
    -------
    DataFrame
        ``mean_mse`` (over the seven masking levels), ``mse_10``, ``mse_70``, ``decision`` and
        ``measured`` (the run, described in the YAML's ``measured`` block), in the order of the
        candidates.
    """
    table = pd.read_csv(data_dir() / RESULTS_FILE).set_index("candidate")
    decisions = pd.Series({label(e): e["decision"] for e in _entries()}, name="decision")
    missing = decisions.index.difference(table.index)
    if len(missing):
        raise ValueError(f"{data_dir() / RESULTS_FILE} has no row for candidate(s) {list(missing)} of "
                         f"{data_dir() / CANDIDATES_FILE}; add their measured results or remove them")
    table = table.loc[decisions.index].rename_axis("candidate")
    return table.drop(columns="measured").join(decisions).join(table["measured"])


__all__ = ["CANDIDATES_FILE", "MEASURED_FILE", "RESULTS_FILE", "candidates", "chosen_options", "label", "measured",
           "recorded_ablation", "setup"]
