# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The benchmark: what the results store says
#
# **What it shows:** the paper's benchmark figures regenerated from every run the book has made —
# the datasets (Fig. 1a), whether completion helps and why (the four training scenarios), how the
# predictors compare across datasets (Fig. 4a, 4b) — and the paper's headline claims beside ours.
# **What it needs:** rows in the results store from the predictor chapters (10–20) and the
# completion chapter (02); several datasets and seeds for intervals and tests
# (`python -m spared_utils.batch`; then `python -m spared_utils.run 90_benchmark -p datasets all`).
# It trains nothing: seconds on a CPU.
# **What it writes:** nothing.
# **Measured runtime:** seconds on a CPU (the whole notebook in `make book`, dated, on the
# {doc}`Measurements </measurements>` page); GPU not needed.
#
# The paper {cite:p}`mejia2024spackle` trains every predictor on raw data — where a value that was
# missing is a zero and the loss reads it — and on SpaCKLE-completed data, and reports that
# completion helps. The book adds two scenarios the paper lacks: `masked` (the loss skips missing
# values; nothing is filled in) and `median` (the curation's own completion), so that the
# question splits in two: does completion help because it replaces zeros, and does it help at all
# once the loss ignores missing values?

# %% tags=["setup", "hide-cell"]
# Colab, Binder or a fresh kernel: install the project when it is missing.
import importlib.util
import os
import sys

if importlib.util.find_spec("spared_utils") is None:
    _url = "https://github.com/spared-book/spared-book"  # repository.url in _config.yml
    _repo = os.environ.get("SPARED_BOOK_REPO", _url)  # or a local clone
    _dir = _repo if os.path.isdir(_repo) else os.path.abspath("spared-book")
    if not os.path.isdir(_dir):
        get_ipython().system(f"git clone -q --depth 1 {_repo} {_dir}")  # noqa: F821
    get_ipython().run_line_magic("pip", f"install -q -e {_dir}")  # noqa: F821
    sys.path.insert(0, _dir)
    import torch

    _gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    print(f"installed spared_utils from {_repo}; GPU: {_gpu}")

# %% tags=["parameters"]
dataset = "synthetic"  # the dataset whose runs are read (when `datasets` is None)
# None: `dataset` only; "all": every dataset in the store (a batch plan);
# or a list of ids
datasets = None  # type: list|'all'
split = "test"  # the held-out split whose scores are compared ("val" or "test")
scenario = "completed"  # the scenario the model comparison (Fig. 4) uses
results_file = None  # type: str  None: the book's results store (results/results.csv)

# %%
import pandas as pd
from IPython.display import Markdown, display

import spared_utils as su
from spared_utils import analysis

store = su.io.read_results(results_file)
if datasets != "all":
    store = store[
        store["dataset"].isin([dataset] if datasets is None else list(datasets))
    ]
runs = analysis.latest_runs(store, split=split)
print(
    f"{len(runs)} predictor runs on {split}: {runs['dataset'].nunique()} datasets, "
    f"{runs['model'].nunique()} models, scenarios {sorted(runs['scenario'].unique())}"
)

# %% [markdown]
# ## The datasets (Fig. 1a)
#
# SpaRED's 26 datasets by organism and tissue, from the registry's published spot counts.

# %% mystnb={"figure": {"caption": "Spots of the 26 SpaRED datasets per organism and tissue (the paper's Fig. 1a, from the registry).", "name": "fig-benchmark-spots"}}
spots = analysis.registry_spots()
ax = spots.plot.barh(
    x="tissue", y="spots", legend=False, figsize=(6, 6), color="#0173b2"
)
ax.invert_yaxis()
ax.set_xlabel("spots")
ax.set_ylabel("")
_ = ax.set_title(
    f"{int(spots['spots'].sum()):,} spots in {int(spots['datasets'].sum())} datasets"
)

# %% [markdown]
# ## Best correlation per dataset (Fig. 1b)
#
# Each dataset's best PCC-Gene over the models, trained on raw and on completed data.

# %% mystnb={"figure": {"caption": "Best PCC-Gene per dataset, raw \u2192 completed training (the paper's Fig. 1b).", "name": "fig-benchmark-best-pcc"}}
best = analysis.best_pcc(store, split)
ax = su.pl.best_pcc_arrows(best) if len(best) else None

# %% [markdown]
# ## Completion across datasets (Fig. 3)
#
# The paper's Fig. 3 aggregate: each completion method's error on hidden real values (the
# masking protocol of chapter 02, every masking level averaged), one point per dataset.

# %%
completion = analysis.completion_by_dataset(store, split)
(
    completion.pivot(index="dataset", columns="method", values="mse").round(3)
    if len(completion)
    else completion
)

# %% mystnb={"figure": {"caption": "Completion MSE of hidden values per method, one point per dataset (log scale; the paper's Fig. 3 across datasets).", "name": "fig-benchmark-completion"}}
methods = tuple(completion.groupby("method")["mse"].mean().sort_values().index)
ax = (
    su.pl.completion_mse_violin(completion, by="dataset", methods=methods)
    if len(completion)
    else None
)

# %% [markdown]
# ## Does completion help, and why?
#
# Paired differences of test MSE between scenarios, per model, over runs of the same dataset and
# seed: `completed − raw` (the paper's comparison), `median − raw` (any completion against
# zeros) and `completed − masked` (SpaCKLE against simply skipping missing values). The interval
# is the paired t interval; with one run per model there is none (run more seeds or datasets).

