"""Where a curated dataset lives: ``<processed_dir>/<dataset>/adata.h5ad`` (+ the patch store)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import anndata as ad
from anndata import AnnData

from .. import paths, synthetic
from ..registry import DatasetSpec
from ..utils import atomic_path

ADATA_NAME = "adata.h5ad"
PATCHES_NAME = "patches"


def processed_path(dataset: str, name: str = ADATA_NAME) -> Path:
    """``<processed_dir>/<dataset>/<name>`` (``adata.h5ad`` or ``patches``)."""
    return paths.processed_dir() / dataset / name


def curation_fingerprint(spec: DatasetSpec) -> str:
    """A string that changes whenever what a dataset's curated file depends on changes.

    Its curation parameters, splits, patients and, for the embedded dataset, the generator's
    arguments and version. :func:`write_processed` stamps it into ``uns["dataset_spec"]``;
    :func:`spared_utils.datasets.load` curates again when the stamp differs, and the patch
    store keeps it as its ``source_id``.
    """
    params: dict = {**asdict(spec.curation), "splits": spec.splits, "patients": spec.patients,
                    "generator": spec.generator}
    if not params.get("n_context"):  # no context genes: the stamp of files curated before the field
        params.pop("n_context", None)
    if spec.generator is not None:
        params["generator_version"] = synthetic.GENERATOR_VERSION
    return json.dumps(params, sort_keys=True, default=str)


def write_processed(adata: AnnData, dataset: str, drop_fullres: bool = True, spec: DatasetSpec | None = None) -> Path:
    """Write a curated collection atomically (temporary file, then rename).

    Full-resolution images held in ``uns["spatial"][slide]["images"]["fullres"]`` are left out
    of the file when ``drop_fullres`` (the patches already hold what models need; the hires and
    lowres images stay for plots). With the dataset's ``spec``, ``uns["dataset_spec"]`` records
    its curation parameters, so that ``datasets.load(dataset)`` reuses the file.
    """
    out = processed_path(dataset)
    out.parent.mkdir(parents=True, exist_ok=True)
    if spec is not None:
        adata.uns["dataset_spec"] = curation_fingerprint(spec)
        adata.uns["dataset_id"] = dataset
    to_write = adata
    if drop_fullres and any("fullres" in lib.get("images", {}) for lib in adata.uns.get("spatial", {}).values()):
        to_write = adata.copy()
        for lib in to_write.uns["spatial"].values():
            lib.get("images", {}).pop("fullres", None)
    with atomic_path(out) as tmp:
        to_write.write_h5ad(tmp)
    return out


def read_processed(dataset: str) -> AnnData:
    """Read ``<processed_dir>/<dataset>/adata.h5ad`` (written by :func:`write_processed`)."""
    path = processed_path(dataset)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run chapters/01_curation with dataset={dataset!r} first")
    try:
        return ad.read_h5ad(path)
    except Exception as err:  # noqa: BLE001 - h5py raises many kinds for a truncated file
        raise ValueError(f"{path} cannot be read ({type(err).__name__}: {err}); the file is truncated or damaged: "
                         f"delete it and curate again (spared_utils.datasets.load({dataset!r}, force=True))") from err
