"""Metrics on real (non-missing) values only, as in the paper.

Every function takes predictions, ground truth and a boolean ``mask`` (True = the value counts:
a real measurement, or a real measurement that was hidden on purpose) of the same shape
``(n_spots, n_genes)``. Entries where ``mask`` is False never enter a metric.

Two flavours of PCC are reported:

* ``pcc_gene`` – Pearson correlation per gene across spots, then averaged over genes
  (what SpaRED's figures call PCC-Gene and what this book's figures use);
* ``pcc_global`` – one correlation over all masked entries pooled.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def _check(pred: np.ndarray, true: np.ndarray, mask: np.ndarray | None):
    pred = np.asarray(pred, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    if pred.shape != true.shape:
        raise ValueError(f"predictions have shape {pred.shape} but ground truth {true.shape}")
    if mask is None:
        mask = np.ones(true.shape, dtype=bool)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != true.shape:
        raise ValueError(f"mask has shape {mask.shape} but ground truth {true.shape}")
    if not mask.any():
        raise ValueError("the mask selects no value: there is nothing to evaluate")
    return pred, true, mask


def masked_mse(pred, true, mask=None) -> float:
    """Mean squared error over the entries where ``mask`` is True."""
    pred, true, mask = _check(pred, true, mask)
    return float(np.mean((pred[mask] - true[mask]) ** 2))


def masked_mae(pred, true, mask=None) -> float:
    """Mean absolute error over the entries where ``mask`` is True."""
    pred, true, mask = _check(pred, true, mask)
    return float(np.mean(np.abs(pred[mask] - true[mask])))


def masked_bias(pred, true, mask=None) -> float:
    """Mean signed error ``pred − true`` over the entries where ``mask`` is True (negative:
    predictions below the measured values on average)."""
    pred, true, mask = _check(pred, true, mask)
    return float(np.mean(pred[mask] - true[mask]))


def per_gene_mse(pred, true, mask=None) -> np.ndarray:
    """MSE of each gene (column) over its masked entries; NaN for a gene with none."""
    pred, true, mask = _check(pred, true, mask)
    sq = np.where(mask, (pred - true) ** 2, 0.0)
    n = mask.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, sq.sum(axis=0) / n, np.nan)


def per_gene_pcc(pred, true, mask=None, min_values: int = 3) -> np.ndarray:
    """Pearson correlation of each gene across its masked spots.

    NaN for a gene with fewer than ``min_values`` masked entries or a constant vector (a
    correlation is undefined there; averages skip NaN).
    """
    pred, true, mask = _check(pred, true, mask)
    w = mask.astype(np.float64)
    n = w.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mp = (w * pred).sum(0) / n
        mt = (w * true).sum(0) / n
        dp = (pred - mp) * w
        dt = (true - mt) * w
        cov = (dp * dt).sum(0)
        r = cov / np.sqrt((dp**2).sum(0) * (dt**2).sum(0))
    r = np.where(n >= min_values, r, np.nan)
    return np.where(np.isfinite(r), r, np.nan)


def pcc_global(pred, true, mask=None) -> float:
    """Pearson correlation over all masked entries pooled."""
    pred, true, mask = _check(pred, true, mask)
    p, t = pred[mask], true[mask]
    if p.size < 2 or p.std() == 0 or t.std() == 0:
        return float("nan")
    return float(np.corrcoef(p, t)[0, 1])


def evaluate(pred, true, mask=None) -> dict[str, float]:
    """The metrics of a results row: ``mse``, ``mae``, ``bias`` (mean signed error), ``pcc_gene``,
    ``pcc_global``, ``n_values``."""
    pred, true, mask = _check(pred, true, mask)
    gene_r = per_gene_pcc(pred, true, mask)
    return {
        "mse": masked_mse(pred, true, mask),
        "mae": masked_mae(pred, true, mask),
        "bias": masked_bias(pred, true, mask),
        "pcc_gene": float(np.nanmean(gene_r)) if np.isfinite(gene_r).any() else float("nan"),
        "pcc_global": pcc_global(pred, true, mask),
        "n_values": int(mask.sum()),
    }


def per_gene_table(pred, true, mask, gene_names) -> pd.DataFrame:
    """One row per gene: ``gene``, ``mse``, ``pcc``, ``n_values`` (for per-gene plots)."""
    pred, true, mask = _check(pred, true, mask)
    return pd.DataFrame(
        {
            "gene": list(gene_names),
            "mse": per_gene_mse(pred, true, mask),
            "pcc": per_gene_pcc(pred, true, mask),
            "n_values": mask.sum(axis=0),
        }
    )


def morans_i(values, adjacency, mask=None) -> np.ndarray:
    """Moran's I of each gene's map (Moran, *Biometrika* 1950) on a spot graph, real values only.

    ``values`` is ``(n_spots, n_genes)``; ``adjacency`` a symmetric ``(n_spots, n_spots)``
    sparse matrix of binary weights (:func:`spared_utils.graphs.grid_adjacency`). Gene ``g`` is
    scored on the spots where ``mask[:, g]`` is True, with the graph restricted to them:
    ``I = n / W · (zᵀ A z) / (zᵀ z)``, ``z`` the centred values, ``W`` the number of (directed)
    edges. A constant map has no spatial pattern: its I is 0. NaN where the spots left have no
    edge.
    """
    values = np.asarray(values, dtype=np.float64)
    mask = np.ones(values.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    adj = adjacency.tocsr().astype(np.float64)
    out = np.full(values.shape[1], np.nan)
    for g in range(values.shape[1]):
        keep = np.flatnonzero(mask[:, g])
        if len(keep) < 3:
            continue
        a = adj[keep][:, keep]
        w = a.sum()
        if w == 0:
            continue
        z = values[keep, g] - values[keep, g].mean()
        zz = float(z @ z)
        out[g] = 0.0 if _flat(values[keep, g]) else len(z) / w * float(z @ (a @ z)) / zz
    return out


def _flat(column: np.ndarray) -> bool:
    """A constant map (up to float64 rounding): it has no pattern, as :func:`per_gene_pcc` treats it."""
    return bool(column.std() <= 1e-12 * max(1.0, float(np.abs(column).mean())))


def gene_correlations(values, mask=None) -> np.ndarray:
    """Gene × gene Pearson correlations, each pair over the spots where both are real (0 where a
    gene is constant there: it co-varies with nothing; NaN with fewer than 3 such spots).

    Computed for all pairs at once from sums over the spots both genes share (five matrix
    products), so a 128-gene panel on thousands of spots costs milliseconds; equal to pandas'
    pairwise-complete ``DataFrame.corr`` up to rounding.
    """
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values) if mask is None else np.asarray(mask, dtype=bool) & np.isfinite(values)
    w = finite.astype(np.float64)
    n_real = w.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        centre = np.where(n_real > 0, np.where(finite, values, 0.0).sum(axis=0) / np.maximum(n_real, 1), 0.0)
    x = np.where(finite, values - centre, 0.0)  # centred first: the sums below then lose no precision
    n = w.T @ w
    sx = x.T @ w  # sx[i, j]: the sum of gene i over the spots where i and j are both real
    sxx = (x * x).T @ w
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = x.T @ x - sx * sx.T / n
        var_i, var_j = sxx - sx**2 / n, (sxx - sx**2 / n).T
        constant = (var_i <= 1e-12 * np.maximum(sxx, 1e-300)) | (var_j <= 1e-12 * np.maximum(sxx.T, 1e-300))
        corr = np.clip(cov / np.sqrt(var_i * var_j), -1.0, 1.0)
    enough = n >= 3
    corr = np.where(enough & ~constant, corr, np.where(enough, 0.0, np.nan))
    flat = [g for g in range(values.shape[1]) if finite[:, g].any() and _flat(values[finite[:, g], g])]
    corr[flat, :] = np.where(enough[flat, :], 0.0, np.nan)
    corr[:, flat] = np.where(enough[:, flat], 0.0, np.nan)
    return corr


def structure(pred, true, mask, adjacency) -> dict[str, float]:
    """What a prediction keeps of the tissue's structure, beside its error.

    * ``moran_true`` / ``moran_pred``: Moran's I of the measured and of the predicted maps
      (:func:`morans_i`, on the same real spots), averaged over genes; a prediction that regresses
      to the mean flattens its maps and its I falls towards 0;
    * ``moran_gap``: the mean over genes of ``|I_pred − I_true|``;
    * ``corr_distance``: the mean absolute difference between the predicted and the measured
      gene–gene correlation matrices (:func:`gene_correlations`, off-diagonal pairs).
    """
    pred, true, mask = _check(pred, true, mask)
    i_true, i_pred = morans_i(true, adjacency, mask), morans_i(pred, adjacency, mask)
    both = np.isfinite(i_true) & np.isfinite(i_pred)
    c_true, c_pred = gene_correlations(true, mask), gene_correlations(pred, mask)
    off = ~np.eye(len(c_true), dtype=bool) & np.isfinite(c_true) & np.isfinite(c_pred)
    nan = float("nan")
    return {
        "moran_true": float(i_true[both].mean()) if both.any() else nan,
        "moran_pred": float(i_pred[both].mean()) if both.any() else nan,
        "moran_gap": float(np.abs(i_pred - i_true)[both].mean()) if both.any() else nan,
        "corr_distance": float(np.abs(c_pred - c_true)[off].mean()) if off.any() else nan,
    }
