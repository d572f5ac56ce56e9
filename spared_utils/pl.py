"""``su.pl``: the book's figures (:mod:`spared_utils.plots`) and interactive explorers
(:mod:`spared_utils.explore`: ``explore_slide``, ``explore_prediction``).

Single-panel functions take ``ax=`` and return the Axes; several panels → a Figure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _lazy_face

if TYPE_CHECKING:  # the face's names, each imported from its module on first use (see _lazy_face)
    from .explore import Explorer, explore_prediction, explore_slide, folded, readable  # noqa: F401  (re-exported)
    from .plots import *  # noqa: F403  (listed in plots.__all__)

__getattr__, __dir__ = _lazy_face(__name__)
