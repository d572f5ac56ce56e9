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
# # Linear probe: a frozen encoder and a ridge regression
#
# **What it shows:** HEST-Benchmark's protocol as an eleventh, cheap baseline: frozen encoder
# features → standardisation → PCA to 256 → ridge, fitted on real values only (`masked`) and on
# SpaCKLE-completed data, both scored on real values.
# **What it needs:** a curated dataset with patches, and the completion the `completed` scenario
# reads (made here and stored if missing); with `pretrained = True`, the encoder's weights
# (internet or a cache); a couple of minutes on a CPU.
# **What it writes:** rows in `results/results.csv` (stages `predict`, `predict_baseline`).
# **Measured runtime:** printed at the end of the run ("What we saw", in seconds, on the device
# it ran on); the book's own build on a 2-core CPU is on the {doc}`Measurements </measurements>`
# page.

# %% [markdown]
# Beyond the paper. The HEST-Benchmark {cite:p}`jaume2024hest` compares pathology foundation
# models by fitting a ridge regression on their frozen features; it reports mean PCC 0.326 for an
# ImageNet ResNet-50 and 0.415 for H-optimus-0 on its own tasks. Any timm model name works as
# `encoder`, and five pathology foundation models by name (the last section says how to run them
# on a GPU). The probe is fitted in closed form: it has no training steps, so its chapter has no learning
# curves.

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
# with the CPU budget of this predictor's record (`su.models.record("linear_probe").cpu`);
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
# None: the budget's (CPU 1, paper 1); training steps
iterations = None  # type: int
# None: the budget's (CPU 1, paper 1); patches per training step
batch_size = None  # type: int
# None: the budget's (CPU 1, paper 1); validate every this many iterations
eval_every = None  # type: int
# None: the budget's (CPU 100, paper all); validation spots scored at each validation;
# "all": every one
val_spots = None  # type: int|'all'
# None: the budget's (CPU 200, paper all); held-out spots scored per split at the end;
# "all": every one
eval_spots = None  # type: int|'all'
# None: the budget's (CPU 400, paper all); training spots read; "all": every one
train_spots = None  # type: int|'all'
pretrained = False  # True loads ImageNet weights (needs internet or a timm cache)
# the completion behind the completed scenario (su.completion.METHODS)
completion = "spackle"
# that completion's budget if it trains (None: the book's CPU budget)
completion_iterations = None  # type: int
# None: the budget's ("resnet50" on a CPU); frozen encoder: a timm name, or uni, uni2-h,
# h-optimus-0, h-optimus-1, virchow2 (gated foundation models)
encoder = None
# None: the budget's ("cv" on a CPU); ridge penalty, or "cv": chosen by cross-validation
alpha = None

# %%
from IPython.display import Markdown, display

import spared_utils as su

spec = su.tl.RunSpec.from_parameters("linear_probe", globals())
chapter = su.tl.run_chapter(spec)
notes = []  # lines this chapter's own sections add to "What we saw"
print(chapter.config)

# %% [markdown]
# ## What changed, and why
#
# - **Penalty.** HEST fixes `alpha = 100 / (256 · n_genes)`. With an untrained encoder (this
#   machine has no internet) that near-zero penalty overfits; the CPU default picks the penalty
#   by leave-one-out error (`alpha = "cv"`). The last section measures both on the same features.
# - **Intercept** fitted (HEST: none; harmless for its PCC, not for this book's MSE).
# - **Missing values.** In the `masked` scenario each gene is fitted on its real values only.
# - **Training spots on a CPU.** The CPU default fits on a `train_spots` subset (the ResNet-50
#   costs about 0.1 s a patch here); the paper budget reads every training spot.

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
# ## Which genes can be predicted?

# %% mystnb={"figure": {"caption": "Linear probe: Pearson correlation of each gene across held-out spots, per scenario.", "name": "fig-linear_probe-pcc"}}
ax = su.pl.per_gene_pcc(
    chapter.gene_tables(), title=f"Linear probe: per-gene PCC on {chapter.eval_split}"
)

# %% [markdown]
# ## Predicted and measured maps
#
# The best and worst predicted genes on one held-out slide (completed-data model when it ran).

# %% mystnb={"figure": {"caption": "Linear probe: measured and predicted expression of the best and the worst predicted gene on one held-out slide.", "name": "fig-linear_probe-maps"}}
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
runs = {f"Linear probe, {s}": (r.rows[split], r.predictions[split])
        for s, r in chapter.runs.items()}
