"""Context genes: the genes beyond the panel that LGDiST's autoencoder also reads.

LGDiST (Cárdenas et al., "LGDiST: Latent Gene Diffusion for Spatial Transcriptomics Completion",
arXiv 2509.01864; code: github.com/BCV-Uniandes/LGDiST, ``datasets/preprocessing.py``) widens
each dataset to 1,024 genes before it trains: the curated panel (128 or 32 genes) plus the genes
with the next-highest Moran's I of the same curation, which SpaRED's selection step would have
dropped. They run the whole curation again with ``n_keep=1024`` and append, in Moran order, the
genes of that run that are not in the panel; the model completes only the panel's genes, the
others shape its latent space.

Here the candidates are the collection *before* Moran selection (what
:func:`~spared_utils.preprocess.select_top_moran` receives), ranked by the mean Moran's I that the
selection computed (``uns["moran_per_slide"]["mean"]``), so no second curation is run.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from ..utils import dense
from .collection import subset
from .layers import combat
from .moran import moran_i

#: ``obsm`` key of the context genes' expression and ``uns`` key of their names.
CONTEXT_KEY = "context_log1p"
CONTEXT_GENES_KEY = "context_genes"


def _moran_mean(collection: AnnData, layer: str, moran: pd.Series | pd.DataFrame | None,
                hex_geometry: bool, slide_key: str) -> pd.Series:
    """Mean Moran's I per gene: given, stored by the selection step, or computed."""
    if moran is None:
        stored = collection.uns.get("moran_per_slide")
        if stored is None and isinstance(collection.uns.get("preprocessing"), dict):
            stored = collection.uns["preprocessing"].get("moran")
        moran = stored if stored is not None else moran_i(collection, layer, hex_geometry, slide_key, progress=False)
    if isinstance(moran, pd.DataFrame):
        moran = moran["mean"] if "mean" in moran else moran.mean(axis=1, skipna=True)
    return pd.Series(moran, dtype=np.float64)


def context_genes(collection: AnnData, panel_genes: Sequence[str], n: int, layer: str = "d_log1p",
                  moran: pd.Series | pd.DataFrame | None = None, hex_geometry: bool = True,
                  slide_key: str = "slide_id") -> list[str]:
    """The ``n`` genes of ``collection`` outside the panel with the highest mean Moran's I.

    Parameters
    ----------
    collection
        The curated collection before Moran selection (every gene that passed the filters, the
        median-completed ``layers[layer]``).
    panel_genes
        The selected panel (``var_names`` of the curated dataset); never returned.
    n
        How many context genes (LGDiST: ``1024 - len(panel_genes)``); fewer are returned when
        fewer candidates have a Moran's I.
    moran
        Mean Moran's I per gene (a Series, or a genes × slides table with a ``mean`` column, as
        ``select_top_moran`` stores in ``uns["moran_per_slide"]``); by default read from
        ``collection.uns`` or computed from ``layers[layer]``.

    Returns
    -------
    list of str
        Gene ids, highest Moran's I first.
    """
    if n < 0:
        raise ValueError(f"the number of context genes must be >= 0, got {n}")
    mean = _moran_mean(collection, layer, moran, hex_geometry, slide_key)
    panel = set(map(str, panel_genes))
    candidates = mean.reindex(collection.var_names).dropna()
    candidates = candidates[[g not in panel for g in candidates.index.astype(str)]]
    order = np.argsort(-candidates.to_numpy(), kind="stable")
    return [str(g) for g in candidates.index[order[:n]]]


def context_matrix(collection: AnnData, genes: Sequence[str], layer: str = "d_log1p",
                   combat_key: str | None = None) -> np.ndarray:
    """``(spots, len(genes))`` float32 expression of the context genes, spots as in ``collection``.

    With ``combat_key`` the genes are batch-corrected as the panel's ``c_d_log1p`` is
    (:func:`~spared_utils.preprocess.combat`), so they live on the same scale.
    """
    if not len(genes):
        return np.zeros((collection.n_obs, 0), dtype=np.float32)
    missing = [g for g in genes if g not in collection.var_names]
    if missing:
        raise KeyError(f"context genes {missing[:3]} are not in the collection; pick them with context_genes() "
                       "from the same collection")
    sub = subset(collection, cols=collection.var_names.get_indexer(list(genes)))
    sub.layers = {layer: dense(sub.layers[layer])}
    if combat_key not in (None, "None", ""):
        combat(sub, combat_key, layer, "corrected")
        return np.asarray(sub.layers["corrected"], dtype=np.float32)
    return np.asarray(sub.layers[layer], dtype=np.float32)


def add_context(collection: AnnData, curated: AnnData, n: int, layer: str = "d_log1p",
                combat_key: str | None = None, hex_geometry: bool = True, slide_key: str = "slide_id",
                key_added: str = CONTEXT_KEY) -> AnnData:
    """Store the context genes of ``curated`` (its spots, same order as ``collection``'s).

    Adds ``curated.obsm[key_added]`` (spots × context genes, float32), ``curated.obsm[key_added
    + "_mask"]`` (True = real measurement, from ``layers["log1p"]`` ≠ 0 of the collection) and
    ``curated.uns["context_genes"]`` (their ids, highest Moran's I first). The Moran's I is read
    from ``curated.uns["moran_per_slide"]`` when the selection step left it there.
    """
    if not np.array_equal(np.asarray(collection.obs_names), np.asarray(curated.obs_names)):
        raise ValueError("the collection and the curated dataset hold other spots; add the context right after "
                         "Moran selection, before any spot is dropped")
    moran = curated.uns.get("moran_per_slide")
    genes = context_genes(collection, curated.var_names, n, layer, moran, hex_geometry, slide_key)
    curated.obsm[key_added] = context_matrix(collection, genes, layer, combat_key)
    if "log1p" in collection.layers and genes:
        idx = collection.var_names.get_indexer(genes)
        curated.obsm[key_added + "_mask"] = dense(collection.layers["log1p"][:, idx]) != 0
    curated.uns[CONTEXT_GENES_KEY] = list(genes)
    return curated


__all__ = ["CONTEXT_GENES_KEY", "CONTEXT_KEY", "add_context", "context_genes", "context_matrix"]
