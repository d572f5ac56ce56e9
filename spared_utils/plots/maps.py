"""Maps of slides: spots drawn where they sit, coloured by a value (H&E overview, gene
expression, a spot's neighbourhood, predicted vs measured, completed at each masking level).
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from anndata import AnnData

from ..utils import dense
from .style import COMPLETION_LABELS, PALETTE, SPLIT_COLOURS, spot_size, _touching_hex_size

__all__ = ["slides_overview", "gene_maps", "hex_neighbourhood", "predicted_vs_true_maps", "completion_maps", "slide_layers"]


def _values(adata: AnnData, gene: str, layer: str | None) -> np.ndarray:
    """One gene's values (``layer``, or ``X`` when None) as a flat array."""
    col = adata[:, gene].layers[layer] if layer else adata[:, gene].X
    col = dense(col)
    return col.ravel()


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
) -> plt.Figure:
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
    return fig


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
    # below the grid, not beside it: a panel drawn to the right keeps its tick labels clear
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, frameon=False, fontsize=8)
    ax.set_title("A spot's 2-hop hexagonal neighbourhood")
    return ax


def predicted_vs_true_maps(adata: AnnData, slide: str, rows: np.ndarray, pred: np.ndarray, genes: Sequence[str],
                           truth_layer: str = "c_d_log1p", mask_layer: str = "mask",
                           titles: Sequence[str] | None = None, cmap: str = "viridis") -> plt.Figure:
    """Ground truth (top row) and prediction (bottom row) of ``genes`` on one slide.

    ``rows`` are the AnnData rows that were predicted (``pred`` aligned with them, all genes in
    ``adata.var_names`` order). Ground-truth values that are not real measurements (``mask``
    False) are drawn as grey crosses; spots of the slide that were not evaluated are light grey.
    Each gene has one colour scale shared by its two panels.
    """
    rows = np.asarray(rows)
    on_slide = np.flatnonzero((adata.obs["slide_id"] == slide).to_numpy())
    xy_all = np.asarray(adata.obsm["spatial"])[on_slide]
    xy = np.asarray(adata.obsm["spatial"])[rows]
    fig, axes = plt.subplots(2, len(genes), figsize=(3.4 * len(genes), 6.2), squeeze=False)
    for k, gene in enumerate(genes):
        j = adata.var_names.get_loc(gene)
        col = adata.layers[truth_layer][rows][:, j]
        truth = np.asarray(dense(col)).ravel()
        real = np.asarray(adata.layers[mask_layer][rows][:, j]).ravel().astype(bool) if mask_layer in adata.layers \
            else np.ones(len(rows), bool)
        values = truth[real] if real.any() else truth
        vmin, vmax = np.percentile(np.concatenate([values, pred[:, j]]), [2, 98])
        for r, (label, shown, keep) in enumerate((("ground truth", truth, real), ("predicted", pred[:, j], None))):
            ax = axes[r, k]
            size = spot_size(adata, slide, ax)
            ax.scatter(xy_all[:, 0], xy_all[:, 1], s=size, marker="h", color="0.92", linewidths=0)
            sel = np.ones(len(rows), bool) if keep is None else keep
            sc = ax.scatter(xy[sel, 0], xy[sel, 1], c=shown[sel], s=size, marker="h", cmap=cmap, vmin=vmin, vmax=vmax,
                            linewidths=0)
            if keep is not None and (~keep).any():
                ax.scatter(xy[~keep, 0], xy[~keep, 1], s=size * 0.5, marker="x", color="0.5", linewidths=0.6)
            ax.invert_yaxis()
            ax.set_aspect("equal")
            ax.set_axis_off()
            head = titles[k] if titles else gene
            ax.set_title(f"{head}\n{label}" if r == 0 else label, fontsize=9)
            fig.colorbar(sc, ax=ax, shrink=0.7, label="log2(TPM + 1)")
    fig.suptitle(f"Slide {slide}: measured (crosses: not measured) vs predicted")
    fig.tight_layout()
    return fig


