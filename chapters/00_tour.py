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
# # A tour of the data
#
# **What it shows:** the slides, spot grid, genes and H&E images of one dataset, as every later
# chapter will see them, and the plan of the book.
# **What it needs:** nothing but a CPU; the embedded synthetic dataset is generated in seconds
# (a SpaRED dataset id downloads its raw data first).
# **What it writes:** `results/<dataset>/tour_slides.csv`, one row per slide.
# **Measured runtime:** seconds on a CPU (the whole notebook in `make book`, dated, on the
# {doc}`Measurements </measurements>` page); GPU not needed.
#
# Spatial transcriptomics measures gene expression at thousands of *spots* laid out on a grid
# over a tissue section, next to an H&E image of the same section. On 10x Visium, spots are 55 µm
# wide, 100 µm apart, on a hexagonal grid. The paper {cite:p}`mejia2024spackle` asks two
# questions of such data: can missing values be completed from neighbouring spots (SpaCKLE), and
# how well can the image alone predict expression once they are.

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
seed = 0  # random seed of everything the run draws
out_dir = "results"  # "results": results/ (or $SPARED_RESULTS_DIR); else a folder

# %%
import time

# spared_utils first: it quiets squidpy's docstring helper (docrep) at import
import spared_utils as su
from spared_utils import synthetic

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scanpy as sc
import seaborn as sns
import squidpy as sq
from IPython.display import Markdown, display

# %%
t0 = time.perf_counter()
spec = su.datasets.get_spec(dataset)
if spec.source.kind == "synthetic":  # generate directly, with this chapter's seed
    adata = synthetic.make_dataset(**{**spec.generator, "seed": seed})
else:
    adata = su.datasets.load(dataset, stage="raw")
load_seconds = time.perf_counter() - t0
adata

# %% [markdown]
# ## Slides and splits
#
# Every dataset is one AnnData object holding all its slides. Slides, not spots, are assigned
# to the training, validation and test splits, so a model is always evaluated on tissue it has
# never seen. `obs["slide_id"]`, `obs["split"]` and `obs["patient"]` carry that information.

# %%
counts = adata.layers["counts"]
total = np.asarray(counts.sum(axis=1)).ravel()
zeros = 1 - np.asarray((counts > 0).sum(axis=1)).ravel() / adata.n_vars
obs = adata.obs[["slide_id", "split", "patient"]].astype(str)
slides = (
    obs.assign(umi=total, zero_fraction=zeros)
    .groupby(["slide_id", "split", "patient"], observed=True)
    .agg(spots=("umi", "size"), median_umi=("umi", "median"),
         zero_fraction=("zero_fraction", "mean"))
    .reset_index()
)
table_path = su.io.output_dir(out_dir, dataset) / "tour_slides.csv"
table_path.parent.mkdir(parents=True, exist_ok=True)
slides.to_csv(table_path, index=False)
slides.round(3)

# %% mystnb={"figure": {"caption": "Every slide of the dataset: its H&E image, split and spots.", "name": "fig-tour-slides"}}
fig = su.pl.slides_overview(adata)

# %% [markdown]
# The objects follow the scanpy/squidpy conventions: pixel coordinates in `obsm["spatial"]`,
# images and scale factors in `uns["spatial"][slide_id]`. Squidpy therefore plots them
# unchanged: {numref}`fig-tour-counts` shows the total counts per spot on each slide, over its
# H&E image.

# %% mystnb={"figure": {"caption": "Total UMI counts per spot, drawn by squidpy's spatial_scatter on our AnnData unchanged.", "name": "fig-tour-counts"}}
adata.obs["total_counts"] = total
sq.pl.spatial_scatter(
    adata, color="total_counts", library_key="slide_id", shape="hex",
    library_id=list(adata.obs["slide_id"].cat.categories), img_res_key="hires", ncols=4,
    figsize=(4, 4), cmap="viridis", wspace=0.4,
    title=[f"{s}: total counts" for s in adata.obs["slide_id"].cat.categories],
)

# %% [markdown]
# ## The hexagonal neighbourhood
#
# Each Visium spot has six neighbours. Curation completes missing values from rings of
# neighbours, and SpaCKLE attends over the 18 spots within two rings
# ({numref}`fig-tour-neighbourhood`). `su.pp.neighbour_index` finds them from the array
# coordinates.

# %% mystnb={"figure": {"caption": "The two-ring hexagonal neighbourhood of one spot: the 18 spots SpaCKLE attends over.", "name": "fig-tour-neighbourhood"}}
index = su.pp.neighbour_index(adata, n_hops=2, hex_geometry=spec.curation.hex_geometry)
n_nb = su.pp.n_neighbours(index)
centre = int(np.argmax(n_nb == n_nb.max()))
ax = su.pl.hex_neighbourhood(adata, index, centre)

