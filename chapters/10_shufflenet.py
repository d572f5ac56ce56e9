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
# # ShuffleNet: the cheapest fine-tuned encoder
#
# **What it shows:** how well a small CNN predicts gene expression from one spot's H&E patch, when
# trained with the loss on real values only (`masked`) and on SpaCKLE-completed data, both scored
# on real values.
# **What it needs:** a curated dataset with patches and the `c_t_log1p` layer (made here if
# missing); a CPU runs the defaults in a few minutes, the paper's budget wants a GPU.
# **What it writes:** rows in `results/results.csv` (stages `predict`, `predict_baseline`) and
# checkpoints under `results/checkpoints/<dataset>/shufflenet/`.
# **Measured runtime:** 54 s on a 2-core CPU (the whole notebook in `make book`, 2026-12-02;
# both scenarios); GPU not measured (no GPU was lent).
#
# Every predictor chapter (10–20) follows the protocol of the paper {cite:p}`mejia2024spackle`:
# the learning rate is chosen on raw data, then the same model is trained twice — once on the
# raw `c_d_log1p` layer with every value that was missing set to 0 and a loss on every value
# (`raw`, the authors' code), once on the completed `c_t_log1p` layer (`completed`) — and both
# runs are scored on the real values of unseen slides. The baseline is the trivial predictor that
# outputs each gene's mean over its real training values.
#
# The chapters show `masked` and `completed` by default. `masked` trains on the curated layer with
# the loss on real values only, nothing filled in: the stronger baseline the paper lacks. The
# zero-filled `raw` model is pulled toward 0 wherever a training value was missing, 27% of them on
# the embedded dataset, so there its test MSE is far above the trivial predictor's (about 14.8
# against 3.1, ShuffleNet over three seeds in chapter 90) for a reason that has nothing to do with
# the model. `scenario = "both"` runs the paper's pair (raw and completed), `scenario = "all"` the
# four scenarios (adding `median`, the curation's median completion), which chapter 90 compares.
#
# ShuffleNetV2 is a convolutional network designed for mobile devices; the authors' SpaRED code
# uses its narrowest version (`shufflenet_v2_x0_5`, ImageNet weights) with one linear layer on
# top, and it has the fewest trainable parameters of the benchmark.
#
# **CPU defaults, and how they differ from the paper's.** The patch encoders trained from
# random weights (this chapter, 11, 12 and 13) read the stored 224 px patches resized to 112 px
# (3–4× fewer operations), and ShuffleNet and ViT-B start their linear head at each gene's
# training mean (zero weights) instead of PyTorch's random initialisation, so the few hundred
# CPU steps go into the image, not into learning the ≈ 8 log-unit offset of the targets (STNet's
# official head already starts there). On the embedded dataset (200 × 32 steps, 2026-12-02, 2
# cores) this took the validation / test MSE from 2.626 / 2.844 (masked) and 2.621 / 2.888
# (completed) at 224 px with the random head to 2.516 / 2.719 and 2.633 / 2.813, in 67 s instead
# of 180 s; at 112 px with the random head the completed model stayed above the mean (3.179 /
# 3.249 against 3.131 / 3.136). `budget = "paper"` keeps 224 px and the paper's head.

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
seed = 0  # random seed of everything the run draws
out_dir = "results"  # "results": results/ (or $SPARED_RESULTS_DIR); else a folder
# default: masked and completed; "both": the paper's raw and completed; "all"; or names
scenario = ["masked", "completed"]
# "cpu": this predictor's CPU default (its record); "paper": 1,000 steps × batch 256
budget = "cpu"
# None: the budget's; a number; or "search" (lr_grid on raw data, the paper's protocol)
learning_rate = None
lr_grid = [0.0001, 0.001, 0.01]  # learning rates tried when learning_rate is "search"
iterations = None  # None: the budget's (su.models.record("shufflenet").cpu)
batch_size = None  # None: the budget's; patches (or windows) per training step
eval_every = None  # None: the budget's; validate every this many iterations
val_spots = None  # None: the budget's; "all": every validation spot
eval_spots = None  # None: the budget's; "all": every held-out spot (the paper)
pretrained = False  # True loads ImageNet weights (needs internet or a timm cache)
# SpaCKLE's budget if c_t_log1p is missing (None: the book's CPU budget)
completion_iterations = None
width = 0.5  # ShuffleNetV2 channel multiplier (SpaRED: 0.5)

