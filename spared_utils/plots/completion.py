"""Completion figures (chapter 02, the paper's Fig. 3a-b): completion error per method and
against the masking level, and what each completion keeps of the tissue against its error. The
maps of Fig. 3c are :func:`~spared_utils.plots.maps.completion_maps`.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from .style import COMPLETION_LABELS, METHOD_COLOURS, PALETTE

__all__ = ["completion_mse_violin", "mse_vs_masking", "structure_vs_mse"]

#: What :func:`structure_vs_mse` can draw on its y axis, and the axis label of each.
STRUCTURE_AXES = {
    "moran_gap": "Moran's I gap, mean |I completed − I measured|",
    "corr_distance": "gene–gene correlation distance, mean |Δr|",
    "moran_completed": "mean Moran's I of the completed maps",
}


def completion_mse_violin(table, by: str = "gene", ax: plt.Axes | None = None,
                          methods: Sequence[str] = ("spackle", "median", "stlearn")) -> plt.Axes:
    """Fig. 3a: violin of log10 completion MSE per method.

    ``table`` has columns ``method`` and ``mse``, one row per point: a dataset (the paper's
    figure, when several were processed) or a gene of one dataset (``by`` names what a point is).
    """
    import pandas as pd

    data = pd.DataFrame(table)
    data = data[data["method"].isin(methods) & (data["mse"] > 0)].copy()
    order = [m for m in methods if m in set(data["method"])]
    ax = ax or plt.subplots(figsize=(6, 1.2 + 0.6 * max(len(order), 1)))[1]
    data["log_mse"] = np.log10(data["mse"].astype(float))
    palette = {m: METHOD_COLOURS.get(m, PALETTE[k]) for k, m in enumerate(order)}
    # one row per method: the names stay readable however many methods are compared
    sns.violinplot(data=data, y="method", x="log_mse", hue="method", order=order, hue_order=order,
                   palette=palette, inner=None, cut=0, orient="h", ax=ax, legend=False)
    sns.stripplot(data=data, y="method", x="log_mse", order=order, color="0.2", size=3, orient="h", ax=ax)
    ax.set_yticks(range(len(order)), [COMPLETION_LABELS.get(m, m) for m in order])
    ax.set_ylabel("")
    ax.set_xlabel("log10 MSE of hidden values (log2(TPM + 1)²)")
    ax.set_title(f"Completion error per method, one point per {by}")
    return ax


def mse_vs_masking(summary, ax: plt.Axes | None = None, methods: Sequence[str] = ("median", "spackle"),
                   title: str = "Completion error vs synthetic masking") -> plt.Axes:
    """Fig. 3b: MSE of hidden values against the masking percentage, one line per method.

    ``summary`` is :func:`spared_utils.completion.evaluate_masking`'s table (``masking``,
    ``method``, ``mse``; several splits are averaged).
    """
    ax = ax or plt.subplots(figsize=(5, 4))[1]
    mean = summary.groupby(["method", "masking"], observed=True)["mse"].mean().reset_index()
    for k, method in enumerate(m for m in methods if m in set(mean["method"])):
        part = mean[mean["method"] == method].sort_values("masking")
        ax.plot(100 * part["masking"], part["mse"], "-o", color=METHOD_COLOURS.get(method, PALETTE[k]),
                label=COMPLETION_LABELS.get(method, method))
    ax.set_yscale("log")
    ax.set_xlabel("synthetic masking (% of each gene's entries hidden)")
    ax.set_ylabel("MSE of hidden values, log scale")
    ax.set_title(title)
    ax.legend(frameon=False)
    return ax


def structure_vs_mse(summary, y: str = "moran_gap", ax: plt.Axes | None = None,
                     methods: Sequence[str] = ("median", "mean", "neighbour_mean", "spackle", "spackle_plus"),
                     title: str = "What completion keeps of the tissue vs its error") -> plt.Axes:
    """Each method's MSE of hidden values (x, log) against what its completed maps lose of the
    measured tissue (``y``, one of :data:`STRUCTURE_AXES`), one point per masking level joined in
    order of level (marker area grows with the level, from the lowest to the highest).

    ``summary`` is :func:`spared_utils.completion.evaluate_masking`'s table with its structure
    columns (several splits are averaged). A method that fills with a gene's mean sits far left
    when it wins on MSE and high when it flattens the maps.
    """
    if y not in STRUCTURE_AXES:
        raise ValueError(f"y must be one of {sorted(STRUCTURE_AXES)}, got {y!r}")
    if y not in summary:
        raise KeyError(f"the summary has no {y!r} column: run evaluate_masking with structure=True")
    ax = ax or plt.subplots(figsize=(5.5, 4))[1]
    mean = summary.groupby(["method", "masking"], observed=True)[["mse", y]].mean().reset_index()
    levels = np.sort(mean["masking"].unique())
    for k, method in enumerate(m for m in methods if m in set(mean["method"])):
        part = mean[mean["method"] == method].sort_values("masking")
        colour = METHOD_COLOURS.get(method, PALETTE[k % len(PALETTE)])
        size = 15 + 60 * np.searchsorted(levels, part["masking"]) / max(len(levels) - 1, 1)
        ax.plot(part["mse"], part[y], "-", color=colour, lw=1, alpha=0.7)
        ax.scatter(part["mse"], part[y], s=size, color=colour, label=COMPLETION_LABELS.get(method, method),
                   edgecolor="white", linewidth=0.5, zorder=3)
    ax.set_xscale("log")
    ax.set_xlabel("MSE of hidden values, log scale")
    ax.set_ylabel(STRUCTURE_AXES[y])
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(frameon=False, fontsize=8, title=f"larger: more masked ({100 * levels.min():.0f}–"
                  f"{100 * levels.max():.0f}%)" if len(levels) else None, title_fontsize=8)
    return ax
