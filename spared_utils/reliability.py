"""The reliability matrix as a table: run ``tests/test_reliability.py`` and read what each row did.

Chapter 99 (the appendix) calls :func:`run_matrix`, so the table it shows is the outcome of running
the tests at build time, not a list typed by hand: a row that stops passing shows as failed.
"""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from . import paths

__all__ = ["MODULE", "REPORT_ENV", "run_matrix", "summary"]

#: The test module holding the matrix, relative to the project root.
MODULE = "tests/test_reliability.py"
#: Environment variable naming the JSON file the module writes its rows to.
REPORT_ENV = "SPARED_RELIABILITY_REPORT"


def run_matrix(report: str | os.PathLike, select: str = "", timeout: float = 1800) -> tuple[pd.DataFrame, dict]:
    """Run the matrix with pytest in a subprocess; return its rows and how the run went.

    Parameters
    ----------
    report
        The JSON file the rows are written to (replaced).
    select
        A pytest ``-k`` expression choosing rows ("" = every row).
    timeout
        Seconds before the run is stopped.

    Returns
    -------
    rows, run
        One row per input tried (``group``, ``entry``, ``case``, ``outcome``, ``names_file``,
        ``names_fix``, ``partial_outputs``, ``passed``, ``message``), and ``{"exit_code",
        "seconds", "select", "tail"}`` (the end of pytest's output).
    """
    root = paths.project_root()
    module = root / MODULE
    if not module.is_file():
        raise FileNotFoundError(f"{module} not found: the matrix is a test module of the repository; run the "
                                "chapter from a clone of it (SPARED_BOOK_ROOT points at the root)")
    report = Path(report)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.unlink(missing_ok=True)
    # the test folders live under a known root, so that the messages can name them by what the
    # reader sees (<test folder>/...) rather than by this machine's temporary paths
    basetemp = report.parent / f".{report.stem}-tmp"
    command = [sys.executable, "-m", "pytest", str(module), "-q", "-p", "no:cacheprovider", "-o", "addopts=", "--color=no",
               f"--basetemp={basetemp}"]
    if select:
        command += ["-k", select]
    env = {**os.environ, REPORT_ENV: str(report), "PYTHONPATH": os.pathsep.join(
        [str(root), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("MPLBACKEND", None)
    t0 = time.perf_counter()
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - t0
    if not report.is_file():
        raise RuntimeError(f"the matrix wrote no report to {report} (pytest exit code {done.returncode}):\n"
                           f"{(done.stdout + done.stderr)[-3000:]}")
    rows = pd.DataFrame(json.loads(report.read_text()))
    if "message" in rows:
        rows["message"] = rows["message"].map(lambda m: readable_paths(m, {basetemp: "<test folder>",
                                                                          root: "<repository>"}))
    return rows, {"exit_code": done.returncode, "seconds": seconds, "select": select,
                  "tail": (done.stdout + done.stderr).strip().splitlines()[-1:]}


def readable_paths(message, places: dict) -> str:
    """``message`` with each folder of ``places`` (this machine's path → what a reader sees)
    written as its name; a message that is not a text is returned as it is."""
    if not isinstance(message, str):
        return message
    for folder, name in sorted(places.items(), key=lambda kv: -len(str(kv[0]))):
        for form in {str(folder), str(Path(folder).resolve())}:
            message = message.replace(form, name)
    return re.sub(r"<test folder>/[^/\s]*?(\d+)/", "<test folder>/", message)


def summary(rows: pd.DataFrame) -> dict[str, int]:
    """The counts the appendix states: inputs tried, inputs refused (or warned about), messages
    naming the file and the fix, partial outputs found, interrupted runs resumed to identical
    numbers, rows passed."""
    named = rows["names_file"].eq(True) & rows["names_fix"].eq(True)
    refused = rows["names_file"].notna()
    resumed = rows.get("resumed_identical", pd.Series(dtype=object))
    return {
        "inputs tried": int(len(rows)),
        "inputs refused or warned about": int(refused.sum()),
        "messages naming the file and the fix": int(named.sum()),
        "partial outputs found": int(pd.to_numeric(rows["partial_outputs"], errors="coerce").fillna(0).sum()),
        "interrupted runs": int(resumed.notna().sum()),
        "resumed to identical numbers": int(resumed.eq(True).sum()),
        "rows passed": int(rows["passed"].eq(True).sum()),
    }