# %%
from IPython.display import Markdown, display

import spared_utils as su

chapter = su.tl.run_chapter(
    dataset, "shufflenet", scenario=scenario, budget=budget,
    learning_rate=learning_rate, lr_grid=lr_grid, iterations=iterations,
    batch_size=batch_size, eval_every=eval_every, val_spots=val_spots,
    eval_spots=eval_spots, out_dir=out_dir, seed=seed, device=device,
    pretrained=pretrained, completion_iterations=completion_iterations,
    model_options={"width": width},
)
print(chapter.config)

# %% [markdown]
# `learning_rate = "search"` searches `lr_grid` on raw data first (the paper's protocol). The
# defaults train from random weights (`pretrained = False`, this machine has no internet) with a
# budget that runs on a CPU (this predictor's record, `su.models.record(...).cpu`);
# `budget = "paper"` (1,000 iterations × batch 256, every held-out spot scored) with
# `pretrained = True` is the paper's setting.
#
# ## Metrics on real values
#
# MSE and PCC-Gene (Pearson correlation of each gene across spots, averaged over genes: what the
# book's figures use) and the pooled PCC, computed only where the ground truth is a real
# measurement. The trivial predictor has no per-gene correlation (a constant).

# %%
chapter.metrics().round(4)

# %% [markdown]
# ## Learning curves
#
# Validation MSE is computed every `eval_every` iterations on `val_spots` validation spots; the
# weights with the lowest value are the ones evaluated above.

# %% mystnb={"figure": {"caption": "ShuffleNet: training loss and validation MSE per scenario; the dashed line is the training mean's validation MSE.", "name": "fig-shufflenet-curves"}}
ax = su.pl.learning_curves(
    chapter.histories, baseline=chapter.baseline_val_loss,
    title="ShuffleNet: MSE during training",
)

# %% [markdown]
# ## Which genes can be predicted?

# %% mystnb={"figure": {"caption": "ShuffleNet: Pearson correlation of each gene across held-out spots, per scenario.", "name": "fig-shufflenet-pcc"}}
ax = su.pl.per_gene_pcc(
    chapter.gene_tables(), title=f"ShuffleNet: per-gene PCC on {chapter.eval_split}"
)

# %% [markdown]
# ## Predicted and measured maps
#
# The best and worst predicted genes on one held-out slide (completed-data model when it ran).

# %% mystnb={"figure": {"caption": "ShuffleNet: measured and predicted expression of the best and the worst predicted gene on one held-out slide.", "name": "fig-shufflenet-maps"}}
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
runs = {f"ShuffleNet, {s}": (r.rows[split], r.predictions[split])
        for s, r in chapter.runs.items()}
su.pl.explore_prediction(chapter.adata, runs)

# %% [markdown]
# ## What we saw

# %%
# one row per scenario and split: MSE, the training mean's MSE, PCC-Gene
saw = chapter.summary()
saw.round(3)

# %%
behind = [s for s, ok in chapter.beats_training_mean().items() if not ok]
weights = "" if chapter.config.pretrained else " or set `pretrained = True`"
advice = (
    f"- At this budget the {' and '.join(behind)} model(s) learned no more than the "
    f"mean: raise `iterations` (the learning curve shows whether it still falls)"
    f"{weights}.\n"
    if behind
    else ""
)
display(Markdown(chapter.what_we_saw() + advice))
