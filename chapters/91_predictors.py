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
# **What it shows:** every predictor the book has run on one dataset, in one table and one
# figure: test MSE and PCC-Gene per training scenario, each against the trivial predictor (each
# gene's mean over its real training values) scored on the same spots, with trainable parameters
# and training time.
# **What it needs:** rows in the results store from the predictor chapters (10–20) on the
# dataset; several seeds (the batch driver, `python -m spared_utils.batch`) give the spread.
# It trains nothing: seconds on a CPU.
# **What it writes:** nothing.
# **Measured runtime:** seconds on a CPU (the whole notebook in `make book`, dated, on the
# {doc}`Measurements </measurements>` page); GPU not needed.
#
# Each predictor chapter reports its own model; this page puts them together, the view the
# paper's Table 1 gives per dataset {cite:p}`mejia2024spackle`. The ratio to the training mean
# makes datasets and scenarios comparable: below 1, the model predicts the real values better
# than a constant per gene; chapter 90 does the same across datasets (Fig. 4).

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
results_file = None  # type: str  None: the book's results store (results/results.csv)

# %%
from IPython.display import Markdown, display

import spared_utils as su
from spared_utils import analysis

store = su.io.read_results(results_file)
table = analysis.predictor_table(store[store["dataset"] == dataset], split=split)
names = {k: su.models.display_name(k) for k in su.models.NAMES}
print(
    f"{table['model'].nunique()} predictors on {dataset} ({split}), scenarios "
    f"{sorted(table['scenario'].unique())}, "
    f"up to {table['n_seeds'].max() if len(table) else 0} seed(s)"
)

# %% [markdown]
# ## The table
#
# One row per predictor and scenario, best first within a scenario: MSE and PCC-Gene (mean over
# seeds; `mse_sd` their spread), the training mean's MSE on the same spots, their ratio,
# trainable parameters and mean training time in seconds.

# %%
shown = table.assign(model=table["model"].map(lambda m: names.get(m, m)))
shown.drop(columns="dataset").round(
    {
        "mse": 3,
        "mse_sd": 3,
        "pcc_gene": 3,
        "baseline_mse": 3,
        "mse_ratio": 3,
        "train_s": 0,
    }
)

# %% [markdown]
# ## The figure

# %% mystnb={"figure": {"caption": "Test MSE of each predictor over the training mean's on the same spots, one colour per training scenario (bars: sd over seeds); left of the dashed line the model beats the mean.", "name": "fig-predictors-ratio"}}
ax = su.pl.predictor_comparison(table, names=names) if len(table) else None

# %% [markdown]
# ## What we saw

# %%
lines = []
for scenario, part in table.groupby("scenario", sort=False):
    best = part.iloc[0]
    beat = part.loc[part["mse_ratio"] < 1, "model"].map(lambda m: names.get(m, m))
    lines.append(
        f"- `{scenario}`: best {names.get(best['model'], best['model'])} "
        f"(MSE {best['mse']:.3f}, {best['mse_ratio']:.2f}× the training mean); "
        f"{len(beat)} of {len(part)} predictors beat the mean"
        + (f" ({', '.join(beat)})." if len(beat) else ".")
    )
if not lines:
    lines.append(
        f"- No predictor runs on {dataset} in the store yet: "
        "run chapters 10–20 first."
    )
display(Markdown("## What we saw\n\n" + "\n".join(lines)))
