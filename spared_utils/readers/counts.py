"""Count matrices: 10x ``.h5``/mtx folders and count tables (``.tsv``/``.csv``, either orientation),
checked to hold raw counts.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .files import PathLike, ReaderError, _stem

__all__ = ["check_counts", "read_counts"]


log = logging.getLogger(__name__)


def check_counts(matrix, source: PathLike, *, require_integers: bool = False) -> None:
    """Raise :class:`ReaderError` if a count matrix holds NaN, infinite or negative values.

    Non-integer values only log a warning (unless ``require_integers``): some deposits hold
    normalised values, which the pipeline's TPM step will treat as counts.
    """
    values = matrix.data if sp.issparse(matrix) else np.asarray(matrix).ravel()
    if values.size == 0:
        return
    bad = ~np.isfinite(values)
    if bad.any():
        raise ReaderError(f"{source}: {int(bad.sum())} count value(s) are NaN or infinite; the matrix is "
                          "damaged or not a count matrix: use the raw counts from the original source")
    if (values < 0).any():
        raise ReaderError(f"{source}: {int((values < 0).sum())} count value(s) are negative (minimum "
                          f"{values.min():g}); these are not raw counts (scaled or log data?): use the raw "
                          "count matrix (Space Ranger's filtered_feature_bc_matrix)")
    if not np.array_equal(values, np.round(values)):
        message = (f"{source}: count values are not whole numbers (e.g. {values[values != np.round(values)][0]:g}); "
                   "the matrix looks normalised, not raw: use the raw UMI counts (Space Ranger's "
                   "filtered_feature_bc_matrix) if you have them")
        if require_integers:
            raise ReaderError(message)
        log.warning(message)


def _finish_counts(adata: ad.AnnData) -> ad.AnnData:
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    adata.layers["counts"] = adata.X.copy()
    return adata


def read_counts(path: PathLike) -> ad.AnnData:
    """Read a count matrix: 10x HDF5, 10x mtx folder, or a text table (spots × genes or genes × spots).

    Returns an AnnData with barcodes as ``obs_names``, gene ids as ``var_names`` (Ensembl ids for
    10x files) and ``var["gene_symbol"]``. A text table is returned with spots as rows if its
    orientation can be told (genes × spots tables have gene-like row names); the caller aligns it
    with the positions file.
    """
    path = Path(path)
    if not path.exists():
        raise ReaderError(f"count matrix {path} not found: it should be Space Ranger's "
                          "filtered_feature_bc_matrix.h5 (or the filtered_feature_bc_matrix/ folder)")
    import scanpy as sc

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # scanpy: "Variable names are not unique"
            if path.is_dir():
                adata = sc.read_10x_mtx(path, var_names="gene_ids", make_unique=False)
                symbols = adata.var.pop("gene_symbols") if "gene_symbols" in adata.var else adata.var_names
            elif _stem(path).endswith((".h5", ".hdf5")):
                adata = sc.read_10x_h5(path)
                symbols = adata.var_names.to_numpy()
                adata.var_names = adata.var.pop("gene_ids").astype(str).to_numpy()
            elif _stem(path).endswith((".tsv", ".csv", ".txt")):
                return _read_count_table(path)
            else:
                raise ReaderError(f"{path}: unknown count-matrix format; expected a 10x .h5 file, a 10x mtx "
                                  "folder or a .tsv/.csv table")
    except ReaderError:
        raise
    except Exception as err:  # noqa: BLE001 - h5py/scipy/pandas raise many types for a broken file
        raise ReaderError(f"{path}: cannot read the count matrix ({type(err).__name__}: {err}). The file is "
                          "corrupt or truncated: delete it and download it again "
                          "(spared_utils.datasets.load(..., force=True) re-downloads)") from err
    adata.var["gene_symbol"] = np.asarray(symbols, dtype=str)
    adata.var = adata.var[["gene_symbol"]]
    adata.obs = pd.DataFrame(index=adata.obs_names.astype(str))
    if not adata.obs_names.is_unique:
        dup = adata.obs_names[adata.obs_names.duplicated()][:3].tolist()
        raise ReaderError(f"{path}: barcode(s) {dup} appear more than once; the matrix is damaged or joins two runs: "
                          "use the filtered_feature_bc_matrix of one Space Ranger run")
    check_counts(adata.X, path)
    return _finish_counts(adata)


def _read_count_table(path: Path) -> ad.AnnData:
    sep = "," if _stem(path).endswith(".csv") else "\t"
    table = pd.read_csv(path, sep=sep, index_col=0)
    if table.empty:
        raise ReaderError(f"{path}: the count table is empty")
    if _looks_like_genes(table.index) and not _looks_like_genes(table.columns):
        table = table.T
    table.index = table.index.astype(str)
    table.columns = table.columns.astype(str)
    if not all(np.issubdtype(t, np.number) for t in table.dtypes):
        raise ReaderError(f"{path}: the count table has non-numeric columns; expected spots × genes "
                          "(or genes × spots) numbers with ids in the first column")
    matrix = table.to_numpy(dtype=np.float64)
    check_counts(matrix, path)
    adata = ad.AnnData(X=sp.csr_matrix(matrix), obs=pd.DataFrame(index=table.index),
                       var=pd.DataFrame({"gene_symbol": table.columns.to_numpy()}, index=table.columns))
    return _finish_counts(adata)


def _looks_like_genes(names: Iterable) -> bool:
    sample = [str(n) for n in list(names)[:200]]
    barcode_like = sum(_is_barcode(n) for n in sample)
    return barcode_like < 0.5 * max(1, len(sample))


def _is_barcode(name: str) -> bool:
    core = name.split("-")[0].split("_")[0]
    return (len(core) >= 10 and set(core) <= set("ACGTN")) or ("x" in name and name.replace("x", "").replace(".", "").isdigit())
