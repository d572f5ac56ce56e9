"""``su.pl``: the book's figures (:mod:`spared_utils.plots`) and interactive explorers
(:mod:`spared_utils.explore`: ``explore_slide``, ``explore_prediction``).

Single-panel functions take ``ax=`` and return the Axes; several panels → a Figure.
"""

from . import plots as _plots
from .explore import Explorer, explore_prediction, explore_slide
from .plots import *  # noqa: F403  (listed in plots.__all__)

__all__ = [*_plots.__all__, "Explorer", "explore_prediction", "explore_slide"]
