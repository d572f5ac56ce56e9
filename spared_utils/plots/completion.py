"""Completion figures (chapter 02, the paper's Fig. 3a-b): completion error per method and
against the masking level. The maps of Fig. 3c are :func:`~spared_utils.plots.maps.completion_maps`.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from .style import COMPLETION_LABELS, METHOD_COLOURS, PALETTE

__all__ = ["completion_mse_violin", "mse_vs_masking"]


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
