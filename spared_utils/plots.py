"""Figures shared by the chapters (``su.pl``).

One rule for every function: a single-panel figure takes ``ax=`` (a new one is made when it is
``None``) and returns that Axes; a figure of several panels makes its own Figure and returns it.
Conventions: seaborn's colour-blind-safe palette, one colour per method everywhere
(:data:`METHOD_COLOURS`), titles and axis labels with units.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from anndata import AnnData

from .utils import dense

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

__all__ = [
    "COMPLETION_LABELS", "METHOD_COLOURS", "PALETTE", "SPLIT_COLOURS", "spot_size",
    "slides_overview",
    "gene_maps",
    "hex_neighbourhood",
    "dropout_vs_expression",
    "spot_counts_qc",
    "real_data_curve",
    "moran_ranking",
    "embeddings_by_slide",
    "patch_grid",
    "learning_curves",
    "per_gene_pcc",
    "sorted_counts",
    "scenario_differences",
    "best_pcc_arrows",
    "normalised_mse_models",
    "mse_vs_parameters",
    "wins_pie",
    "predictor_comparison",
    "bias_vs_shift",
    "predicted_vs_true_maps",
    "completion_mse_violin",
    "mse_vs_masking",
    "completion_maps",
    "patch_symmetries",
    "slide_layers",
    "PIPELINE_STAGES",
    "pipeline_overview",
]


def _values(adata: AnnData, gene: str, layer: str | None) -> np.ndarray:
    col = adata[:, gene].layers[layer] if layer else adata[:, gene].X
    col = dense(col)
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
    ax.legend(loc="upper left", bbox_to_anchor=(1, 1), frameon=False)
    ax.set_title("A spot's 2-hop hexagonal neighbourhood")
    return ax


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


# --------------------------------------------------------------------------------------------
# Predictors (chapters 10-13)
# --------------------------------------------------------------------------------------------


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


def scenario_differences(table, ax: plt.Axes | None = None, metric: str = "MSE") -> plt.Axes:
    """Paired scenario differences per model with their confidence intervals (one row per
    model and pair of :func:`spared_utils.analysis.scenario_differences`); 0 = no difference."""
    ax = ax or plt.subplots(figsize=(7, 0.5 + 0.45 * max(1, table["model"].nunique()) * 1.6))[1]
    pairs = list(dict.fromkeys(table["pair"]))
    models = list(dict.fromkeys(table["model"]))
    step = 0.8 / max(len(pairs), 1)
    for k, pair in enumerate(pairs):
        part = table[table["pair"] == pair].set_index("model").reindex(models)
        y = np.arange(len(models)) + (k - (len(pairs) - 1) / 2) * step
        x = part["mean_diff"].to_numpy(float)
        lo, hi = part["ci_low"].to_numpy(float), part["ci_high"].to_numpy(float)
        err = np.vstack([np.where(np.isnan(lo), 0, x - lo), np.where(np.isnan(hi), 0, hi - x)])
        ax.errorbar(x, y, xerr=err, fmt="o", capsize=3, color=PALETTE[k % len(PALETTE)], label=pair)
    ax.axvline(0, color="0.5", lw=0.8)
    ax.set_yticks(np.arange(len(models)), models)
    ax.invert_yaxis()
    ax.set_xlabel(f"difference in test {metric} (negative: the first scenario is better)")
    ax.legend(frameon=False, fontsize=8)
    return ax


def best_pcc_arrows(table, ax: plt.Axes | None = None, start: str = "raw", end: str = "completed") -> plt.Axes:
    """Fig. 1b of the paper: each dataset's best PCC-Gene, an arrow from ``start`` to ``end``
    (:func:`spared_utils.analysis.best_pcc`)."""
    ax = ax or plt.subplots(figsize=(6, 0.6 + 0.35 * max(len(table), 1)))[1]
    for y, row in enumerate(table.itertuples(index=False)):
        a, b = getattr(row, start), getattr(row, end)
        ax.scatter([a], [y], color=METHOD_COLOURS["raw"], zorder=3, label=start if y == 0 else None)
        ax.scatter([b], [y], color=METHOD_COLOURS["completed"], zorder=3, label=end if y == 0 else None)
        if np.isfinite(a) and np.isfinite(b):
            ax.annotate("", xy=(b, y), xytext=(a, y), arrowprops={"arrowstyle": "->", "color": "0.4"})
    ax.set_yticks(np.arange(len(table)), list(table["dataset"]))
    ax.invert_yaxis()
    ax.set_xlabel("best PCC-Gene over the models")
    ax.legend(frameon=False, fontsize=8)
    return ax


def normalised_mse_models(normalised, summary, ax: plt.Axes | None = None) -> plt.Axes:
    """Fig. 4a of the paper: each model's MSE over the best model's, a violin over datasets with
    one dot per dataset, and the mean ± sd across datasets (black) — models ordered best first."""
    ax = ax or plt.subplots(figsize=(7, 4))[1]
    order = list(summary["model"])
    several = normalised.groupby("model")["dataset"].nunique()
    if (several > 1).any():  # a violin needs a spread; with one dataset per model the dots say it all
        sns.violinplot(data=normalised, x="model", y="normalised_mse", order=order, color="0.9", inner=None, cut=0,
                       linewidth=0.8, ax=ax)
    sns.stripplot(data=normalised, x="model", y="normalised_mse", order=order, color=PALETTE[0], size=5, ax=ax)
    ax.errorbar(np.arange(len(order)), summary["mean"], yerr=summary["sd"].fillna(0), fmt="_", color="k",
                markersize=18, capsize=4, lw=1.2)
    ax.axhline(1, color="0.6", lw=0.8, ls="--")
    ax.set_xlabel("")
    ax.set_ylabel("MSE / best MSE on the dataset")
    ax.tick_params(axis="x", rotation=45)
    return ax


def mse_vs_parameters(summary, ax: plt.Axes | None = None) -> plt.Axes:
    """Fig. 4b of the paper: mean normalised MSE against trainable parameters (log scale)."""
    ax = ax or plt.subplots(figsize=(6, 4))[1]
    shown = summary[summary["n_params"] > 0]
    ax.scatter(shown["n_params"], shown["mean"], color=PALETTE[1], s=40, zorder=3)
    for row in shown.itertuples():
        ax.annotate(row.model, (row.n_params, row.mean), fontsize=8, xytext=(4, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel("mean normalised MSE")
    return ax


def wins_pie(summary, ax: plt.Axes | None = None, names: dict | None = None) -> plt.Axes:
    """Fig. 4a's pie: how many datasets each model won (lowest MSE there); models that won none
    are left out. ``summary`` is :func:`spared_utils.analysis.model_summary`'s table."""
    ax = ax or plt.subplots(figsize=(4, 4))[1]
    won = summary[summary["wins"] > 0].sort_values("wins", ascending=False)
    labels = [(names or {}).get(m, m) for m in won["model"]]
    ax.pie(won["wins"], labels=[f"{lab} ({int(w)})" for lab, w in zip(labels, won["wins"])],
           colors=[PALETTE[k % len(PALETTE)] for k in range(len(won))], startangle=90, counterclock=False,
           wedgeprops={"edgecolor": "white"})
    ax.set_title(f"Datasets won ({int(won['wins'].sum())})")
    return ax


