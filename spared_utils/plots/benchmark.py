"""Figures across predictors and datasets (chapters 90-91, the paper's Fig. 1b and 4):
scenario differences, best PCC per dataset, normalised MSE, wins, bias against target shift.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from .style import METHOD_COLOURS, PALETTE

__all__ = ["scenario_differences", "best_pcc_arrows", "normalised_mse_models", "mse_vs_parameters", "wins_pie", "predictor_comparison", "bias_vs_shift",
           "training_mean_ratio", "structure_vs_error", "scenario_colour", "SCENARIO_ORDER"]


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
    one dot per dataset, and the mean ± sd across datasets (black) — models best first, one row
    each (the names stay readable however many models there are)."""
    order = list(summary["model"])
    ax = ax or plt.subplots(figsize=(7, 0.8 + 0.42 * max(len(order), 1)))[1]
    several = normalised.groupby("model")["dataset"].nunique()
    if (several > 1).any():  # a violin needs a spread; with one dataset per model the dots say it all
        sns.violinplot(data=normalised, y="model", x="normalised_mse", order=order, color="0.9", inner=None, cut=0,
                       linewidth=0.8, orient="h", ax=ax)
    sns.stripplot(data=normalised, y="model", x="normalised_mse", order=order, color=PALETTE[0], size=5, orient="h",
                  ax=ax)
    ax.errorbar(summary["mean"], np.arange(len(order)), xerr=summary["sd"].fillna(0), fmt="|", color="k",
                markersize=14, capsize=4, lw=1.2)
    ax.axvline(1, color="0.6", lw=0.8, ls="--")
    ax.set_ylabel("")
    ax.set_xlabel("MSE / best MSE on the dataset")
    return ax


def mse_vs_parameters(summary, ax: plt.Axes | None = None) -> plt.Axes:
    """Fig. 4b of the paper: mean normalised MSE against trainable parameters (log scale)."""
    ax = ax or plt.subplots(figsize=(6, 4))[1]
    shown = summary[summary["n_params"] > 0]
    ax.scatter(shown["n_params"], shown["mean"], color=PALETTE[1], s=40, zorder=3)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel("mean normalised MSE")
    # models of one backbone sit on top of each other (ViT-B and its delta variant): adjustText
    # moves the labels apart and draws a line back to each point
    labels = [ax.text(row.n_params, row.mean, row.model, fontsize=8) for row in shown.itertuples()]
    if len(labels) > 1:
        from adjustText import adjust_text

        adjust_text(labels, x=shown["n_params"].to_numpy(float), y=shown["mean"].to_numpy(float), ax=ax,
                    arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.6})
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
    present = list(dict.fromkeys(table["scenario"]))
    scenarios = [s for s in SCENARIO_ORDER if s in present] + [s for s in present if s not in SCENARIO_ORDER]
    ax = ax or plt.subplots(figsize=(7, 1.2 + 0.5 * max(len(models), 1)))[1]
    step = 0.8 / max(len(scenarios), 1)
    for k, scenario in enumerate(scenarios):
        part = table[table["scenario"] == scenario].set_index("model").reindex(models)
        y = np.arange(len(models)) + (k - (len(scenarios) - 1) / 2) * step
        x = part[value].to_numpy(float)
        err = (part["mse_sd"] / part["baseline_mse"]).fillna(0).to_numpy(float) if value == "mse_ratio" else None
        ax.errorbar(x, y, xerr=err, fmt="D" if scenario == "reference" else "o", capsize=3,
                    color=scenario_colour(scenario, k), label=scenario)
    if value == "mse_ratio":
        ax.axvline(1, color="0.4", ls="--", lw=0.9)
        _log_ratio_axis(ax)
        ax.set_xlabel("test MSE / training mean's MSE (log; left of the dashed line: better than the mean)")
    else:
        ax.set_xlabel(value)
    ax.set_yticks(np.arange(len(models)), [(names or {}).get(m, m) for m in models])
    ax.invert_yaxis()
    if ax.get_legend_handles_labels()[0]:  # nothing drawn: no empty legend (and no warning)
        ax.legend(frameon=False, fontsize=8, title="scenario", loc="upper left", bbox_to_anchor=(1.01, 1))
    return ax


