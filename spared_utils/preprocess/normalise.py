"""Step 3: TPM with merged-exon gene lengths, then log2(TPM + 1).

TPM divides each count by its gene's length (GENCODE merged-exon length, v43 human / vM33
mouse) and rescales every spot to 10^6. Genes without a known length are dropped. Layers are
kept sparse here (they hold the missing values as zeros) and densified once the gene set is
final (:func:`spared_utils.preprocess.run_pipeline`).
"""

from __future__ import annotations


import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .collection import counts_matrix, subset
from .genes import load_gene_lengths

def gene_lengths_for(adata: AnnData, organism: str | None = None) -> pd.Series:
    """Length of each gene of ``adata``: ``var["gene_length"]`` if present, else the GENCODE table.

    Genes without a length get NaN.
    """
    if "gene_length" in adata.var:
        return pd.Series(pd.to_numeric(adata.var["gene_length"], errors="coerce").to_numpy(dtype=np.float64),
                         index=adata.var_names)
    if organism is None:
        raise ValueError("var['gene_length'] is missing and no organism was given to look gene lengths up")
    ids = pd.Index(adata.var_names.str.split(".").str[0])
    return pd.Series(load_gene_lengths(organism).reindex(ids).to_numpy(), index=adata.var_names)


def tpm(adata: AnnData, layer: str = "counts", key_added: str = "tpm", organism: str | None = None,
        lengths: pd.Series | None = None) -> AnnData:
    """TPM normalisation: ``counts / length``, each spot rescaled to sum to 10^6.

    Parameters
    ----------
    adata
        Raw counts in ``layers[layer]``.
    organism
        ``"human"`` / ``"mouse"``: where to look lengths up when ``var["gene_length"]`` is absent.
    lengths
        Explicit lengths per gene (overrides both).

    Returns
    -------
    AnnData
        A new object without the genes that have no (positive) length; ``var["gene_length"]``
        filled, ``layers[key_added]`` float32 CSR. Spots left with zero counts get TPM 0.
    """
    lengths = gene_lengths_for(adata, organism) if lengths is None else lengths.reindex(adata.var_names)
    has_length = np.isfinite(lengths.to_numpy()) & (lengths.to_numpy() > 0)
    if not has_length.any():
        raise ValueError(
            f"none of the {adata.n_vars} genes has a gene length (e.g. {list(adata.var_names[:3])}); "
            "are var_names Ensembl ids of the dataset's organism?"
        )
    out = subset(adata, cols=has_length)
    out.var["gene_length"] = lengths.to_numpy()[has_length]
    x = sp.csr_matrix(counts_matrix(out, layer), dtype=np.float32, copy=True)
    # in place on one float32 copy: divide by length, then rescale each spot to 1e6
    x.data /= out.var["gene_length"].to_numpy(np.float32)[x.indices]
    total = np.asarray(x.sum(axis=1, dtype=np.float64)).ravel()
    scale = np.divide(1e6, total, out=np.zeros_like(total), where=total > 0).astype(np.float32)
    x.data *= np.repeat(scale, np.diff(x.indptr))
    out.layers[key_added] = x
    return out


def _log_1p(values: np.ndarray, base: float | None) -> np.ndarray:
    """log(1 + x) in ``base`` (natural for ``None``) in float32, accurate for small x (via log1p)."""
    out = np.log1p(values, dtype=np.float32)
    if base is not None:
        out /= np.float32(np.log(base))
    return out


def log1p(adata: AnnData, layer: str = "tpm", key_added: str = "log1p", base: float | None = 2) -> AnnData:
    """``log(x + 1)`` of ``layers[layer]`` into ``layers[key_added]`` (in place; returns ``adata``).

    ``base`` as in :func:`scanpy.pp.log1p`, but its default here is **2**: SpaRED's ``log1p``
    layers hold log2(TPM + 1) (Mejia et al., MICCAI 2024); ``base=None`` is the natural log
    (scanpy's default).
    """
    if base is not None and not (base > 0 and base != 1):
        raise ValueError(f"log base must be positive and not 1 (or None for the natural log), got {base}")
    x = adata.layers[layer]
    if sp.issparse(x):
        y = sp.csr_matrix(x, dtype=np.float32, copy=True)
        y.data = _log_1p(y.data, base)
    else:
        y = _log_1p(np.asarray(x, dtype=np.float32), base)
    adata.layers[key_added] = y
    return adata
