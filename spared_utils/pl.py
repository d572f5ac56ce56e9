"""``su.pl``: the book's figures (:mod:`spared_utils.plots`).

Single-panel functions take ``ax=`` and return the Axes; several panels → a Figure.
"""

from .plots import *  # noqa: F403  (listed in plots.__all__)
from .plots import __all__  # noqa: F401