def predictor_comparison(table, ax: plt.Axes | None = None, names: dict | None = None,
                         value: str = "mse_ratio") -> plt.Axes:
    """The predictors side by side: each model's test MSE over the training mean's (``value`` of
    :func:`spared_utils.analysis.predictor_table`), one colour per scenario, a bar per seed
    spread when there are several seeds; the dashed line at 1 is the training mean."""
    models = list(dict.fromkeys(table.sort_values(value)["model"]))
    scenarios = [s for s in ("raw", "masked", "median", "completed") if s in set(table["scenario"])]
    ax = ax or plt.subplots(figsize=(7, 1.2 + 0.5 * max(len(models), 1)))[1]
    step = 0.8 / max(len(scenarios), 1)
    for k, scenario in enumerate(scenarios):
        part = table[table["scenario"] == scenario].set_index("model").reindex(models)
        y = np.arange(len(models)) + (k - (len(scenarios) - 1) / 2) * step
        x = part[value].to_numpy(float)
        err = (part["mse_sd"] / part["baseline_mse"]).fillna(0).to_numpy(float) if value == "mse_ratio" else None
        ax.errorbar(x, y, xerr=err, fmt="o", capsize=3, color=METHOD_COLOURS.get(scenario, PALETTE[k]),
                    label=scenario)
    if value == "mse_ratio":
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        ax.axvline(1, color="0.4", ls="--", lw=0.9)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("test MSE / training mean's MSE (log; left of the dashed line: better than the mean)")
    else:
        ax.set_xlabel(value)
    ax.set_yticks(np.arange(len(models)), [(names or {}).get(m, m) for m in models])
    ax.invert_yaxis()
    ax.legend(frameon=False, fontsize=8, title="scenario", loc="upper left", bbox_to_anchor=(1.01, 1))
    return ax


def bias_vs_shift(table, ax: plt.Axes | None = None) -> plt.Axes:
    """Each (model, scenario)'s mean prediction error on real values (``bias``) against how far
    its training targets sit from the real mean (``target_shift``), from
    :func:`spared_utils.analysis.bias_decomposition`; the dashed line is bias = shift (a model
    that inherits its targets' shift in full)."""
    ax = ax or plt.subplots(figsize=(5.5, 4.5))[1]
    shown = table.dropna(subset=["bias", "target_shift"])
    for scenario, part in shown.groupby("scenario", sort=False):
        ax.scatter(part["target_shift"], part["bias"], color=METHOD_COLOURS.get(scenario, PALETTE[7]), s=45,
                   label=scenario, zorder=3)
        for row in part.itertuples():
            ax.annotate(row.model, (row.target_shift, row.bias), fontsize=7, xytext=(4, 3), textcoords="offset points")
    if len(shown):
        lo = float(min(shown["target_shift"].min(), shown["bias"].min(), 0))
        hi = float(max(shown["target_shift"].max(), shown["bias"].max(), 0))
        ax.plot([lo, hi], [lo, hi], ls="--", color="0.5", lw=0.9)
    ax.axhline(0, color="0.8", lw=0.8)
    ax.set_xlabel("target shift: training targets' mean − real values' mean (log2 scale)")
    ax.set_ylabel("bias: mean prediction − real value (test)")
    ax.legend(frameon=False, fontsize=8, title="scenario")
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


