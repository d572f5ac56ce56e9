"""AnnData files that carry one slide with ``uns["spatial"]`` (scanpy/stLearn style).
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .counts import check_counts
from .files import PathLike, ReaderError, _library
from .images import read_image

__all__ = ["read_h5ad_spatial"]


def read_h5ad_spatial(
    path: PathLike,
    *,
    slide_id: str | None = None,
    counts_layer: str | None = None,
    hires: PathLike | None = None,
    lowres: PathLike | None = None,
    require_counts: bool = True,
) -> ad.AnnData:
    """Read an AnnData file that carries one slide with ``uns["spatial"]`` (scanpy/stLearn style).

    Parameters
    ----------
    path
        The ``.h5ad`` (or AnnData ``.h5``) file.
    slide_id
        New key of ``uns["spatial"]``; default the library id stored in the file.
    counts_layer
        Layer holding the raw counts; default ``X``.
    hires, lowres
        Image files to put in ``images`` when the file stores none (stLearn keeps them apart).
    require_counts
        Raise if the values are not counts (negative, NaN). With ``False`` the values are kept
        in ``X`` only (no ``counts`` layer) and ``uns["counts_are_raw"]`` is ``False``.
    """
    path = Path(path)
    if not path.is_file():
        raise ReaderError(f"AnnData file {path} not found")
    try:
        adata = ad.read_h5ad(path)
    except Exception as err:  # noqa: BLE001
        raise ReaderError(f"{path}: cannot read the AnnData file ({type(err).__name__}: {err}); the file is "
                          "corrupt or truncated: replace it") from err
    libraries = adata.uns.get("spatial", {})
    if len(libraries) != 1:
        raise ReaderError(f"{path}: uns['spatial'] holds {len(libraries)} libraries ({list(libraries)}); "
                          "this reader reads one slide per file")
    library_id = next(iter(libraries))
    for key in ("array_row", "array_col"):
        if key not in adata.obs:
            raise ReaderError(f"{path}: obs[{key!r}] is missing; spot neighbourhoods need the array coordinates")
    if "spatial" not in adata.obsm:
        raise ReaderError(f"{path}: obsm['spatial'] is missing; patches need the full-resolution spot centres")
    if "in_tissue" in adata.obs:
        adata = adata[adata.obs["in_tissue"].astype(int) == 1].copy()
    if adata.n_obs == 0:
        raise ReaderError(f"{path}: no spot is in tissue")
    values = adata.layers[counts_layer] if counts_layer else adata.X
    raw = True
    try:
        check_counts(values, f"{path} ({'layers[' + repr(counts_layer) + ']' if counts_layer else 'X'})")
    except ReaderError:
        if require_counts:
            raise
        raw = False
    out = ad.AnnData(X=sp.csr_matrix(values, dtype=np.float32), obs=pd.DataFrame(index=adata.obs_names.astype(str)))
    out.obs["in_tissue"] = 1
    out.obs["array_row"] = adata.obs["array_row"].astype(np.int64).to_numpy()
    out.obs["array_col"] = adata.obs["array_col"].astype(np.int64).to_numpy()
    out.obsm["spatial"] = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    if "gene_ids" in adata.var:
        out.var_names = adata.var["gene_ids"].astype(str).to_numpy()
        out.var["gene_symbol"] = adata.var_names.astype(str).to_numpy()
    else:
        out.var_names = adata.var_names.astype(str)
        out.var["gene_symbol"] = adata.var_names.astype(str).to_numpy()
    if raw:
        out.layers["counts"] = out.X.copy()
    else:
        out.uns["counts_are_raw"] = False
    library = libraries[library_id]
    images = {k: np.asarray(v) for k, v in library.get("images", {}).items() if np.asarray(v).size}
    for key, file in (("hires", hires), ("lowres", lowres)):
        if file is not None:
            images[key] = read_image(file)
    if not images:
        raise ReaderError(f"{path}: uns['spatial'][{library_id!r}] holds no image; pass hires=<image file> "
                          "(e.g. the tissue_hires_image.png of the same slide)")
    factors = {k: float(v) for k, v in library.get("scalefactors", {}).items()}
    if "spot_diameter_fullres" not in factors:
        raise ReaderError(f"{path}: scalefactors lack 'spot_diameter_fullres'")
    metadata = {"reader": "h5ad", "counts_file": str(path.resolve()), "source_image_path": "",
                "library_id": str(library_id)}
    out.uns["spatial"] = {slide_id or str(library_id): _library(images, factors, metadata)}
    return out
