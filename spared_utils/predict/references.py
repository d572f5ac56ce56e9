"""References beside every predictor: what a model scores without looking at the image.

The paper compares its predictors with each other only. Two references say how much of a
model's score the image itself earns (both are *references*, not predictors: they read
measurements a predictor never sees):

* ``library_size`` — an image-free null: each gene fitted, by least squares on the real training
  values, on the spot's log library size alone (``log1p(obs["total_counts"])``, the counts over
  the genes kept by the curation's filter). A model that scores no better has learned cell
  density, which a histology image shows as nuclei per spot.
* ``spatial_neighbours`` — a spatial reference: each held-out value from the mean of the same
  gene's *measured* values among the spot's neighbours on its slide (the first ring of the
  array grid, widened ring by ring up to :data:`MAX_RINGS` until a real value is found; the
  gene's training mean where none is). It shows what spatial context alone gives, the signal
  that slide- and graph-level models can exploit.

Both are scored by :func:`~spared_utils.predict.engine.evaluate_predictions` on the spots a run
is scored on, and written with stage ``predict_reference``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .. import graphs
from ..models.data import PredictionData
from .engine import evaluate_predictions

__all__ = ["MAX_RINGS", "REFERENCES", "available", "reference_predictions", "reference_rows"]

#: The references, in the order tables list them.
REFERENCES: tuple[str, ...] = ("library_size", "spatial_neighbours")
#: How far :func:`reference_predictions` widens the neighbourhood of ``spatial_neighbours``
#: (:func:`spared_utils.graphs.ring_mean`, shared with the completion method ``neighbour_mean``).
MAX_RINGS = graphs.RING_MEAN_RINGS


def reference_predictions(data: PredictionData, rows: np.ndarray, kind: str) -> np.ndarray:
    """Predictions of reference ``kind`` (one of :data:`REFERENCES`) for ``rows``."""
    if kind == "library_size":
        return _library_size(data, rows)
    if kind == "spatial_neighbours":
        return _spatial_neighbours(data, rows)
    raise ValueError(f"unknown reference {kind!r}; one of {REFERENCES}")


def _library_size(data: PredictionData, rows: np.ndarray) -> np.ndarray:
    if data.adata is None or "total_counts" not in data.adata.obs:
        raise KeyError("the library-size reference needs obs['total_counts'] (the curation writes it)")
    x = np.log1p(data.adata.obs["total_counts"].to_numpy(dtype=np.float64))
    train = data.rows("train")
    out = np.empty((len(rows), data.n_genes))
    mean = data.real_mean()
    for g in range(data.n_genes):
        real = train[data.real[train, g]]
        if len(real) < 3 or np.ptp(x[real]) == 0:
            out[:, g] = mean[g]
            continue
        slope, intercept = np.polyfit(x[real], data.truth[real, g], 1)
        out[:, g] = intercept + slope * x[rows]
    return out


def _spatial_neighbours(data: PredictionData, rows: np.ndarray) -> np.ndarray:
    if data.coords is None:
        raise KeyError("the spatial reference needs the array coordinates (obs['array_row'], obs['array_col'])")
    adj = graphs.grid_adjacency(data.slides, data.coords[:, 0], data.coords[:, 1], data.hex_geometry)
    means, _ = graphs.ring_mean(data.truth, data.real, graphs.ring_neighbourhoods(adj, MAX_RINGS), rows)
    return np.where(np.isnan(means), data.real_mean()[None, :], means)


def available(data: PredictionData, kind: str) -> bool:
    """Whether ``data`` hold what reference ``kind`` reads (library sizes; array coordinates)."""
    if kind == "library_size":
        return data.adata is not None and "total_counts" in data.adata.obs
    return data.coords is not None


def reference_rows(data: PredictionData, rows: Mapping[str, np.ndarray], dataset: str, seed: int,
                   eval_spots: int | None = None) -> list[dict]:
    """Results-store rows (stage ``predict_reference``) of every reference on each split's ``rows``
    (a reference whose inputs the data lack, :func:`available`, is left out)."""
    out = []
    for kind in REFERENCES:
        if not available(data, kind):
            continue
        for split, r in rows.items():
            if not len(r) or not data.real[r].any():
                continue
            pred = reference_predictions(data, r, kind)
            out.append({"stage": "predict_reference", "dataset": dataset, "model": kind, "scenario": "any",
                        "learning_rate": float("nan"), "seed": seed, "n_params": 0, "eval_spots": eval_spots,
                        "split": split, **evaluate_predictions(pred, data, r)})
    return out
