"""``su.pp``: curation verbs on AnnData (SpaRED's preprocessing) and patch extraction.

The same names as :mod:`spared_utils.preprocess`, plus :func:`extract_patches` and the
neighbourhoods of the spot grid (:func:`neighbour_index`, :func:`n_neighbours`, :func:`adjacency`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _lazy_face

if TYPE_CHECKING:  # the face's names, each imported from its module on first use (see _lazy_face)
    from .graphs import adjacency, n_neighbours, neighbour_index  # noqa: F401  (re-exported)
    from .patches import extract_patches  # noqa: F401  (re-exported)
    from .preprocess import *  # noqa: F403  (the curation verbs, listed in preprocess.__all__)

__getattr__, __dir__ = _lazy_face(__name__)