def _log_ratio_axis(ax: plt.Axes) -> None:
    """A log x axis of ratios labelled in plain numbers at a few round values (no crowded minor labels)."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator, ScalarFormatter

    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    ticks = [t for t in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50) if lo <= t <= hi] or [1]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())


#: The order in which figures list scenarios (the references first, the paper's raw next).
SCENARIO_ORDER = ("reference", "raw", "masked", "median", "completed", "completed:spackle_plus")


def scenario_colour(scenario: str, k: int = 7) -> str:
    """One colour per training scenario everywhere (a ``completed:<method>`` takes its method's)."""
    if scenario == "reference":
        return "0.15"
    base, _, method = scenario.partition(":")
    return METHOD_COLOURS.get(method or base, PALETTE[k % len(PALETTE)])


def structure_vs_error(table, ax: plt.Axes | None = None, names: dict | None = None) -> plt.Axes:
    """What a prediction keeps of the tissue against how far it is from the values: each (model,
    scenario)'s test MSE over the training mean's (x, log) against the share of the measured maps'
    spatial autocorrelation its predicted maps keep (mean Moran's I predicted / measured, y), from
    :func:`spared_utils.analysis.predictor_table`. A model that regresses to the mean sits low
    (flat maps) whatever its MSE; the references are labelled."""
    shown = table.dropna(subset=["mse_ratio", "moran_pred", "moran_true"]).copy()
    shown["kept"] = shown["moran_pred"] / shown["moran_true"]
    ax = ax or plt.subplots(figsize=(6.5, 4.5))[1]
    present = list(dict.fromkeys(shown["scenario"]))
    for k, scenario in enumerate([s for s in SCENARIO_ORDER if s in present] + [s for s in present
                                                                                 if s not in SCENARIO_ORDER]):
        part = shown[shown["scenario"] == scenario]
        ax.scatter(part["mse_ratio"], part["kept"], s=40, marker="D" if scenario == "reference" else "o",
                   color=scenario_colour(scenario, k), label=scenario, alpha=0.85, edgecolor="white", linewidth=0.5)
        if scenario == "reference":
            for row in part.itertuples():
                ax.annotate((names or {}).get(row.model, row.model.replace("_", " ")), (row.mse_ratio, row.kept),
                            xytext=(5, 4), textcoords="offset points", fontsize=8)
    ax.axvline(1, color="0.4", ls="--", lw=0.9)
    ax.axhline(1, color="0.7", ls=":", lw=0.9)
    _log_ratio_axis(ax)
    ax.set_xlabel("test MSE / training mean's MSE (log)")
    ax.set_ylabel("Moran's I kept (predicted / measured)")
    if ax.get_legend_handles_labels()[0]:  # nothing drawn: no empty legend (and no warning)
        ax.legend(frameon=False, fontsize=8, title="scenario", loc="upper left", bbox_to_anchor=(1.01, 1))
    return ax


def bias_vs_shift(table, ax: plt.Axes | None = None) -> plt.Axes:
    """Each (model, scenario)'s mean prediction error on real values (``bias``) against how far
    its training targets sit from the real mean (``target_shift``), from
    :func:`spared_utils.analysis.bias_decomposition`; the dashed line is bias = shift (a model
    that inherits its targets' shift in full)."""
    ax = ax or plt.subplots(figsize=(6, 4.5))[1]
    shown = table.dropna(subset=["bias", "target_shift"])
    for k, (scenario, part) in enumerate(shown.groupby("scenario", sort=False)):
        colour = scenario_colour(scenario, k)
        ax.scatter(part["target_shift"], part["bias"], color=colour, s=30, alpha=0.7, label=scenario, zorder=3)
        # the scenario's mean over models, larger (each model's numbers are in the chapter's table)
        ax.scatter([part["target_shift"].mean()], [part["bias"].mean()], color=colour, s=140, marker="X",
                   edgecolor="k", linewidth=0.8, zorder=4)
    if len(shown):
        lo = float(min(shown["target_shift"].min(), shown["bias"].min(), 0))
        hi = float(max(shown["target_shift"].max(), shown["bias"].max(), 0))
        ax.plot([lo, hi], [lo, hi], ls="--", color="0.5", lw=0.9)
    ax.axhline(0, color="0.8", lw=0.8)
    ax.set_xlabel("target shift (training targets' mean − real mean)")
    ax.set_ylabel("bias (mean prediction − real value, test)")
    if ax.get_legend_handles_labels()[0]:  # nothing drawn: no empty legend (and no warning)
        ax.legend(frameon=False, fontsize=8, title="scenario (✕: mean)", loc="upper left", bbox_to_anchor=(1.01, 1))
    return ax


def training_mean_ratio(wide, ax: plt.Axes | None = None, names: dict[str, str] | None = None) -> plt.Axes:
    """Which models beat the training mean where: a dataset × model heatmap of MSE over the
    training mean's (:func:`spared_utils.analysis.beats_training_mean`), each cell annotated;
    blue below 1 (the model beats each gene's mean), red above."""
    names = names or {}
    shown = wide.rename(columns=lambda m: names.get(m, m))
    ax = ax or plt.subplots(figsize=(1.6 + 0.62 * shown.shape[1], 1.0 + 0.42 * shown.shape[0]))[1]
    values = shown.to_numpy(float)
    logs = np.log2(values)
    spread = float(np.nanmax(np.abs(logs))) if np.isfinite(logs).any() else 1.0
    image = ax.imshow(np.ma.masked_invalid(logs), cmap="RdBu_r", vmin=-spread, vmax=spread, aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            dark = abs(logs[i, j]) > 0.6 * spread
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if dark else "0.1")
    ax.figure.colorbar(image, ax=ax, label="log₂(MSE / training mean's)")
    ax.set_xticks(range(shown.shape[1]), list(shown.columns), rotation=90, fontsize=8)
    ax.set_yticks(range(shown.shape[0]), list(shown.index), fontsize=8)
    ax.set_xticks(np.arange(shown.shape[1] + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(shown.shape[0] + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=0.8)
    ax.tick_params(which="minor", length=0)
    return ax