su.pl.explore_prediction(chapter.adata, runs)

# %% [markdown]
# ## HEST's penalty and ours, and ViT-B+Δ
#
# The HEST penalty refitted on the same cached features, and ViT-B+Δ's PCC from chapter 12 when
# it ran with the same seed (its own held-out spots).

# %%
name = "completed" if "completed" in chapter.runs else next(iter(chapter.runs))
run, data = chapter.runs[name], chapter.data[name]
rows, train = run.rows[chapter.eval_split], run.task.train_rows
(feats,) = run.task.features.get(train)
hest = su.models.probe.LinearProbe(data.n_genes, None, alpha=None).fit(
    feats.numpy(), data.target[train]
)
(held_out,) = run.task.features.get(rows)
hest_m = su.tl.evaluate_predictions(hest.predict(held_out.numpy()), data, rows)
ours = run.metrics.set_index("split").loc[chapter.eval_split]
print(f"alpha: cv {run.model.alpha_:g}, HEST {hest.alpha_:g}; {chapter.eval_split} MSE "
      f"cv {ours['mse']:.3f}, HEST {hest_m['mse']:.3f}")

# %%
vit = su.io.select_results(
    su.io.output_dir(out_dir) / "results.csv", dataset=dataset, model="vit_b_delta",
    stage="predict", seed=chapter.config.train.seed, scenario=name,
    split=chapter.eval_split,
)
vit_pcc = vit["pcc_gene"] if "pcc_gene" in vit else []
beside = (
    f"ViT-B+Δ PCC-Gene {vit_pcc.iloc[-1]:.3f}"
    if len(vit_pcc)
    else "ViT-B+Δ has not run here (chapter 12)"
)
notes.append(
    f"- Penalty: leave-one-out chose {run.model.alpha_:g} (MSE {ours['mse']:.3f}); "
    f"HEST's {hest.alpha_:.2g} gives MSE {hest_m['mse']:.3f}. PCC-Gene "
    f"{ours['pcc_gene']:.3f}; {beside}."
)

# %% [markdown]
# ## With a foundation model on a GPU
#
# Five pathology foundation models are known by a short name that sets the `timm` arguments of
# their model cards: `uni` (UNI, ViT-L/16, 1,024 features), `uni2-h` (UNI2-h, 1,536),
# `h-optimus-0` and `h-optimus-1` (ViT-g/14, 1,536) and `virchow2` (its class token beside the
# mean of its patch tokens, 2,560). Their weights are gated on Hugging Face: request access on
# the model's page, log in once (`huggingface-cli login`, or set `HF_TOKEN`), then run this
# chapter with the paper's budget on a GPU:
#
# ```bash
# python -m spared_utils.run 20_linear_probe --dataset <id> -p budget paper \
#     -p pretrained True -p encoder h-optimus-0 -p device cuda
# ```
#
# The weights go to the Hugging Face cache (`HF_HOME`). On a machine without internet, set
# `HF_HOME` to a copy of a cache that holds them and `HF_HUB_OFFLINE=1`. A model without access,
# a missing network or weights that do not fit stop the run with one message that names the
# model and what to do.
#
# What each encoder is known for on HEST-Benchmark {cite:p}`jaume2024hest`: the mean Pearson
# correlation over its nine tasks (50 genes each, ridge on 256 PCA components), from the table
# of 30 August 2024 in the README of the official repository. These are HEST's tasks and
# splits, not SpaRED's: they rank the encoders; a run here is not expected to reproduce them.
#
# | encoder | `encoder` | HEST-Benchmark mean PCC |
# |---|---|---|
# | ResNet-50 (ImageNet) | `resnet50` (the default) | 0.326 |
# | UNI | `uni` | 0.386 |
# | Virchow2 | `virchow2` | 0.398 |
# | H-optimus-0 | `h-optimus-0` | 0.415 |
#
# UNI2-h and H-optimus-1 have no row in that table, so no figure is given for them.

# %% [markdown]
# ## What we saw

# %%
# one row per scenario and split: MSE, the training mean's MSE (mean_mse), PCC-Gene
short = {"training_mean_mse": "mean_mse", "beats_training_mean": "beats_mean"}
chapter.summary().drop(columns="best_iteration").rename(columns=short).round(3)

# %%
display(Markdown(chapter.what_we_saw(notes)))
