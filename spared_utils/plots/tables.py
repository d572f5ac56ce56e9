"""Tables as a reader of the book sees them: a short view that fits the page, the whole table folded below it."""

from __future__ import annotations

import html

import pandas as pd

__all__ = ["folded"]


def folded(table: pd.DataFrame, summary: str, digits: int = 4):
    """The whole ``table`` inside a closed ``<details>`` block whose line reads ``summary``: what a
    chapter shows under a narrower table, so nothing is hidden behind a horizontal scroll."""
    from IPython.display import HTML

    body = table.round(digits).to_html(index=False, border=0, classes="folded-table", na_rep="")
    return HTML(f"<details><summary>{html.escape(summary)}</summary>\n{body}\n</details>")
