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
# # The benchmark: does completion help, and which predictor is best?
#
# **What it shows:** the paper's benchmark regenerated from the book's own runs on eight
# datasets — seven generated, one real — with the question split the way the paper does not:
# does completion help because it replaces zeros, does it help at all once the loss skips
# missing values, and does a better completion (SpaCKLE+) make better predictors? Then how the
# eleven predictors compare (Fig. 4), whether their differences are significant (Supp. Table
# 2), and the paper's claims beside ours.
# **What it needs:** the published benchmark, `data/benchmark/results.csv` with its
# `provenance.yml` (written by `make benchmark`, which runs `workflow/benchmark.yml`), and
# whatever the local results store adds (the chapters you ran). It trains nothing: seconds on
# a CPU.
# **What it writes:** nothing.
# **Measured runtime:** seconds on a CPU (the whole notebook in `make book`, dated, on the
# {doc}`Measurements </measurements>` page); GPU not needed.
#
# The paper {cite:p}`mejia2024spackle` trains every predictor on raw data — where a value that
# was missing is a zero and the loss reads it — and on SpaCKLE-completed data, and reports that
# completion helps. The book adds `masked` (the loss skips missing values; nothing is filled
# in), `median` (the curation's own completion) and `completed:spackle_plus` (the book's
# completion, chapter 02, as it stood at the commit `provenance.yml` names: SpaCKLE+ has changed
# since, see the ablation in chapter 02). A result on generated data says little about real tissue unless a
# real dataset agrees, so every table that pools datasets keeps the two kinds apart.

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
dataset = "synthetic"  # the dataset read when `datasets` is None
# "all": every dataset with rows (the published benchmark and the local store);
# None: `dataset` only; or a list of ids
datasets = "all"  # type: list|'all'
split = "test"  # the held-out split whose scores are compared ("val" or "test")
scenario = "completed"  # the scenario the model comparison (Fig. 4) uses
# True: data/benchmark (make benchmark); False: the local store only; or a folder
published = True  # type: bool|str
results_file = None  # type: str  None: the local results store (results/results.csv)

# %%
from IPython.display import Markdown, display

import spared_utils as su
from spared_utils import analysis

store = su.io.read_benchmark(results_file, published=published)
if datasets != "all":
    wanted = [dataset] if datasets is None else list(datasets)
    store = store[store["dataset"].isin(wanted)]
runs = analysis.latest_runs(store, split=split)
kinds = analysis.dataset_kinds(store["dataset"].unique())
generated = store[store["dataset"].map(kinds) == "generated"]
names = analysis.display_names()
print(
    f"{len(runs)} predictor runs on {split}: {runs['dataset'].nunique()} datasets, "
    f"{runs['model'].nunique()} models, {runs['scenario'].nunique()} scenarios:\n"
    + ", ".join(sorted(runs["scenario"].unique()))
)

# %% [markdown]
# ## The answers
#
# The chapter's two questions, answered from the runs below: every sentence is computed from
# the pooled differences of {ref}`sec-benchmark-why` and the completion errors of Fig. 3, with
# the generated datasets and the real one apart. An interval that holds 0 is "no difference".

# %%
diffs = su.tl.scenario_differences(store, split=split)
completion = analysis.completion_by_dataset(store, split)
answers = analysis.completion_answers(diffs, completion)
for question, lines in answers.items():
    display(Markdown(f"**{question}**\n\n" + "\n".join(lines)))

# %% [markdown]
# ## Where the rows come from
#
# One line per dataset and source: `published` rows come from the benchmark in
# `data/benchmark/` (its provenance below), `local` rows from chapters run on this machine.
# Where both hold a run, the newer row counts. A row is *stale* when the current code no longer
# gives its run the configuration hash it was written with (a budget or the code changed
# since); stale rows still count, and their number is printed here.

# %%
sources = analysis.run_sources(store, split)
sources

# %%
provenance = su.io.benchmark_provenance(published)
print(su.io.describe_provenance(provenance))
n_stale = int(sources["stale"].sum()) if len(sources) else 0
print(f"stale predictor rows on {split}: {n_stale}")

# %% [markdown]
# ## The datasets (Fig. 1a)
#
# SpaRED's 26 datasets by organism and tissue, from the registry's published spot counts.

