"""Ours' last step (``SpackleConfig.neighbour_blend``): the model's output blended with the neighbour mean.

After training, one weight per *availability bin* is fitted on the validation slides: the
share of the model's prediction against the mean of the gene's given values in the nearest ring
of neighbours that has one (the ``neighbour_mean`` baseline, rings 1–3 of the array grid). Bins:
how many ring-1 spots hold the gene (``1..ring1``), or ring 2, or ring 3 alone; where no spot
within three rings holds it, the model stands. Each weight is the least-squares one on hidden
real values of the validation slides at masking levels 10–70%, clipped to [0, 1]. It is a
stacking ensemble of two completions, fitted on held-out slides, so it corrects the model where
its training slides flattered it.
"""

from __future__ import annotations

import numpy as np
import torch
from anndata import AnnData

from ... import graphs

#: Rings of the neighbour mean (as ``method="neighbour_mean"``).
BLEND_RINGS = 3
#: Bins of ring-1 availability: 1..6 spots of ring 1 hold the gene (a square grid uses 1..4).
RING1 = 6
#: Masking levels of the validation masks the weights are fitted on (the uniform rule).
BLEND_LEVELS: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7)


#: Bins of availability: 0 (no neighbour within the rings), ``1..RING1`` (ring-1 spots holding
#: the gene), then one per wider ring.
N_BINS = RING1 + BLEND_RINGS


def neighbour_rings(adata: AnnData, hex_geometry: bool, slide_key: str = "slide_id") -> list:
    """The cumulative ring neighbourhoods the blend averages over."""
    return graphs.ring_neighbourhoods(graphs.adjacency(adata, hex_geometry, slide_key), BLEND_RINGS)


def neighbour_mean(values: np.ndarray, observed: np.ndarray, rings: list,
                   rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The neighbour mean of each entry of ``rows`` (NaN where no ring holds the gene) and its bin."""
    mean, ring = graphs.ring_mean(values, observed, rings, rows)
    held = np.asarray(rings[0][rows] @ np.asarray(observed, dtype=np.float32))
    first = np.clip(np.rint(held), 1, RING1).astype(np.int64)
    bins = np.where(ring == 1, first, np.where(ring == 0, 0, RING1 + ring - 1))
    return mean, bins


def blend(pred: np.ndarray, mean: np.ndarray, bins: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``w · pred + (1 − w) · mean`` with ``w`` the weight of each entry's bin (the model alone where
    the mean is NaN)."""
    w = np.asarray(weights, dtype=np.float64)[bins]
    out = np.where(np.isnan(mean), pred, w * pred + (1.0 - w) * np.nan_to_num(mean))
    return out.astype(np.float32)


def fit_weights(samples: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], size: int = N_BINS) -> np.ndarray:
    """Least-squares weight per bin from ``(prediction, neighbour mean, truth, bin)`` samples of
    hidden entries: ``w = Σ (p − m)(y − m) / Σ (p − m)²``, clipped to [0, 1]; 1 where a bin has
    no sample or the mean is NaN."""
    num, den = np.zeros(size), np.zeros(size)
    for pred, mean, truth, bins in samples:
        ok = ~np.isnan(mean)
        d, r = (pred - mean)[ok], (truth - mean)[ok]
        num += np.bincount(bins[ok], d * r, size)
        den += np.bincount(bins[ok], d * d, size)
    w = np.where(den > 0, num / np.maximum(den, 1e-12), 1.0)
    w[0] = 1.0
    return np.clip(w, 0.0, 1.0).astype(np.float32)


def blend_weights(model: torch.nn.Module) -> np.ndarray | None:
    """The fitted weights a model carries (``None`` without the blend)."""
    w = getattr(model, "blend_weight", None)
    return None if w is None else w.detach().cpu().numpy()


__all__ = ["BLEND_LEVELS", "BLEND_RINGS", "N_BINS", "RING1", "blend", "blend_weights", "fit_weights", "neighbour_mean",
           "neighbour_rings"]
