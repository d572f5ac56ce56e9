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
# # Curation: from raw slides to the SpaRED layers
#
# **What it shows:** every step that turns a dataset's raw counts and H&E images into the curated
# collection all models train on (QC filters, TPM, adaptive median completion, Moran's I gene
# selection, ComBat, Δ layers, missing-value mask, image patches), with a figure per step.
# **What it needs:** a CPU and a few minutes on the embedded synthetic dataset; a SpaRED dataset id
# downloads its raw data first (the largest, 43,804 spots, curates in minutes).
# **What it writes:** `processed/<dataset>/adata.h5ad` and the patch store `processed/<dataset>/patches/`
# (both atomically), and `results/<dataset>/curation_steps.csv` (spots and genes after each step).
# **Measured runtime:** under a minute on a CPU for the embedded dataset (the whole notebook in
# `make book`, dated, on the {doc}`Measurements </measurements>` page); GPU not needed.
#
# SpaRED {cite:p}`mejia2024spackle` curates 26 public datasets with one pipeline, inherited from
# SEPAL {cite:p}`mejia2023sepal`. We run the same steps, in the authors' order, with `su.pp` (`spared_utils.preprocess`); each is a
# function on AnnData tested on small data with a known answer.

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
device = "auto"  # unused: curation runs on the CPU
seed = 0  # random seed of everything the run draws
out_dir = "results"  # "results": results/ (or $SPARED_RESULTS_DIR); else a folder
n_patch_examples = 16  # patches shown in the figure of patches
n_map_genes = 3  # genes drawn as expression maps
embedding = "umap"  # "umap" or "pca": the 2-D embedding of spots coloured by slide

# %%
import time
from dataclasses import asdict

import numpy as np
import pandas as pd
from IPython.display import Markdown, display

import spared_utils as su

out = su.io.output_dir(out_dir, dataset)
out.mkdir(parents=True, exist_ok=True)
spec = su.datasets.get_spec(dataset)
t0 = time.perf_counter()
raw = su.datasets.load(dataset, stage="raw")
load_seconds = time.perf_counter() - t0
params = spec.curation
pd.Series(asdict(params), name="value").to_frame()

# %% [markdown]
# The raw collection holds every slide of the dataset, raw counts in `layers["counts"]`, and
# `obs["slide_id"]`, `obs["split"]`, `obs["patient"]` from `data/datasets.yml`. The parameters above
# are the dataset's (the authors' values: spots need more than 10 UMI, genes more than 10 in total,
# `real_data_percentage` 0.7, four rings for the median, 32 or 128 genes by Moran's I).
#
# ## The whole pipeline in one call
#
# `run_pipeline` chains steps 1–7 and records spots and genes after each step.

# %%
t0 = time.perf_counter()
adata = su.pp.run_pipeline(raw, spec)
pipeline_seconds = time.perf_counter() - t0
record = adata.uns["preprocessing"]
steps = record["steps"]
steps.to_csv(out / "curation_steps.csv", index=False)
steps

# %%
per_slide = record["spots_per_slide"].iloc[:, [1, 2, -1]]
per_slide.columns = ["in tissue", "after filters", "curated"]
per_slide.insert(0, "split", [spec.slide_split.get(s, "?") for s in per_slide.index])
per_slide

# %% [markdown]
# ## Steps 1–2: in-tissue spots, spot and gene filters
#
# Step 1 keeps the spots under the tissue and maps gene symbols to Ensembl ids (GENCODE tables
# in `data/annotations/`). Step 2 drops spots with too few (or implausibly many) UMI
# ({numref}`fig-curation-spot-qc`), then genes with too few counts in total.

# %% mystnb={"figure": {"caption": "UMI counts per spot on each slide, with the spot filter's thresholds.", "name": "fig-curation-spot-qc"}}
spot_qc = record["spot_qc"]
ax = su.pl.spot_counts_qc(
    spot_qc["total_counts"], spot_qc["slide_id"], params.cell_min_counts,
    params.cell_max_counts,
)

# %% [markdown]
# Most genes of a Visium dataset are detected in few spots. The `real_data_percentage` rule sorts
# genes by `exp_frac`, the smallest fraction of spots expressing them on any slide, and keeps the
# longest prefix whose mean `glob_exp_frac` (the fraction over all spots) is at least 0.7: on
# average at least 70% of the values kept are real measurements, the rest will be completed
# ({numref}`fig-curation-real-data`).

# %% mystnb={"figure": {"caption": "The real_data_percentage rule: genes sorted by exp_frac (left) and the running mean of glob_exp_frac that decides how many are kept (right).", "name": "fig-curation-real-data"}}
gene_qc = record["gene_qc"]
candidates = gene_qc[gene_qc["passes_counts"]]
fig = su.pl.real_data_curve(
    candidates["exp_frac"], candidates["glob_exp_frac"], params.real_data_percentage,
    candidates["kept"],
)

