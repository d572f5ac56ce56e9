"""The book's figure conventions: one colour per method and per split, the methods' display
names, and the marker sizes that draw a spot at its size on a slide map.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from anndata import AnnData

__all__ = ["COMPLETION_LABELS", "FIGURE_CHECK_ENV", "METHOD_COLOURS", "PALETTE", "SPLIT_COLOURS",
           "checked", "overlapping_text", "spot_size"]

#: When this environment variable names a file, every ``su.pl`` function checks the figure it
#: drew for labels printed over each other (:func:`overlapping_text`) and appends one JSON line
#: per call to that file (``function``, ``overlaps``). The tests build the book with it set.
FIGURE_CHECK_ENV = "SPARED_FIGURE_CHECK"


PALETTE = sns.color_palette("colorblind")

METHOD_COLOURS = {
    "ground truth": "0.3",
    "median": PALETTE[0],
    "spackle": PALETTE[1],
    "stlearn": PALETTE[2],
    "raw": PALETTE[3],
    "completed": PALETTE[4],
    "masked": PALETTE[9],
    "mean": PALETTE[7],
    "neighbour_mean": PALETTE[8],
    "spackle_plus": PALETTE[5],
    "spackle_authors": PALETTE[6],
    "lgdist": "black",  # the colour-blind palette's ten colours are taken
}
SPLIT_COLOURS = {"train": PALETTE[0], "val": PALETTE[1], "test": PALETTE[2]}

COMPLETION_LABELS = {"median": "median", "spackle": "SpaCKLE", "stlearn": "stLearn (SME)", "mean": "training mean",
                     "neighbour_mean": "neighbour mean", "spackle_plus": "ours (SpaCKLE+)",
                     "spackle_authors": "SpaCKLE (authors' code)", "lgdist": "LGDiST"}


def spot_size(adata: AnnData, slide: str, ax: plt.Axes) -> float:
    """Marker area (points²) that draws each spot at its true diameter on ``ax``."""
    sf = adata.uns["spatial"][slide]["scalefactors"]
    xy = adata.obsm["spatial"][(adata.obs["slide_id"] == slide).to_numpy()]
    span = np.ptp(xy[:, 0]) + sf["spot_diameter_fullres"] * 4
    width_pt = ax.get_window_extent().width * 72 / ax.figure.dpi
    return float((sf["spot_diameter_fullres"] / span * width_pt * 1.6) ** 2)


def _touching_hex_size(ax: plt.Axes, xy: np.ndarray) -> float:
    """Marker area (points²) of hexagons that touch their neighbours on ``ax`` (after limits are set)."""
    from scipy.spatial import cKDTree

    if len(xy) < 2:
        return 20.0
    step = float(np.median(cKDTree(xy).query(xy, k=2)[0][:, 1]))
    ax.figure.canvas.draw_idle()
    width_pt = ax.get_window_extent().width * 72 / ax.figure.dpi
    span = abs(np.diff(ax.get_xlim())[0])
    return float((step / span * width_pt * 1.1) ** 2)


def overlapping_text(fig, shrink: float = 1.0) -> list[tuple[str, str]]:
    """Pairs of texts of ``fig`` that a reader sees on top of each other: tick labels, axis labels,
    titles, legend entries and annotations, compared by the boxes the renderer draws them in (each
    box shrunk by ``shrink`` pixels on every side, so that texts which only touch do not count)."""
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    # the inline backend's canvas has no renderer of its own: lay the figure out without drawing
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer() if hasattr(fig.canvas, "get_renderer") else fig._get_renderer()
    texts = []
    for ax in fig.axes:
        found = [ax.title, *ax.texts]
        if ax.axison:  # an axis turned off draws neither its ticks nor its label
            found += [*_drawn_tick_labels(ax.xaxis, ax.get_xlim(), 0), ax.xaxis.label,
                      *_drawn_tick_labels(ax.yaxis, ax.get_ylim(), 1), ax.yaxis.label]
        legend = ax.get_legend()
        if legend is not None:
            found += [*legend.get_texts(), legend.get_title()]
        texts += [t for t in found if isinstance(t, Text) and t.get_visible() and t.get_text().strip()]
    texts += [t for t in fig.texts if t.get_visible() and t.get_text().strip()]
    boxes = []
    for t in texts:
        box = t.get_window_extent(renderer)
        if box.width > 2 * shrink and box.height > 2 * shrink:
            boxes.append((t, Bbox.from_extents(box.x0 + shrink, box.y0 + shrink, box.x1 - shrink, box.y1 - shrink)))
    out = []
    for i, (a, box_a) in enumerate(boxes):
        for b, box_b in boxes[i + 1:]:
            if box_a.overlaps(box_b):
                out.append((a.get_text(), b.get_text()))
    return out


def _drawn_tick_labels(axis, limits, coordinate: int) -> list:
    """The tick labels of ``axis`` that are drawn: those whose tick lies within the view
    ``limits`` (matplotlib keeps labels for ticks outside them, but does not draw them)."""
    lo, hi = sorted(limits)
    tolerance = 1e-9 * max(abs(lo), abs(hi), 1.0)
    return [t for t in axis.get_ticklabels() if lo - tolerance <= t.get_position()[coordinate] <= hi + tolerance]


def checked(function, log: str):
    """``function`` (a ``su.pl`` figure) wrapped so that each call appends to the JSON-lines file
    ``log`` its name and the pairs of texts that overlap in the figure it returned
    (:data:`FIGURE_CHECK_ENV`). The figure itself is returned unchanged."""
    import functools
    import json

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        result = function(*args, **kwargs)
        fig = getattr(result, "figure", result)
        if hasattr(fig, "canvas"):
            record = {"function": function.__name__, "overlaps": [list(p) for p in overlapping_text(fig)]}
            with open(log, "a", encoding="utf-8") as out:
                out.write(json.dumps(record) + "\n")
        return result

    return wrapper
