"""Step 1: one collection of in-tissue spots with harmonised gene identifiers and clean counts."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from .genes import harmonise_gene_ids

REQUIRED_OBS = ("slide_id", "split", "patient", "array_row", "array_col")


def _positions(index, n: int) -> np.ndarray | None:
    """Integer positions of a boolean mask or index array; ``None`` when it selects everything in order."""
    if index is None:
        return None
    index = np.asarray(index)
    pos = np.flatnonzero(index) if index.dtype == bool else index.astype(np.int64)
    return None if len(pos) == n and np.array_equal(pos, np.arange(n)) else pos


def _slice(matrix, rows: np.ndarray | None, cols: np.ndarray | None):
    if matrix is None:
        return None
    if cols is not None:  # columns first: the row slice then copies only the kept genes
        matrix = matrix[:, cols]
    if rows is not None:
        matrix = matrix[rows]
    return matrix


def subset(adata: AnnData, rows=None, cols=None) -> AnnData:
    """A new AnnData with the selected spots and genes, sliced without a full copy first.

    ``X``, ``layers`` and ``obsm`` are sliced (matrices that need no slicing are shared, not
    copied: the pipeline never modifies a matrix in place); ``obs``/``var`` are copied; ``uns``
    is a new dict holding the same values (images are not duplicated); ``obsp``/``varm`` are
    dropped. ``AnnData[...].copy()`` would copy every matrix and image whole before slicing.
    """
    r = _positions(rows, adata.n_obs)
    c = _positions(cols, adata.n_vars)
    obs = adata.obs if r is None else adata.obs.iloc[r]
    var = adata.var if c is None else adata.var.iloc[c]
    out = AnnData(X=_slice(adata.X, r, c), obs=obs.copy(), var=var.copy(), uns=dict(adata.uns),
                  obsm={k: (v if r is None else (v.iloc[r] if hasattr(v, "iloc") else v[r])) for k, v in adata.obsm.items()},
                  layers={k: _slice(v, r, c) for k, v in adata.layers.items()})
    return out


def counts_matrix(adata: AnnData, layer: str = "counts"):
    """The raw count matrix: ``layers[layer]`` when present, else ``X``."""
    return adata.layers[layer] if layer in adata.layers else adata.X


def check_counts(adata: AnnData, layer: str = "counts", slide_key: str = "slide_id") -> None:
    """Refuse NaN, infinite or negative counts, naming the slide, spot and gene.

    Raises
    ------
    ValueError
        The first bad value found, with its slide, spot and gene, and the likely fix.
    """
    x = counts_matrix(adata, layer)
    where = "layers['counts']" if layer in adata.layers else "X"
    if sp.issparse(x):
        x = sp.csr_matrix(x)
        data = x.data
        bad_nan, bad_neg = ~np.isfinite(data), data < 0
        for bad, what in ((bad_nan, "NaN or infinite"), (bad_neg, "negative")):
            if bad.any():
                pos = int(np.flatnonzero(bad)[0])
                row = int(np.searchsorted(x.indptr, pos, side="right") - 1)
                _raise_bad(adata, slide_key, where, what, int(bad.sum()), row, int(x.indices[pos]), data[pos])
    else:
        x = np.asarray(x)
        for bad, what in ((~np.isfinite(x), "NaN or infinite"), (x < 0, "negative")):
            if bad.any():
                row, col = (int(v[0]) for v in np.nonzero(bad))
                _raise_bad(adata, slide_key, where, what, int(bad.sum()), row, col, x[row, col])


def _raise_bad(adata, slide_key, where, what, n_bad, row, col, value) -> None:
    slide = adata.obs[slide_key].iloc[row] if slide_key in adata.obs else "?"
    raise ValueError(
        f"slide {slide!r}: {n_bad} {what} value(s) in {where} (first: {value!r} at spot "
        f"{adata.obs_names[row]!r}, gene {adata.var_names[col]!r}); the pipeline needs raw, finite, "
        "non-negative UMI counts: re-read the slide's count matrix (was a normalised or log matrix "
        "loaded as counts?)"
    )


def collect(
    adata: AnnData,
    organism: str | None = None,
    slide_key: str = "slide_id",
    harmonise: bool = True,
) -> AnnData:
    """Step 1: validate the collection, keep in-tissue spots, harmonise gene ids.

    Parameters
    ----------
    adata
        All slides of a dataset in one AnnData, raw counts in ``layers["counts"]`` (or ``X``),
        ``obs`` with ``slide_id``, ``split``, ``patient``, ``array_row``, ``array_col``
        (and optionally ``in_tissue``).
    organism
        Passed to :func:`spared_utils.preprocess.harmonise_gene_ids`: for ``"human"``/``"mouse"``
        gene symbols become Ensembl ids; for any organism version suffixes are stripped and
        duplicated ids merged. ``None`` keeps ``var_names`` as they are.
    harmonise
        Set ``False`` to skip the identifier mapping.

    Returns
    -------
    AnnData
        A new object: in-tissue spots only, counts as float32 CSR in ``layers["counts"]``
        (``X`` is left empty so the counts are held once; other layers are dropped), categorical
        ``slide_id``/``split``/``patient``. When every spot is in tissue and the counts are already
        float32 CSR, the count matrix is shared with ``adata``, not copied.
    """
    missing = [k for k in REQUIRED_OBS if k not in adata.obs]
    if missing:
        raise ValueError(
            f"obs is missing {missing}: every spot needs its slide, split, patient and array "
            "position; build the collection with spared_utils.datasets.load(...)"
        )
    if adata.n_obs == 0:
        raise ValueError("the collection has no spots; check that the slides were read")
    keep = np.ones(adata.n_obs, dtype=bool)
    if "in_tissue" in adata.obs:
        keep = adata.obs["in_tissue"].astype(int).to_numpy() == 1
    counts = counts_matrix(adata)
    if not (sp.isspmatrix_csr(counts) and counts.dtype == np.float32):
        counts = sp.csr_matrix(counts, dtype=np.float32)
    bare = AnnData(obs=adata.obs, var=adata.var, uns=adata.uns, obsm=dict(adata.obsm), layers={"counts": counts})
    out = subset(bare, rows=keep)  # X stays empty: the counts are held once; run_pipeline sets X at the end
    check_counts(out, "counts", slide_key)
    if harmonise and organism is not None:
        out = harmonise_gene_ids(out, organism)
    if not out.var_names.is_unique:
        dup = out.var_names[out.var_names.duplicated()][:5].tolist()
        raise ValueError(
            f"gene identifiers are not unique after harmonisation (e.g. {dup}); merge or drop "
            "duplicated genes in the reader before preprocessing"
        )
    for key in ("slide_id", "split", "patient"):
        out.obs[key] = out.obs[key].astype(str).astype("category")
    for slide in adata.obs[slide_key].astype(str).unique():
        if not (out.obs[slide_key] == slide).any():
            raise ValueError(
                f"slide {slide!r} has no in-tissue spots (obs['in_tissue'] is 0 everywhere); check "
                "its tissue_positions file or drop the slide from data/datasets.yml"
            )
    return out