def completion_maps(adata: AnnData, runs, gene: str, slide: str,
                    methods: Sequence[str] = ("median", "spackle"), cmap: str = "viridis") -> plt.Figure:
    """Fig. 3c: one gene on one slide at increasing masking: ground truth, then each method.

    ``runs`` are :class:`spared_utils.completion.evaluate.MaskingRun` objects (one per level, same
    split); each panel shows the completed slide (measured values where visible, the method's
    values where hidden); hidden spots are outlined. One colour scale for the whole figure.
    """
    j = adata.var_names.get_loc(gene)
    on_slide = (adata.obs["slide_id"] == slide).to_numpy()
    runs = [r for r in runs if on_slide[r.rows].any()]
    if not runs:
        raise ValueError(f"no masking run covers slide {slide!r}")
    cols = ["ground truth", *methods]
    fig, axes = plt.subplots(len(runs), len(cols), figsize=(3.2 * len(cols), 3.0 * len(runs)), squeeze=False)
    panels = []
    for run in runs:
        sel = on_slide[run.rows]
        panels.append([run.truth[sel, j]] + [run.completed(m)[sel, j] for m in methods])
    lo = min(np.percentile(p, 1) for row in panels for p in row)
    hi = max(np.percentile(p, 99) for row in panels for p in row)
    xy_slide = np.asarray(adata.obsm["spatial"])[on_slide]
    for r, run in enumerate(runs):
        sel = on_slide[run.rows]
        xy = np.asarray(adata.obsm["spatial"])[run.rows[sel]]
        hidden = run.hidden[sel, j]
        for c, (label, vals) in enumerate(zip(cols, panels[r])):
            ax = axes[r, c]
            ax.set_aspect("equal")
            ax.set_xlim(xy_slide[:, 0].min() - 50, xy_slide[:, 0].max() + 50)
            ax.set_ylim(xy_slide[:, 1].max() + 50, xy_slide[:, 1].min() - 50)
            size = _touching_hex_size(ax, xy_slide)
            sc = ax.scatter(xy[:, 0], xy[:, 1], c=vals, s=size, marker="h", cmap=cmap, vmin=lo, vmax=hi, linewidths=0)
            if c > 0:
                ax.scatter(xy[hidden, 0], xy[hidden, 1], s=size, marker="h", facecolors="none",
                           edgecolors="black", linewidths=0.4)
            ax.set_axis_off()
            name = COMPLETION_LABELS.get(label, label)
            ax.set_title(f"{name}, {100 * run.level:.0f}% masked" if c else f"{name} ({100 * run.level:.0f}%)", fontsize=9)
    fig.colorbar(sc, ax=axes.ravel().tolist(), shrink=0.6, label=f"{gene}: log2(TPM + 1)")
    fig.suptitle(f"Slide {slide}, gene {gene}: hidden spots (outlined in black) completed by each method")
    return fig


def slide_layers(adata: AnnData, genes: Sequence[str], layers: Sequence[str] = ("measured", "completed", "predicted"),
                 mask_layer: str = "mask", cmap: str = "viridis") -> plt.Figure:
    """One row per gene, one column per layer of a slide made by :func:`spared_utils.apply`.

    In the ``measured`` column, values that are not real measurements (``mask`` False; a gene
    absent from the slide has none) are grey crosses. Each gene has one colour scale for its row
    (2nd to 98th percentile of its finite values).
    """
    slide = next(iter(adata.uns["spatial"]))
    xy = np.asarray(adata.obsm["spatial"])
    fig, axes = plt.subplots(len(genes), len(layers), figsize=(3.3 * len(layers), 3.0 * len(genes)), squeeze=False)
    for r, gene in enumerate(genes):
        j = adata.var_names.get_loc(gene)
        real = np.asarray(adata.layers[mask_layer][:, j], dtype=bool) if mask_layer in adata.layers \
            else np.ones(adata.n_obs, bool)
        columns = {name: np.asarray(dense(adata.layers[name][:, j]), dtype=float).ravel() for name in layers}
        finite = np.concatenate([v[np.isfinite(v)] for v in columns.values()])
        vmin, vmax = np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0)
        for c, name in enumerate(layers):
            ax, values = axes[r, c], columns[name]
            size = spot_size(adata, slide, ax)
            keep = real & np.isfinite(values) if name == "measured" else np.isfinite(values)
            sc = ax.scatter(xy[keep, 0], xy[keep, 1], c=values[keep], s=size, marker="h", cmap=cmap, vmin=vmin,
                            vmax=vmax, linewidths=0)
            if (~keep).any():
                ax.scatter(xy[~keep, 0], xy[~keep, 1], s=size * 0.5, marker="x", color="0.5", linewidths=0.6)
            ax.invert_yaxis()
            ax.set_aspect("equal")
            ax.set_axis_off()
            ax.set_title(f"{gene}: {name}", fontsize=9)
            fig.colorbar(sc, ax=ax, shrink=0.7, label="log2(TPM + 1)")
    fig.suptitle(f"Slide {slide}: measured (crosses: not measured), completed, predicted from the image")
    fig.tight_layout()
    return fig
