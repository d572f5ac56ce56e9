"""Step 2: spot and gene filters on raw counts, including the ``real_data_percentage`` rule.

Thresholds are strict, as in the authors' package: a spot is kept when
``cell_min_counts < total counts < cell_max_counts``, a gene when
``gene_min_counts < total counts < gene_max_counts``.

The ``real_data_percentage`` rule keeps genes that are measured (non-zero) in most spots:
``exp_frac`` is, per gene, the smallest fraction of expressing spots over the slides and
``glob_exp_frac`` the fraction over the whole collection. Genes are sorted by ``exp_frac``
(descending, ties kept in their original order) and the longest prefix whose mean
``glob_exp_frac`` is at least ``real_data_percentage`` is kept; so on average at least that share
of the kept values are real measurements.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .. import graphs
from .collection import counts_matrix, subset


def _sums(x, axis: int) -> np.ndarray:
    return np.asarray(x.sum(axis=axis), dtype=np.float64).ravel()


def _expressing(x) -> np.ndarray:
    """Number of spots with a non-zero value, per gene."""
    if sp.issparse(x):
        x = sp.csr_matrix(x)
        return np.bincount(x.indices[x.data != 0], minlength=x.shape[1])
    return (np.asarray(x) != 0).sum(axis=0)


def expression_fractions(adata: AnnData, layer: str = "counts", slide_key: str = "slide_id",
                         spots: np.ndarray | None = None) -> pd.DataFrame:
    """Per gene: fraction of expressing spots on each slide, ``exp_frac`` and ``glob_exp_frac``.

    Parameters
    ----------
    spots
        Optional boolean mask: only these spots count (e.g. those passing the spot filter).

    Returns
    -------
    DataFrame
        Index ``var_names``; one column per slide, then ``exp_frac`` (minimum over slides) and
        ``glob_exp_frac`` (over all counted spots).
    """
    x = counts_matrix(adata, layer)
    if sp.issparse(x):
        x = sp.csr_matrix(x)
    per_slide, expressing, n_spots = {}, np.zeros(adata.n_vars), 0
    for slide, idx in graphs.slide_groups(adata, slide_key).items():
        if spots is not None:
            idx = idx[np.asarray(spots)[idx]]
        if len(idx) == 0:
            continue
        hits = _expressing(x[idx])
        per_slide[slide] = hits / len(idx)
        expressing += hits
        n_spots += len(idx)
    frame = pd.DataFrame(per_slide, index=adata.var_names)
    frame["exp_frac"] = frame.min(axis=1)
    frame["glob_exp_frac"] = expressing / max(n_spots, 1)
    return frame


def real_data_genes(exp_frac: np.ndarray, glob_exp_frac: np.ndarray, real_data_percentage: float) -> np.ndarray:
    """Boolean mask of the genes the ``real_data_percentage`` rule keeps.

    Parameters
    ----------
    exp_frac, glob_exp_frac
        Per-gene fractions (see :func:`expression_fractions`).
    real_data_percentage
        Minimum mean ``glob_exp_frac`` of the kept genes (0.7 in SpaRED).

    Raises
    ------
    ValueError
        When not even the best gene reaches the threshold.
    """
    exp_frac = np.asarray(exp_frac, dtype=np.float64)
    glob = np.asarray(glob_exp_frac, dtype=np.float64)
    order = np.argsort(-exp_frac, kind="stable")
    running = np.cumsum(glob[order]) / np.arange(1, len(order) + 1)
    ok = np.flatnonzero(running >= real_data_percentage)
    if len(ok) == 0:
        best = float(running[0]) if len(running) else float("nan")
        raise ValueError(
            f"no gene set reaches real_data_percentage={real_data_percentage}: the best prefix has "
            f"mean glob_exp_frac {best:.3f} ({len(order)} genes); lower real_data_percentage for "
            "this dataset in data/datasets.yml or check that the counts are not mostly zero"
        )
    keep = np.zeros(len(order), dtype=bool)
    keep[order[: ok[-1] + 1]] = True
    return keep


def filter_spots(adata: AnnData, min_counts: float = 10, max_counts: float = 1e6,
                 layer: str = "counts") -> AnnData:
    """Keep spots with ``min_counts < total counts < max_counts`` (a new object)."""
    total = _sums(counts_matrix(adata, layer), axis=1)
    return subset(adata, rows=(total > min_counts) & (total < max_counts))


def filter_dataset(
    adata: AnnData,
    cell_min_counts: float = 10,
    cell_max_counts: float = 1e6,
    gene_min_counts: float = 10,
    gene_max_counts: float = 1e6,
    real_data_percentage: float = 0.7,
    slide_key: str = "slide_id",
    layer: str = "counts",
    return_qc: bool = False,
):
    """Step 2: spot filter, gene-count filter, ``real_data_percentage`` rule, empty-spot filter.

    Parameters
    ----------
    return_qc
        Also return the per-spot and per-gene QC tables (what each filter saw and decided).

    Returns
    -------
    AnnData or (AnnData, DataFrame, DataFrame)
        A new object; ``var`` gains ``total_counts``, ``exp_frac`` and ``glob_exp_frac``
        (computed after the spot filter), ``obs`` gains ``total_counts`` (over kept genes).
        With ``return_qc``: also ``spot_qc`` (every input spot: slide, ``total_counts``, ``kept``)
        and ``gene_qc`` (every input gene: ``total_counts``, ``exp_frac``, ``glob_exp_frac`` after
        the spot filter, ``passes_counts``, ``kept``).

    Raises
    ------
    ValueError
        A slide loses all its spots, or no gene passes.
    """
    slides = list(dict.fromkeys(adata.obs[slide_key].astype(str)))
    slide_of = adata.obs[slide_key].astype(str).to_numpy()
    x = counts_matrix(adata, layer)
    spot_total = _sums(x, axis=1)
    spot_qc = pd.DataFrame({slide_key: slide_of, "total_counts": spot_total}, index=adata.obs_names)
    spot_ok = (spot_total > cell_min_counts) & (spot_total < cell_max_counts)
    _check_left(slide_of[spot_ok], slides, f"the spot filter ({cell_min_counts} < total counts < {cell_max_counts})",
                "lower cell_min_counts for this dataset in data/datasets.yml or check the slide's counts")
    # Masks first, one slice at the end: the collection is never copied whole.
    fractions = expression_fractions(adata, layer, slide_key, spots=spot_ok)
    gene_total = np.asarray(x.T @ spot_ok.astype(np.float64)).ravel()
    passing = (gene_total > gene_min_counts) & (gene_total < gene_max_counts)
    gene_qc = pd.DataFrame({"total_counts": gene_total, "exp_frac": fractions["exp_frac"].to_numpy(),
                            "glob_exp_frac": fractions["glob_exp_frac"].to_numpy(), "passes_counts": passing},
                           index=adata.var_names)
    if not passing.any():
        raise ValueError(
            f"no gene has {gene_min_counts} < total counts < {gene_max_counts}; check the counts "
            "or lower gene_min_counts in data/datasets.yml"
        )
    genes = np.flatnonzero(passing)
    genes = genes[real_data_genes(gene_qc["exp_frac"].to_numpy()[genes], gene_qc["glob_exp_frac"].to_numpy()[genes],
                                  real_data_percentage)]
    gene_ind = np.zeros(adata.n_vars)
    gene_ind[genes] = 1.0
    kept_total = np.asarray(x @ gene_ind).ravel()
    spots = spot_ok & (kept_total > 0)
    _check_left(slide_of[spots], slides, "dropping spots with zero counts in the kept genes",
                "lower real_data_percentage or gene_min_counts for this dataset")
    out = subset(adata, rows=spots, cols=genes)
    for key in ("exp_frac", "glob_exp_frac", "total_counts"):
        out.var[key] = gene_qc[key].to_numpy()[genes]
    out.obs["total_counts"] = kept_total[spots]
    if not return_qc:
        return out
    spot_qc["kept"] = spots
    gene_qc["kept"] = gene_qc.index.isin(out.var_names)
    return out, spot_qc, gene_qc


def _check_left(slides_left: np.ndarray, slides, step: str, fix: str) -> None:
    present = set(slides_left)
    for slide in slides:
        if slide not in present:
            raise ValueError(f"slide {slide!r} has no spots left after {step}; {fix}")
