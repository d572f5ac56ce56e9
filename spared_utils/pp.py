"""``su.pp``: curation verbs on AnnData (SpaRED's preprocessing) and patch extraction.

The same names as :mod:`spared_utils.preprocess`, plus :func:`extract_patches` and the
neighbourhoods of the spot grid (:func:`neighbour_index`, :func:`n_neighbours`, :func:`adjacency`).
"""

from .graphs import adjacency, n_neighbours, neighbour_index
from .patches import extract_patches
from .preprocess import *  # noqa: F403  (the curation verbs, listed in preprocess.__all__)
from .preprocess import __all__ as _curation

__all__ = [*_curation, "adjacency", "extract_patches", "n_neighbours", "neighbour_index"]