# %% [markdown]
# ## Step 3: TPM and log2(TPM + 1)
#
# Counts are divided by each gene's merged-exon length (GENCODE v43 human, vM33 mouse; the
# synthetic genes carry their own lengths) and each spot is rescaled to 10⁶; genes without a
# known length are dropped. `log1p` holds log2(TPM + 1). A zero stays a zero: it is a missing value.

# %%
mask = adata.layers["mask"]
missing = su.pp.missing_by_slide(adata)
missing.round(1)

# %% [markdown]
# ## Step 4: adaptive median completion (`d_log1p`)
#
# Each zero is replaced by the median of the spot's window: itself and its neighbours within one
# ring of the hexagonal grid; if that median is zero, within two rings, and so on up to four; if
# every window is zero, by the slide's median of the gene's non-zero values. Measured values are
# never changed. The authors loop over every (spot, gene) pair in Python; `median_complete`
# gathers all windows of all zero entries at once and sorts them (identical values, and faster:
# `benchmarks/bench_curation.py` times both). {numref}`fig-curation-measured` and
# {numref}`fig-curation-median` show the genes with the highest Moran's I on the first slide:
# measured values (grey crosses = missing), then after completion.

# %%
slide = str(adata.obs["slide_id"].cat.categories[0])
genes = list(adata.var_names[:n_map_genes])
sel = (adata.obs["slide_id"] == slide).to_numpy()
col = [adata.var_names.get_loc(g) for g in genes]
symbols = (
    adata.var["gene_symbol"]
    .reindex(genes)
    .fillna(pd.Series(genes, index=genes))
    .tolist()
    if "gene_symbol" in adata.var
    else genes
)

# %% mystnb={"figure": {"caption": "Measured log2(TPM + 1) of the top genes on the first slide; crosses mark missing values.", "name": "fig-curation-measured"}}
fig = su.pl.gene_maps(
    adata, genes, slide, layer="log1p", missing=~mask[sel][:, col],
    titles=[f"{s}: log1p (missing = ×)" for s in symbols],
)

# %% mystnb={"figure": {"caption": "The same genes after adaptive median completion (d_log1p).", "name": "fig-curation-median"}}
fig = su.pl.gene_maps(
    adata, genes, slide, layer="d_log1p",
    titles=[f"{s}: d_log1p (median-completed)" for s in symbols],
)

# %% [markdown]
# ## Step 5: genes with the highest Moran's I
#
# Moran's I {cite:p}`moran1950` measures how much a gene's neighbouring spots resemble each other.
# It is computed with squidpy {cite:p}`palla2022squidpy` on every slide's hexagonal neighbour graph,
# from the median-completed values, and averaged over slides; the top genes are kept
# ({numref}`fig-curation-moran`).

# %% mystnb={"figure": {"caption": "Mean Moran's I of every candidate gene by rank (range over slides shaded); the kept genes are marked.", "name": "fig-curation-moran"}}
moran = record["moran"]
ax = su.pl.moran_ranking(moran, params.n_genes)

# %%
columns = ["gene_symbol", "d_log1p_moran", "exp_frac", "gene_length"]
adata.var[[c for c in columns if c in adata.var]].head(10).round(3)

# %% [markdown]
# ## Step 6: ComBat batch correction
#
# Slides (or patients, per dataset) differ in sequencing depth and chemistry. ComBat
# {cite:p}`johnson2007combat` (scanpy's implementation) removes those batch effects from `log1p`
# (→ `c_log1p`) and `d_log1p` (→ `c_d_log1p`, the layer models predict). Spots coloured by slide,
# before and after ({numref}`fig-curation-combat`); the silhouette of the slides in PCA space
# measures how separated they are.

# %% mystnb={"figure": {"caption": "Spots coloured by slide before and after ComBat.", "name": "fig-curation-combat"}}
coords = {
    f"{name} ({layer})": su.pp.embed(adata, layer, embedding, seed)
    for name, layer in (("before ComBat", "d_log1p"), ("after ComBat", "c_d_log1p"))
}
fig = su.pl.embeddings_by_slide(
    coords, adata.obs["slide_id"].astype(str), f"{embedding.upper()} 1",
    f"{embedding.upper()} 2",
)

# %%
silhouette = {
    layer: su.pp.slide_silhouette(adata, layer, seed=seed)
    for layer in ("d_log1p", "c_d_log1p")
}
pd.Series(silhouette, name="silhouette of slides").to_frame().round(3)

# %% [markdown]
# ## Step 7: Δ layers and the mask
#
# `deltas`, `d_deltas`, `c_deltas`, `c_d_deltas` subtract each gene's mean over the training
# spots (as the authors do, so no validation or test value enters it); the mean is kept in
# `var["<layer>_avg_exp"]`. `mask` is True where TPM is non-zero: metrics are computed there only.