# --------------------------------------------------------------------------------------------
# Completion (chapter 02, Fig. 3)
# --------------------------------------------------------------------------------------------

COMPLETION_LABELS = {"median": "median", "spackle": "SpaCKLE", "stlearn": "stLearn (SME)", "mean": "training mean",
                     "spackle_plus": "ours (SpaCKLE+)", "spackle_authors": "SpaCKLE (authors' code)"}


def completion_mse_violin(table, by: str = "gene", ax: plt.Axes | None = None,
                          methods: Sequence[str] = ("spackle", "median", "stlearn")) -> plt.Axes:
    """Fig. 3a: violin of log10 completion MSE per method.

    ``table`` has columns ``method`` and ``mse``, one row per point: a dataset (the paper's
    figure, when several were processed) or a gene of one dataset (``by`` names what a point is).
    """
    import pandas as pd

    ax = ax or plt.subplots(figsize=(5, 4))[1]
    data = pd.DataFrame(table)
    data = data[data["method"].isin(methods) & (data["mse"] > 0)].copy()
    order = [m for m in methods if m in set(data["method"])]
    data["log_mse"] = np.log10(data["mse"].astype(float))
    palette = {m: METHOD_COLOURS.get(m, PALETTE[k]) for k, m in enumerate(order)}
    sns.violinplot(data=data, x="method", y="log_mse", hue="method", order=order, hue_order=order,
                   palette=palette, inner=None, cut=0, ax=ax, legend=False)
    sns.stripplot(data=data, x="method", y="log_mse", order=order, color="0.2", size=3, ax=ax)
    ax.set_xticks(range(len(order)), [COMPLETION_LABELS.get(m, m) for m in order])
    ax.set_xlabel("")
    ax.set_ylabel("log10 MSE of hidden values (log2(TPM + 1)²)")
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


# --------------------------------------------------------------------------------------------
# A new slide (chapter 95, spared_utils.apply)
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# The book's overview (intro page)
# --------------------------------------------------------------------------------------------

#: The paper's pipeline, stage by stage: (name, what it does, the book's chapters).
PIPELINE_STAGES: tuple[tuple[str, str, str], ...] = (
    ("Curation", "SpaRED: QC, TPM, log2,\nMoran's I genes, ComBat,\nslide splits, patches",
     "chapters 00, 01"),
    ("Completion", "SpaCKLE fills missing\nvalues from the 2-ring\nneighbourhood (vs median)",
     "chapter 02"),
    ("Prediction", "H&E patch → expression:\n11 predictors, trained on\nraw and completed data",
     "chapters 10–20"),
    ("Benchmark", "scored on real values only:\nMSE, PCC-Gene,\ncompleted − raw, ranking",
     "chapter 90"),
)


def pipeline_overview(stages: Sequence[tuple[str, str, str]] = PIPELINE_STAGES,
                      ax: plt.Axes | None = None) -> plt.Axes:
    """The pipeline as boxes joined by arrows: one box per stage with what it does and its chapters.

    Parameters
    ----------
    stages
        ``(name, description, chapters)`` per stage, left to right (default: the paper's four,
        curation → completion → prediction → benchmark, :data:`PIPELINE_STAGES`).
    ax
        Where to draw (a new 12 × 3.2 inch figure when None).

    Returns
    -------
    matplotlib.axes.Axes
        The Axes, its patches being the stage boxes in order.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(3 * len(stages), 3.2))
    width, gap = 1.15, 0.35
    for i, (name, what, chapters) in enumerate(stages):
        x = i * (width + gap)
        colour = PALETTE[i % len(PALETTE)]
        ax.add_patch(plt.Rectangle((x, 0), width, 1, facecolor=(*colour, 0.18), edgecolor=colour,
                                   linewidth=2, label=name))
        ax.text(x + width / 2, 0.86, name, ha="center", va="center", fontsize=13, fontweight="bold")
        ax.text(x + width / 2, 0.5, what, ha="center", va="center", fontsize=9, linespacing=1.4)
        ax.text(x + width / 2, 0.11, chapters, ha="center", va="center", fontsize=9, style="italic")
        if i:
            ax.annotate("", xy=(x - 0.03, 0.5), xytext=(x - gap + 0.03, 0.5),
                        arrowprops={"arrowstyle": "-|>", "color": "0.3", "linewidth": 1.8})
    ax.set_xlim(-0.05, len(stages) * (width + gap) - gap + 0.05)
    ax.set_ylim(-0.05, 1.05)
    ax.set_axis_off()
    ax.set_title("From raw Visium data to a benchmark of histology-to-expression predictors")
    return ax
