"""The book's figure conventions: one colour per method and per split, the methods' display
names, and the marker sizes that draw a spot at its size on a slide map.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from anndata import AnnData

__all__ = ["COMPLETION_LABELS", "METHOD_COLOURS", "PALETTE", "SPLIT_COLOURS", "spot_size"]


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
    "spackle_plus": PALETTE[5],
    "spackle_authors": PALETTE[6],
}
SPLIT_COLOURS = {"train": PALETTE[0], "val": PALETTE[1], "test": PALETTE[2]}

COMPLETION_LABELS = {"median": "median", "spackle": "SpaCKLE", "stlearn": "stLearn (SME)", "mean": "training mean",
                     "spackle_plus": "ours (SpaCKLE+)", "spackle_authors": "SpaCKLE (authors' code)"}


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