# %%
pd.DataFrame(
    {
        layer: [adata.layers[layer].mean(), adata.layers[layer].std()]
        for layer in su.pp.DELTA_LAYERS.values()
    },
    index=["mean", "sd"],
).round(3)

# %% [markdown]
# ## Patches
#
# Models see a square crop of the full-resolution H&E image around each spot, one spot diameter
# wide (`patch_scale` 1.0), resized to 224 × 224 pixels. They are written once to a memory-mapped
# array that training streams from, so the set is never held in memory
# ({numref}`fig-curation-patches`).

# %%
store_path = su.io.processed_path(dataset, "patches")
t0 = time.perf_counter()
su.pp.extract_patches(
    adata, store_path, patch_scale=spec.patch_scale, patch_size=spec.patch_size,
    overwrite=True, source_id=su.pp.curation_fingerprint(spec),
)  # the stamp write_processed gives the AnnData
patch_seconds = time.perf_counter() - t0
store = su.io.PatchStore(store_path)
rng = np.random.default_rng(seed)
shown = np.sort(
    rng.choice(len(store), size=min(n_patch_examples, len(store)), replace=False)
)
obs = adata.obs.loc[store.obs_names[shown]]

# %% mystnb={"figure": {"caption": "Random patches of the store, one spot diameter wide, resized to 224 px.", "name": "fig-curation-patches"}}
fig = su.pl.patch_grid(
    [store[i] for i in shown], [f"{s} #{i}" for s, i in zip(obs["slide_id"], shown)]
)
fig.suptitle(
    f"{n_patch_examples} random patches of {len(store):,} ({spec.patch_size} px, "
    f"{store.meta['window_px'][slide]} px crops)",
    y=1.02,
)
# %% [markdown]
# ## Writing the curated dataset
#
# The curated collection is written atomically (a temporary file, then a rename) with a
# fingerprint of the dataset's parameters, so later chapters load it with
# `su.datasets.load(dataset)` and it is recomputed only when `data/datasets.yml` changes.

# %%
adata_path = su.io.write_processed(adata, dataset, spec=spec)
sizes = {
    "adata.h5ad": adata_path.stat().st_size,
    "patches/": sum(p.stat().st_size for p in store_path.iterdir()),
}
# sizes on disk, in <processed data>/<dataset>/ (su.io.processed_path(dataset))
pd.Series(
    {k: f"{v / 2**20:.1f} MiB" for k, v in sizes.items()}, name=f"{dataset}/"
).to_frame()

# %% [markdown]
# ## Our curation against the authors' code
#
# The same raw input through both pipelines. `benchmarks/make_authors_fixture.py` ran the
# authors' own `spared` 2.2.1 (their Visium reader, `filter_dataset` and `process_dataset`) on a
# small generated collection, in a side environment with their package (it needs neither a GPU
# nor this chapter's dataset); what it wrote is committed in `tests/data/authors_tiny` (its
# README says which of their steps had to be patched to run offline on a CPU). Here we generate
# that collection again, curate it with `su.pp.run_pipeline` and the same parameters, and
# compare step by step: for the spots and genes each pipeline keeps, the share both keep; for
# each layer, on the entries both hold, the share identical at float32 and the largest absolute
# difference. One more row runs our median alone, with the authors' graph, on their own log2
# values. Every difference has a reason, kept in `data/curation_vs_authors.yml`.

# %%
versus, ours_tiny, theirs_tiny = su.pp.fixture_comparison()
versus = su.pp.with_reasons(versus)  # raises if a difference has no written reason
su.pl.folded(versus, "Ours against the authors' spared 2.2.1, step by step")

# %%
n_same = int((versus["share_identical"] == 1).sum())
authors_line = (
    f"\n- Against the authors' spared 2.2.1 on the same raw input: {n_same} of "
    f"{len(versus)} compared steps identical; the others for the reasons listed."
)
versus[["n_compared", "share_identical", "max_abs_diff"]].round(6)

# %% [markdown]
# ## Supplementary Table 1: the datasets
#
# Per-dataset statistics from the authors' metadata table beside ours, for the datasets curated
# on this machine (`*_ours`; the others are empty until curated).

# %%
curated_ids = [d for d in su.datasets.registry() if su.io.processed_path(d).is_file()]
table = su.datasets.summary_table(processed_ids=curated_ids)
# the paper's figures beside ours, by abbreviation (the ids: in the full table below)
pairs = {"spots": ("spots_paper", "spots_ours"), "genes": ("genes_paper", "genes_ours"),
         "missing %": ("missing_pct_paper", "missing_pct_ours")}
