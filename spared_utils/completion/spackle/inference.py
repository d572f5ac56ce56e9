"""Completing with a trained SpaCKLE: the real missing entries, or entries hidden on purpose."""

from __future__ import annotations

import numpy as np
import torch
from anndata import AnnData

from ... import training
from . import blend, zeros
from .checkpoints import check_genes
from .config import DEFAULT_LAYER
from .masking import spackle_input
from .model import Spackle, SpackleResult
from .neighbourhoods import check_input, gather, neighbourhoods, resolve_hex_geometry

def complete_with(result: SpackleResult, adata: AnnData, layer: str = DEFAULT_LAYER,
                  hex_geometry: bool | None = None, slide_key: str = "slide_id") -> np.ndarray:
    """Complete the missing entries of ``layers[layer]`` with a trained model.

    The real missing-value mask is the model's mask (missing entries are 0 in every token);
    the centre token's output replaces the missing entries, real values are kept.
    """
    check_genes(result, adata)
    values, real = check_input(adata, layer, slide_key=slide_key)
    cfg = result.config
    index = neighbourhoods(adata, cfg, hex_geometry=resolve_hex_geometry(adata, hex_geometry), slide_key=slide_key)
    if index.shape[1] + 1 != result.model.n_tokens:
        raise ValueError(f"the model was trained on {result.model.n_tokens} tokens per neighbourhood but this "
                         f"dataset's neighbourhoods have {index.shape[1] + 1}; use the same neighbourhood settings")
    device = next(result.model.parameters()).device
    inputs = torch.as_tensor(values * real, device=device)
    centres = torch.arange(adata.n_obs, device=device)
    pred = predict_centres(result.model, inputs, torch.as_tensor(index, device=device), centres,
                           cfg.predict_batch, cfg.train.amp).cpu().numpy()
    rows = np.arange(adata.n_obs)
    pred = _blended(result, adata, values, real, rows, pred, hex_geometry, slide_key)
    pred = _zero_counts(result, adata, layer, pred, rows, ~real)
    return np.where(real, values, pred).astype(np.float32)


def predict_hidden(result: SpackleResult, adata: AnnData, hidden: np.ndarray, rows: np.ndarray,
                   layer: str = DEFAULT_LAYER, index: np.ndarray | None = None,
                   hex_geometry: bool | None = None, slide_key: str = "slide_id") -> np.ndarray:
    """Predictions for the spots ``rows`` when the entries ``hidden`` (spots × genes) are hidden.

    Used by the synthetic-masking evaluation; returns a ``(len(rows), genes)`` array. Hidden
    entries that are not real (originally missing, zero counts) are predicted as
    :func:`complete_with` completes them.
    """
    check_genes(result, adata)
    values, real = check_input(adata, layer, slide_key=slide_key)
    if index is None:
        index = neighbourhoods(adata, result.config, hex_geometry=resolve_hex_geometry(adata, hex_geometry),
                               slide_key=slide_key)
    device = next(result.model.parameters()).device
    inputs = torch.as_tensor(spackle_input(values, real, hidden, result.config), device=device)
    rows = np.asarray(rows, dtype=np.int64)
    pred = predict_centres(result.model, inputs, torch.as_tensor(index, device=device),
                           torch.as_tensor(rows, device=device),
                           result.config.predict_batch, result.config.train.amp).cpu().numpy()
    hidden = np.asarray(hidden, dtype=bool)
    pred = _blended(result, adata, values, real & ~hidden, rows, pred, hex_geometry, slide_key)
    return _zero_counts(result, adata, layer, pred, rows, (hidden & ~real)[rows])


def _zero_counts(result: SpackleResult, adata: AnnData, layer: str, pred: np.ndarray, rows: np.ndarray,
                 zero: np.ndarray) -> np.ndarray:
    """``pred`` with the entries ``zero`` (originally missing: zero counts) replaced by
    :func:`.zeros.zero_posterior` where the model carries a fitted shape (``zero_posterior``)."""
    shape = getattr(result.model, "zero_shape", None)
    if shape is None or not np.isfinite(float(shape)) or not zero.any():
        return pred
    cmap = zeros.curation_map(adata, layer)
    if cmap is None:
        return pred
    return np.where(zero, zeros.zero_posterior(pred, float(shape), cmap, rows), pred).astype(np.float32)


def _blended(result: SpackleResult, adata: AnnData, values: np.ndarray, observed: np.ndarray, rows: np.ndarray,
             pred: np.ndarray, hex_geometry: bool | None, slide_key: str) -> np.ndarray:
    """``pred`` blended with the neighbour mean of the ``observed`` values where the model carries
    blend weights (``SpackleConfig.neighbour_blend``), else ``pred`` itself."""
    weights = blend.blend_weights(result.model)
    if weights is None:
        return pred
    rings = blend.neighbour_rings(adata, resolve_hex_geometry(adata, hex_geometry), slide_key)
    mean, bins = blend.neighbour_mean(values, observed, rings, rows)
    return blend.blend(pred, mean, bins, weights)


@torch.no_grad()
def predict_centres(model: Spackle, inputs: torch.Tensor, index: torch.Tensor, centres: torch.Tensor,
                    batch: int = 2048, amp: bool = True) -> torch.Tensor:
    """The model's output for the centre token of each spot in ``centres`` (float32, on device)."""
    was_training = model.training
    model.eval()
    device = inputs.device
    outs = []
    for start in range(0, len(centres), batch):
        c = centres[start:start + batch]
        x, padding, _ = gather(inputs, index, c)
        with training.autocast(device, amp):
            outs.append(model(x, padding)[:, 0].float())
    model.train(was_training)
    return torch.cat(outs) if outs else torch.empty((0, inputs.shape[1]), device=device)


__all__ = ["complete_with", "predict_centres", "predict_hidden"]