# %% [markdown]
# ## Genes: spatial structure and dropout
#
# Some genes follow tissue structure and are autocorrelated in space; others are noise. Moran's I
# {cite:p}`moran1950` measures this, and curation keeps the genes with the highest I. We compute
# it with squidpy {cite:p}`palla2022squidpy` on the hexagonal graph of each slide, on
# log-normalised counts, and average over slides ({numref}`fig-tour-moran-maps`,
# {numref}`fig-tour-genes`).

# %%
norm = adata.copy()
norm.X = norm.layers["counts"].copy()
sc.pp.normalize_total(norm, target_sum=1e4)
sc.pp.log1p(norm)
morans = []
for sid in norm.obs["slide_id"].cat.categories:
    sub = norm[norm.obs["slide_id"] == sid].copy()
    n_neighs = 6 if spec.curation.hex_geometry else 4
    sq.gr.spatial_neighbors_grid(sub, n_neighs=n_neighs)
    sq.gr.spatial_autocorr(sub, mode="moran", n_perms=None, n_jobs=1,
                           show_progress_bar=False)
    morans.append(sub.uns["moranI"]["I"].rename(sid))
moran = pd.concat(morans, axis=1).mean(axis=1).sort_values(ascending=False)
top, bottom = moran.index[0], moran.index[-1]

# %% mystnb={"figure": {"caption": "The genes with the highest and the lowest Moran's I, on the first slide.", "name": "fig-tour-moran-maps"}}
slide = str(norm.obs["slide_id"].cat.categories[0])
titles = [f"{g}: Moran's I {moran[g]:.2f}" for g in (top, bottom)]
fig = su.pl.gene_maps(norm, [top, bottom], slide=slide, titles=titles)

# %% mystnb={"figure": {"caption": "Left: Moran's I of every gene. Right: the fraction of zeros grows as mean expression falls.", "name": "fig-tour-genes"}}
fig, axs = plt.subplots(1, 2, figsize=(11, 4))
if "spatial_gene" in adata.var:
    is_spatial = adata.var.loc[moran.index, "spatial_gene"]
    kind = is_spatial.map({True: "spatial", False: "noise"})
    sns.histplot(x=moran.values, hue=kind.values, bins=40, palette="colorblind",
                 ax=axs[0], element="step")
else:
    axs[0].hist(moran.values, bins=40)
axs[0].set(xlabel="Moran's I (mean over slides)", ylabel="genes",
           title="Spatial autocorrelation per gene")
su.pl.dropout_vs_expression(adata, ax=axs[1])
fig.tight_layout()

# %% [markdown]
# ## What the book does next
#
# | chapter | question | writes |
# |---|---|---|
# | Curation | turn raw slides into the SpaRED layers (QC, TPM, median completion, Moran's I, ComBat, Δ, patches) | `processed/<dataset>/` |
# | Completion | does SpaCKLE complete missing values better than the median and stLearn? | `c_t_log1p` layer, results rows |
# | Predictors | how well does each model predict expression from a patch, on raw and on completed data? | results rows |
# | Analysis | the paper's figures and tables, from the results store | figures |

# %%
splits = adata.obs.groupby("split", observed=True)["slide_id"].nunique()
spatial = ""
if "spatial_gene" in adata.var:
    truth = adata.var["spatial_gene"]
    top_k = moran.index[: int(truth.sum())]
    spatial = (f"\n- Of the {int(truth.sum())} genes with the highest Moran's I, "
               f"{100 * truth[top_k].mean():.0f}% are the generator's spatial genes.")
lines = [
    f"- **{adata.n_obs:,} spots** on **{adata.obs['slide_id'].nunique()} slides** "
    f"({', '.join(f'{k}: {v}' for k, v in splits.items())}), {adata.n_vars} genes, "
    f"loaded in {load_seconds:.1f} s.",
    f"- {100 * (counts.toarray() == 0).mean():.1f}% of the count matrix is zero; "
    f"median {np.median(total):.0f} UMI per spot.",
    f"- Spots have {n_nb.min()}–{n_nb.max()} neighbours within two rings "
    f"(mean {n_nb.mean():.1f}; fewer at the tissue edge).",
    f"- Moran's I ranges from {moran.min():.2f} to {moran.max():.2f}.{spatial}",
]
display(Markdown("## What we saw\n\n" + "\n".join(lines)))
