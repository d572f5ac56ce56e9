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
# trained on raw data (real values only) and on SpaCKLE-completed data, scored on real values.
# **What it needs:** a curated dataset with patches and the `c_t_log1p` layer (made here if
# missing); a CPU runs the defaults in a few minutes, the paper's budget wants a GPU.
# **What it writes:** rows in `results/results.csv` (stages `predict`, `predict_baseline`) and
# checkpoints under `results/checkpoints/<dataset>/shufflenet/`.
#
# Every predictor chapter (10–13) follows the protocol of the paper {cite:p}`mejia2024spackle`:
# the learning rate is chosen on raw data, then the same model is trained twice — once on the
# raw `c_d_log1p` layer with a loss on real values only, once on the completed `c_t_log1p`
# layer with a loss on every value — and both runs are scored on the real values of unseen
# slides. The baseline is the trivial predictor that outputs the training mean of each gene.
#
# ShuffleNetV2 is a convolutional network designed for mobile devices; the authors' SpaRED code
# uses its narrowest version (`shufflenet_v2_x0_5`, ImageNet weights) with one linear layer on
# top, and it has the fewest trainable parameters of the benchmark.

# %% tags=["parameters"]
dataset = "synthetic"
device = "auto"
seed = 0
out_dir = "results"
scenario = "both"
learning_rate = 0.001
lr_grid = [0.0001, 0.001, 0.01]
iterations = 200
batch_size = 32
eval_every = 25
val_spots = 200
eval_spots = None
pretrained = False
completion_iterations = 200
width = 0.5

# %%
from IPython.display import Markdown, display

from spared_utils import plots, predict

chapter = predict.run_chapter(
    dataset, "shufflenet", scenario=scenario, learning_rate=learning_rate, lr_grid=lr_grid, out_dir=out_dir,
    iterations=iterations, batch_size=batch_size, eval_every=eval_every, val_spots=val_spots,
    eval_spots=eval_spots, seed=seed, device=device, pretrained=pretrained,
    completion_iterations=completion_iterations, model_options={"width": width},
)
print(chapter.config)

# %% [markdown]
# `learning_rate = None` searches `lr_grid` on raw data first (the paper's protocol). The
# defaults train from random weights (`pretrained = False`, this machine has no internet) with a
# budget that runs on a CPU; `iterations = 1000`, `batch_size = 256`, `pretrained = True` and
# `eval_spots = None` is the paper's setting.
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

# %%
ax = plots.learning_curves(chapter.histories, baseline=chapter.baseline_val_loss, title="ShuffleNet: MSE during training")

# %% [markdown]
# ## Which genes can be predicted?

# %%
ax = plots.per_gene_pcc(chapter.gene_tables(), title=f"ShuffleNet: per-gene PCC on {chapter.eval_split}")

# %% [markdown]
# ## Predicted and measured maps
#
# The best and worst predicted genes on one held-out slide (completed-data model when it ran).

# %%
shown = "completed" if "completed" in chapter.runs else next(iter(chapter.runs))
best, worst = chapter.best_and_worst_genes(shown)
slide, rows, pred = chapter.map_inputs(shown)
axes = plots.predicted_vs_true_maps(chapter.adata, slide, rows, pred, [best, worst],
                                    titles=[f"best: {best}", f"worst: {worst}"])

# %% [markdown]
# ## What we saw

# %%
display(Markdown("\n".join(predict.summary_lines(chapter))))
