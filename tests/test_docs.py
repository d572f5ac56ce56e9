"""Documentation that cannot drift from the code: the names it lists, the numbers it shows."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

import spared_utils.completion
import spared_utils.predict
from spared_utils.completion import METHODS
from spared_utils.predict import SCENARIOS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
MEASUREMENTS = ROOT / "measurements.md"


def listed(name: str, text: str) -> bool:
    """``name`` written as code or quoted (``name``, `name`, "name"), not as a word in a sentence or a
    prefix of a longer name (`spackle` does not count for `spackle_plus`)."""
    return re.search(r'[`"]' + re.escape(name) + r'[`"]', text) is not None


# Each place that lists the training scenarios or the completion methods, and the names it must hold.
DOCS = {
    "spared_utils.predict docstring": (spared_utils.predict.__doc__ or "", SCENARIOS),
    "README.md (scenario table)": (README, SCENARIOS),
    "spared_utils.completion docstring": (spared_utils.completion.__doc__ or "", METHODS),
    "README.md (stage table)": (README, METHODS),
}


@pytest.mark.parametrize("where", DOCS)
def test_documentation_lists_every_scenario_and_completion_method(where):
    text, names = DOCS[where]
    missing = [name for name in names if not listed(name, text)]
    assert missing == [], f"{where} does not list {missing} (the code has {list(names)})"


def test_listed_counts_only_a_name_as_code():
    assert listed("spackle", "``spackle``") and listed("raw", '``"raw"``')
    assert not listed("spackle", "`spackle_plus`") and not listed("raw", "raw data")


def test_readme_is_short_and_carries_no_dated_measurement():
    """The README opens with the two commands; measured numbers live on the Measurements page."""
    lines = README.splitlines()
    assert len(lines) <= 120, f"README.md has {len(lines)} lines"
    first_screen = "\n".join(lines[:20])
    assert "make book" in first_screen and "make test" in first_screen
    dates = re.findall(r"\b20\d\d-\d\d-\d\d\b", README)
    assert dates == [], f"README.md carries dated measurements ({dates}); add them to data/measurements/"


def measurement_tables() -> list[str]:
    return re.findall(r"^:file: (\S+)$", MEASUREMENTS.read_text(), flags=re.MULTILINE)


def test_measurements_page_shows_every_measurement_file():
    shown = measurement_tables()
    on_disk = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "data" / "measurements").glob("*.csv"))
    assert sorted(shown) == on_disk, f"shown {sorted(shown)}, on disk {on_disk}"


@pytest.mark.parametrize("table", measurement_tables())
def test_every_measurement_is_dated(table):
    """A measurement goes stale: its file name or a `date` column says when it was taken."""
    frame = pd.read_csv(ROOT / table)
    assert len(frame) and len(frame.columns) > 1
    dated_name = re.search(r"_20\d\d-\d\d-\d\d\.csv$", table)
    assert dated_name or ("date" in frame and frame["date"].str.fullmatch(r"20\d\d-\d\d-\d\d").all()), (
        f"{table}: name the date in the file name (_YYYY-MM-DD.csv) or give every row a date")


def test_the_staged_book_carries_the_files_the_measurements_page_reads(tmp_path, monkeypatch):
    from spared_utils import book

    monkeypatch.setenv("SPARED_RESULTS_DIR", str(tmp_path / "results"))  # no batch notebooks
    src = book.stage(ROOT, {}, tmp_path / "_build")
    assert (src / "measurements.md").is_file()
    missing = [table for table in measurement_tables() if not (src / table).is_file()]
    assert missing == [], f"the staged book lacks {missing}: the page's tables would be empty"