# %%
diffs = su.tl.scenario_differences(store, split=split)
diffs.round(3)

# %% mystnb={"figure": {"caption": "Test-MSE differences between training scenarios per model, with 95% paired intervals (negative: the first scenario is better).", "name": "fig-benchmark-scenarios"}}
ax = su.pl.scenario_differences(diffs) if len(diffs) else None

# %% [markdown]
# ### Why: what the targets teach
#
# Every scenario is scored on the same real values. A model trained on targets whose mean sits
# below the real values' mean (zeros in `raw`, a completion's estimates in `median` and
# `completed`) learns that offset, and it reaches the test set as a bias: MSE = bias² + the
# rest. The table splits each scenario's MSE that way, beside its target shift
# (the training targets' mean minus the real values' mean, per gene, averaged), and gives the
# differences to the `masked` runs of the same model, dataset and seed: where `d_bias2` is close
# to `d_mse`, the scenario loses to `masked` through its shift alone.
#
# A shift is expected even from a perfect completion: values go missing more often where a gene
# is expressed little, so the values that fill them sit below the real values' mean, and a loss
# on every entry pulls the model towards spots it will never be scored on. Against zeros
# (`raw`) any completion helps a lot; against a loss that reads only what is scored (`masked`)
# completion can only help through what it adds to the real values' neighbourhood. Whether that
# outweighs the shift depends on the budget: the differences above and the table below say which
# way it goes for the runs in this store; the {doc}`Measurements </measurements>` page records
# ShuffleNet's answer at two budgets.

# %%
decomposition = analysis.bias_decomposition(store, split)
decomposition.round(3)

# %% mystnb={"figure": {"caption": "Mean prediction error on real test values against the training targets' shift, per model and scenario; the dashed line is bias = shift.", "name": "fig-benchmark-bias"}}
ax = su.pl.bias_vs_shift(decomposition) if len(decomposition) else None

# %% [markdown]
# ## How the predictors compare (Fig. 4)
#
# Each model's MSE over the best model's MSE on the same dataset (1 = the best), in the
# `scenario` chosen above; the black bar is the mean ± sd across datasets. Fig. 4b puts the mean
# against the number of trainable parameters.

# %%
norm = analysis.normalised_mse(store, scenario, split)
summary = analysis.model_summary(norm)
summary.round(3)

# %% mystnb={"figure": {"caption": "Normalised test MSE per model, one dot per dataset, with the mean \u00b1 sd (the paper's Fig. 4a).", "name": "fig-benchmark-normalised"}}
ax = su.pl.normalised_mse_models(norm, summary) if len(summary) else None

# %% mystnb={"figure": {"caption": "Datasets on which each model has the lowest test MSE (the paper's Fig. 4a, right).", "name": "fig-benchmark-wins"}}
names = {k: su.models.display_name(k) for k in su.models.NAMES}
ax = su.pl.wins_pie(summary, names=names) if len(summary) else None

# %% mystnb={"figure": {"caption": "Mean normalised test MSE against trainable parameters (log scale; the paper's Fig. 4b).", "name": "fig-benchmark-parameters"}}
ax = su.pl.mse_vs_parameters(summary) if len(summary) else None

# %% [markdown]
# ## Do the models differ? (Supp. Table 2)
#
# A Friedman test over the models with datasets as blocks (MSE averaged over seeds), then each
# pair of models by a paired Wilcoxon signed-rank test with Holm's correction. Both need several
# datasets: with one, the table is empty.

# %%
friedman, pairs = analysis.model_tests(store, scenario, split)
print(
    f"Friedman: {friedman['n_models']} models on {friedman['n_datasets']} datasets, "
    f"statistic {friedman['statistic']:.3f}, p {friedman['p']:.3g}"
)
pairs.round(4)

# %% [markdown]
# ## The paper's claims beside ours
#
# Each claim of the paper, what this store shows, and a sentence on the difference.

# %%
claims = analysis.paper_claims(store, split=split)
claims.style.hide(axis="index").set_properties(
    subset=["note"], **{"text-align": "left"}
)

# %% [markdown]
# ## What we saw

# %%
lines = [
    f"- The store holds {len(runs)} runs on {split} "
    f"from {runs['dataset'].nunique()} dataset(s)."
]
for row in diffs.itertuples():
    ci = (
        ""
        if row.n < 2
        else f" (95% CI {row.ci_low:+.3f} to {row.ci_high:+.3f}, n = {row.n})"
    )
    lines.append(f"- {row.model}: {row.pair} = {row.mean_diff:+.3f} test MSE{ci}.")
by = decomposition.set_index(["model", "scenario"]) if len(decomposition) else None

# %%
for model in decomposition["model"].unique() if by is not None else []:
    for shown in ("raw", "completed"):  # not `scenario`: the parameter is read below
        if (model, shown) in by.index and pd.notna(by.loc[(model, shown), "d_mse"]):
            r = by.loc[(model, shown)]
            lines.append(
                f"- {model}, {shown} − masked: {r['d_mse']:+.3f} test MSE, "
                f"of which {r['d_bias2']:+.3f} is squared bias "
                f"(bias {r['bias']:+.3f}, target shift {r['target_shift']:+.3f})."
            )
if len(summary):
    top = summary.iloc[0]
    lines.append(
        f"- Best mean normalised MSE ({scenario}): {top['model']} ({top['mean']:.3f})."
    )
display(Markdown("## What we saw\n\n" + "\n".join(lines)))
