# The one template of the predictor chapters (10–20). `make chapters` writes
# chapters/<record.chapter>.py and .ipynb from it, the predictor's record
# (spared_utils.models.RECORDS) and its own prose (chapters/predictors/<name>.md).
# ${...} are filled in by spared_utils.template, and the lines between "# [if trains]" and
# "# [end if]" are left out for a predictor fitted in closed form (no training loop); edit this
# file, not the generated chapters.

# %% [markdown]
${opening}
# **What it writes:** rows in `results/results.csv` (stages `predict`, `predict_baseline`)${writes}.
# **Measured runtime:** printed at the end of the run ("What we saw", in seconds, on the device
# it ran on); the book's own build on a 2-core CPU is on the {doc}`Measurements </measurements>`
# page.
${intro}
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
# with the CPU budget of this predictor's record (`su.models.record("${name}").cpu`);
# `budget = "paper"` with `pretrained = True` is the paper's setting.

# %% tags=["setup", "hide-cell"]
${setup}

# %% tags=["parameters"]
${parameters}

# %%
from IPython.display import Markdown, display

import spared_utils as su

spec = su.tl.RunSpec.from_parameters("${name}", globals())
chapter = su.tl.run_chapter(spec)
notes = []  # lines this chapter's own sections add to "What we saw"
print(chapter.config)
${after_run}
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

# [if trains] (left out of the chapters of predictors fitted in closed form)
# %% [markdown]
# ## Learning curves
#
# Validation MSE is computed every `eval_every` iterations on `val_spots` validation spots; the
# weights with the lowest value are the ones evaluated above.

# %% mystnb={"figure": {"caption": "${display}: training loss and validation MSE per scenario; the dashed line is the training mean's validation MSE.", "name": "fig-${name}-curves"}}
ax = su.pl.learning_curves(
    chapter.histories, baseline=chapter.baseline_val_loss,
    title="${display}: MSE during training",
)

# [end if]
# %% [markdown]
# ## Which genes can be predicted?

# %% mystnb={"figure": {"caption": "${display}: Pearson correlation of each gene across held-out spots, per scenario.", "name": "fig-${name}-pcc"}}
ax = su.pl.per_gene_pcc(
    chapter.gene_tables(), title=f"${display}: per-gene PCC on {chapter.eval_split}"
)

# %% [markdown]
# ## Predicted and measured maps
#
# The best and worst predicted genes on one held-out slide (completed-data model when it ran).

# %% mystnb={"figure": {"caption": "${display}: measured and predicted expression of the best and the worst predicted gene on one held-out slide.", "name": "fig-${name}-maps"}}
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
runs = {f"${display}, {s}": (r.rows[split], r.predictions[split])
        for s, r in chapter.runs.items()}
su.pl.explore_prediction(chapter.adata, runs)
${end}
# %% [markdown]
# ## What we saw

# %%
# one row per scenario and split: MSE, the training mean's MSE (mean_mse), PCC-Gene
short = {"training_mean_mse": "mean_mse", "beats_training_mean": "beats_mean"}
chapter.summary().drop(columns="best_iteration").rename(columns=short).round(3)

# %%
display(Markdown(chapter.what_we_saw(notes)))
