"""Curation figures (chapters 00-01): dropout, the spot and gene filters, Moran's I ranking,
batch correction, and the image patches.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from anndata import AnnData

from ..utils import dense
from .style import PALETTE

__all__ = ["dropout_vs_expression", "spot_counts_qc", "real_data_curve", "moran_ranking", "embeddings_by_slide", "patch_grid", "patch_symmetries"]


def dropout_vs_expression(adata: AnnData, layer: str = "counts", ax: plt.Axes | None = None) -> plt.Axes:
    """Per gene: fraction of spots with zero counts against mean count (log scale)."""
    ax = ax or plt.subplots(figsize=(5, 4))[1]
    x = adata.layers[layer] if layer else adata.X
    x = dense(x)
    mean = x.mean(axis=0)
    zero = (x == 0).mean(axis=0)
    hue = adata.var["spatial_gene"].map({True: "spatial", False: "noise"}) if "spatial_gene" in adata.var else None
    sns.scatterplot(x=mean, y=zero, hue=hue, palette="colorblind", s=14, ax=ax, linewidth=0)
    ax.set_xscale("log")
    ax.set_xlabel("mean count per spot (UMI, log scale)")
    ax.set_ylabel("fraction of spots with zero counts")
    ax.set_title("Dropout follows low expression")
    return ax


def spot_counts_qc(total_counts: np.ndarray, slides: Sequence[str], min_counts: float,
                   max_counts: float | None = None, ax: plt.Axes | None = None) -> plt.Axes:
    """Histogram of total UMI counts per spot (log scale), one colour per slide, with the thresholds."""
    ax = ax or plt.subplots(figsize=(6, 3.6))[1]
    counts = np.maximum(np.asarray(total_counts, dtype=float), 1.0)
    bins = np.logspace(0, np.log10(counts.max()) + 0.1, 50)
    sns.histplot(x=counts, hue=np.asarray(slides), bins=bins, element="step", fill=False,
                 palette="colorblind", ax=ax)
    ax.set_xscale("log")
    for value in (min_counts, max_counts):
        if value is not None and value <= bins[-1]:
            ax.axvline(value, color="0.2", ls="--", lw=1)
    ax.set_xlabel("total counts per spot (UMI, log scale)")
    ax.set_ylabel("spots")
    ax.set_title(f"Spot filter: keep {min_counts:g} < total counts" + (f" < {max_counts:g}" if max_counts else ""))
    return ax


def real_data_curve(exp_frac: np.ndarray, glob_exp_frac: np.ndarray, threshold: float,
                    kept: np.ndarray) -> plt.Figure:
    """The ``real_data_percentage`` rule: genes by expression fraction, and the running mean it cuts."""
    exp_frac, glob = np.asarray(exp_frac, float), np.asarray(glob_exp_frac, float)
    kept = np.asarray(kept, bool)
    order = np.argsort(-exp_frac, kind="stable")
    running = np.cumsum(glob[order]) / np.arange(1, len(order) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.8))
    axes[0].scatter(exp_frac[~kept], glob[~kept], s=8, color=PALETTE[7], label="dropped", linewidths=0)
    axes[0].scatter(exp_frac[kept], glob[kept], s=8, color=PALETTE[0], label="kept", linewidths=0)
    axes[0].set_xlabel("exp_frac (min over slides of the fraction of spots expressing)")
    axes[0].set_ylabel("glob_exp_frac (fraction over all spots)")
    axes[0].set_title("Genes by how often they are measured")
    axes[0].legend(frameon=False)
    axes[1].plot(np.arange(1, len(order) + 1), running, color=PALETTE[0])
    axes[1].axhline(threshold, color="0.2", ls="--", lw=1, label=f"real_data_percentage = {threshold:g}")
    axes[1].axvline(kept.sum(), color=PALETTE[3], lw=1, label=f"{kept.sum()} genes kept")
    axes[1].set_xlabel("genes, sorted by exp_frac (descending)")
    axes[1].set_ylabel("running mean of glob_exp_frac")
    axes[1].set_title("Longest prefix with mean ≥ threshold")
    axes[1].legend(frameon=False)
    fig.tight_layout()
    return fig


def moran_ranking(moran: "pd.DataFrame", n_keep: int, ax: plt.Axes | None = None) -> plt.Axes:
    """Mean Moran's I of every candidate gene by rank (range over slides shaded), kept genes marked."""
    ax = ax or plt.subplots(figsize=(6.5, 3.8))[1]
    per_slide = moran.drop(columns=["mean"], errors="ignore")
    mean = per_slide.mean(axis=1)
    order = np.argsort(-mean.fillna(-np.inf).to_numpy(), kind="stable")
    rank = np.arange(1, len(order) + 1)
    ax.fill_between(rank, per_slide.min(axis=1).to_numpy()[order], per_slide.max(axis=1).to_numpy()[order],
                    color=PALETTE[0], alpha=0.25, lw=0, label="range over slides")
    ax.plot(rank, mean.to_numpy()[order], color=PALETTE[0], label="mean over slides")
    ax.axvline(n_keep + 0.5, color=PALETTE[3], lw=1, label=f"top {n_keep} kept")
    ax.set_xlabel("gene rank")
    ax.set_ylabel("Moran's I of d_log1p")
    ax.set_title("Spatial autocorrelation of the candidate genes")
    ax.legend(frameon=False)
    return ax


def embeddings_by_slide(coords: "dict[str, np.ndarray]", slides: Sequence[str], xlabel: str = "dim 1",
                        ylabel: str = "dim 2") -> plt.Figure:
    """Side-by-side 2-D embeddings (e.g. before/after batch correction), spots coloured by slide."""
    fig, axes = plt.subplots(1, len(coords), figsize=(5 * len(coords), 4.2), squeeze=False)
    for ax, (title, xy) in zip(axes[0], coords.items()):
        sns.scatterplot(x=xy[:, 0], y=xy[:, 1], hue=np.asarray(slides), palette="colorblind", s=6,
                        linewidth=0, ax=ax, legend=ax is axes[0, -1])
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    if axes[0, -1].get_legend() is not None:
        sns.move_legend(axes[0, -1], "upper left", bbox_to_anchor=(1, 1), frameon=False, title="slide",
                        markerscale=2.5)
    fig.tight_layout()
    return fig


def patch_grid(patches: Sequence[np.ndarray], titles: Sequence[str], ncols: int = 8) -> plt.Figure:
    """Image patches in a grid, one title each."""
    n = len(patches)
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.9 * ncols, 2.1 * nrows), squeeze=False)
    for ax, patch, title in zip(axes.ravel(), patches, titles):
        ax.imshow(patch)
        ax.set_title(title, fontsize=7)
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def patch_symmetries(image: np.ndarray, title: str = "The 8 symmetries of a patch") -> plt.Figure:
    """A patch (H, W, 3) under the 4 rotations (columns), without and with a mirror (rows)."""
    fig, axes = plt.subplots(2, 4, figsize=(9, 4.8))
    for r, base in enumerate((image, image[:, ::-1])):
        for k in range(4):
            ax = axes[r, k]
            ax.imshow(np.rot90(base, k))
            ax.set_title(f"{'mirrored, ' if r else ''}rotated {90 * k}°", fontsize=9)
            ax.set_axis_off()
    fig.suptitle(title)
    fig.tight_layout()
    return fig
