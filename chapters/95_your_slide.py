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
# # Your own slide: completed and predicted with the book's models
#
# **What it shows:** a new Visium slide — yours — read from its Space Ranger folder, brought to the
# gene panel and scale of a dataset the book trained on, its missing values completed by SpaCKLE and
# every spot's expression predicted from its H&E patch.
# **What it needs:** a Space Ranger output folder (`slide`; by default a new synthetic slide of the
# embedded dataset, written in the Space Ranger layout), and the SpaCKLE and predictor checkpoints that
# chapters 02 and 10 saved (trained here, briefly, when they are missing); a CPU is enough.
# **What it writes:** `results/<dataset>/your_slide/<slide>.h5ad` with the layers `measured`,
# `completed`, `predicted` and `mask`, which scanpy and squidpy read as they are.
# **Measured runtime:** under a minute on a CPU with chapters 02 and 10's checkpoints reused, much
# longer when it must train them (the whole notebook in `make book`, dated, on the
# {doc}`Measurements </measurements>` page); GPU not measured.
#
# The same runs as a command, for a slide of your own:
#
# ```bash
# python -m spared_utils.apply path/to/outs --completion spackle.pt --predictor CHECKPOINT_DIR -o slide.h5ad
# ```

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
# the dataset whose checkpoints are used
# (the slide should be of the same tissue and organism)
dataset = "synthetic"
slide = ""  # a Space Ranger output folder; "" writes a new synthetic slide of `dataset`
# "": the newest one chapter 02 saved for `dataset` (trained here if none)
completion_checkpoint = ""
# "": the newest `predictor` checkpoint its chapter saved (trained here if none)
predictor_checkpoint = ""
# the predictor (a name of su.models.NAMES) whose checkpoint predicts the slide
predictor = "shufflenet"
# "none"; or "reference": each gene moved to the training slides' mean and spread
batch_correction = "none"
# budget of a checkpoint trained here (None: the book's CPU budget)
iterations = None  # type: int
device = "auto"  # "auto": CUDA when available, else the CPU; or "cpu", "cuda"
seed = 0  # random seed of everything the run draws
out_dir = "results"  # "results": results/ (or $SPARED_RESULTS_DIR); else a folder

# %%
import time
from pathlib import Path

import pandas as pd
from IPython.display import Markdown, display

import spared_utils as su

started = time.perf_counter()
out = su.io.output_dir(out_dir, dataset) / "your_slide"

# %% [markdown]
# ## The slide and the checkpoints
#
# Without a `slide`, the chapter writes one: a section of the embedded dataset's generator that the
# dataset does not contain (same genes and tissue, new spots), as Space Ranger lays its output out
# (`filtered_feature_bc_matrix.h5`, `spatial/tissue_positions.csv`, scale factors, the hires and
# lowres PNGs, the full-resolution `image.tif`). Each checkpoint carries the gene panel and training
# dataset it belongs to, its configuration and the package versions that made it.

# %%
slide_dir = Path(slide) if slide else su.apply.example_slide(dataset, out / "example")
found = su.apply.checkpoints_for(
    dataset, predictor, out_dir, iterations=iterations, seed=seed, device=device
)
completion_file = completion_checkpoint or found["completion"]
predictor_dir = predictor_checkpoint or found["predictor"]
bundle = su.io.load_predictor(predictor_dir, device=device)

# %%
pd.Series(
    {
        "slide": su.io.shown_path(slide_dir),
        "SpaCKLE checkpoint": su.io.shown_path(completion_file),
        "predictor checkpoint": su.io.shown_path(predictor_dir),
        "trained here": ", ".join(found["trained"])
        or "nothing (found the chapters' checkpoints)",
        "training dataset": bundle.panel["dataset_id"],
        "genes in the panel": len(bundle.genes),
        "patch": f"{bundle.patch_size} px of {bundle.patch_scale:g} spot diameters",
        "versions": ", ".join(f"{k} {v}" for k, v in bundle.meta["versions"].items()),
    },
    name="value",
).to_frame()

# %% [markdown]
# ## Apply
#
# `su.apply` reads the folder with the book's Space Ranger reader, finds each panel gene on the slide by
# Ensembl id or symbol (through the vendored identifier tables), computes log2(TPM + 1) with the
# training dataset's gene lengths, fills missing values with the curation's adaptive median, lets
# SpaCKLE complete them, cuts a patch around every spot and predicts its expression. ComBat, which
# corrected the training slides against each other, cannot place a slide outside those batches; with
# `batch_correction="none"` the slide's values are used as they are, `"reference"` moves each gene to the
# training slides' mean and spread. A panel gene missing from the slide stays unmeasured (`NaN` in
# `measured`), never a silent zero.

# %%
result = su.apply(
    slide_dir,
    completion=completion_file,
    predictor=predictor_dir,
    out=out / f"{slide_dir.name}.h5ad",
    batch_correction=batch_correction,
    device=device,
)
info = result.uns["apply"]
result

# %% [markdown]
# ## Completion alone, trained on the slide itself
#
# Completion needs no checkpoint: masking hides real values of the slide and learns to give them
# back, so a slide (or several) can be its own training data. `su.tl.complete_slide` takes the
# AnnData that `sc.read_visium`, `sq.read.visium` or `spared_utils.readers.read_spaceranger`
# returns, curates it with the book's defaults (or completes a layer you name with `layer=`),
# trains on its spots, picks the checkpoint on held-out spots and returns the panel with the
# completed layer, the `mask` and, in `uns["completion"]`, the method, configuration, genes and
# validation score:
#
# ```python
# adata = sq.read.visium("path/to/outs")
# done = su.tl.complete_slide(adata, method="spackle_plus", n_genes=128)
# ```

# %% [markdown]
# ## Measured, completed, predicted
#
# Grey crosses in the first column are values the slide did not measure; SpaCKLE fills them in the second
# column from the spot's own genes and its neighbours; the third column is what the predictor reads from
# the image alone ({numref}`fig-your-slide-layers`).

# %% mystnb={"figure": {"caption": "Two genes of the slide: measured (crosses: not measured), completed by SpaCKLE, predicted from the H&E patch.", "name": "fig-your-slide-layers"}}
table = su.apply.agreement(result).sort_values("pcc", ascending=False)
shown = [table["gene"].iloc[0], table["gene"].iloc[-1]]
fig = su.pl.slide_layers(result, shown)

# %%
table.round(3).head(10)

# %% [markdown]
# ## What we saw

# %%
best, worst = table.iloc[0], table.iloc[-1]
absent = (
    f" ({len(info['absent_genes'])} absent, marked unmeasured)"
    if info["absent_genes"]
    else ""
)
saw = [
    f"- The slide has {result.n_obs:,} spots in tissue; {info['n_genes_found']} of the "
    f"panel's {info['n_panel_genes']} genes were found on it{absent}, and "
    f"{100 * info['missing_fraction']:.1f}% of their values were missing, "
    f"completed by SpaCKLE.",
    f"- The checkpoints were trained on `{info['training_dataset']}` "
    f"({info['predictor']}, scenario {info['scenario']}); "
    f"batch correction: {info['batch_correction']}.",
]

# %%
saw += [
    f"- Predicted against measured (real values only), per gene: best {best['gene']} "
    f"(PCC {best['pcc']:.2f}), worst {worst['gene']} (PCC {worst['pcc']:.2f}), "
    f"median PCC {table['pcc'].median():.2f}.",
    f"- The whole chapter took {time.perf_counter() - started:.0f} s.",
]
display(Markdown("## What we saw\n\n" + "\n".join(saw) + "\n"))
