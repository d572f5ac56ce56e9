"""Reference-free completion of one's own slide in one call: :func:`complete_slide`.

SpaCKLE (Mejia et al., MICCAI 2024, Sec. 2.2) learns by masking: it hides real values and learns to
give them back from the spot's neighbourhood. That needs no reference dataset and no held-out
slide: the slide to complete is its own training data. :func:`complete_slide` takes any AnnData
with raw counts and grid positions (as :func:`scanpy.read_visium`, :func:`squidpy.read.visium` or
:func:`spared_utils.readers.read_spaceranger` return it), curates what completion needs with the
book's defaults (:func:`spared_utils.preprocess.curate_slide`) or reads a layer the caller names,
trains on the slide's own spots, chooses the checkpoint on held-out spots, and completes.

The paper's models are trained on the training slides of a registered dataset and validated on
another slide; here the held-out set is a seeded fraction of spots of each slide instead. They
are never training centres, but their values stay visible to the model as neighbours of other
spots, as every real value is at inference.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from tqdm.auto import tqdm

from ..preprocess import curate_slide, median_complete, select_top_moran
from ..preprocess.collection import subset
from ..preprocess.own_slide import SlideFieldError, check_positions, fill_slide_fields
from ..utils import dense
from .evaluate import METHODS
from .methods import COMPLETED_LAYER, TRAINED_METHODS, budget_options, complete, spackle_config
from .spackle import synthetic_hidden, train_spackle

__all__ = ["HELD_OUT_KEY", "complete_slide", "held_out_spots"]

#: The obs column :func:`complete_slide` adds: ``"train"`` (training centres) or ``"val"`` (held-out
#: spots, whose hidden real values choose the checkpoint and give the validation score).
HELD_OUT_KEY = "completion_split"


def held_out_spots(slides: pd.Series, fraction: float, seed: int) -> np.ndarray:
    """A seeded ``fraction`` of the spots of each slide (at least one, never all), as a bool array."""
    if not 0 < fraction < 1:
        raise ValueError(f"held_out must be a fraction between 0 and 1, got {fraction}")
    rng = np.random.default_rng(seed)
    labels = slides.astype(str).to_numpy()
    out = np.zeros(len(labels), dtype=bool)
    for slide in sorted(set(labels)):
        idx = np.flatnonzero(labels == slide)
        n = min(max(1, int(round(fraction * len(idx)))), len(idx) - 1)
        out[rng.choice(idx, n, replace=False)] = True
    return out


def _from_layer(adata: AnnData, layer: str, mask_layer: str | None, genes, n_genes: int,
                hex_geometry: bool, progress: bool) -> AnnData:
    """A working AnnData completing the caller's ``layer`` (zeros, or ``mask_layer`` False, = missing)."""
    if layer not in adata.layers:
        raise SlideFieldError(f"layers[{layer!r}] missing (layers: {list(adata.layers)}); pass layer= one "
                              "of them, or layer=None to curate from raw counts")
    if mask_layer is not None and mask_layer not in adata.layers:
        raise SlideFieldError(f"layers[{mask_layer!r}] missing (layers: {list(adata.layers)}); pass "
                              "mask_layer= the boolean layer True at real measurements, or mask_layer=None")
    check_positions(adata)
    work = fill_slide_fields(adata)
    work = subset(work) if work is adata else work
    if genes is not None:
        genes = [str(g) for g in genes]
        absent = [g for g in genes if g not in work.var_names]
        if absent:
            raise SlideFieldError(f"genes {absent[:3]} are not in var_names; pass genes= names of adata.var_names")
        work = subset(work, cols=work.var_names.get_indexer(genes))
    values = dense(work.layers[layer]).astype(np.float32)
    real = dense(work.layers[mask_layer]).astype(bool) if mask_layer else values != 0
    if not np.isfinite(values).all():
        raise SlideFieldError(f"layers[{layer!r}] holds NaN or infinite values; pass a finite layer")
    keep = real.any(axis=0)
    layers = {"input": values * real, "mask": real}
    work = AnnData(obs=work.obs, var=work.var, uns=work.uns, obsm=dict(work.obsm), layers=layers)
    work = subset(work, cols=keep)  # a gene never measured cannot be completed from its own values
    median_complete(work, "input", "d_input", hex_geometry=hex_geometry, progress=progress)
    if genes is None and work.n_vars > n_genes:
        work = select_top_moran(work, n_genes, "d_input", hex_geometry, progress=progress)
        work.uns.pop("moran_per_slide", None)
    return work


def _validation_score(work: AnnData, method: str, layer: str, held_out: np.ndarray, seed: int,
                      options: dict) -> float:
    """MSE of an untrained ``method`` on a seeded 30% of the real values of held-out spots, hidden."""
    real = dense(work.layers["mask"]).astype(bool)
    hidden = synthetic_hidden(real, 0.3, seed + 1, "uniform", rows=np.flatnonzero(held_out))
    if not hidden.any():
        return float("nan")
    trial = AnnData(obs=work.obs, var=work.var, uns={k: v for k, v in work.uns.items() if k == "preprocessing"},
                    obsm=dict(work.obsm), layers={layer: work.layers[layer], "mask": real & ~hidden})
    complete(trial, method, layer=layer, key_added="trial", **options)
    truth = dense(work.layers[layer])
    return float(((trial.layers["trial"] - truth) ** 2)[hidden].mean())


