"""Step 5: Moran's I of every gene on every slide, averaged; keep the most autocorrelated genes.

Moran's I is computed by squidpy (:func:`squidpy.gr.spatial_autocorr`, row-normalised weights)
on each slide's first-ring neighbour graph from :func:`spared_utils.graphs.adjacency`, from the
median-completed layer ``d_log1p``. Genes that are constant on a slide have no I there (NaN); the
average skips them, and genes with no I on any slide rank last. (The authors also run 1,000
permutations for p-values they do not use; the statistic itself needs none.)
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from anndata import AnnData

from ..utils import dense
from tqdm.auto import tqdm

from .. import graphs
from .collection import subset


def moran_i(adata: AnnData, layer: str = "d_log1p", hex_geometry: bool = True,
            slide_key: str = "slide_id", progress: bool = True) -> pd.DataFrame:
    """Moran's I per gene (rows) and slide (columns) of ``layers[layer]``."""
    import squidpy as sq

    x = adata.layers[layer]
    columns = {}
    for slide, idx in tqdm(graphs.slide_groups(adata, slide_key).items(), desc="Moran's I",
                           disable=not progress, leave=False):
        block = x[idx]
        block = dense(block)
        sub = AnnData(X=np.asarray(block, dtype=np.float64), obs=adata.obs.iloc[idx][["array_row", "array_col"]])
        sub.var_names = adata.var_names
        sub.obsp["spatial_connectivities"] = graphs.adjacency(sub, hex_geometry=hex_geometry).astype(np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constant genes: NaN by design (see module docstring)
            res = sq.gr.spatial_autocorr(sub, mode="moran", n_perms=None, copy=True, n_jobs=1,
                                         show_progress_bar=False)
        columns[slide] = res["I"].reindex(adata.var_names).to_numpy()
    return pd.DataFrame(columns, index=adata.var_names)


def select_top_moran(adata: AnnData, n_genes: int, layer: str = "d_log1p", hex_geometry: bool = True,
                     slide_key: str = "slide_id", progress: bool = True) -> AnnData:
    """Keep the ``n_genes`` genes with the highest mean Moran's I over slides.

    Returns
    -------
    AnnData
        A new object with genes in decreasing order of I; ``var[f"{layer}_moran"]`` holds the mean
        and ``uns["moran_per_slide"]`` the genes × slides table of every gene before selection.

    Raises
    ------
    ValueError
        Fewer genes are left than requested.
    """
    if n_genes < 1:
        raise ValueError(f"n_genes must be >= 1, got {n_genes}")
    if adata.n_vars < n_genes:
        raise ValueError(
            f"only {adata.n_vars} genes are left after filtering but n_genes={n_genes} were requested; "
            f"lower n_genes for this dataset in data/datasets.yml (or run_pipeline(..., n_genes={adata.n_vars})), "
            "or relax real_data_percentage / gene_min_counts"
        )
    table = moran_i(adata, layer, hex_geometry, slide_key, progress)
    mean = table.mean(axis=1, skipna=True)
    order = np.argsort(-mean.fillna(-np.inf).to_numpy(), kind="stable")[:n_genes]
    out = subset(adata, cols=order)
    out.var[f"{layer}_moran"] = mean.to_numpy()[order]
    out.uns["moran_per_slide"] = table.assign(mean=mean)
    return out
