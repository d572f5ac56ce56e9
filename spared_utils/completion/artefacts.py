"""Completions as artefacts with an address: ``<processed_dir>/<id>/completion/<method>-<tag>.h5ad``.

A completed layer is addressed by its method and everything that shapes it: for SpaCKLE the
run's :func:`~spared_utils.completion.spackle.config_tag` (configuration and data) and its
learning rate, for the other methods a hash of their options and the data. :func:`ensure`
finds the artefact of an address or makes it with :func:`~spared_utils.completion.complete`
and stores it; :func:`stored` only finds. Each file holds the spots and genes of the curated
dataset, the completed layer and its Δ, and ``uns["completion"]`` (method, options, address).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from anndata import AnnData

from .lgdist import LgdistConfig
from ..preprocess import processed_path
from ..utils import atomic_path, file_lock
from .evaluate import NEIGHBOUR_RINGS
from .methods import COMPLETED_LAYER, TRAINED_METHODS, budget_options, complete, delta_key, sme_config, spackle_config
from .spackle import SpackleResult, check_input, config_tag, neighbourhoods, resolve_hex_geometry

log = logging.getLogger(__name__)

#: The folder of a dataset's completions, under its processed folder.
COMPLETION_DIR = "completion"


def completion_dir(dataset_id: str) -> Path:
    """``<processed_dir>/<dataset_id>/completion``: where :func:`ensure` stores completions."""
    return processed_path(dataset_id, COMPLETION_DIR)


def address(adata: AnnData, method: str = "spackle", layer: str = "c_d_log1p", model: SpackleResult | None = None,
            **options: Any) -> str:
    """The address ``<method>-<tag>`` of completing ``adata`` with ``method`` and ``options``.

    Parameters
    ----------
    adata
        The curated dataset (its ``layers[layer]``, mask and spots enter the tag).
    method
        One of :data:`~spared_utils.completion.METHODS`.
    layer
        The input layer of :func:`~spared_utils.completion.complete`.
    model
        A trained SpaCKLE (``spackle*`` methods): its configuration replaces ``options``.
    **options
        The options :func:`~spared_utils.completion.complete` would get (``hex_geometry`` too).

    Returns
    -------
    str
        For SpaCKLE methods ``<method>-<config_tag>_lr_<rate>`` (the tag of its checkpoints;
        ``<rates joined by ->`` with a learning-rate grid); for the others ``<method>-<hash of
        options and data>``. ``progress``, ``device`` and ``checkpoint_dir`` do not enter it.
    """
    options = dict(options)
    hex_geometry = resolve_hex_geometry(adata, options.pop("hex_geometry", None))
    values, real = check_input(adata, layer)
    if method in TRAINED_METHODS:
        cfg = model.config if model is not None else spackle_config(method, **options)
        index = neighbourhoods(adata, cfg, hex_geometry=hex_geometry)
        rates = cfg.lr_grid or (cfg.train.learning_rate,)
        return f"{method}-{config_tag(cfg, values, real, index)}_lr_{'-'.join(f'{r:g}' for r in rates)}"
    if method == "median":
        settings = {"n_rings": int(options.pop("n_rings", 4))}
    elif method == "neighbour_mean":
        settings = {"n_rings": int(options.pop("n_rings", NEIGHBOUR_RINGS))}
    elif method == "stlearn":
        sme, options = sme_config(options)
        settings = asdict(sme)
    elif method == "lgdist":
        options = {k: v for k, v in options.items() if k not in ("device", "progress")}
        settings, options = LgdistConfig.make(**options).to_dict(), {}
    else:
        settings = {}
    if options:
        raise TypeError(f"completion method {method!r} got unknown option(s) {sorted(options)}")
    h = hashlib.sha1(json.dumps({**settings, "hex_geometry": hex_geometry, "layer": layer}, sort_keys=True,
                                default=str).encode())
    for arr in (values, real):
        h.update(np.ascontiguousarray(arr).tobytes())
    return f"{method}-{h.hexdigest()[:10]}"


def ensure(adata: AnnData, dataset_id: str, method: str = "spackle", *, seed: int = 0, device: str = "auto",
           iterations: int | None = None, progress: bool = False, model: SpackleResult | None = None,
           folder: str | os.PathLike | None = None, **options: Any) -> AnnData:
    """A copy of ``adata`` completed by ``method``: the stored artefact of that address, or made and stored.

    Trained methods run at the book's CPU budget (:func:`~spared_utils.completion.budget_options`:
    :data:`~spared_utils.completion.CPU_BUDGET`, ``iterations`` overriding its length) with
    ``seed`` and ``device``; ``options`` override any of it. One line says which happened:
    ``found completion <address>`` or ``completing with <method> (<address>)``.

    Parameters
    ----------
    adata
        The curated dataset (``layers["c_d_log1p"]`` and ``layers["mask"]``); not modified.
    dataset_id
        The dataset's id: the artefact lives in ``<processed_dir>/<dataset_id>/completion/``.
    method
        One of :data:`~spared_utils.completion.METHODS`.
    seed, device, iterations, progress
        The run of a trained method (ignored by the others).
    model
        An already trained SpaCKLE to complete with (``spackle*`` methods; chapter 02 passes its
        own): the address is its configuration's.
    folder
        Store elsewhere than :func:`completion_dir` (tests, one-off runs).
    **options
        Further options of :func:`~spared_utils.completion.complete`.

    Returns
    -------
    AnnData
        A copy of ``adata`` with ``layers["c_t_log1p"]`` and ``layers["c_t_deltas"]`` (what the
        predictors read) and ``uns["completion"]`` (with ``address`` and ``path``).
    """
    options = {**budget_options(method, seed, device, iterations, progress), **options}
    key = address(adata, method, model=model, **options)
    path = Path(folder) if folder is not None else completion_dir(dataset_id)
    path = path / f"{key}.h5ad"
    out = adata.copy()
    with file_lock(path):  # parallel jobs: one completes, the others read its artefact
        if _attach(out, path):
            print(f"found completion {key} (stored under {dataset_id}/{COMPLETION_DIR}/ of the processed data)")
            return out
        print(f"completing with {method} ({key})")
        complete(out, method=method, key_added=COMPLETED_LAYER, **({"model": model} if model is not None else {}),
                 **options)
        out.uns["completion"] = {**out.uns["completion"], "address": key, "path": str(path)}
        _write(out, path, dataset_id)
    return out


def stored(adata: AnnData, dataset_id: str, method: str = "spackle",
           folder: str | os.PathLike | None = None) -> AnnData | None:
    """A copy of ``adata`` with a stored ``method`` completion, or ``None`` if there is none.

    The completion at the book's default address (:func:`budget_options` at seed 0) is taken
    first; otherwise the newest stored completion of ``method`` for these spots and genes.
    Nothing is trained.
    """
    folder = Path(folder) if folder is not None else completion_dir(dataset_id)
    default = folder / f"{address(adata, method, **budget_options(method))}.h5ad"
    others = sorted(folder.glob(f"{method}-*.h5ad"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in [default, *others]:
        out = adata.copy()
        if _attach(out, path):
            return out
    return None


def _attach(adata: AnnData, path: Path) -> bool:
    """Copy the completed layers of the artefact at ``path`` into ``adata``; False if absent or of other spots."""
    if not path.is_file():
        return False
    art = ad.read_h5ad(path)
    if not (art.obs_names.equals(adata.obs_names) and art.var_names.equals(adata.var_names)):
        log.warning("%s holds other spots or genes than the dataset; completing again", path)
        return False
    for key in (COMPLETED_LAYER, delta_key(COMPLETED_LAYER)):
        adata.layers[key] = np.asarray(art.layers[key])
    adata.uns["completion"] = {**dict(art.uns["completion"]), "path": str(path)}
    return True


def _write(adata: AnnData, path: Path, dataset_id: str) -> None:
    """Store the completed layers of ``adata`` (and ``uns["completion"]``) atomically at ``path``."""
    keys = (COMPLETED_LAYER, delta_key(COMPLETED_LAYER))
    art = AnnData(obs=pd.DataFrame(index=adata.obs_names.copy()), var=pd.DataFrame(index=adata.var_names.copy()),
                  layers={k: np.asarray(adata.layers[k]) for k in keys},
                  uns={"completion": dict(adata.uns["completion"]), "dataset_id": dataset_id,
                       "dataset_spec": str(adata.uns.get("dataset_spec", ""))})
    with atomic_path(path) as tmp:
        art.write_h5ad(tmp)


__all__ = ["COMPLETION_DIR", "address", "completion_dir", "ensure", "stored"]