def complete_slide(
    adata: AnnData,
    method: str = "spackle_plus",
    *,
    layer: str | None = None,
    mask_layer: str | None = None,
    genes: list[str] | None = None,
    n_genes: int = 128,
    held_out: float = 0.1,
    seed: int = 0,
    iterations: int | None = None,
    device: str = "auto",
    key_added: str | None = None,
    counts_layer: str | None = None,
    gene_lengths: pd.Series | str | Path | None = None,
    curation: dict[str, Any] | None = None,
    hex_geometry: bool = True,
    progress: bool = True,
    **options: Any,
) -> AnnData:
    """Complete the missing values of a slide (or slides) of one's own, trained on the slide itself.

    Parameters
    ----------
    adata
        One or more slides with grid positions (``obs["array_row"]``, ``obs["array_col"]``) and,
        unless ``layer`` is given, raw counts (``layers["counts"]`` or ``X``), e.g. from
        :func:`scanpy.read_visium`, :func:`squidpy.read.visium` or
        :func:`spared_utils.readers.read_spaceranger`. Not modified.
    method
        A completion method of :data:`~spared_utils.completion.METHODS`; ``"spackle_plus"`` (ours)
        by default. Trained methods run at the book's CPU budget
        (:func:`~spared_utils.completion.budget_options`) unless ``options`` say otherwise.
    layer, mask_layer
        ``None`` (default): curate with the book's defaults
        (:func:`spared_utils.preprocess.curate_slide`) and complete its ``c_d_log1p`` layer. A
        layer name: complete that layer as it is (e.g. log-normalised expression), its zeros
        (or ``mask_layer`` False) being the missing values; they are first filled by SpaRED's
        adaptive median, as in curation.
    genes, n_genes
        The gene panel: ``genes`` by name (with ``layer``), else the ``n_genes`` genes of highest
        Moran's I (all that pass the curation filters when fewer do).
    held_out, seed
        Fraction of each slide's spots held out to choose the checkpoint and score completion
        (a seeded 30% of their real values hidden, the paper's masking rate); seed of that choice
        and of training.
    iterations, device, **options
        Training length (the book's budget by default), device, and any option of the method
        (:class:`~spared_utils.completion.SpackleConfig` fields for SpaCKLE's).
    key_added
        The completed layer: ``"c_t_log1p"`` when curated, else ``f"{layer}_completed"``.
    counts_layer, gene_lengths, curation
        Passed to :func:`~spared_utils.preprocess.curate_slide` (where the counts are, gene lengths,
        :class:`~spared_utils.registry.PipelineParams` overrides).
    hex_geometry
        Visium's hexagonal grid (``False``: legacy ST's square grid).
    progress
        One progress bar over the steps, and those of curation and training.

    Returns
    -------
    AnnData
        A new AnnData of the kept spots × the gene panel, with ``layers[key_added]`` (completed;
        equal to the input at real values) and its Δ, ``layers["mask"]`` (True = real
        measurement; the completed entries are False), the input layer, ``obs["completion_split"]``
        (:data:`HELD_OUT_KEY`) and ``uns["completion"]``: ``method``, ``config`` (JSON), ``layer``
        (the layer completed), ``source`` (``"curated from counts"`` or the caller's layer),
        ``genes``, ``validation_mse`` (on held-out spots), ``n_held_out``, ``seed`` and, when
        curated, ``uns["preprocessing"]`` and ``uns["slide_fields"]`` (what was filled in).

    Raises
    ------
    SlideFieldError
        A field the slide needs is absent (counts, grid positions, the named layer, ...); the
        message names it and the fix.
    ValueError
        Unknown method, ``held_out`` not in (0, 1).
    """
    if method not in METHODS:
        raise ValueError(f"unknown completion method {method!r}; choose one of {METHODS}")
    bar = tqdm(total=3, desc="complete_slide", disable=not progress)
    t0 = time.perf_counter()
    bar.set_postfix_str("curating" if layer is None else f"reading layers[{layer!r}]")
    if layer is None:
        work = curate_slide(adata, n_genes, counts_layer=counts_layer, gene_lengths=gene_lengths,
                            progress=progress, hex_geometry=hex_geometry, **dict(curation or {}))
        source, layer_in = "curated from counts", "c_d_log1p"
        key_added = key_added or COMPLETED_LAYER
    else:
        work = _from_layer(adata, layer, mask_layer, genes, n_genes, hex_geometry, progress)
        source, layer_in = f"layers[{layer!r}]", "d_input"
        key_added = key_added or f"{layer}_completed"
    if "preprocessing" not in work.uns:  # complete() reads the grid from the curation's parameters
        work.uns["preprocessing"] = {"params": {"hex_geometry": bool(hex_geometry)}}
    held = held_out_spots(work.obs["slide_id"], held_out, seed)
    work.obs[HELD_OUT_KEY] = pd.Categorical(np.where(held, "val", "train"))
    bar.update()

    bar.set_postfix_str(f"training {method}" if method in TRAINED_METHODS else f"scoring {method}")
    run_options = {**budget_options(method, seed=seed, device=device, iterations=iterations,
                                    progress=progress), **options}
    if method in TRAINED_METHODS:
        model = train_spackle(work, layer_in, spackle_config(method, **run_options),
                              hex_geometry=hex_geometry, split_key=HELD_OUT_KEY)
        validation, run_options = float(model.best_val), {"model": model}
    else:
        validation = _validation_score(work, method, layer_in, held, seed, run_options)
    bar.update()

    bar.set_postfix_str("completing")
    complete(work, method, layer=layer_in, key_added=key_added, **run_options)
    info = dict(work.uns["completion"])
    info.update(source=source, genes=np.asarray(work.var_names.astype(str)), n_genes=int(work.n_vars),
                validation_mse=validation, held_out_fraction=float(held_out), n_held_out=int(held.sum()),
                seed=int(seed), seconds=time.perf_counter() - t0)
    work.uns["completion"] = info
    bar.update()
    bar.close()
    return work
