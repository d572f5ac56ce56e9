"""Which real entries SpaCKLE hides: per-gene probabilities, training masks, fixed evaluation masks, the input."""

from __future__ import annotations

import numpy as np
import torch

from .config import SpackleConfig

def mask_probabilities(real: np.ndarray, rho: float, scheme: str = "uniform") -> np.ndarray:
    """Per-gene probability of hiding a real entry.

    ``uniform``: ρ for every gene (≈ ρ of the real values hidden). ``per_gene``: ρ divided by the
    gene's fraction of real values, capped at 1 (the authors' code; ≈ ρ of *all* entries hidden).
    ``lgdist``: ``p_miss / (1 − p_miss)``, capped at 1, with ``p_miss`` the gene's fraction of
    missing entries (LGDiST, Cárdenas et al., arXiv 2509.01864; ρ is not used): a gene loses
    about as many real values as it misses.
    """
    g = real.shape[1]
    if scheme == "uniform":
        return np.full(g, rho, dtype=np.float32)
    frac = real.mean(axis=0)
    if scheme == "lgdist":
        miss = 1.0 - frac
        with np.errstate(divide="ignore", invalid="ignore"):
            p = np.where(frac > 0, miss / np.maximum(frac, 1e-12), 0.0)
        return np.minimum(p, 1.0).astype(np.float32)
    if scheme != "per_gene":
        raise ValueError(f"masking scheme must be 'uniform', 'per_gene' or 'lgdist', got {scheme!r}")
    with np.errstate(divide="ignore"):
        p = np.where(frac > 0, rho / np.maximum(frac, 1e-12), 0.0)
    return np.minimum(p, 1.0).astype(np.float32)


def training_mask(real: torch.Tensor, hide_prob: torch.Tensor | float) -> torch.Tensor:
    """Entries hidden in one training step: each real entry with its gene's probability.

    ``real`` is False at median-completed entries and padding tokens, so those are never hidden.
    """
    return (torch.rand(real.shape, device=real.device) < hide_prob) & real


def synthetic_hidden(real: np.ndarray, fraction: float, seed: int, scheme: str = "uniform",
                     rows: np.ndarray | None = None) -> np.ndarray:
    """A fixed random mask hiding real entries (only in ``rows`` when given).

    ``uniform``: each real entry hidden with probability ``fraction`` (≈ ``fraction`` of the
    real values); ``per_gene``: the authors' rule (≈ ``fraction`` of all entries, see
    :func:`mask_probabilities`); ``lgdist``: LGDiST's rule (``fraction`` is not used).
    """
    if scheme != "lgdist" and not 0 < fraction < 1:
        raise ValueError(f"masking fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    p = mask_probabilities(real, fraction, scheme)
    hidden = (rng.random(real.shape, dtype=np.float32) < p) & real
    if rows is not None:
        keep = np.zeros(real.shape[0], dtype=bool)
        keep[rows] = True
        hidden &= keep[:, None]
    return hidden


def spackle_input(values: np.ndarray | torch.Tensor, real, hidden, config: SpackleConfig):
    """What the model sees when ``hidden`` entries are to be predicted.

    Hidden entries are 0; originally missing entries keep their median values (as in training)
    unless ``config.missing_in_training == "zero"``.
    """
    if isinstance(values, torch.Tensor):
        keep = ~hidden if config.missing_in_training == "median" else (~hidden & real)
        return values * keep
    keep = ~hidden if config.missing_in_training == "median" else (~hidden & real)
    return (values * keep).astype(np.float32)


__all__ = ["mask_probabilities", "spackle_input", "synthetic_hidden", "training_mask"]
