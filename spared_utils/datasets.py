"""Datasets by id: the registry, and each stage's artefact made on demand.

``su.datasets`` is the one door to data. :func:`load` turns a dataset id of
``data/datasets.yml`` into the AnnData of one stage of the pipeline, running the stages it
needs in order and caching each:

=============  ===================================================================  =========================================
stage          what                                                                 cached at
=============  ===================================================================  =========================================
``raw``        every slide read and combined (:func:`spared_utils.sources.load_raw`)  the download cache (raw files)
``curated``    SpaRED's curation (:func:`spared_utils.preprocess.run_pipeline`)       ``<processed_dir>/<id>/adata.h5ad``
``completed``  the curated data plus a stored completion's ``c_t_log1p``             ``<processed_dir>/<id>/completion/``
=============  ===================================================================  =========================================

``load`` reads and curates; it never trains. A completion is made by its own step,
:func:`spared_utils.completion.ensure` (chapter 02 for SpaCKLE, the prediction harness for the
completion it is given), which stores it under an address of its method and configuration.

:func:`patch_store` gives the curated dataset's patch store (cut on first use).
:func:`summary_table` is the paper's Supp. Table 1, our numbers beside theirs.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from . import completion, sources
from .patches import IMAGE_PATH_KEYS, PatchStore, extract_patches, write_patch_store
from .preprocess import curation_fingerprint, processed_path, run_pipeline, write_processed
from .registry import SPLITS, DatasetSpec, RegistryError, UnknownDatasetError, get_spec, registry
from .utils import file_lock

log = logging.getLogger(__name__)

__all__ = [
    "STAGES", "DatasetSpec", "RegistryError", "SPLITS", "UnknownDatasetError", "get_spec", "load", "patch_store",
    "registry", "spec_fingerprint", "summary_table",
]

#: The artefacts :func:`load` returns, in pipeline order.
STAGES = ("raw", "curated", "completed")

#: The fingerprint of a dataset's curation parameters (see :func:`spared_utils.preprocess.curation_fingerprint`).
spec_fingerprint = curation_fingerprint


def load(
    dataset_id: str,
    stage: str = "curated",
    *,
    force: bool = False,
    redownload: bool = False,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    load_fullres: bool | str = "auto",
    method: str | None = None,
) -> ad.AnnData:
    """The AnnData of one stage of a registered dataset, made (and cached) if missing.

    Parameters
    ----------
    dataset_id
        A key of ``data/datasets.yml`` (e.g. ``"synthetic"``, ``"10xgenomic_human_brain"``).
    stage
        ``"raw"``: all in-tissue spots, raw counts in ``X`` and ``layers["counts"]``, genes
        shared by all slides. ``"curated"``: the curated collection, reused from
        ``<processed_dir>/<id>/adata.h5ad`` while the dataset's curation parameters are
        unchanged. ``"completed"``: the curated collection with the ``c_t_log1p`` and
        ``c_t_deltas`` of a stored completion by ``method`` (see
        :func:`spared_utils.completion.stored`); nothing is trained.
    force
        Recompute: re-read the raw files (regenerating a synthetic dataset) and curate again,
        ignoring the cached curated file. Downloads are kept (see ``redownload``).
    redownload
        Download every file again.
    cache_dir
        Download cache; default ``SPARED_CACHE_DIR`` or pooch's OS cache.
    progress
        Show progress bars.
    load_fullres
        Keep full-resolution images in memory (``True``/``False``/``"auto"``, see
        :func:`spared_utils.readers.read_spaceranger`).
    method
        For ``stage="completed"``: the completion method (default ``"spackle"``, one of
        :data:`spared_utils.completion.METHODS`).

    Returns
    -------
    AnnData
        ``obs``: ``slide_id``, ``split``, ``patient`` (from the registry), ``barcode``,
        ``in_tissue``, ``array_row``, ``array_col``; ``obsm["spatial"]``; ``uns["spatial"]`` per
        slide; the stage's layers.

    Raises
    ------
    UnknownDatasetError
        ``dataset_id`` is not in the registry.
    FileNotFoundError, spared_utils.download.DownloadError, spared_utils.readers.ReaderError
        Files missing, not downloadable, or unreadable (messages say where to put them); for
        ``stage="completed"``, no stored completion by ``method`` (the message says how to make one).
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    if method is not None and stage != "completed":
        raise TypeError(f"method={method!r} only applies to stage='completed'")
    spec = get_spec(dataset_id)
    if stage == "raw":
        return sources.load_raw(spec, cache_dir, regenerate=force, redownload=redownload, progress=progress,
                                load_fullres=load_fullres)
    curated = _curated(spec, cache_dir, force, redownload, progress, load_fullres)
    if stage == "curated":
        return curated
    return _completed(spec, curated, method or "spackle")


