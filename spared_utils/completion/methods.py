"""The verb :func:`complete` and each method's options (the book's CPU budget, SpaCKLE+, the authors' SpaCKLE)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, fields
from typing import Any

import numpy as np
from anndata import AnnData

from .lgdist import LgdistConfig, complete_lgdist, train_lgdist
from ..preprocess import deltas
from ..readers.authors import COMPLETION_LAYERS
from . import ablation, evaluate, sme
from .evaluate import METHODS
from .sme import SmeConfig
from .spackle import blend, zeros
from .spackle import (
    SpackleConfig,
    SpackleResult,
    check_input,
    complete_with,
    hex_geometry_of,
    load_checkpoint,
    train_spackle,
)

#: The layer :func:`complete` adds by default (the prediction chapters' *completed* targets).
COMPLETED_LAYER = "c_t_log1p"
#: SpaCKLE at the book's CPU budget: what chapter 02 runs by default and what every trained
#: completion the predictors read runs at (:func:`budget_options`; the paper: 10,000 iterations,
#: learning rate searched, feed-forward width 2048).
CPU_BUDGET: dict[str, Any] = {"iterations": 200, "learning_rate": 3e-3, "dim_feedforward": 512}
#: ``method="authors"``: the completion the authors' ``spared`` package stored in their processed
#: file (their SpaCKLE's ``c_t_log1p`` / ``c_t_deltas``), kept under these names by
#: :func:`spared_utils.readers.read_authors_processed` (source kind ``authors_processed``).
AUTHORS_LAYERS: dict[str, str] = COMPLETION_LAYERS
#: The methods that train a model (SpaCKLE's), and so take a budget, a seed and a device.
TRAINED_METHODS: tuple[str, ...] = ("spackle", "spackle_plus", "spackle_authors")
#: ``method="spackle_plus"``: the :class:`SpackleConfig` options that make our completion (on top
#: of the caller's budget), the candidate marked ``chosen`` in ``data/ablations/spackle_plus.yml``
#: (chapter 02's ablation). Half of the training neighbourhoods draw ρ from a range of rates, the
#: other half are masked at ``mask_prob`` (also the validation mask), every real value under the
#: paper's uniform rule; the input adapter reads given entries as deviations from their gene's
#: training mean and which entries are given; the loss is on the hidden entries only; the
#: learning rate is warmed up; the centre's output is mixed with its ring means by learned weights
#: and then blended with the neighbour mean by weights fitted on the validation slides; and
#: originally missing entries (zero counts) get their expected expression given the count
#: (:mod:`spared_utils.completion.spackle.zeros`).
PLUS_OPTIONS: dict[str, Any] = ablation.chosen_options()
#: ``method="spackle_authors"``: SpaCKLE as the authors' ``spared`` 2.2.1 code runs it, where it
#: differs from the paper's text (:class:`SpackleConfig` documents each field): adapters as wide
#: as the gene panel, the 18 nearest spots as the neighbourhood, the per-gene masking rule,
#: attention across the batch's spots (their ``batch_first=False`` encoder fed batch-first
#: tensors) and PyTorch's output bias. The budget stays the caller's.
AUTHORS_OPTIONS: dict[str, Any] = {"d_model": None, "neighbourhood": "knn", "masking": "per_gene",
                                   "attention": "batch", "init_output_bias": "default"}
_DEFAULTS = {"spackle": {}, "spackle_plus": PLUS_OPTIONS, "spackle_authors": AUTHORS_OPTIONS}


def spackle_config(method: str = "spackle", **options: Any) -> SpackleConfig:
    """The :class:`SpackleConfig` of a SpaCKLE ``method``: its defaults under the caller's options."""
    return SpackleConfig.make(**{**_DEFAULTS[method], **options})


def plus_config(**options: Any) -> SpackleConfig:
    """:data:`PLUS_OPTIONS` under the caller's options."""
    return spackle_config("spackle_plus", **options)


def authors_config(**options: Any) -> SpackleConfig:
    """:data:`AUTHORS_OPTIONS` under the caller's options."""
    return spackle_config("spackle_authors", **options)


def train_plus(adata: AnnData, layer: str = "c_d_log1p", hex_geometry: bool | None = None, **options: Any) -> SpackleResult:
    """Train our completion model (``method="spackle_plus"``): :func:`train_spackle` with :data:`PLUS_OPTIONS`."""
    return train_spackle(adata, layer, plus_config(**options), hex_geometry=hex_geometry)


