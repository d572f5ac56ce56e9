"""Figures of one predictor's run (chapters 10-20): learning curves, per-gene correlation,
how often retrieval hits each training spot.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from .style import METHOD_COLOURS, PALETTE

__all__ = ["learning_curves", "per_gene_pcc", "sorted_counts"]


def learning_curves(histories, baseline: float | None = None, ax: plt.Axes | None = None,
                    title: str = "Learning curves") -> plt.Axes:
    """Training and validation MSE against iteration, one colour per run (e.g. per scenario).

    ``histories`` maps a label (``"raw"``, ``"completed"``, ...) to a history table with columns
    ``iteration``, ``train_loss``, ``val_loss`` (:class:`spared_utils.training.TrainResult`);
    ``baseline`` draws the trivial predictor's validation MSE as a dotted line.
    """
    ax = ax or plt.subplots(figsize=(6, 4))[1]
    for k, (label, hist) in enumerate(histories.items()):
        colour = METHOD_COLOURS.get(label, PALETTE[k % len(PALETTE)])
        ax.plot(hist["iteration"], hist["val_loss"], "-o", ms=3, color=colour, label=f"{label}: validation")
        ax.plot(hist["iteration"], hist["train_loss"], "--", color=colour, alpha=0.7, label=f"{label}: training")
    if baseline is not None and np.isfinite(baseline):
        ax.axhline(baseline, ls=":", color="0.3", label="training mean (validation)")
    ax.set_yscale("log")
    ax.set_xlabel("iteration (optimiser steps)")
    ax.set_ylabel("MSE of log2(TPM + 1), log scale")
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=8)
    return ax


def per_gene_pcc(tables, ax: plt.Axes | None = None, title: str = "Per-gene correlation") -> plt.Axes:
    """Distribution of per-gene PCC (real values only) per run: box plot with one dot per gene.

    ``tables`` maps a label to a table with a ``pcc`` column (:func:`spared_utils.metrics.per_gene_table`).
    """
    import pandas as pd

    ax = ax or plt.subplots(figsize=(5, 4))[1]
    long = pd.concat([t.assign(run=label) for label, t in tables.items()], ignore_index=True).dropna(subset=["pcc"])
    palette = {label: METHOD_COLOURS.get(label, PALETTE[k % len(PALETTE)]) for k, label in enumerate(tables)}
    order = list(tables)
    sns.boxplot(data=long, x="run", y="pcc", hue="run", order=order, hue_order=order, palette=palette,
                showfliers=False, ax=ax, legend=False, boxprops={"alpha": 0.5})
    sns.stripplot(data=long, x="run", y="pcc", hue="run", order=order, hue_order=order, palette=palette,
                  size=3.5, ax=ax, legend=False)
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_xlabel("")
    ax.set_ylabel("PCC per gene (across spots)")
    ax.set_title(title)
    return ax


def sorted_counts(counts, expected: float | None = None, ax: plt.Axes | None = None, xlabel: str = "items, most first",
                  ylabel: str = "count", title: str = "") -> plt.Axes:
    """How often each item was hit, largest first (a rank plot), beside an even spread.

    ``counts``: one count per item (e.g. how many queries retrieved each training spot);
    ``expected``: the count every item would get if the hits were spread evenly (dashed line).
    """
    counts = np.sort(np.asarray(counts))[::-1]
    ax = ax or plt.subplots(figsize=(6, 3.5))[1]
    ax.fill_between(np.arange(len(counts)), counts, step="post", color=PALETTE[0], alpha=0.7, lw=0)
    if expected is not None:
        ax.axhline(expected, color="0.3", ls="--", lw=1, label=f"even spread ({expected:.1f})")
        ax.legend(frameon=False)
    ax.set_xlim(0, max(len(counts), 1))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return ax
