"""What every reader shares: the error it raises, the path type, small file helpers and the
``uns["spatial"]`` library record.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["PathLike", "ReaderError"]


PathLike = str | os.PathLike


class ReaderError(ValueError):
    """A slide's files are missing, unreadable or inconsistent (the message says which and why)."""


def _open_text(path: Path):
    """Open a text file, gunzipped when its name ends in ``.gz``."""
    return gzip.open(path, "rt") if path.name.endswith(".gz") else open(path)


def _stem(path: Path) -> str:
    """The file name without a trailing ``.gz``."""
    name = path.name
    return name[:-3] if name.endswith(".gz") else name


def _first(candidates: Iterable[Path]) -> Path | None:
    """The first of ``candidates`` that exists, else None."""
    for candidate in candidates:
        if candidate.exists():
            return candidate
    return None


def _library(images: dict, scalefactors: dict, metadata: dict) -> dict:
    """One slide's ``uns["spatial"]`` entry: images, scale factors, metadata."""
    return {"images": images, "scalefactors": scalefactors, "metadata": metadata}
