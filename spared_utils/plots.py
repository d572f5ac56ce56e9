"""Figures shared by the chapters. Every function returns the matplotlib axes (or figure) it drew.

Conventions: seaborn's colour-blind-safe palette, one colour per method everywhere
(:data:`METHOD_COLOURS`), titles and axis labels with units.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from anndata import AnnData

PALETTE = sns.color_palette("colorblind")
METHOD_COLOURS = {
    "ground truth": "0.3",
    "median": PALETTE[0],
    "spackle": PALETTE[1],
    "stlearn": PALETTE[2],
    "raw": PALETTE[3],
    "completed": PALETTE[4],
}
SPLIT_COLOURS = {"train": PALETTE[0], "val": PALETTE[1], "test": PALETTE[2]}


def _values(adata: AnnData, gene: str, layer: str | None) -> np.ndarray:
    col = adata[:, gene].layers[layer] if layer else adata[:, gene].X
    col = col.toarray() if hasattr(col, "toarray") else np.asarray(col)
    return col.ravel()


def spot_size(adata: AnnData, slide: str, ax: plt.Axes) -> float:
    """Marker area (points²) that draws each spot at its true diameter on ``ax``."""
    sf = adata.uns["spatial"][slide]["scalefactors"]
    xy = adata.obsm["spatial"][(adata.obs["slide_id"] == slide).to_numpy()]
    span = np.ptp(xy[:, 0]) + sf["spot_diameter_fullres"] * 4
    width_pt = ax.get_window_extent().width * 72 / ax.figure.dpi
    return float((sf["spot_diameter_fullres"] / span * width_pt * 1.6) ** 2)


def slides_overview(adata: AnnData, image_key: str = "hires", ncols: int = 4) -> plt.Figure:
    """Each slide's H&E image with its spots outlined, titled with slide, split and spot count."""
    slides = list(adata.obs["slide_id"].cat.categories)
    ncols = min(ncols, len(slides))
    nrows = int(np.ceil(len(slides) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.8 * nrows), squeeze=False)
    for ax, sid in zip(axes.ravel(), slides):
        lib = adata.uns["spatial"][sid]
        key = image_key if image_key in lib["images"] else next(iter(lib["images"]))
        scale = lib["scalefactors"].get(f"tissue_{key}_scalef", 1.0)
        sel = (adata.obs["slide_id"] == sid).to_numpy()
        xy = adata.obsm["spatial"][sel] * scale
        ax.imshow(lib["images"][key])
        split = adata.obs.loc[sel, "split"].iloc[0]
        ax.scatter(xy[:, 0], xy[:, 1], s=0.6, color=SPLIT_COLOURS.get(str(split), "k"), alpha=0.5)
        ax.set_title(f"{sid} ({split}, {sel.sum()} spots)")
        ax.set_axis_off()
    for ax in axes.ravel()[len(slides):]:
        ax.set_axis_off()
    fig.suptitle("Slides: H&E image with in-tissue spots (colour = split)")
    fig.tight_layout()
    return fig


def gene_maps(
    adata: AnnData,
    genes: Sequence[str],
    slide: str,
    layer: str | None = None,
    titles: Sequence[str] | None = None,
    cmap: str = "viridis",
    missing: np.ndarray | None = None,
) -> np.ndarray:
    """Expression of ``genes`` on one slide as hexagon maps (one panel per gene).

    ``missing`` (bool, spots × genes of the slide) draws those spots as grey crosses.
    """
    sel = (adata.obs["slide_id"] == slide).to_numpy()
    sub = adata[sel]
    xy = sub.obsm["spatial"]
    fig, axes = plt.subplots(1, len(genes), figsize=(3.6 * len(genes), 3.3), squeeze=False)
    for k, (ax, gene) in enumerate(zip(axes[0], genes)):
        vals = _values(sub, gene, layer)
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=vals, s=9, marker="h", cmap=cmap, linewidths=0)
        if missing is not None:
            miss = missing[:, k]
            ax.scatter(xy[miss, 0], xy[miss, 1], s=6, marker="x", color="0.6", linewidths=0.6)
        ax.invert_yaxis()
        ax.set_aspect("equal")
        ax.set_axis_off()
        ax.set_title(titles[k] if titles else f"{gene}")
        fig.colorbar(sc, ax=ax, shrink=0.7, label=layer or "X")
    fig.tight_layout()
    return axes[0]


def hex_neighbourhood(adata: AnnData, index: np.ndarray, spot: int, ax: plt.Axes | None = None) -> plt.Axes:
    """One spot, its first and second rings of neighbours, on the array grid."""
    ax = ax or plt.subplots(figsize=(4, 4))[1]
    rows = adata.obs["array_row"].to_numpy()
    cols = adata.obs["array_col"].to_numpy()
    r0, c0 = rows[spot], cols[spot]
    near = (np.abs(rows - r0) <= 4) & (np.abs(cols - c0) <= 8) & (
        adata.obs["slide_id"].to_numpy() == adata.obs["slide_id"].iloc[spot]
    )
    y = lambda r: -r * np.sqrt(3) / 2  # noqa: E731 (array rows are sqrt(3)/2 column units apart)
    ax.scatter(cols[near] / 2, y(rows[near]), s=260, marker="h", color="0.85")
    ring_sizes = [6, 12] if index.shape[1] == 18 else [index.shape[1]]
    start = 0
    for ring, size in enumerate(ring_sizes, start=1):
        nb = index[spot, start : start + size]
        nb = nb[nb >= 0]
        ax.scatter(cols[nb] / 2, y(rows[nb]), s=260, marker="h", color=PALETTE[ring], label=f"ring {ring} ({len(nb)})")
        start += size
    ax.scatter([c0 / 2], [y(r0)], s=260, marker="h", color=PALETTE[3], label="centre spot")
    ax.set_aspect("equal")
    ax.set_axis_off()
    ax.legend(loc="upper left", bbox_to_anchor=(1, 1), frameon=False)
    ax.set_title("A spot's 2-hop hexagonal neighbourhood")
    return ax


def dropout_vs_expression(adata: AnnData, layer: str = "counts", ax: plt.Axes | None = None) -> plt.Axes:
    """Per gene: fraction of spots with zero counts against mean count (log scale)."""
    ax = ax or plt.subplots(figsize=(5, 4))[1]
    x = adata.layers[layer] if layer else adata.X
    x = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
    mean = x.mean(axis=0)
    zero = (x == 0).mean(axis=0)
    hue = adata.var["spatial_gene"].map({True: "spatial", False: "noise"}) if "spatial_gene" in adata.var else None
    sns.scatterplot(x=mean, y=zero, hue=hue, palette="colorblind", s=14, ax=ax, linewidth=0)
    ax.set_xscale("log")
    ax.set_xlabel("mean count per spot (UMI, log scale)")
    ax.set_ylabel("fraction of spots with zero counts")
    ax.set_title("Dropout follows low expression")
    return ax