def budget_options(method: str, seed: int = 0, device: str = "auto", iterations: int | None = None,
                   progress: bool = False) -> dict[str, Any]:
    """The options a completion ``method`` runs with in the book: the CPU budget for trained methods.

    Trained methods (:data:`TRAINED_METHODS`) get :data:`CPU_BUDGET` (``iterations`` overriding
    its length when given), ``seed``, ``device`` and ``progress``; the others need none.
    """
    if method == "lgdist":  # its CPU budget is LgdistConfig's defaults
        return {"seed": seed, "device": device, "progress": progress}
    if method not in TRAINED_METHODS:
        return {}
    return {**CPU_BUDGET, "seed": seed, "device": device, "progress": progress,
            **({"iterations": int(iterations)} if iterations else {})}


def delta_key(key: str) -> str:
    """Name of the Δ layer of a completed layer (``c_t_log1p`` → ``c_t_deltas``)."""
    return key.replace("log1p", "deltas") if "log1p" in key else f"{key}_deltas"


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
        ``"mean"`` (each gene's mean over its real training values), ``"neighbour_mean"`` (the
        mean of the gene's real values in the nearest ring of neighbours that has one,
        :func:`~spared_utils.completion.evaluate.neighbour_fill`) or ``"stlearn"``.
    layer, key_added
        Input layer and the completed layer to add; its Δ (minus the training mean of each gene)
        is added as ``key_added`` with ``log1p`` → ``deltas`` (``c_t_deltas``).
    **config
        ``spackle``: any :class:`SpackleConfig` field (``iterations``, ``learning_rate``,
        ``lr_grid``, ``seed``, ``device``, ``checkpoint_dir``, ...), or ``model=`` a trained
        :class:`SpackleResult`, or ``checkpoint=`` a path saved by :func:`save_checkpoint`.
        ``spackle_plus``: as ``spackle`` (its defaults :data:`PLUS_OPTIONS`). ``median``:
        ``n_rings`` (4). ``mean``: none. ``neighbour_mean``: ``n_rings``, the widest ring
        tried before the training mean (3). ``stlearn``: any :class:`SmeConfig` field. All methods:
        ``hex_geometry`` (default: the curation's).

    Returns
    -------
    AnnData
        ``adata`` itself with the two new layers and ``uns["completion"]`` (method, parameters,
        learning rate and validation MSE for SpaCKLE, seconds; for ours also ``blend_weights``,
        ``zero_shape`` and ``zero_counts_completed``, whether zero counts got their expected
        expression given the count, which needs the curated ``counts``/``tpm``/``d_log1p`` layers).

    Raises
    ------
    KeyError
        No mask layer (or no input layer).
    ValueError
        Unknown method, NaN values, a slide with a single spot, iterations ≤ 0, genes that do
        not match a checkpoint's.
    TypeError
        An option the method does not take.
    """
    if method not in METHODS:
        raise ValueError(f"unknown completion method {method!r}; choose one of {METHODS}")
    config = dict(config)
    hex_geometry = config.pop("hex_geometry", None)
    hex_geometry = hex_geometry_of(adata) if hex_geometry is None else bool(hex_geometry)
    values, real = check_input(adata, layer)
    t0 = time.perf_counter()
    info: dict[str, Any] = {"method": method, "layer": layer, "key_added": key_added}
    if method in TRAINED_METHODS:
        model = config.pop("model", None)
        ckpt = config.pop("checkpoint", None)
        cfg = spackle_config(method, **config)
        if model is None and ckpt is not None:
            model = load_checkpoint(ckpt, device=cfg.train.device)
        if model is None:
            model = train_spackle(adata, layer, cfg, hex_geometry=hex_geometry)
        completed = complete_with(model, adata, layer, hex_geometry=hex_geometry)
        info.update(learning_rate=model.learning_rate, best_val_mse=model.best_val,
                    best_iteration=model.best_iteration, n_params=model.n_params, **_fitted_after(model),
                    zero_counts_completed=_zero_counts_applied(model, adata, layer),
                    checkpoint=str(model.checkpoint) if model.checkpoint else "",
                    config=json.dumps(asdict(model.config), default=str))
    elif method == "lgdist":
        model = config.pop("model", None)
        cfg = LgdistConfig.make(**config)  # budget="paper": the authors' defaults
        if model is None:
            model = train_lgdist(adata, layer, cfg, hex_geometry=hex_geometry)
        completed = complete_lgdist(adata, model, layer, hex_geometry=hex_geometry)
        info.update(best_val_mse=model.best_val, n_params=model.n_params,
                    config=json.dumps(model.config.to_dict(), default=str))
    elif method == "authors":
        _no_extra(config, method, None)
        completed = _authors_layer(adata, AUTHORS_LAYERS["c_t_log1p"])
        info.update(config="{}", source="the authors' processed file")
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
    elif method == "neighbour_mean":
        n_rings = int(config.pop("n_rings", evaluate.NEIGHBOUR_RINGS))
        _no_extra(config, method, None, allowed=("n_rings",))
        completed = evaluate.neighbour_fill(adata, values, real, np.arange(adata.n_obs), hex_geometry, n_rings)
        completed = np.where(real, values, completed).astype(np.float32)
        info.update(config=json.dumps({"n_rings": n_rings}))
    else:
        cfg_sme, rest = sme_config(config)
        _no_extra(rest, method, SmeConfig)
        completed = sme.sme_fill(adata, values, real, None, cfg_sme, hex_geometry=hex_geometry)
        info.update(config=json.dumps(asdict(cfg_sme), default=str))
    adata.layers[key_added] = completed
    if method == "authors" and AUTHORS_LAYERS["c_t_deltas"] in adata.layers:  # theirs, as their file has it
        adata.layers[delta_key(key_added)] = _authors_layer(adata, AUTHORS_LAYERS["c_t_deltas"])
    else:
        deltas(adata, key_added, delta_key(key_added))
    info["seconds"] = time.perf_counter() - t0
    info["missing_completed"] = int((~real).sum())
    adata.uns["completion"] = info
    return adata


def _fitted_after(result: SpackleResult) -> dict[str, Any]:
    """What ours fitted after training, for ``uns["completion"]``: the blend's weights per
    availability bin and the gamma shape of the zero-count posterior (NaN: not applied)."""
    out: dict[str, Any] = {}
    weights = blend.blend_weights(result.model)
    if weights is not None:
        out["blend_weights"] = [round(float(w), 4) for w in weights]
    shape = getattr(result.model, "zero_shape", None)
    if shape is not None:
        out["zero_shape"] = float(shape)
    return out


def _zero_counts_applied(result: SpackleResult, adata: AnnData, layer: str) -> bool:
    """Whether :func:`complete_with` moved zero counts (a fitted shape and what the curation map reads)."""
    shape = getattr(result.model, "zero_shape", None)
    return (shape is not None and bool(np.isfinite(float(shape)))
            and zeros.missing_requirement(adata, layer) is None)


def _authors_layer(adata: AnnData, key: str) -> np.ndarray:
    """A layer of the authors' processed file (``method="authors"``); a clear error where there is none."""
    if key not in adata.layers:
        raise ValueError(f"complete(method='authors') reads layers[{key!r}], the authors' own SpaCKLE completion, "
                         "which only a dataset read from their processed file has (source kind authors_processed "
                         "in data/datasets.yml); choose another method for this dataset")
    return np.asarray(adata.layers[key], dtype=np.float32).copy()


def sme_config(config: Mapping[str, Any]) -> tuple[SmeConfig, dict]:
    """The :class:`SmeConfig` fields of ``config`` as a config, and the other options."""
    names = {f.name for f in fields(SmeConfig)}
    return SmeConfig(**{k: v for k, v in config.items() if k in names}), {k: v for k, v in config.items() if k not in names}


def _no_extra(rest: Mapping, method: str, cls, allowed: tuple = ()) -> None:
    if rest:
        valid = sorted(f.name for f in fields(cls)) if cls is not None else list(allowed)
        raise TypeError(f"complete(method={method!r}) got unknown option(s) {sorted(rest)}; valid: {valid}")


__all__ = [
    "AUTHORS_LAYERS", "AUTHORS_OPTIONS", "COMPLETED_LAYER", "CPU_BUDGET", "PLUS_OPTIONS", "TRAINED_METHODS", "authors_config",
    "budget_options", "complete", "delta_key", "plus_config", "sme_config", "spackle_config", "train_plus",
]
