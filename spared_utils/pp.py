"""``su.pp``: curation verbs on AnnData (SpaRED's preprocessing) and patch extraction.

The same names as :mod:`spared_utils.preprocess`, plus :func:`extract_patches`.
"""

from .patches import extract_patches
from .preprocess import *  # noqa: F403  (the curation verbs, listed in preprocess.__all__)
from .preprocess import __all__ as _curation

__all__ = [*_curation, "extract_patches"]
