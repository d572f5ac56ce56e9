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
# # The predictors side by side
#
# **What it shows:** every predictor run on one dataset, in one table and two figures: test
# MSE and PCC-Gene per training scenario, each against the trivial predictor (each gene's mean
# over its real training values) scored on the same spots; beside them two *references* the
# paper lacks; and what each prediction keeps of the tissue's structure, not only how far it
# is from the values.
# **What it needs:** rows of the dataset in the published benchmark (`data/benchmark/`,
# `make benchmark`) or the local results store (the predictor chapters 10–20). It trains
# nothing: seconds on a CPU.
# **What it writes:** nothing.
# **Measured runtime:** seconds on a CPU (the whole notebook in `make book`, dated, on the
# {doc}`Measurements </measurements>` page); GPU not needed.
#
# Each predictor chapter reports its own model; this page puts them together, the view the
# paper's Table 1 gives per dataset {cite:p}`mejia2024spackle`. The ratio to the training mean
# makes datasets and scenarios comparable: below 1, the model predicts the real values better
# than a constant per gene; chapter 90 does the same across datasets (Fig. 4).
#
# The two references (scenario `reference`; `spared_utils.predict.references`) read
# measurements a predictor never sees, so they are yardsticks, not competitors:
# `library_size` fits each gene on the spot's log library size alone — an image-free null that
# shows how much of a model's skill is cell density — and `spatial_neighbours` predicts each
# spot from the measured values of its neighbours on the slide — what spatial context alone
# gives.

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
dataset = "synthetic"  # the dataset whose runs are compared
split = "test"  # "val" or "test"
# True: data/benchmark (make benchmark) and the local store; False: the local store
published = True  # type: bool|str
results_file = None  # type: str  None: the local results store (results/results.csv)

# %%
from IPython.display import Markdown, display

import spared_utils as su
from spared_utils import analysis

store = su.io.read_benchmark(results_file, published=published)
store = store[store["dataset"] == dataset]
table = analysis.predictor_table(store, split=split)
names = {k: su.models.display_name(k) for k in su.models.NAMES}
names.update(library_size="library size", spatial_neighbours="measured neighbours")
models = table[table["scenario"] != "reference"]
print(
    f"{models['model'].nunique()} predictors on {dataset} ({split}), scenarios "
    f"{sorted(models['scenario'].unique())}, up to "
    f"{models['n_seeds'].max() if len(models) else 0} seed(s); rows from "
    f"{', '.join(sorted(store['source'].unique())) if len(store) else 'nowhere'}"
)

# %% [markdown]
# ## The table
#
# One row per predictor and scenario, best first within a scenario: MSE (mean over seeds), its
# ratio to the training mean's MSE on the same spots, PCC-Gene, and two structure scores:
# `moran_gap`, the mean over genes of |Moran's I of the predicted map − of the measured map|,
# and `corr_distance`, the mean absolute difference between the predicted and the measured
# gene–gene correlations (0 for both: the structure is kept). Every column, the seeds' spread
# and the costs included, is folded below.

# %%
shown = table.assign(model=table["model"].map(lambda m: names.get(m, m)))
cols = ["model", "scenario", "mse", "mse_ratio", "pcc_gene", "moran_gap",
        "corr_distance"]
shown[cols].round(3)

# %%
everything = "Every column (seeds' spread, training mean, costs)"
su.pl.folded(shown.drop(columns="dataset"), everything, 3)

# %% [markdown]
# ## The figures

# %% mystnb={"figure": {"caption": "Test MSE of each predictor over the training mean's on the same spots, one colour per training scenario, the references as diamonds (bars: sd over seeds); left of the dashed line the model beats the mean.", "name": "fig-predictors-ratio"}}
ax = su.pl.predictor_comparison(table, names=names) if len(table) else None

# %% mystnb={"figure": {"caption": "Error against structure: MSE over the training mean's (x) and the share of the measured maps' spatial autocorrelation the predicted maps keep (y, Moran's I predicted / measured), per predictor and scenario; the references are labelled.", "name": "fig-predictors-structure"}}
ax = su.pl.structure_vs_error(table, names=names) if len(table) else None

# %%
lines = analysis.predictor_verdicts(table, names)
if not lines:
    lines.append(f"- No runs on {dataset} yet: run chapters 10–20 or `make benchmark`.")
display(Markdown("## What we saw\n\n" + "\n".join(lines)))