# %% mystnb={"figure": {"caption": "Spots of the 26 SpaRED datasets per organism and tissue (the paper's Fig. 1a, from the registry).", "name": "fig-benchmark-spots"}}
spots = analysis.registry_spots()
spots["label"] = spots["tissue"] + " (" + spots["organism"] + ")"
ax = spots.plot.barh(
    x="label", y="spots", legend=False, figsize=(6, 6), color="#0173b2"
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

# %% mystnb={"figure": {"caption": "Best PCC-Gene per dataset, raw \u2192 completed training (the paper's Fig. 1b); the real dataset is marked.", "name": "fig-benchmark-best-pcc"}}
best = analysis.best_pcc(store, split)
best["dataset"] = best["dataset"].map(lambda d: f"{d} ({kinds.get(d, '?')})")
ax = su.pl.best_pcc_arrows(best) if len(best) else None

# %% [markdown]
# ## Completion across datasets (Fig. 3)
#
# The paper's Fig. 3 aggregate: each completion method's error on hidden real values (the
# masking protocol of chapter 02, every masking level averaged), one point per dataset. The
# table gives each method's median over the generated datasets beside its error on the real
# one; every dataset's value is folded below it.

# %%
by_kind = completion.assign(kind=completion["dataset"].map(kinds))
by_kind = by_kind.groupby(["method", "kind"])["mse"].median().unstack("kind")
su.pl.readable(by_kind.round(3)) if len(completion) else completion

# %%
every = completion.pivot(index="dataset", columns="method", values="mse")
su.pl.folded(su.pl.readable(every).reset_index(), "Every dataset and method", 3)

# %% mystnb={"figure": {"caption": "Completion MSE of hidden values per method, one point per dataset (log scale; the paper's Fig. 3 across datasets).", "name": "fig-benchmark-completion"}}
methods = tuple(completion.groupby("method")["mse"].mean().sort_values().index)
ax = (
    su.pl.completion_mse_violin(completion, by="dataset", methods=methods)
    if len(completion)
    else None
)

# %% [markdown]
# (sec-benchmark-why)=
# ## Does completion help, and why?
#
# Differences of test MSE between scenarios, per model and pooled over models, with the
# **dataset as the unit**: the runs of a dataset are matched on their seed, the seeds averaged,
# and the interval (Student t) and the tests (paired t, Wilcoxon signed-rank) are over
# datasets; `seed_sd` is the spread of the per-seed differences within a dataset. The four
# questions: `completed − raw` (the paper's comparison: completion against zeros),
# `completed − masked` (SpaCKLE against simply skipping missing values), `median − masked` (the
# simplest completion against skipping) and `completed:spackle_plus − completed` (does a better
# completion make better predictors?). With a single real dataset, its seeds are the unit
# (`unit` says so). Negative: the first scenario is better.

# %%
ci = diffs.apply(
    lambda r: "" if r["n"] < 2 else f"{r['ci_low']:+.3f} to {r['ci_high']:+.3f}", axis=1
)
shown = diffs.assign(ci95=ci)[
    ["kind", "pair", "unit", "n", "mean_diff", "ci95", "p_wilcoxon"]
]
shown[diffs["model"] == analysis.ALL_MODELS].round(4)  # pooled over the models

# %%
su.pl.folded(diffs, "Every model's differences (all columns)")

# %% mystnb={"figure": {"caption": "Test-MSE differences between training scenarios per model on the generated datasets, each dataset one unit (seeds averaged), with 95% intervals; negative: the first scenario is better.", "name": "fig-benchmark-scenarios"}}
gen = diffs[diffs["kind"] == "generated"]
ax = su.pl.scenario_differences(gen) if len(gen) else None

# %% [markdown]
# What the pooled rows say, in words (each sentence is computed from the table above):

# %%
display(Markdown("\n".join(analysis.scenario_verdicts(diffs))))

# %% [markdown]
# ### Why: what the targets teach
#
# Every scenario is scored on the same real values. A model trained on targets whose mean sits
# below the real values' mean (zeros in `raw`, a completion's estimates in `median` and
# `completed`) learns that offset, and it reaches the test set as a bias: MSE = bias² + the
# rest. The table splits each scenario's MSE that way, beside its target shift (the training
# targets' mean minus the real values' mean, per gene, averaged), and gives the differences to
# the `masked` runs of the same model, dataset and seed: where `d_bias2` is close to `d_mse`,
# the scenario loses to `masked` through its shift alone.
#
# A shift is expected even from a perfect completion: values go missing more often where a
# gene is expressed little, so the values that fill them sit below the real values' mean, and a
# loss on every entry pulls the model towards spots it will never be scored on. Against zeros
# (`raw`) any completion helps a lot; against a loss that reads only what is scored (`masked`)
# completion can only help through what it adds to the real values' neighbourhood.

# %%
decomposition = analysis.bias_decomposition(generated, split)
cols = ["model", "scenario", "mse", "bias2", "target_shift", "d_mse", "d_bias2"]
decomposition[cols].round(3)

# %%
su.pl.folded(decomposition, "Every column (runs, bias, the rest of the MSE)", 3)

# %% mystnb={"figure": {"caption": "Mean prediction error on real test values against the training targets' shift, per model and scenario (generated datasets); the dashed line is bias = shift.", "name": "fig-benchmark-bias"}}
ax = su.pl.bias_vs_shift(decomposition) if len(decomposition) else None

# %% [markdown]
# ## Which models beat the training mean, where?
#
# Each model's test MSE over the training mean's on the same spots, per dataset, in the
# `scenario` chosen above (seeds averaged); below 1 the model predicts the real values better
# than each gene's mean. On real tissue, models trained from random weights for a few CPU
# minutes may learn little: the real dataset's row says whether they did here. The last two
# columns are the references of chapter 91 (the library-size null and the measured
# neighbours), not predictors.

# %% mystnb={"figure": {"caption": "Test MSE over the training mean's, per dataset and model (completed scenario; blue: the model beats the mean).", "name": "fig-benchmark-beats-mean"}}
ratio = analysis.beats_training_mean(store, scenario, split)
ax = su.pl.training_mean_ratio(ratio, names=names) if len(ratio) else None

# %%
predictors = ratio[[c for c in ratio.columns if not c.endswith("(reference)")]]
beat = {
    d: [names.get(m, m) for m in row.index[row < 1]]
    for d, row in predictors.iterrows()
}
display(Markdown("\n".join(
    f"- {d}: {len(ms)} of {predictors.shape[1]} beat the mean"
    + (f" ({', '.join(ms)})" if ms else "")
    for d, ms in beat.items()
)))

# %% [markdown]
# ## How the predictors compare (Fig. 4)
#
# Each model's MSE over the best model's MSE on the same dataset (1 = the best), on the
# generated datasets; the black bar is the mean ± sd across them. Fig. 4b puts the mean
# against the number of trainable parameters.

# %%
norm = analysis.normalised_mse(generated, scenario, split)
summary = analysis.model_summary(norm)
summary.assign(model=summary["model"].map(lambda m: names.get(m, m))).round(3)

# %% mystnb={"figure": {"caption": "Normalised test MSE per model on the generated datasets, one dot per dataset, with the mean \u00b1 sd (the paper's Fig. 4a).", "name": "fig-benchmark-normalised"}}
ax = su.pl.normalised_mse_models(norm, summary) if len(summary) else None

# %% mystnb={"figure": {"caption": "Generated datasets on which each model has the lowest test MSE (the paper's Fig. 4a, right).", "name": "fig-benchmark-wins"}}
ax = su.pl.wins_pie(summary, names=names) if len(summary) else None

# %% mystnb={"figure": {"caption": "Mean normalised test MSE against trainable parameters (log scale; the paper's Fig. 4b).", "name": "fig-benchmark-parameters"}}
ax = su.pl.mse_vs_parameters(summary) if len(summary) else None

# %% [markdown]
# ## Do the models differ? (Supp. Table 2)
#
# A Friedman test over the models with the generated datasets as blocks (MSE averaged over
# seeds; only datasets where every model ran), then each pair of models by a paired Wilcoxon
# signed-rank test with Holm's correction for the number of pairs (`statsmodels`'
# `multipletests`; chosen over a Nemenyi test because it needs no equal-variance assumption
# across models). The table shows the pairs that differ at 5% after the correction; every
# pair is folded below it.

# %%
friedman, pairs = analysis.model_tests(generated, scenario, split)
print(
    f"Friedman: {friedman['n_models']} models on {friedman['n_datasets']} datasets, "
    f"statistic {friedman['statistic']:.3f}, p {friedman['p']:.3g}"
)
pairs[pairs["rejected"].astype(bool)].round(4)

# %%
su.pl.folded(pairs, f"All {len(pairs)} pairs of models")

# %% [markdown]
# ## The paper's claims beside ours
#
# Each claim of the paper, what the generated datasets show, and a sentence on the difference
# (the real dataset's answers are in the tables above).

# %%
claims = analysis.paper_claims(generated, split=split)
claims.style.hide(axis="index").set_properties(
    subset=["note"], **{"text-align": "left"}
)

# %%
lines = [
    f"- {len(runs)} runs on {split} from {runs['dataset'].nunique()} dataset(s) "
    f"({sum(1 for k in kinds.values() if k == 'real')} real); {n_stale} stale row(s)."
]
lines += analysis.scenario_verdicts(diffs)
if len(summary):
    top = summary.iloc[0]
    lines.append(
        f"- Best mean normalised MSE ({scenario}, generated datasets): "
        f"{names.get(top['model'], top['model'])} ({top['mean']:.3f})."
    )
if friedman["n_datasets"] >= 2:
    lines.append(
        f"- Friedman p {friedman['p']:.3g}; "
        f"{int(pairs['rejected'].astype(bool).sum())} of {len(pairs)} pairs differ "
        "after Holm's correction."
    )
display(Markdown("## What we saw\n\n" + "\n".join(lines)))
