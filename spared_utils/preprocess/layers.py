"""Steps 6–7: ComBat batch correction, Δ layers (deviation from the training mean) and the mask."""

from __future__ import annotations

import warnings

import numpy as np
from anndata import AnnData

from ..utils import dense


def combat(adata: AnnData, key: str | None, layer: str = "log1p", key_added: str = "c_log1p") -> AnnData:
    """ComBat (:func:`scanpy.pp.combat`) of ``layers[layer]`` with batches ``obs[key]``.

    With ``key`` ``None``/``"None"`` or a single batch there is nothing to correct: the layer is
    copied and ``uns["combat_skipped"]`` says why.

    Raises
    ------
    ValueError
        Unknown ``key``, or ComBat produced non-finite values (a gene constant within a batch).
    """
    import scanpy as sc

    x = dense(adata.layers[layer]).astype(np.float64)
    if key in (None, "None", ""):
        adata.layers[key_added] = x.astype(np.float32)
        adata.uns["combat_skipped"] = "no combat_key"
        return adata
    if key not in adata.obs:
        raise ValueError(f"combat_key {key!r} is not an obs column (have {list(adata.obs.columns)}); "
                         "fix combat_key for this dataset in data/datasets.yml")
    batches = adata.obs[key].astype(str)
    if batches.nunique() < 2:
        adata.layers[key_added] = x.astype(np.float32)
        adata.uns["combat_skipped"] = f"single batch in obs[{key!r}]"
        return adata
    tmp = AnnData(X=x, obs=batches.astype("category").to_frame(key))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        corrected = sc.pp.combat(tmp, key=key, inplace=False)
    corrected = np.asarray(corrected)
    bad = ~np.isfinite(corrected)
    if bad.any():
        genes = adata.var_names[bad.any(axis=0)][:5].tolist()
        raise ValueError(
            f"ComBat on layer {layer!r} with batches obs[{key!r}] gave non-finite values for genes {genes}: "
            "such genes are constant within a batch; use a coarser combat_key (patient) or drop them"
        )
    adata.layers[key_added] = corrected.astype(np.float32)
    return adata


def deltas(adata: AnnData, layer: str, key_added: str, split_key: str = "split", reference: str = "train") -> AnnData:
    """Δ layer: ``layers[layer]`` minus each gene's mean over the ``reference`` split's spots.

    The mean is stored in ``var[f"{layer}_avg_exp"]`` (it adds back to a Δ prediction). Only
    training spots enter the mean, so validation and test data do not leak into it.
    """
    x = dense(adata.layers[layer]).astype(np.float32)
    ref = (adata.obs[split_key].astype(str) == reference).to_numpy() if split_key in adata.obs else None
    if ref is None or not ref.any():
        raise ValueError(f"no spot has obs[{split_key!r}] == {reference!r}: Δ layers need training slides; "
                         "check the dataset's splits in data/datasets.yml")
    mean = x[ref].mean(axis=0, dtype=np.float64)
    adata.layers[key_added] = (x - mean.astype(np.float32)).astype(np.float32)
    adata.var[f"{layer}_avg_exp"] = mean
    return adata


def add_mask(adata: AnnData, layer: str = "tpm", key_added: str = "mask") -> AnnData:
    """``layers[key_added]``: True where ``layers[layer]`` is non-zero (a real measurement)."""
    adata.layers[key_added] = dense(adata.layers[layer]) != 0
    return adata
