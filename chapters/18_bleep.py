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
# # BLEEP: contrastive embeddings and retrieval
#
# **What it shows:** prediction by retrieval: the mean expression of the training spots whose
# expression embedding is closest to a spot's image embedding, trained with the loss on real
# values only (`masked`) and on SpaCKLE-completed data, both scored on real values.
# **What it needs:** a curated dataset with patches, and the completion the `completed` scenario
# reads (made here and stored if missing); a few minutes on a CPU.
# **What it writes:** rows in `results/results.csv` (stages `predict`, `predict_baseline`) and
# checkpoints under `results/checkpoints/<dataset>/bleep/`.
# **Measured runtime:** printed at the end of the run ("What we saw", in seconds, on the device
# it ran on); the book's own build on a 2-core CPU is on the {doc}`Measurements </measurements>`
# page.

# %% [markdown]
# BLEEP {cite:p}`xie2023bleep` trains an image encoder (ResNet-50) and an expression projection
# into one 256-dimensional space with a CLIP-style loss whose soft targets let similar spots share
# probability. It predicts by retrieval, not regression: the mean expression of the top-50
# training spots whose expression embeddings are most similar to the spot's image embedding.
#
# **CPU defaults, and how they differ from the paper's.** A ResNet-18 image encoder (the paper:
# ResNet-50) reads the patches at 112 px (stored: 224), 60 steps of 32 spots, and the prediction
# averages the top 200 training spots instead of 50. With an embedding trained for a minute, the
# top 50 of about 2,000 training spots are a noisy sample: with k = 50, both ResNet-50 at 224 px
# and ResNet-18 at 112 px scored above the training mean on test, and k = 200 (10% of the bank)
# took the same ResNet-18 below it. The settings tried, with their errors, are on the
# {doc}`Measurements </measurements>` page; the last sections show what k does. `budget = "paper"` keeps ResNet-50,
# 224 px and k = 50.

# %% [markdown]
# Every predictor chapter follows the protocol of the paper {cite:p}`mejia2024spackle`: the
# learning rate is chosen on raw data (`learning_rate = "search"`), then the same model is
# trained once per scenario and every run is scored on the real values of unseen slides. The
# baseline is the trivial predictor that outputs each gene's mean over its real training
# values.
#
# The chapters show `masked` and `completed` by default. `masked` trains on the curated layer
# with the loss on real values only, nothing filled in: the stronger baseline the paper lacks.
# The paper's `raw` scenario (`scenario = "both"` runs it beside `completed`) sets every value
# that was missing to 0 and takes the loss on every value, so its model is pulled toward 0
# wherever a training value was missing, for a reason that has nothing to do with the model;
# chapter 90 measures how much. `scenario = "all"` runs the four scenarios (adding `median`,
# the curation's median completion).
#
# The defaults train from random weights (`pretrained = False`: this machine has no internet)
# with the CPU budget of this predictor's record (`su.models.record("bleep").cpu`);
# `budget = "paper"` with `pretrained = True` is the paper's setting.

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
# dataset id from data/datasets.yml ("synthetic": embedded, offline)
dataset = "synthetic"
device = "auto"  # "auto": CUDA when available, else the CPU; or "cpu", "cuda"
# random seed of everything the run draws; a list: every scenario once per seed
seed = 0  # type: int|list
out_dir = "results"  # "results": results/ (or $SPARED_RESULTS_DIR); else a folder
# default: masked and completed; "both": the paper's raw and completed; "all"; or names,
# e.g. "completed:spackle_plus" (the completed scenario with another completion method)
scenario = ["masked", "completed"]
# "cpu": this predictor's CPU default (its record); "paper": the paper's protocol
budget = "cpu"
# None: the budget's; a number; or "search" (lr_grid on raw data, the paper's protocol)
learning_rate = None  # type: float|'search'
lr_grid = [0.0001, 0.001, 0.01]  # learning rates tried when learning_rate is "search"
# None: the budget's (CPU 60, paper 1,000); training steps
iterations = None  # type: int
# None: the budget's (CPU 32, paper 256); patches per training step
batch_size = None  # type: int
# None: the budget's (CPU 15, paper 10); validate every this many iterations
eval_every = None  # type: int
# None: the budget's (CPU 48, paper all); validation spots scored at each validation;
# "all": every one
val_spots = None  # type: int|'all'
# None: the budget's (CPU 96, paper all); held-out spots scored per split at the end;
# "all": every one
eval_spots = None  # type: int|'all'
# None: the budget's (CPU all, paper all); training spots read; "all": every one
train_spots = None  # type: int|'all'
pretrained = False  # True loads ImageNet weights (needs internet or a timm cache)
# the completion behind the completed scenario (su.completion.METHODS)
completion = "spackle"
# that completion's budget if it trains (None: the book's CPU budget)
completion_iterations = None  # type: int

# %%
from IPython.display import Markdown, display

import spared_utils as su

spec = su.tl.RunSpec.from_parameters("bleep", globals())
chapter = su.tl.run_chapter(spec)
notes = []  # lines this chapter's own sections add to "What we saw"
print(chapter.config)

# %% [markdown]
# ## What changed, and why
#
# - **Loss and validation.** BLEEP trains with its contrastive loss only; the harness still keeps
#   the weights with the lowest validation MSE of the retrieved predictions, as for every model.
# - **Bank of training spots only**, rebuilt from the current weights at every validation; a
#   training spot never retrieves itself (tested).
# - **Optimiser.** The official AdamW (weight decay 1e-3) becomes the benchmark's Adam.
# - **Missing values.** Where the scenario's loss skips missing values (`masked`), retrieved spots
#   are averaged over their real values only.

