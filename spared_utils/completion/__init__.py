"""Completion of missing expression values: SpaCKLE and its baselines (Mejia et al., MICCAI 2024, Sec. 2.2).

One verb, :func:`complete`, runs any method on a curated dataset and adds the completed layer
(``c_t_log1p``) and its Δ (``c_t_deltas``). The methods (:data:`METHODS`):

* ``"median"`` – the adaptive median of SEPAL/SpaRED (:func:`spared_utils.preprocess.median_complete`);
* ``"mean"`` – each gene's mean over its real training values (the trivial completion);
* ``"neighbour_mean"`` – each missing value from the mean of the same gene's real values among
  the spot's neighbours, the ring widened until one exists (the reference-free spatial baseline,
  :func:`~spared_utils.completion.evaluate.neighbour_fill`);
* ``"spackle"`` – the transformer of :mod:`spared_utils.completion.spackle` (trained on the
  training slides, or loaded from a checkpoint, or given as a trained result);
* ``"stlearn"`` – stLearn's SME imputation (:mod:`spared_utils.completion.sme`);
* ``"spackle_plus"`` – ours: SpaCKLE's model trained half over a range of masking rates, reading
  its given entries as deviations from the gene means and which entries it is given, with the loss
  on hidden entries and a warmed-up learning rate (:data:`PLUS_OPTIONS`, the candidate chosen by
  the ablation of chapter 02, whose options and measurements are data: ``data/ablations/``,
  :mod:`spared_utils.completion.ablation`);
* ``"spackle_authors"`` – SpaCKLE as the authors' code runs it (:data:`AUTHORS_OPTIONS`);
* ``"lgdist"`` – LGDiST (Cárdenas et al., arXiv 2509.01864), latent gene diffusion in two rounds
  (:mod:`spared_utils.completion.lgdist`).
* ``"authors"`` – the authors' own SpaCKLE completion, as stored in their processed file
  (``c_t_log1p`` of a dataset whose source kind is ``authors_processed``; nothing is trained).

A completion the predictors read is an artefact with an address (:mod:`.artefacts`):
:func:`ensure` finds ``<processed_dir>/<id>/completion/<method>-<tag>.h5ad`` or makes and stores
it, at the book's CPU budget (:data:`CPU_BUDGET`, applied by :func:`budget_options`).
:mod:`spared_utils.completion.evaluate` holds the paper's protocol (synthetic masking of real
values, metrics on hidden values only); :func:`results_rows` turns its table into rows of the
shared results store.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import pandas as pd
from anndata import AnnData

from ..preprocess import write_processed
from . import ablation, evaluate, lgdist, sme, spackle
from .ablation import recorded_ablation
from .artefacts import COMPLETION_DIR, address, completion_dir, ensure, stored
from .lgdist import LgdistConfig, LgdistResult, complete_lgdist, train_lgdist
from .evaluate import (
    BEST_LAYER,
    MASKING_LEVELS,
    METHODS,
    CompletionMethod,
    SCHEMES,
    ablation_table,
    add_best_completion,
    before_dropout_layer,
    best_method,
    comparison_table,
    evaluate_masking,
    evaluate_missing,
    masking_methods,
    relative_reduction,
    score_missing,
    structure_table,
)
from .methods import (
    AUTHORS_LAYERS,
    AUTHORS_OPTIONS,
    COMPLETED_LAYER,
    CPU_BUDGET,
    PLUS_OPTIONS,
    TRAINED_METHODS,
    authors_config,
    budget_options,
    complete,
    delta_key,
    plus_config,
    spackle_config,
    train_plus,
)
from .sme import SmeConfig
from .spackle import (
    SpackleConfig,
    SpackleResult,
    hex_geometry_of,
    load_checkpoint,
    save_checkpoint,
    train_spackle,
)

#: The candidates of SpaCKLE+'s ablation (chapter 02) by label: options on top of the chapter's
#: budget, read from ``data/ablations/spackle_plus.yml``.
PLUS_ABLATION: dict[str, dict[str, Any]] = ablation.candidates()


def save_completed(adata: AnnData, dataset: str):
    """Write the dataset (with its completed layers) to ``processed/<dataset>/adata.h5ad`` atomically."""
    return write_processed(adata, dataset)


def results_rows(summary: pd.DataFrame, dataset: str, seed: int = 0, spackle_result: SpackleResult | None = None,
                 extra: Mapping[str, Any] | None = None) -> list[dict]:
    """Rows of the results store (``stage="completion"``) from :func:`evaluate_masking`'s summary."""
    rows = []
    for rec in summary.to_dict(orient="records"):
        method = rec["method"]
        row = {
            "stage": "completion", "dataset": dataset, "model": method,
            "scenario": f"masking_{int(round(100 * rec['masking']))}", "masking": rec["masking"],
            "split": rec["split"], "seed": seed, "mse": rec["mse"], "mae": rec["mae"],
            "pcc_gene": rec["pcc_gene"], "pcc_global": rec["pcc_global"], "n_values": rec["n_values"],
            "wall_time_s": rec["seconds"], "masked_fraction": rec["masked_fraction"],
            **{c: rec[c] for c in evaluate.STRUCTURE_COLUMNS if c in rec},
        }
        if method == "spackle" and spackle_result is not None:
            row.update(learning_rate=spackle_result.learning_rate, n_params=spackle_result.n_params,
                       train_time_s=spackle_result.wall_time_s, device=spackle_result.device,
                       iterations=spackle_result.config.train.iterations,
                       config_hash=spackle_result.config.train_config(spackle_result.learning_rate).hash("Spackle"),
                       params=json.dumps(asdict(spackle_result.config), default=str))
        row.update(dict(extra or {}))
        rows.append(row)
    return rows


__all__ = [
    "AUTHORS_LAYERS", "AUTHORS_OPTIONS", "BEST_LAYER", "COMPLETED_LAYER", "COMPLETION_DIR", "CPU_BUDGET", "CompletionMethod",
    "LgdistConfig", "LgdistResult", "MASKING_LEVELS", "METHODS",
    "PLUS_ABLATION", "PLUS_OPTIONS", "SCHEMES", "SmeConfig", "SpackleConfig", "SpackleResult", "TRAINED_METHODS",
    "ablation", "ablation_table", "add_best_completion", "address", "authors_config", "before_dropout_layer",
    "best_method", "budget_options", "comparison_table", "complete", "complete_lgdist", "completion_dir", "delta_key", "ensure",
    "evaluate", "evaluate_masking", "evaluate_missing", "hex_geometry_of", "load_checkpoint", "masking_methods",
    "plus_config", "recorded_ablation", "relative_reduction", "results_rows", "save_checkpoint", "save_completed",
    "score_missing", "sme", "spackle", "spackle_config", "stored", "structure_table", "lgdist", "train_lgdist", "train_plus", "train_spackle",
]