def _curated(spec: DatasetSpec, cache_dir, force: bool, redownload: bool, progress: bool,
             load_fullres) -> ad.AnnData:
    if not spec.pipeline_ready:
        raise ValueError(f"dataset {spec.id!r} cannot be curated: {spec.notes or 'pipeline_ready is false'} "
                         f"(data/datasets.yml line {spec.line}); load it with stage='raw'")
    path = processed_path(spec.id)
    if spec.source.kind == "authors_processed":
        return _authors_curated(spec, path, cache_dir, force, redownload, progress)
    with file_lock(path):  # parallel jobs: one curates, the others read its file
        if path.is_file() and not force and not redownload:
            cached = ad.read_h5ad(path)
            if cached.uns.get("dataset_spec") == curation_fingerprint(spec):
                return cached
            log.warning("%s was curated with other parameters than data/datasets.yml now holds; curating again", path)
        raw = sources.load_raw(spec, cache_dir, regenerate=force, redownload=redownload, progress=progress,
                               load_fullres=load_fullres)
        curated = run_pipeline(raw, spec, progress=progress)
        write_processed(curated, spec.id, spec=spec)  # stamps uns["dataset_spec"] and uns["dataset_id"]
    return curated


def authors_stamp(spec: DatasetSpec, file: Path) -> str:
    """The ``uns["dataset_spec"]`` of an authors-processed dataset: the registry's entry and their file."""
    stat = file.stat()
    return json.dumps({"authors_processed": str(file.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                       "spec": curation_fingerprint(spec)}, sort_keys=True)


def _authors_curated(spec: DatasetSpec, path: Path, cache_dir, force: bool, redownload: bool,
                     progress: bool) -> ad.AnnData:
    """Their processed file in the book's conventions, cached with its patch store (never curated here)."""
    file = sources.prepare_source(spec, cache_dir, redownload=redownload, progress=progress)
    stamp = authors_stamp(spec, file)
    with file_lock(path):
        if path.is_file() and not force and not redownload:
            cached = ad.read_h5ad(path)
            if cached.uns.get("dataset_spec") == stamp:
                return cached
        adata, patches, info = sources.load_authors(spec, cache_dir, progress=progress)
        params = {**spec.curation.as_uns(), "source": "authors_processed"}
        theirs = info["parameters"]
        if "hex_geometry" in theirs:  # their grid, which their median and SpaCKLE used
            params["hex_geometry"] = bool(theirs["hex_geometry"])
        adata.uns["preprocessing"] = {"params": params,
                                      "missing_fraction": float(1 - adata.layers["mask"].mean())}
        adata.uns["authors_processed"] = {"file": info["file"], "patch_key": info["patch_key"],
                                          "left_out_layers": list(info["left_out_layers"]),
                                          "parameters": json.dumps(theirs, sort_keys=True)}
        adata.uns["dataset_spec"] = stamp
        if patches is not None:
            _write_authors_patches(spec, patches, adata.obs_names, processed_path(spec.id, "patches"), info, stamp)
        write_processed(adata, spec.id)
    return adata


def _completed(spec: DatasetSpec, adata: ad.AnnData, method: str) -> ad.AnnData:
    if method not in completion.METHODS:
        raise ValueError(f"unknown completion method {method!r}; choose one of {completion.METHODS}")
    found = completion.stored(adata, spec.id, method)
    if found is None:
        raise FileNotFoundError(
            f"dataset {spec.id!r} has no stored {method!r} completion in {completion.completion_dir(spec.id)}; "
            f"make one with su.completion.ensure(su.datasets.load({spec.id!r}), {spec.id!r}, method={method!r}) "
            f"(or run chapters/02_completion with dataset={spec.id!r})")
    return found


def patch_store(dataset_id: str, adata: ad.AnnData | None = None, progress: bool = True) -> PatchStore:
    """The patch store of a dataset's curated spots (``<processed_dir>/<id>/patches``).

    The curation chapter writes it; when it is missing, holds other spots, or was cut from an
    older curation (its ``source_id`` differs from the curated file's fingerprint), the patches
    are cut again from the full-resolution images.

    Parameters
    ----------
    dataset_id
        A key of ``data/datasets.yml``.
    adata
        The curated (or completed) dataset, if already loaded; else it is loaded.
    """
    adata = load(dataset_id, progress=progress) if adata is None else adata
    path = processed_path(dataset_id, "patches")
    with file_lock(path):  # parallel jobs: one cuts the patches, the others open them
        return _patch_store(dataset_id, adata, path, progress)


def _patch_store(dataset_id: str, adata: ad.AnnData, path: Path, progress: bool) -> PatchStore:
    try:
        store = PatchStore(path)
        store.positions(adata.obs_names)
        if store.meta.get("source_id") == adata.uns.get("dataset_spec"):
            return store
    except (FileNotFoundError, KeyError):
        pass  # no store, or one without these spots: cut it
    if get_spec(dataset_id).source.kind == "authors_processed":  # their patches, never re-cut
        return PatchStore(_authors_store(dataset_id, adata, path, progress))
    source = adata
    if not _has_fullres(adata):  # the cached curated file drops full-resolution images: read them again
        raw = load(dataset_id, stage="raw", load_fullres=True, progress=progress)
        missing = adata.obs_names.difference(raw.obs_names)
        if len(missing):
            raise KeyError(f"{len(missing)} curated spot(s) of {dataset_id!r} are not in its raw collection "
                           f"(e.g. {list(missing[:3])}); re-curate with datasets.load({dataset_id!r}, force=True)")
        source = raw[adata.obs_names]
    spec = get_spec(dataset_id)
    extract_patches(source, path, patch_scale=spec.patch_scale, patch_size=spec.patch_size,
                    source_id=adata.uns.get("dataset_spec"), progress=progress)
    return PatchStore(path)


def _authors_store(dataset_id: str, adata: ad.AnnData, path: Path, progress: bool) -> Path:
    """Write the store again from their file's patches (it was removed, or holds other spots)."""
    curated, patches, info = sources.load_authors(get_spec(dataset_id), progress=progress)
    if patches is None:
        raise KeyError(f"{info['file']} holds no obsm['patches_scale_*']: the authors' file of {dataset_id!r} has no "
                       "patches to train the image models on")
    order = curated.obs_names.get_indexer(adata.obs_names)
    if (order < 0).any():
        raise KeyError(f"{int((order < 0).sum())} spot(s) of {dataset_id!r} are not in {info['file']}; "
                       f"load it again with datasets.load({dataset_id!r}, force=True)")
    return _write_authors_patches(get_spec(dataset_id), patches[order], adata.obs_names, path, info,
                                  adata.uns.get("dataset_spec"))


def _write_authors_patches(spec: DatasetSpec, patches, obs_names, path: Path, info: dict, stamp: str | None) -> Path:
    """Their ``obsm["patches_scale_*"]`` as the patch store, at their patch scale (the registry's
    when their parameters do not say), marked with the file they come from."""
    return write_patch_store(patches, obs_names, path,
                             patch_scale=float(info["parameters"].get("patch_scale", spec.patch_scale)),
                             source_id=stamp, image_source=f"{info['file']} obsm[{info['patch_key']!r}]")


def _has_fullres(adata: ad.AnnData) -> bool:
    libs = adata.uns.get("spatial", {}).values()
    return bool(libs) and all("fullres" in lib.get("images", {})
                              or any((lib.get("metadata") or {}).get(k) for k in IMAGE_PATH_KEYS)
                              for lib in libs)


# ------------------------------------------------------------------------------------------------
# Supplementary Table 1
# ------------------------------------------------------------------------------------------------


def _ours(adata: ad.AnnData) -> dict[str, Any]:
    row = {"spots_ours": adata.n_obs, "genes_ours": adata.n_vars,
           "slides_ours": adata.obs["slide_id"].nunique(), "patients_ours": adata.obs["patient"].nunique()}
    if "mask" in adata.layers:
        mask = np.asarray(adata.layers["mask"], dtype=bool)
        row["missing_pct_ours"] = round(100 * (1 - mask.mean()), 1)
        row["corrupt_spots_pct_ours"] = round(100 * (~mask).any(axis=1).mean(), 1)
    return row


def summary_table(processed_ids: Iterable[str] = (), include_extras: bool = False) -> pd.DataFrame:
    """Supplementary Table 1: per-dataset statistics, the paper's numbers beside ours.

    Parameters
    ----------
    processed_ids
        Datasets to add our own numbers for (``*_ours`` columns): their curated collection is
        read from the processed cache, or computed with :func:`load` if absent.
    include_extras
        Also list the registry's datasets outside the paper (extras, real samples, synthetic).

    Returns
    -------
    DataFrame
        One row per dataset (index: dataset id), paper datasets in the paper's order of spots:
        ``abbreviation``, ``organism``, ``tissue``, ``task``, ``slides``, ``patients``, ``genes``
        (from the registry), ``train``/``val``/``test`` (slides per split), the paper's
        ``spots_paper``, ``missing_pct_paper``, ``corrupt_spots_pct_paper``,
        ``raw_missing_pct_paper``, and ours (NaN where not processed).
    """
    specs = registry()
    processed_ids = list(processed_ids)
    unknown = [d for d in processed_ids if d not in specs]
    if unknown:
        get_spec(unknown[0])  # raises with suggestions
    rows = []
    for spec in specs.values():
        if not (spec.in_paper or include_extras or spec.id in processed_ids):
            continue
        row: dict[str, Any] = {
            "dataset": spec.id, "abbreviation": spec.abbreviation, "in_paper": spec.in_paper,
            "organism": spec.organism, "tissue": spec.tissue, "task": spec.task, "slides": spec.n_slides,
            "patients": spec.n_patients, "genes": spec.n_genes,
            **{split: len(spec.splits.get(split, [])) for split in SPLITS},
        }
        if spec.paper is not None:
            row.update({"slides_paper": spec.paper.slides, "patients_paper": spec.paper.patients,
                        "spots_paper": spec.paper.spots, "genes_paper": spec.paper.genes,
                        "task_paper": spec.paper.task, "missing_pct_paper": spec.paper.missing_pct,
                        "corrupt_spots_pct_paper": spec.paper.corrupt_spots_pct,
                        "raw_missing_pct_paper": spec.paper.raw_missing_pct})
        if spec.id in processed_ids:
            path = processed_path(spec.id)
            row.update(_ours(ad.read_h5ad(path) if path.is_file() else load(spec.id)))
        rows.append(row)
    columns = ["dataset", "abbreviation", "in_paper", "organism", "tissue", "task", "slides", "patients", "genes",
               "train", "val", "test", "slides_paper", "patients_paper", "spots_paper", "genes_paper", "task_paper",
               "missing_pct_paper", "corrupt_spots_pct_paper", "raw_missing_pct_paper", "spots_ours", "genes_ours",
               "slides_ours", "patients_ours", "missing_pct_ours", "corrupt_spots_pct_ours"]
    table = pd.DataFrame(rows).reindex(columns=columns).set_index("dataset")
    order = table["spots_paper"].fillna(-1).sort_values(ascending=False, kind="stable").index
    return table.loc[order]
