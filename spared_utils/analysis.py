"""The benchmark's analysis: tables computed from the results store only (no training).

:func:`latest_runs` keeps one row per run (the newest, when a run was repeated);
:func:`scenario_differences` answers the book's scenario question — does completion help because
it replaces zeros (``completed − raw``, ``median − raw``), and does it help at all once the loss
skips missing values (``completed − masked``)? — with paired differences over matched
(dataset, seed) runs of each model, a 95% confidence interval and paired tests from SciPy;
:func:`normalised_mse` and :func:`model_summary` are the paper's Fig. 4 (each model's MSE over
the best model's on the same dataset, mean ± sd across datasets, datasets won, parameters).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from . import models
from .predict.harness import row_hash
from .registry import registry
from .results import newest

__all__ = ["ALL_MODELS", "DIFFERENCE_COLUMNS", "SCENARIO_PAIRS", "beats_training_mean", "best_pcc", "dataset_kinds",
           "run_sources", "scenario_verdicts", "stale", "completion_by_dataset", "completion_reduction", "latest_runs", "model_summary",
           "model_tests", "bias_decomposition", "predictor_verdicts", "display_names", "normalised_mse", "paper_claims", "predictor_table", "registry_spots", "scenario_differences",
           "STRUCTURE_COLUMNS"]

#: (a, b): the differences ``a − b`` that answer the scenario question.
SCENARIO_PAIRS: tuple[tuple[str, str], ...] = (("completed", "raw"), ("completed", "masked"), ("median", "masked"),
                                               ("completed:spackle_plus", "completed"))
#: The scenarios in the order tables list them (the paper's raw first).
_SCENARIO_ORDER = {s: k for k, s in enumerate(("raw", "masked", "median", "completed"))}


def latest_runs(store: pd.DataFrame, stage: str = "predict", split: str = "test") -> pd.DataFrame:
    """One row per (dataset, model, scenario, seed) of ``stage`` on ``split``: the newest.

    A ``completed`` run whose targets came from another completion method than SpaCKLE (the
    ``completion`` column, ``run_chapter(..., completion=...)``) counts as its own scenario,
    ``completed:<method>``, so every table compares it with the others.
    """
    rows = store[(store["stage"] == stage) & (store["split"] == split)].copy()
    if rows.empty:
        return rows
    if "completion" in rows:
        other = (rows["scenario"] == "completed") & rows["completion"].notna() & (rows["completion"] != "spackle")
        rows.loc[other, "scenario"] = "completed:" + rows.loc[other, "completion"].astype(str)
    return _newest(rows, ["dataset", "model", "scenario", "seed"])


def _newest(rows: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """The newest row (by ``timestamp``) of each combination of ``keys``."""
    rows = newest(rows, keys)
    rows = rows.assign(timestamp=pd.to_datetime(rows["timestamp"], utc=True, errors="coerce", format="mixed"))
    return rows.sort_values("timestamp", kind="stable").reset_index(drop=True)


def dataset_kinds(names: Sequence[str]) -> dict[str, str]:
    """Each dataset's kind: ``generated`` (a registered dataset whose source is the synthetic
    generator), ``real`` (any other registered source) or ``unregistered``. Tables that pool
    datasets keep the kinds apart: a result on generated data says little about real tissue unless
    a real dataset agrees."""
    known = registry()
    out = {}
    for name in names:
        spec = known.get(name)
        out[name] = "unregistered" if spec is None else ("generated" if spec.source.kind == "synthetic" else "real")
    return out


def _interval(diff: np.ndarray, confidence: float) -> dict:
    """Mean, Student-t interval, paired t and Wilcoxon p of differences (NaN below 2 values)."""
    out = {"n": len(diff), "mean_diff": float(diff.mean()) if len(diff) else np.nan,
           "ci_low": np.nan, "ci_high": np.nan, "p_ttest": np.nan, "p_wilcoxon": np.nan}
    if len(diff) >= 2 and np.ptp(diff) <= 1e-12 * max(1.0, float(np.abs(diff).max())):  # no spread to test
        out.update(ci_low=float(diff[0]), ci_high=float(diff[0]))
    elif len(diff) >= 2:
        test = stats.ttest_1samp(diff, 0.0)
        ci = test.confidence_interval(confidence)
        out.update(ci_low=float(ci.low), ci_high=float(ci.high), p_ttest=float(test.pvalue))
        if np.any(diff != 0):
            out["p_wilcoxon"] = float(stats.wilcoxon(diff).pvalue)
    return out


#: The columns of :func:`scenario_differences`.
DIFFERENCE_COLUMNS = ["kind", "model", "pair", "unit", "n", "n_datasets", "n_seeds", "seed_sd", "mean_diff", "ci_low",
                      "ci_high", "p_ttest", "p_wilcoxon"]
#: The model name of the rows that pool every model (each dataset's differences averaged over models).
ALL_MODELS = "all models"


def scenario_differences(store: pd.DataFrame, metric: str = "mse", split: str = "test",
                         pairs: Sequence[tuple[str, str]] = SCENARIO_PAIRS, confidence: float = 0.95,
                         unit: str = "dataset", pooled: bool = True) -> pd.DataFrame:
    """Paired differences ``metric(a) − metric(b)`` per model (and pooled over models), per kind of dataset.

    Runs are matched on (dataset, seed). With ``unit="dataset"`` (the default) the seeds of a
    dataset are averaged first and the dataset is the unit of the interval and the tests; the
    seeds' spread is kept as ``seed_sd`` (the sd of the per-seed differences, averaged over
    datasets). A kind of dataset (:func:`dataset_kinds`) with a single dataset falls back to its
    seeds as the unit (``unit`` says which). ``unit="run"`` makes every matched run a unit.
    ``pooled`` adds one row per kind and pair for :data:`ALL_MODELS` (each dataset's differences
    averaged over the models that ran both scenarios there).

    Returns one row per (kind, model, pair): ``n`` units, ``n_datasets``, ``n_seeds`` (most seeds
    of a dataset), ``seed_sd``, the mean difference, its ``confidence`` interval (Student t on the
    paired differences, as :func:`scipy.stats.ttest_rel` computes it), the paired t-test's p and
    the Wilcoxon signed-rank p (:func:`scipy.stats.wilcoxon`; NaN below 2 units or when every
    difference is 0). For MSE a negative difference means ``a`` is better.
    """
    if unit not in ("dataset", "run"):
        raise ValueError(f"unit must be 'dataset' or 'run', got {unit!r}")
    runs = latest_runs(store, split=split)
    if runs.empty:
        return pd.DataFrame(columns=DIFFERENCE_COLUMNS)
    wide = runs.pivot_table(index=["model", "dataset", "seed"], columns="scenario", values=metric, aggfunc="last")
    kinds = dataset_kinds(wide.index.get_level_values("dataset").unique())
    per_seed = []
    for a, b in pairs:
        if a not in wide or b not in wide:
            continue
        both = wide[[a, b]].dropna()
        per_seed.append(pd.DataFrame({"pair": f"{a} − {b}", "diff": (both[a] - both[b]).to_numpy(float)},
                                     index=both.index).reset_index())
    if not per_seed:
        return pd.DataFrame(columns=DIFFERENCE_COLUMNS)
    diffs = pd.concat(per_seed, ignore_index=True)
    diffs["kind"] = diffs["dataset"].map(kinds)
    if pooled:
        diffs = pd.concat([diffs, diffs.groupby(["kind", "pair", "dataset", "seed"], as_index=False)["diff"].mean()
                          .assign(model=ALL_MODELS)], ignore_index=True)
    out = []
    for (kind, model, pair), part in diffs.groupby(["kind", "model", "pair"], sort=False):
        by_dataset = part.groupby("dataset")["diff"]
        n_datasets = by_dataset.ngroups
        row = {"kind": kind, "model": model, "pair": pair, "n_datasets": n_datasets,
               "n_seeds": int(by_dataset.size().max()), "seed_sd": float(by_dataset.std().mean())}
        if unit == "run" or n_datasets == 1:
            row["unit"] = "run" if unit == "run" or n_datasets > 1 else "seed"
            row.update(_interval(part["diff"].to_numpy(float), confidence))
        else:
            row["unit"] = "dataset"
            row.update(_interval(by_dataset.mean().to_numpy(float), confidence))
        out.append(row)
    table = pd.DataFrame(out)[DIFFERENCE_COLUMNS]
    order = {p: k for k, p in enumerate(f"{a} − {b}" for a, b in pairs)}
    table["_m"] = table["model"].eq(ALL_MODELS)
    table = table.sort_values(["kind", "_m", "model", "pair"], key=lambda c: c.map(order) if c.name == "pair" else c)
    return table.drop(columns="_m").reset_index(drop=True)


def scenario_verdicts(table: pd.DataFrame, metric: str = "MSE") -> list[str]:
    """One sentence per (kind, pair) of the pooled rows of :func:`scenario_differences`: the
    difference, its interval and what it says (better, worse, or no difference at 95%)."""
    lines = []
    for row in table[table["model"] == ALL_MODELS].itertuples():
        a, b = row.pair.split(" − ")
        verdict = {"single": "one unit only: no interval", "better": f"`{a}` is better than `{b}`",
                   "worse": f"`{a}` is worse than `{b}`",
                   "none": "no difference at 95% (the interval holds 0)"}[_direction(row)]
        lines.append(f"- {row.kind} data, {row.pair}: {_evidence(row, metric)}: {verdict}.")
    return lines


def _direction(row) -> str:
    """``"better"`` when the interval of an MSE difference ``a − b`` lies below 0, ``"worse"``
    above, ``"none"`` when it holds 0, ``"single"`` without an interval (one unit)."""
    if row.n < 2 or np.isnan(row.ci_low):
        return "single"
    return "better" if row.ci_high < 0 else "worse" if row.ci_low > 0 else "none"


def _evidence(row, metric: str = "MSE") -> str:
    """``+0.123 test MSE (95% CI … to …) over n units, Wilcoxon p …`` for one pooled row."""
    units = {"dataset": "datasets", "seed": "seeds of one dataset", "run": "runs"}[row.unit]
    ci = "" if np.isnan(row.ci_low) else f" (95% CI {row.ci_low:+.3f} to {row.ci_high:+.3f})"
    p = "" if np.isnan(row.p_wilcoxon) else f", Wilcoxon p {row.p_wilcoxon:.2g}"
    return f"{row.mean_diff:+.3f} test {metric}{ci} over {row.n} {units}{p}"


def completion_answers(differences: pd.DataFrame, completion: pd.DataFrame | None = None,
                       better: str = "spackle_plus", baseline: str = "spackle") -> dict[str, list[str]]:
    """The benchmark's two questions answered from its numbers, one sentence per kind of data.

    ``"Does completion help?"``: the pooled ``completed − raw`` difference (the paper's
    comparison: SpaCKLE's completion against zero-filled targets) and ``completed − masked``
    (against a loss that skips the missing values). ``"Does a better completion help more?"``:
    how much lower the completion error of ``better`` is than ``baseline``'s on hidden values
    (``completion``: :func:`completion_by_dataset`, the median over datasets of the relative
    difference), then the pooled ``completed:<better> − completed`` difference of the predictors
    trained on each. ``differences``: :func:`scenario_differences`. A question without the runs
    to answer it says which runs are missing.
    """
    pooled = differences[differences["model"] == ALL_MODELS] if len(differences) else differences

    def rows(pair):
        return [] if pooled.empty else list(pooled[pooled["pair"] == pair].itertuples())

    def said(row, yes: str, no: str, worse: str) -> str:
        word = {"better": yes, "none": no, "worse": worse, "single": "not answerable from one unit"}[_direction(row)]
        return f"{word} ({_evidence(row)})"

    help_ = []
    against_masked = {r.kind: r for r in rows("completed − masked")}
    for row in rows("completed − raw"):
        masked = against_masked.get(row.kind)
        line = (f"- **{row.kind.capitalize()} data.** Against zero-filled targets (`raw`), completion "
                + said(row, "helps", "makes no difference at 95%", "hurts") + ".")
        if masked is not None:
            line += (" Against skipping the missing values in the loss (`masked`), it "
                     + said(masked, "helps", "makes no difference at 95%", "hurts") + ".")
        help_.append(line)
    if not help_:
        help_.append("- Not answerable: the store has no matched `raw` and `completed` runs.")

    more = []
    gain = {}
    if completion is not None and len(completion):
        wide = completion.pivot_table(index="dataset", columns="method", values="mse")
        if better in wide and baseline in wide:
            both = wide[[better, baseline]].dropna()
            kinds = dataset_kinds(both.index)
            for kind in sorted(set(kinds.values())):
                part = both[[kinds[d] == kind for d in both.index]]
                gain[kind] = (float(np.median(1 - part[better] / part[baseline])), len(part))
    for row in rows(f"completed:{better} − completed"):
        line = f"- **{row.kind.capitalize()} data.**"
        if row.kind in gain:
            g, n = gain[row.kind]
            line += (f" `{better}` fills hidden values with a {abs(g):.0%} {'lower' if g >= 0 else 'higher'} "
                     f"error than `{baseline}` ({f'median over {n} datasets' if n > 1 else 'its one dataset'}).")
        line += (" Predictors trained on its completion instead: "
                 + said(row, "better", "no difference at 95%", "worse") + ".")
        more.append(line)
    if not more:
        more.append(f"- Not answerable: the store has no matched `completed` and `completed:{better}` runs.")
    return {"Does completion help?": help_, "Does a better completion help more?": more}


def normalised_mse(store: pd.DataFrame, scenario: str = "completed", split: str = "test") -> pd.DataFrame:
    """Each model's MSE on each dataset over the best model's MSE there (Fig. 4a of the paper:
    1 = the best model of that dataset), averaged over seeds first; with ``n_params``."""
    runs = latest_runs(store, split=split)
    runs = runs[runs["scenario"] == scenario]
    if runs.empty:
        return pd.DataFrame(columns=["dataset", "model", "mse", "n_params", "normalised_mse", "best"])
    agg = {"mse": ("mse", "mean")}
    if "n_params" in runs:
        agg["n_params"] = ("n_params", "max")
    per = runs.groupby(["dataset", "model"]).agg(**agg).reset_index()
    best = per.groupby("dataset")["mse"].transform("min")
    per["normalised_mse"] = per["mse"] / best
    per["best"] = per["mse"] == best
    return per


def model_summary(normalised: pd.DataFrame) -> pd.DataFrame:
    """Per model: mean and sd of the normalised MSE across datasets, datasets won, parameters;
    sorted best first."""
    if normalised.empty:
        return pd.DataFrame(columns=["model", "mean", "sd", "n_datasets", "wins", "n_params"])
    table = normalised.groupby("model").agg(mean=("normalised_mse", "mean"), sd=("normalised_mse", "std"),
                                            n_datasets=("dataset", "nunique"), wins=("best", "sum"))
    if "n_params" in normalised:
        table["n_params"] = normalised.groupby("model")["n_params"].max()
    return table.sort_values("mean").reset_index()


def registry_spots() -> pd.DataFrame:
    """Fig. 1a of the paper: the SpaRED datasets' spots per organism and tissue (the registry's
    published counts), largest first."""
    rows = [{"organism": s.organism, "tissue": s.tissue, "dataset": s.id, "spots": s.paper.spots}
            for s in registry().values() if s.in_paper]
    table = pd.DataFrame(rows).groupby(["organism", "tissue"]).agg(spots=("spots", "sum"), datasets=("dataset", "size"))
    return table.sort_values("spots", ascending=False).reset_index()


def completion_reduction(store: pd.DataFrame, method: str = "spackle", against: str = "median",
                         split: str = "test") -> float:
    """Mean relative MSE reduction (%) of ``method`` over ``against`` across the masking levels
    and datasets of the store's ``completion`` rows (the paper's 82.5% for SpaCKLE vs median);
    NaN without such rows."""
    rows = latest_runs(store, stage="completion", split=split)
    if rows.empty:
        return float("nan")
    wide = rows.pivot_table(index=["dataset", "scenario"], columns="model", values="mse")
    if method not in wide or against not in wide:
        return float("nan")
    both = wide[[method, against]].dropna()
    return float((100 * (1 - both[method] / both[against])).mean()) if len(both) else float("nan")


def paper_claims(store: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """The paper's headline claims beside what this results store shows, one row each, with a
    ``note``: a sentence on the difference, built from the numbers (where they agree it says so).
    """
    norm = normalised_mse(store, "completed", split)
    summary = model_summary(norm)
    names = {k: models.display_name(k) for k in models.NAMES}
    by_params = sorted(models.NAMES, key=lambda k: models.record(k).n_params_128)
    n_datasets = norm["dataset"].nunique() if len(norm) else 0
    rows = []

    red = completion_reduction(store, split=split)
    vs_mean = completion_reduction(store, against="mean", split=split)
    if np.isnan(red):
        note = "No completion rows: run chapter 02 (or a batch plan with it) to fill them."
    else:
        note = (f"{'Below' if red < 82.5 else 'Above'} the paper's 82.5%. The median is a weak reference "
                "(it fills each hidden value from its neighbours and returns 0 where a gene lost every real "
                "neighbour)")
        note += (f"; against each gene's training mean SpaCKLE's reduction is {vs_mean:.1f}%." if not np.isnan(vs_mean)
                 else "; the trivial training mean is the fairer reference (chapter 02).")
    rows.append(("SpaCKLE lowers completion MSE by 82.5% against the median", "82.5%",
                 "no completion rows" if np.isnan(red) else f"{red:.1f}%", note))

    gains = best_pcc(store, split)["gain"].dropna()
    gain = float(gains.max()) if len(gains) else np.nan
    if np.isnan(gain):
        note = "Needs raw and completed runs of the same dataset."
    else:
        note = (f"Measured on {len(gains)} dataset(s). The gain comes from no longer training on zero-filled "
                "targets, so it depends on how many values were missing (AHSCC: 24% of its curated values, 97% "
                "before curation) and on how long the models train" + (
                    "; ours trained for CPU budgets." if gain < 0.36 else "."))
    rows.append(("completion raises the best PCC-Gene by up to +0.36 (AHSCC)", "+0.36",
                 "no raw/completed pair" if np.isnan(gain) else f"{gain:+.2f} at most", note))

    budget = ("here every model trained at its CPU budget from random weights (no ImageNet weights offline), "
              "which favours models that converge in few steps")
    if summary.empty:
        ours_best = ours_wins = sepal = "no completed runs"
        best_note = wins_note = sepal_note = "Needs completed-scenario runs of several models."
    else:
        top = summary.iloc[0]["model"]
        ours_best = f"{names.get(top, top)} ({summary.iloc[0]['mean']:.3f})"
        best_note = ("As the paper." if top == "vit_b_delta" else
                     f"{names.get(top, top)} leads over {n_datasets} dataset(s); the paper trained 1,000 steps × "
                     f"256 on ImageNet weights, {budget}.")
        wins = summary.sort_values("wins", ascending=False)
        ours_wins = ", ".join(f"{names.get(r.model, r.model)} {int(r.wins)}" for r in wins.head(2).itertuples())
        wins_note = ("As the paper." if set(wins.head(2)["model"]) == {"stnet", "vit_b_delta"} else
                     f"Counted over {n_datasets} dataset(s) (the paper: 26); {budget}.")
        means = summary.set_index("model")["mean"]
        if {"sepal", "vit_b_delta"} <= set(means.index):
            sepal = f"SEPAL {means['sepal']:.3f} vs ViT-B+Δ {means['vit_b_delta']:.3f}"
            sepal_note = ("As the paper." if means["sepal"] > means["vit_b_delta"] else
                          "SEPAL ahead here: it refines ViT-B+Δ's own frozen features with a small graph "
                          "network, so at equal CPU budgets it starts where ViT-B+Δ ends.")
        else:
            sepal, sepal_note = "SEPAL or ViT-B+Δ not run", "Needs both chapters' completed runs."
    rows.append(("ViT-B+Δ has the best mean normalised MSE", "ViT-B+Δ", ours_best, best_note))
    rows.append(("STNet and ViT-B+Δ are most often the best model", "STNet, ViT-B+Δ", ours_wins, wins_note))
    rows.append(("SEPAL stays behind ViT-B+Δ", "behind", sepal, sepal_note))

    fewest = next(k for k in by_params if models.record(k).n_params_128 > 0)
    ours_params = f"{names[by_params[-1]]} / {names[fewest]} (at 112 px; Hist2ST at 224 px: the most)"
    rows.append(("Hist2ST has the most trainable parameters, ShuffleNet the fewest", "Hist2ST / ShuffleNet",
                 ours_params, "Hist2ST's width grows with its patch size: at SpaRED's 224-px patches it has "
                 "about 740 M parameters and leads; the book feeds it 112-px patches, the Hist2ST paper's size "
                 "(benchmarks/bench_predictors.py, table 1)."))
    return pd.DataFrame(rows, columns=["claim", "paper", "ours", "note"])


def model_tests(store: pd.DataFrame, scenario: str = "completed", split: str = "test") -> tuple[dict, pd.DataFrame]:
    """Supp. Table 2: do the models' per-dataset MSEs differ?

    The book's choice: a Friedman test over the models with datasets as blocks (each dataset's
    MSE averaged over seeds; only datasets where every model ran), then every pair of models by
    a paired Wilcoxon signed-rank test, Holm-corrected (:func:`statsmodels.stats.multitest.multipletests`).
    Returns the Friedman result (statistic, p, models, datasets; NaN with fewer than 3 models or
    2 datasets) and one row per pair (median difference, p, Holm-adjusted p, rejected at 5%).
    """
    from itertools import combinations

    from statsmodels.stats.multitest import multipletests

    per = normalised_mse(store, scenario, split)  # each (dataset, model)'s MSE, seeds averaged
    wide = per.pivot(index="dataset", columns="model", values="mse").dropna() if len(per) else pd.DataFrame()
    friedman = {"statistic": np.nan, "p": np.nan, "n_models": wide.shape[1], "n_datasets": wide.shape[0]}
    if wide.shape[1] >= 3 and wide.shape[0] >= 2:
        res = stats.friedmanchisquare(*[wide[m] for m in wide])
        friedman.update(statistic=float(res.statistic), p=float(res.pvalue))
    rows = []
    for a, b in combinations(sorted(wide), 2):
        diff = (wide[a] - wide[b]).to_numpy(float)
        p = float(stats.wilcoxon(diff).pvalue) if len(diff) >= 2 and np.any(diff != 0) else np.nan
        rows.append({"model_a": a, "model_b": b, "median_diff": float(np.median(diff)) if len(diff) else np.nan, "p": p})
    pairs = pd.DataFrame(rows, columns=["model_a", "model_b", "median_diff", "p"])
    ok = pairs["p"].notna()
    pairs["p_holm"], pairs["rejected"] = np.nan, False
    if ok.any():
        reject, p_adj, _, _ = multipletests(pairs.loc[ok, "p"], alpha=0.05, method="holm")
        pairs.loc[ok, "p_holm"], pairs.loc[ok, "rejected"] = p_adj, reject
    return friedman, pairs


def best_pcc(store: pd.DataFrame, split: str = "test", scenarios: Sequence[str] = ("raw", "completed")) -> pd.DataFrame:
    """Fig. 1b of the paper: each dataset's best PCC-Gene over the models (seeds averaged first),
    one column per scenario, and ``gain`` = last scenario − first."""
    runs = latest_runs(store, split=split)
    runs = runs[runs["scenario"].isin(scenarios)] if len(runs) else runs
    if runs.empty:
        return pd.DataFrame(columns=["dataset", *scenarios, "gain"])
    per = runs.groupby(["dataset", "scenario", "model"])["pcc_gene"].mean()
    table = per.groupby(["dataset", "scenario"]).max().unstack().reindex(columns=list(scenarios))
    table["gain"] = table[scenarios[-1]] - table[scenarios[0]]
    return table.reset_index()


def completion_by_dataset(store: pd.DataFrame, split: str = "test", masking: float | None = None) -> pd.DataFrame:
    """Fig. 3a of the paper across datasets: each completion method's MSE of hidden values per
    dataset (one row per dataset and method), from the store's ``completion`` rows.

    ``masking`` picks one masking level (a fraction, e.g. 0.3); ``None`` averages the levels
    present, seeds first. Columns: ``dataset``, ``method``, ``mse``, ``n_levels``, ``n_seeds``.
    """
    cols = ["dataset", "method", "mse", "n_levels", "n_seeds"]
    rows = latest_runs(store, stage="completion", split=split)
    if rows.empty:
        return pd.DataFrame(columns=cols)
    if masking is not None:
        rows = rows[np.isclose(rows["masking"].astype(float), float(masking))]
        if rows.empty:
            return pd.DataFrame(columns=cols)
    per_level = rows.groupby(["dataset", "model", "scenario"]).agg(mse=("mse", "mean"), n_seeds=("seed", "nunique"))
    table = per_level.groupby(level=["dataset", "model"]).agg(mse=("mse", "mean"), n_levels=("mse", "size"),
                                                               n_seeds=("n_seeds", "max"))
    return table.reset_index().rename(columns={"model": "method"})[cols]


#: The structure scores of a run (:func:`spared_utils.metrics.structure`), in the order tables show them.
STRUCTURE_COLUMNS = ("moran_pred", "moran_true", "moran_gap", "corr_distance")


def predictor_table(store: pd.DataFrame, split: str = "test", references: bool = True) -> pd.DataFrame:
    """The predictors side by side: one row per (dataset, model, scenario) with the mean and sd
    over seeds of test MSE and PCC-Gene, the training mean's MSE on the same spots
    (``baseline_mse``, from the ``predict_baseline`` rows), ``mse_ratio`` = MSE / baseline
    (below 1: better than predicting each gene's mean), what the predicted maps keep of the
    tissue's structure (:data:`STRUCTURE_COLUMNS`, where the rows have them), trainable
    parameters and training seconds; sorted by dataset, then scenario, then MSE.

    With ``references``, the references of :mod:`spared_utils.predict.references` (stage
    ``predict_reference``: the library-size null and the measured neighbours) are rows of
    scenario ``reference``, scored on every held-out spot where the store has that.
    """
    cols = ["dataset", "model", "scenario", "n_seeds", "mse", "mse_sd", "pcc_gene", "baseline_mse", "mse_ratio",
            *STRUCTURE_COLUMNS, "n_params", "train_s"]
    runs = latest_runs(store, split=split)
    if references:
        refs = store[(store["stage"] == "predict_reference") & (store["split"] == split)]
        if len(refs):
            refs = refs.assign(eval_spots=refs.get("eval_spots", pd.Series(np.nan, index=refs.index)).fillna(-1))
            # every held-out spot (-1) where some chapter scored them all, else the most spots
            widest = refs.groupby("dataset")["eval_spots"].transform(lambda v: -1 if (v == -1).any() else v.max())
            refs = _newest(refs[refs["eval_spots"] == widest], ["dataset", "model", "seed"]).assign(scenario="reference")
            runs = pd.concat([runs, refs], ignore_index=True) if len(runs) else refs
    if runs.empty:
        return pd.DataFrame(columns=cols)
    for col in ("pcc_gene", "n_params", "wall_time_s", "eval_spots", *STRUCTURE_COLUMNS):
        if col not in runs:
            runs[col] = np.nan
    # the training mean is scored on the spots each chapter evaluated (``eval_spots``): match on it
    runs["eval_spots"] = runs["eval_spots"].fillna(-1)
    table = runs.groupby(["dataset", "model", "scenario"]).agg(
        n_seeds=("seed", "nunique"), mse=("mse", "mean"), mse_sd=("mse", "std"), pcc_gene=("pcc_gene", "mean"),
        **{c: (c, "mean") for c in STRUCTURE_COLUMNS},
        n_params=("n_params", "max"), train_s=("wall_time_s", "mean"), eval_spots=("eval_spots", "max")).reset_index()
    base = store[(store["stage"] == "predict_baseline") & (store["split"] == split)].copy()
    if len(base):
        base["eval_spots"] = base.get("eval_spots", pd.Series(np.nan, index=base.index)).fillna(-1)
        base = _newest(base, ["dataset", "seed", "eval_spots"])
        per = base.groupby(["dataset", "eval_spots"])["mse"].mean().rename("baseline_mse")
        table = table.join(per, on=["dataset", "eval_spots"])
    else:
        table["baseline_mse"] = np.nan
    table["mse_ratio"] = table["mse"] / table["baseline_mse"]
    table["_order"] = table["scenario"].map({**_SCENARIO_ORDER, "reference": -1}).fillna(len(_SCENARIO_ORDER))
    return table.sort_values(["dataset", "_order", "mse"]).reset_index(drop=True)[cols]


def bias_decomposition(store: pd.DataFrame, split: str = "test", reference: str = "masked") -> pd.DataFrame:
    """Why a training scenario scores what it scores: each run's MSE on real values split into
    the squared mean error (``bias²``) and the rest (``mse − bias²``: error that no constant
    shift removes), averaged per (model, scenario) over datasets and seeds, beside the scenario's
    ``target_shift`` (:meth:`spared_utils.predict.PredictionData.target_shift`).

    ``d_mse`` and ``d_bias2`` are the differences to the ``reference`` scenario of the same model
    (matched runs, then averaged): where ``d_bias2`` ≈ ``d_mse``, a scenario loses to the reference
    by its shift alone. Rows without ``bias`` (written before it existed) are left out.
    """
    cols = ["model", "scenario", "n", "mse", "bias", "bias2", "rest", "target_shift", "d_mse", "d_bias2"]
    runs = latest_runs(store, split=split)
    if runs.empty or "bias" not in runs:
        return pd.DataFrame(columns=cols)
    runs = runs.dropna(subset=["bias", "mse"]).copy()
    if "target_shift" not in runs:
        runs["target_shift"] = np.nan
    runs["bias2"] = runs["bias"].astype(float) ** 2
    runs["rest"] = runs["mse"] - runs["bias2"]
    key = ["model", "dataset", "seed"]
    ref = runs[runs["scenario"] == reference].set_index(key)[["mse", "bias2"]]
    joined = runs.join(ref, on=key, rsuffix="_ref")
    joined["d_mse"] = joined["mse"] - joined["mse_ref"]
    joined["d_bias2"] = joined["bias2"] - joined["bias2_ref"]
    table = joined.groupby(["model", "scenario"]).agg(
        n=("mse", "size"), mse=("mse", "mean"), bias=("bias", "mean"), bias2=("bias2", "mean"), rest=("rest", "mean"),
        target_shift=("target_shift", "mean"), d_mse=("d_mse", "mean"), d_bias2=("d_bias2", "mean")).reset_index()
    return table.sort_values(["model", "scenario"], key=lambda c: c.map(_SCENARIO_ORDER) if c.name == "scenario" else c)[
        cols].reset_index(drop=True)


def stale(store: pd.DataFrame, budget: str = "cpu") -> pd.Series:
    """Whether each ``predict`` row of ``store`` is stale: its ``config_hash`` is not the one the
    current code gives its run at ``budget`` (:func:`spared_utils.predict.harness.row_hash`);
    False for other stages and for rows without a hash."""
    out = pd.Series(False, index=store.index)
    if "config_hash" not in store:
        return out
    rows = store[(store["stage"] == "predict") & store["config_hash"].notna()]
    cache: dict[tuple, str] = {}
    for i, row in rows.iterrows():
        key = tuple(row.get(k) for k in ("model", "dataset", "scenario", "completion", "seed", "learning_rate",
                                          "pretrained"))
        if key not in cache:
            try:
                cache[key] = row_hash(row.to_dict(), budget)
            except (KeyError, ValueError, TypeError):  # a model, dataset or option the code no longer knows
                cache[key] = ""
        out[i] = cache[key] != row["config_hash"]
    return out


def run_sources(store: pd.DataFrame, split: str = "test", budget: str = "cpu") -> pd.DataFrame:
    """Where the rows of each dataset come from: one row per (dataset, source) with the dataset's
    kind (:func:`dataset_kinds`), the predictor runs on ``split`` (the newest of each), their
    models and seeds, the completion rows, and how many predictor rows are :func:`stale`."""
    cols = ["dataset", "kind", "source", "runs", "models", "seeds", "completion_rows", "stale"]
    if store.empty:
        return pd.DataFrame(columns=cols)
    store = store if "source" in store else store.assign(source="local")
    is_stale = stale(store, budget)
    rows = []
    for (dataset, source), part in store.groupby(["dataset", "source"]):
        runs = latest_runs(part, split=split)
        rows.append({"dataset": dataset, "source": source, "runs": len(runs),
                     "models": runs["model"].nunique() if len(runs) else 0,
                     "seeds": runs["seed"].nunique() if len(runs) else 0,
                     "completion_rows": int((part["stage"] == "completion").sum()),
                     "stale": int(is_stale[part.index][part["split"] == split].sum())})
    table = pd.DataFrame(rows)
    table["kind"] = table["dataset"].map(dataset_kinds(table["dataset"].unique()))
    return table.sort_values(["kind", "dataset", "source"]).reset_index(drop=True)[cols]


def beats_training_mean(store: pd.DataFrame, scenario: str = "completed", split: str = "test") -> pd.DataFrame:
    """Per dataset (rows, generated first) and model (columns): MSE over the training mean's on
    the same spots (:func:`predictor_table`'s ``mse_ratio``, seeds averaged); below 1 the model
    beats each gene's training mean. The references follow the models, as ``<name> (reference)``."""
    table = predictor_table(store, split=split)
    refs = table[table["scenario"] == "reference"].assign(model=lambda t: t["model"] + " (reference)")
    table = table[table["scenario"] == scenario]
    if table.empty:
        return pd.DataFrame()
    wide = pd.concat([table, refs]).pivot_table(index="dataset", columns="model", values="mse_ratio")
    wide = wide[[*sorted(set(table["model"])), *sorted(set(refs["model"]) & set(wide.columns))]]
    kinds = dataset_kinds(wide.index)
    order = sorted(wide.index, key=lambda d: (kinds[d] != "generated", d))
    wide = wide.loc[order]
    wide.index = [f"{d} ({kinds[d]})" for d in wide.index]
    return wide


def predictor_verdicts(table: pd.DataFrame, names: dict[str, str] | None = None) -> list[str]:
    """Chapter 91's closing lines from :func:`predictor_table`: per scenario the best model, how
    many beat the training mean and each reference, then how much of the measured maps' spatial
    autocorrelation the predictions keep."""
    names = names or {}
    label = lambda m: names.get(m, m)  # noqa: E731
    lines = []
    models_ = table[table["scenario"] != "reference"]
    refs = table[table["scenario"] == "reference"].set_index("model")
    for scenario, part in models_.groupby("scenario", sort=False):
        best = part.iloc[0]
        beat = part.loc[part["mse_ratio"] < 1, "model"].map(label)
        lines.append(f"- `{scenario}`: best {label(best['model'])} (MSE {best['mse']:.3f}, {best['mse_ratio']:.2f}× the "
                     f"training mean); {len(beat)} of {len(part)} predictors beat the mean"
                     + (f" ({', '.join(beat)})." if len(beat) else "."))
        for ref in refs.index:
            n = int((part["mse"] < refs.loc[ref, "mse"]).sum())
            lines.append(f"  - {n} of {len(part)} beat the {label(ref)} reference (MSE {refs.loc[ref, 'mse']:.3f}).")
    if len(models_) and models_["moran_pred"].notna().any():
        kept = (models_["moran_pred"] / models_["moran_true"]).groupby(models_["model"]).mean()
        lines.append(f"- Structure: the predicted maps keep {kept.min():.0%} to {kept.max():.0%} of the measured maps' "
                     f"Moran's I (most: {label(kept.idxmax())}; the references: "
                     + ", ".join(f"{label(r)} {refs.loc[r, 'moran_pred'] / refs.loc[r, 'moran_true']:.0%}"
                                 for r in refs.index) + ").")
    return lines


def display_names() -> dict[str, str]:
    """What the benchmark's tables and figures call each model and reference."""
    names = {k: models.display_name(k) for k in models.NAMES}
    names.update({"library_size": "library size", "spatial_neighbours": "measured neighbours",
                  "library_size (reference)": "library size (reference)",
                  "spatial_neighbours (reference)": "measured neighbours (reference)"})
    return names