# %% [markdown]
# ## Metrics on real values
#
# MSE and PCC-Gene (Pearson correlation of each gene across spots, averaged over genes: what the
# book's figures use) and the pooled PCC, computed only where the ground truth is a real
# measurement. The trivial predictor has no per-gene correlation (a constant).

# %%
table = chapter.metrics()
table[["model", "scenario", "split", "mse", "pcc_gene", "mae", "n_spots"]].round(4)

# %%
su.pl.folded(table, "Every column (pooled PCC, bias, structure scores, costs)")

# %% [markdown]
# With several seeds (`seed` a list, as the benchmark plans run it), the table above is the
# first seed's and the figures below show its runs; every run's scores are here.

# %%
if chapter.other_seeds:
    display(chapter.all_runs().round(4))

# %% [markdown]
# ## Learning curves
#
# Validation MSE is computed every `eval_every` iterations on `val_spots` validation spots; the
# weights with the lowest value are the ones evaluated above.

# %% mystnb={"figure": {"caption": "BLEEP: training loss and validation MSE per scenario; the dashed line is the training mean's validation MSE.", "name": "fig-bleep-curves"}}
ax = su.pl.learning_curves(
    chapter.histories, baseline=chapter.baseline_val_loss,
    title="BLEEP: MSE during training",
)

# %% [markdown]
# ## Which genes can be predicted?

# %% mystnb={"figure": {"caption": "BLEEP: Pearson correlation of each gene across held-out spots, per scenario.", "name": "fig-bleep-pcc"}}
ax = su.pl.per_gene_pcc(
    chapter.gene_tables(), title=f"BLEEP: per-gene PCC on {chapter.eval_split}"
)

# %% [markdown]
# ## Predicted and measured maps
#
# The best and worst predicted genes on one held-out slide (completed-data model when it ran).

# %% mystnb={"figure": {"caption": "BLEEP: measured and predicted expression of the best and the worst predicted gene on one held-out slide.", "name": "fig-bleep-maps"}}
shown = "completed" if "completed" in chapter.runs else next(iter(chapter.runs))
best, worst = chapter.best_and_worst_genes(shown)
slide, rows, pred = chapter.map_inputs(shown)
fig = su.pl.predicted_vs_true_maps(
    chapter.adata, slide, rows, pred, [best, worst],
    titles=[f"best: {best}", f"worst: {worst}"],
)

# %% [markdown]
# ## Explore the predictions
#
# Pick a scenario and a gene: measured and predicted maps of a held-out slide and every gene's
# correlation (`su.pl.explore_prediction`). In a live kernel (JupyterLab, Colab) the dropdowns
# redraw the figure; the HTML shows the first view, the best predicted gene.

# %%
split = chapter.eval_split
runs = {f"BLEEP, {s}": (r.rows[split], r.predictions[split])
        for s, r in chapter.runs.items()}
su.pl.explore_prediction(chapter.adata, runs)

# %% [markdown]
# ## One neighbour or mean_k
#
# The chapter's `k` (BLEEP's 50; 200 at the CPU default) against the single nearest training
# spot, on the same held-out spots.

# %%
name = "completed" if "completed" in chapter.runs else next(iter(chapter.runs))
run, data = chapter.runs[name], chapter.data[name]
rows, top_k = run.rows[chapter.eval_split], run.model.top_k
run.model.top_k = 1
one = su.tl.evaluate_predictions(run.task.predict(run.model, rows), data, rows)
run.model.top_k = top_k
mean_k = run.metrics.set_index("split").loc[chapter.eval_split, "mse"]
print(
    f"{name}, {chapter.eval_split}: MSE with k=1 {one['mse']:.3f}, with k={top_k} "
    f"{mean_k:.3f}"
)
notes.append(
    f"- Retrieval: MSE {one['mse']:.3f} from the single nearest training spot, "
    f"{mean_k:.3f} from the mean of {top_k} ({name}, {chapter.eval_split})."
)

# %% [markdown]
# ## Which training spots are retrieved?
#
# An average of k training spots can only be far from the training mean if the same few
# spots come back for every query. Counting how often each training spot is among the
# held-out spots' top-k shows whether the retrieval spreads over the bank.

# %% mystnb={"figure": {"caption": "BLEEP: how many held-out queries retrieve each training spot (sorted), against the uniform spread of a random retrieval (dashed).", "name": "fig-bleep-retrieved"}}
import numpy as np

hits = run.task.retrieved(run.model, rows)
counts = np.bincount(
    np.searchsorted(run.task.train_rows, hits.ravel()),
    minlength=len(run.task.train_rows),
)
n_bank, expected = len(counts), hits.size / len(counts)
ax = su.pl.sorted_counts(
    counts, expected, xlabel="training spots, most retrieved first",
    ylabel="queries retrieving it", title=f"BLEEP ({name}): retrieved training spots",
)

# %%
reached = int((counts > 0).sum())
# distinct spots a random retrieval reaches
random_reach = n_bank * (1 - (1 - top_k / n_bank) ** len(rows))
error = run.predictions[chapter.eval_split] - data.truth[rows]
bias = float(error[data.real[rows]].mean())
notes.append(
    f"- Retrieved: {reached} of {n_bank} training spots at least once (a random "
    f"retrieval would reach about {random_reach:.0f}); the most retrieved spot "
    f"answered {counts.max()} of {len(rows)} queries. Predictions are {bias:+.2f} "
    f"off the real values on average (log scale)."
)

# %% [markdown]
# ## What we saw

# %%
# one row per scenario and split: MSE, the training mean's MSE (mean_mse), PCC-Gene
short = {"training_mean_mse": "mean_mse", "beats_training_mean": "beats_mean"}
chapter.summary().drop(columns="best_iteration").rename(columns=short).round(3)

# %%
display(Markdown(chapter.what_we_saw(notes)))
