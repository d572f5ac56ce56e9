"""Checks of a curated collection shown in the curation chapter (batch mixing, missing values, totals)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

from ..utils import dense


def embed(adata: AnnData, layer: str, method: str = "pca", seed: int = 0, n_pcs: int = 20) -> np.ndarray:
    """2-D embedding of the spots from ``layers[layer]``: ``"pca"`` (PC1, PC2) or ``"umap"``."""
    import scanpy as sc

    x = adata.layers[layer]
    tmp = AnnData(X=np.asarray(dense(x), dtype=np.float32))
    n_comps = max(2, min(n_pcs, tmp.n_vars - 1, tmp.n_obs - 1))
    sc.pp.pca(tmp, n_comps=n_comps, random_state=seed)
    if method == "pca":
        return tmp.obsm["X_pca"][:, :2]
    if method != "umap":
        raise ValueError(f"method must be 'pca' or 'umap', got {method!r}")
    sc.pp.neighbors(tmp, random_state=seed)
    sc.tl.umap(tmp, random_state=seed)
    return tmp.obsm["X_umap"]


def slide_silhouette(adata: AnnData, layer: str, key: str = "slide_id", n_pcs: int = 20, seed: int = 0) -> float:
    """Silhouette of the slides in PCA space of ``layers[layer]``: near 0 = slides mixed, 1 = separated."""
    from sklearn.metrics import silhouette_score

    import scanpy as sc

    x = adata.layers[layer]
    tmp = AnnData(X=np.asarray(dense(x), dtype=np.float32))
    sc.pp.pca(tmp, n_comps=max(2, min(n_pcs, tmp.n_vars - 1, tmp.n_obs - 1)), random_state=seed)
    labels = adata.obs[key].astype(str).to_numpy()
    sample = min(5000, adata.n_obs)
    return float(silhouette_score(tmp.obsm["X_pca"], labels, sample_size=sample, random_state=seed))


def missing_by_slide(adata: AnnData, key: str = "slide_id") -> pd.DataFrame:
    """Per slide: spots, % missing values (mask False) and % spots with at least one missing value."""
    mask = np.asarray(adata.layers["mask"], dtype=bool)
    slides = adata.obs[key].astype(str).to_numpy()
    rows = {}
    for slide in dict.fromkeys(slides):
        m = mask[slides == slide]
        rows[slide] = {"spots": len(m), "missing %": 100 * (1 - m.mean()),
                       "spots with a missing value %": 100 * (~m).any(axis=1).mean()}
    frame = pd.DataFrame(rows).T
    frame["spots"] = frame["spots"].astype(int)
    frame.index.name = key
    return frame


def table_totals(table: pd.DataFrame) -> pd.DataFrame:
    """Totals of Supplementary Table 1: the paper's (26 datasets) beside those curated here."""
    paper = table[table["spots_paper"].notna()]
    ours = table[table["spots_ours"].notna()] if "spots_ours" in table else table.iloc[:0]
    return pd.DataFrame({
        "paper": [len(paper), paper["slides_paper"].sum(), paper["patients_paper"].sum(), paper["spots_paper"].sum()],
        "curated here": [len(ours), ours.get("slides_ours", pd.Series(dtype=float)).sum(),
                         ours.get("patients_ours", pd.Series(dtype=float)).sum(),
                         ours.get("spots_ours", pd.Series(dtype=float)).sum()],
    }, index=["datasets", "slides", "patients", "spots"]).astype(int)
