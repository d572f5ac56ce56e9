"""Ours' completion of entries that are zero counts (``SpackleConfig.zero_posterior``).

A model trained to restore real values hidden at random predicts what a *measured* value would
be. An originally missing entry is not a value hidden at random: its count was 0, which says its
expression is low. Under the gamma–Poisson (negative binomial) model of spot counts, with the
expected count of the entry ``μ ~ Gamma(shape k, mean λ)`` around the model's prediction ``λ``,
a count of 0 moves the expectation to ``E[μ | 0] = λ k / (k + λ)``.

``λ`` is the prediction taken back to counts through the curation's own steps, recovered from
the curated layers (:class:`CurationMap`: each spot's TPM factor, log2(x + 1), the ComBat
correction, affine per batch and gene). ``k`` measures how far the true expected counts scatter
around the model's predictions; it is fitted on held-out real values (:func:`prior_shape`): the
variance of ``ln(count / λ)`` where ``λ`` is large enough for Poisson noise to be small, minus that
noise, gives ``σ²``, and ``k`` is the shape whose log has that variance (``ψ′(k) = σ²``, the
trigamma function). Nothing of it reads the generator of the synthetic data.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from anndata import AnnData
from scipy.optimize import brentq
from scipy.special import polygamma

from ...utils import dense

#: Held-out values whose predicted count is at least this enter :func:`prior_shape` (Poisson
#: noise, ``1 / λ`` in ``ln`` units, is then small beside the scatter it measures).
MIN_COUNTS = 5.0
#: The largest gamma shape :func:`prior_shape` returns (a prior this tight changes nothing).
MAX_SHAPE = 1e4
#: Layers :class:`CurationMap` reads.
NEEDED_LAYERS = ("counts", "tpm", "d_log1p")


@dataclass
class CurationMap:
    """The curation's way from counts to ``layers[layer]``, per spot and gene:
    ``value = slope · log2(counts / gene_length · factor + 1) + offset``."""

    factor: np.ndarray  #: (spots,) TPM factor
    length: np.ndarray  #: (genes,) gene length
    slope: np.ndarray  #: (spots, genes) ComBat's affine map (1 without ComBat)
    offset: np.ndarray  #: (spots, genes)

    @classmethod
    def of(cls, adata: AnnData, layer: str, batch_key: str | None = None) -> CurationMap:
        """Recover the map of a curated dataset from its layers (:data:`NEEDED_LAYERS`, ``layer``,
        ``var["gene_length"]``).

        Raises
        ------
        KeyError
            A layer or the gene lengths are missing.
        ValueError
            No spot has a measured value.
        """
        problem = missing_requirement(adata, layer)
        if problem:
            raise KeyError(problem)
        counts = dense(adata.layers["counts"]).astype(np.float64)
        tpm = dense(adata.layers["tpm"]).astype(np.float64)
        length = np.asarray(adata.var["gene_length"], dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(counts > 0, tpm / (counts / length), np.nan)
        if not np.isfinite(ratio).any():
            raise ValueError("no spot has a measured value: the TPM factors cannot be recovered")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a spot with no count: filled below
            factor = np.nanmedian(ratio, axis=1)
        factor = np.where(np.isfinite(factor), factor, np.nanmedian(factor))
        x = dense(adata.layers["d_log1p"]).astype(np.float64)
        y = dense(adata.layers[layer]).astype(np.float64)
        key = batch_key or (adata.uns.get("preprocessing", {}).get("params", {}) or {}).get("combat_key")
        groups = (adata.obs[key].astype(str).to_numpy() if isinstance(key, str) and key in adata.obs
                  else np.zeros(adata.n_obs, dtype=int))
        slope, offset = np.ones_like(y), np.zeros_like(y)
        for g in np.unique(groups):  # least squares of the layer on its input, per batch and gene
            sel = groups == g
            xm, ym = x[sel].mean(axis=0), y[sel].mean(axis=0)
            var = ((x[sel] - xm) ** 2).mean(axis=0)
            cov = ((x[sel] - xm) * (y[sel] - ym)).mean(axis=0)
            s = np.where(var > 1e-12, cov / np.maximum(var, 1e-12), 1.0)
            slope[sel], offset[sel] = s, ym - s * xm
        return cls(factor=factor, length=length, slope=slope, offset=offset)

    def to_counts(self, values: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Expected counts of ``values`` (``(len(rows), genes)`` on the layer's scale), never negative."""
        logged = (np.asarray(values, dtype=np.float64) - self.offset[rows]) / self.slope[rows]
        return np.maximum(np.exp2(logged) - 1.0, 0.0) / self.factor[rows, None] * self.length[None, :]

    def from_counts(self, counts: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``counts`` (``(len(rows), genes)``) on the layer's scale."""
        logged = np.log2(np.asarray(counts, dtype=np.float64) / self.length[None, :] * self.factor[rows, None] + 1.0)
        return self.slope[rows] * logged + self.offset[rows]


def trigamma(k: float) -> float:
    """The variance of ``ln μ`` for ``μ`` gamma-distributed with shape ``k``."""
    return float(polygamma(1, k))


def missing_requirement(adata: AnnData, layer: str) -> str | None:
    """What :meth:`CurationMap.of` lacks in ``adata`` (a layer or the gene lengths), or ``None``."""
    for need in (*NEEDED_LAYERS, layer):
        if need not in adata.layers:
            return f"layer {need!r} is missing from the curated dataset; curate it with spared_utils.datasets.load"
    if "gene_length" not in adata.var:
        return "var['gene_length'] is missing; curate the dataset with spared_utils.datasets.load"
    return None


def curation_map(adata: AnnData, layer: str) -> CurationMap | None:
    """:meth:`CurationMap.of`, or ``None`` where the dataset lacks what it needs (no correction then)."""
    try:
        return CurationMap.of(adata, layer)
    except (KeyError, ValueError):
        return None


def prior_shape(pred: np.ndarray, truth: np.ndarray, cmap: CurationMap, rows: np.ndarray,
                hidden: np.ndarray) -> float:
    """The gamma shape ``k`` of the expected counts around the predictions ``pred`` of the hidden
    real values ``truth`` (both ``(len(rows), genes)``, scored where ``hidden``); NaN when fewer
    than 50 of them have a predicted count of at least :data:`MIN_COUNTS`."""
    lam = cmap.to_counts(pred, rows)[hidden]
    obs = cmap.to_counts(truth, rows)[hidden]
    sel = (lam >= MIN_COUNTS) & (obs > 0)
    if sel.sum() < 50:
        return float("nan")
    resid = np.log(obs[sel]) - np.log(lam[sel])
    sigma2 = float(resid.var() - np.mean(1.0 / lam[sel]))
    if sigma2 <= trigamma(MAX_SHAPE):
        return MAX_SHAPE
    # the log of a gamma variable with shape k has variance trigamma(k)
    return float(brentq(lambda k: trigamma(k) - sigma2, 1e-4, MAX_SHAPE))


def zero_posterior(pred: np.ndarray, shape: float, cmap: CurationMap, rows: np.ndarray) -> np.ndarray:
    """``E[μ | count 0]`` for every entry of ``pred`` (``(len(rows), genes)``), on the layer's scale."""
    lam = cmap.to_counts(pred, rows)
    return cmap.from_counts(lam * shape / (shape + lam), rows).astype(np.float32)


__all__ = ["MAX_SHAPE", "MIN_COUNTS", "NEEDED_LAYERS", "CurationMap", "curation_map", "missing_requirement", "prior_shape",
           "trigamma",
           "zero_posterior"]
