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
# trained on raw data (missing values as zeros, the paper's) and on SpaCKLE-completed data,
# scored on real values.
# **What it needs:** a curated dataset with patches and the `c_t_log1p` layer (made here if
# missing); a CPU runs the defaults in a few minutes, the paper's budget wants a GPU.
# **What it writes:** rows in `results/results.csv` (stages `predict`, `predict_baseline`) and
# checkpoints under `results/checkpoints/<dataset>/shufflenet/`.
#
# Every predictor chapter (10–13) follows the protocol of the paper {cite:p}`mejia2024spackle`:
# the learning rate is chosen on raw data, then the same model is trained twice — once on the
# raw `c_d_log1p` layer with every value that was missing set to 0 and a loss on every value
# (the authors' code), once on the completed `c_t_log1p` layer — and both runs are scored on the
# real values of unseen slides. The baseline is the trivial predictor that outputs each gene's
# mean over its real training values. `scenario = "all"` adds the two scenarios the paper lacks
# (chapter 90 compares the four): `masked` (the loss skips missing values, nothing is filled in)
# and `median` (the curation's median completion).
#
# ShuffleNetV2 is a convolutional network designed for mobile devices; the authors' SpaRED code
# uses its narrowest version (`shufflenet_v2_x0_5`, ImageNet weights) with one linear layer on
# top, and it has the fewest trainable parameters of the benchmark.

# %% tags=["parameters"]
dataset = "synthetic"
device = "auto"
seed = 0
out_dir = "results"
scenario = "both"  # "both": raw and completed (the paper's pair); "all"; or raw, masked, median, completed
budget = "cpu"  # "cpu": this predictor's CPU default (its record); "paper": 1,000 iterations × batch 256
learning_rate = None  # None: the budget's; a number; or "search" (lr_grid on raw data, the paper's protocol)
lr_grid = [0.0001, 0.001, 0.01]
iterations = None  # None: the budget's (su.models.record("shufflenet").cpu)
batch_size = None
eval_every = None
val_spots = None  # None: the budget's; "all": every validation spot
eval_spots = None  # None: the budget's; "all": every held-out spot (the paper)
pretrained = False
completion_iterations = None  # SpaCKLE's budget if c_t_log1p is missing (None: the book's CPU budget)
width = 0.5  # ShuffleNetV2 channel multiplier (SpaRED: 0.5)

# %%
from IPython.display import Markdown, display

import spared_utils as su

chapter = su.tl.run_chapter(
    dataset, "shufflenet", scenario=scenario, budget=budget, learning_rate=learning_rate, lr_grid=lr_grid,
    iterations=iterations, batch_size=batch_size, eval_every=eval_every, val_spots=val_spots,
    eval_spots=eval_spots, out_dir=out_dir, seed=seed, device=device, pretrained=pretrained,
    completion_iterations=completion_iterations,
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
ax = su.pl.learning_curves(chapter.histories, baseline=chapter.baseline_val_loss, title="ShuffleNet: MSE during training")

# %% [markdown]
# ## Which genes can be predicted?

# %% mystnb={"figure": {"caption": "ShuffleNet: Pearson correlation of each gene across held-out spots, per scenario.", "name": "fig-shufflenet-pcc"}}
ax = su.pl.per_gene_pcc(chapter.gene_tables(), title=f"ShuffleNet: per-gene PCC on {chapter.eval_split}")

# %% [markdown]
# ## Predicted and measured maps
#
# The best and worst predicted genes on one held-out slide (completed-data model when it ran).

# %% mystnb={"figure": {"caption": "ShuffleNet: measured and predicted expression of the best and the worst predicted gene on one held-out slide.", "name": "fig-shufflenet-maps"}}
shown = "completed" if "completed" in chapter.runs else next(iter(chapter.runs))
best, worst = chapter.best_and_worst_genes(shown)
slide, rows, pred = chapter.map_inputs(shown)
fig = su.pl.predicted_vs_true_maps(chapter.adata, slide, rows, pred, [best, worst],
                                   titles=[f"best: {best}", f"worst: {worst}"])

# %% [markdown]
# ## What we saw

# %%
saw = chapter.summary()  # one row per scenario and split: MSE, the training mean's MSE, PCC-Gene
saw.round(3)

# %%
split, cfg, run = chapter.eval_split, chapter.config.train, next(iter(chapter.runs.values()))
verdict = chapter.beats_training_mean()
behind = [s for s, ok in verdict.items() if not ok]
diff = chapter.completed_minus_raw()
shown = "completed" if "completed" in chapter.runs else next(iter(chapter.runs))
genes = chapter.gene_tables()[shown].set_index("gene")["pcc"]
best, worst = chapter.best_and_worst_genes(shown)
advice = (f" At this budget the {' and '.join(behind)} model(s) learned no more than the mean: raise `iterations` "
          "(the learning curve shows whether it still falls)" + ("" if chapter.config.pretrained
                                                                   else " or start from ImageNet weights (`pretrained = True`)")
          + "." if behind else "")
display(Markdown(f"""## What we saw

- **{su.models.display_name(chapter.model)}**: {run.n_params:,} trainable parameters; {cfg.iterations} iterations × batch {cfg.batch_size} at learning rate {chapter.learning_rate:g} per scenario, on `{run.train.device}` ({chapter.seconds:.0f} s for the whole chapter).
- Below the training mean on {split} MSE: {", ".join(f"{s} {'yes' if ok else 'no'}" for s, ok in verdict.items())}.{advice}
""" + (f"- Training on completed instead of raw data changed {split} MSE by {diff['mse']:+.3f} and PCC-Gene by {diff['pcc_gene']:+.3f} (both scored on real values only).\n" if diff else "")
    + f"- Per gene ({shown}, {split}): best {best} (PCC {genes[best]:.2f}), worst {worst} (PCC {genes[worst]:.2f})."))