columns = ["slides", *(c for p in pairs.values() for c in p)]
shown = table.set_index("abbreviation")[columns]
shown.columns = pd.MultiIndex.from_tuples(
    [("slides", "")] + [(k, who) for k in pairs for who in ("paper", "ours")])
shown

# %%
su.pl.folded(table, "Every column (organism, tissue, task, patients, ...)")

# %%
totals = su.pp.table_totals(table)
totals

# %% [markdown]
# ## Which download layouts have been exercised
#
# The remote datasets' layouts (archive names, folder nesting, file names) were copied from the
# authors' download and reader code, and this machine has no internet. `source.layout_verified`
# in `data/datasets.yml` records how far each was exercised: `reader-code` means that
# `tests/test_mirror.py` wrote a miniature of the downloads in exactly the layout the authors'
# reader code expects (a few dozen generated spots per slide, small images: 8- and 16-bit TIFFs,
# JPEGs, PNGs), served it on 127.0.0.1 through `SPARED_MIRROR`, and loaded the dataset to
# `stage="curated"`, checking counts, genes, spot coordinates, splits, patients and images slide by
# slide. What it does not check: the real archives' exact member names where the authors' code
# matches by pattern or substring, their sizes and checksums (unknown for all but the 10x files),
# and real values. Where their code and the registry disagreed, the mirror follows their code (it
# is what downloaded the paper's data) and the registry was fixed: Batiuk's image names, the
# `prostate cancer` folder of Mirzazadeh, Erickson's substring matches, Hudson's grid. `false`:
# Hudson, for which the authors' package has no reader, so its miniature follows the registry.

# %%
remote = {d: s for d, s in su.datasets.registry().items() if s.source.kind == "remote"}
layouts = pd.DataFrame(
    {"publication": [s.publication["key"] for s in remote.values()],
     "in_paper": [s.in_paper for s in remote.values()],
     "files": [len(s.source.files) for s in remote.values()],
     "layout_verified": [str(s.source.layout_verified) for s in remote.values()]},
    index=pd.Index(list(remote), name="dataset"),
)
n_mirrored = int((layouts["layout_verified"] == "reader-code").sum())
mirrored = (f"\n- Download layouts: {n_mirrored} of the {len(layouts)} remote datasets "
            "load and curate from a miniature in the layout of the authors' code.")
su.pl.folded(layouts, f"The {len(layouts)} remote datasets, how each was checked")

# %%
layouts.groupby("layout_verified").size().rename("datasets").to_frame()

# %%
by_step = steps.set_index("step")
kept_genes = int(gene_qc["kept"].sum())
kept_moran = adata.var["d_log1p_moran"]
n_spots, n_genes = (int(by_step[k].iloc[0]) for k in ("n_spots", "n_genes"))
n_slides, n_dropped = raw.obs["slide_id"].nunique(), int((~spot_qc["kept"]).sum())
n_counts, missing = int(gene_qc["passes_counts"].sum()), record["missing_fraction"]
glob_frac = gene_qc.loc[gene_qc["kept"], "glob_exp_frac"].mean()
median_s = by_step.loc["4 adaptive median completion", "seconds"]
rate = len(store) / patch_seconds
spatial = (
    f"\n- {100 * adata.var['spatial_gene'].mean():.0f}% of the kept genes are the "
    f"generator's spatial genes ({100 * raw.var['spatial_gene'].mean():.0f}% of all)."
    if "spatial_gene" in adata.var
    else ""
)

# %%
display(Markdown(f"""## What we saw

- **{dataset}**: {n_spots:,} spots × {n_genes:,} genes on {n_slides} slides (loaded in
  {load_seconds:.1f} s); curated in {pipeline_seconds:.1f} s to
  **{adata.n_obs:,} spots × {adata.n_vars} genes**.
- Spot filter: {n_dropped} spots dropped; gene filters: {n_counts:,} genes pass the
  count threshold, {kept_genes:,} pass the real_data_percentage rule (mean glob_exp_frac
  {glob_frac:.2f}).
- Missing values among the {adata.n_vars} selected genes: {100 * missing:.1f}% (spots
  with at least one: {100 * (~mask).any(axis=1).mean():.0f}%); median completion took
  {median_s:.2f} s for {kept_genes:,} genes.
- Moran's I of the kept genes: {kept_moran.min():.2f}–{kept_moran.max():.2f} (all
  candidates: median {moran["mean"].median():.2f}).
- Silhouette of the slides in PCA space: {silhouette["d_log1p"]:.3f} before ComBat,
  {silhouette["c_d_log1p"]:.3f} after.
- {len(store):,} patches extracted in {patch_seconds:.1f} s ({rate:.0f} patches/s),
  {sizes["patches/"] / 2**20:.0f} MiB on disk.{spatial}{mirrored}{authors_line}
"""))
