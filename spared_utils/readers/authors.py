"""A dataset processed by the authors: their ``adata.h5ad`` in the book's conventions.

The authors share one processed ``adata.h5ad`` per SpaRED dataset (a shared folder linked from
the README of github.com/BCV-Uniandes/SpaRED), and their ``spared`` package writes the same
layout when it processes a dataset (``SpatialDataset.load_or_compute_adata``,
``spared/datasets/datasets.py``: ``processed_data/<...>/adata.h5ad`` beside ``parameters.json``
and ``adata_raw.h5ad``). What their file holds (``layer_operations.process_dataset``):

* layers ``counts``, ``tpm``, ``log1p``, ``d_log1p``, ``c_log1p``, ``c_d_log1p``, the Δ layers
  ``deltas``, ``d_deltas``, ``c_deltas``, ``c_d_deltas``, ``mask`` (True = real), their SpaCKLE
  completion ``c_t_log1p`` / ``c_t_deltas`` and the ``noisy_*`` layers (missing entries set back
  to 0, or to minus the gene mean for Δ layers);
* ``obs``: ``slide_id``, ``split``, ``patient``, ``unique_id`` and the reader's columns
  (``in_tissue``, ``array_row``, ``array_col``); ``obs_names`` ``<slide_id>_<barcode>``;
* ``obsm["spatial"]`` (full-resolution pixels) and ``obsm["patches_scale_1.0"]``: one flattened
  ``patch_size × patch_size × 3`` uint8 row per spot (224 in SpaRED);
* ``uns["spatial"]`` per slide (hires/lowres images, scale factors, metadata), ``var`` with
  ``d_log1p_moran`` and ``<layer>_avg_exp``.

:func:`read_authors_processed` maps it onto the book's curated stage: the same layers (float32,
``mask`` bool), ``X`` = ``c_d_log1p``, ``obs`` ``slide_id``/``split``/``patient`` categorical and
``barcode``; their completion kept as ``authors_c_t_log1p`` / ``authors_c_t_deltas`` (the
completion ``"authors"`` of :func:`spared_utils.completion.complete` reads them; the curated
stage carries no ``c_t_log1p``, as ours does not); their patches returned apart (the patch store
is written from them, never re-cut); the ``noisy_*`` layers left out (they are the layers above
with the missing entries reset, :func:`spared_utils.preprocess.deltas` makes them again if needed).
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from .files import PathLike, ReaderError

#: The layers of the authors' file the curated stage keeps, under the same names.
CURATED_LAYERS = ("counts", "tpm", "log1p", "d_log1p", "c_log1p", "c_d_log1p", "deltas", "d_deltas", "c_deltas",
                  "c_d_deltas")
#: Their SpaCKLE completion → the names the curated stage keeps it under.
COMPLETION_LAYERS = {"c_t_log1p": "authors_c_t_log1p", "c_t_deltas": "authors_c_t_deltas"}
#: What every file of theirs has; a file without one of these is not theirs (or truncated).
REQUIRED = {"layers": ("counts", "log1p", "d_log1p", "c_d_log1p", "mask"), "obs": ("slide_id", "split")}
PATCH_PREFIX = "patches_scale_"


def authors_file(path: PathLike) -> Path:
    """The ``adata.h5ad`` at ``path``: the file itself, or the one ``adata.h5ad`` in the folder (at any depth)."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise ReaderError(f"{path} does not exist; download the dataset's adata.h5ad from the shared folder linked "
                          "in the README of github.com/BCV-Uniandes/SpaRED and put it (or its folder) there")
    direct = path / "adata.h5ad"
    if direct.is_file():
        return direct
    found = sorted(path.rglob("adata.h5ad"))
    if len(found) != 1:
        what = "no adata.h5ad" if not found else f"{len(found)} adata.h5ad files ({', '.join(map(str, found[:3]))})"
        raise ReaderError(f"{path} holds {what}; point source.root of data/datasets.yml at the dataset's own "
                          "file or folder (the authors' layout: processed_data/<...>/adata.h5ad)")
    return found[0]


def authors_parameters(path: PathLike) -> dict:
    """Their ``parameters.json`` beside the ``adata.h5ad`` (empty if the folder has none)."""
    params = authors_file(path).parent / "parameters.json"
    return json.loads(params.read_text()) if params.is_file() else {}


def patch_size_of(patches: np.ndarray, channels: int = 3) -> int:
    """Side of the square patches stored as flattened rows (224 for ``224 * 224 * 3`` columns)."""
    side = int(round(np.sqrt(patches.shape[1] / channels)))
    if side * side * channels != patches.shape[1]:
        raise ReaderError(f"patch rows of {patches.shape[1]} values are not square {channels}-channel images")
    return side


def _dense32(x) -> np.ndarray:
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float32)


def _barcodes(obs: pd.DataFrame, names: pd.Index) -> np.ndarray:
    """``<slide_id>_<barcode>`` → ``<barcode>`` (their readers prefix the slide)."""
    slides = obs["slide_id"].astype(str).to_numpy()
    return np.array([n[len(s) + 1:] if n.startswith(f"{s}_") else n for n, s in zip(names.astype(str), slides)])


def read_authors_processed(path: PathLike, splits: dict[str, list[str]] | None = None,
                           patients: dict[str, list[str]] | None = None) -> tuple[ad.AnnData, np.ndarray | None, dict]:
    """Read the authors' processed ``adata.h5ad`` into the book's curated conventions.

    Parameters
    ----------
    path
        Their ``adata.h5ad``, or a folder holding it (see :func:`authors_file`).
    splits, patients
        The registry's splits and patients of the dataset (``data/datasets.yml``); when given,
        every slide of the file must be listed, in the split the file says (their ``obs["split"]``
        is what their models trained on), or a :class:`ReaderError` names the slide. The
        registry's patients replace their ``obs["patient"]`` (their Visium reader writes
        ``"unique"`` for every spot).

    Returns
    -------
    (AnnData, patches, info)
        The curated AnnData (see the module's docstring); their patches as a ``(n_spots,
        size, size, 3)`` uint8 array in the AnnData's spot order (``None`` if the file has
        none); ``info``: the file, their ``parameters.json``, the patch key and the layers left out.
    """
    file = authors_file(path)
    try:
        src = ad.read_h5ad(file)
    except Exception as err:  # noqa: BLE001 - h5py raises many kinds for a damaged file
        raise ReaderError(f"{file} cannot be read ({type(err).__name__}: {err}); download it again") from err
    for where, keys in REQUIRED.items():
        missing = [k for k in keys if k not in getattr(src, where)]
        if missing:
            raise ReaderError(f"{file} has no {where} {missing}: it is not a dataset processed by the authors' "
                              "spared package (process_dataset writes them), or it is truncated; download it again")
    slides = list(pd.unique(src.obs["slide_id"].astype(str)))
    if splits is not None:
        listed = {s: name for name, ids in splits.items() for s in ids}
        for slide in slides:
            theirs = str(src.obs.loc[src.obs["slide_id"].astype(str) == slide, "split"].iloc[0])
            if slide not in listed or listed[slide] != theirs:
                raise ReaderError(f"{file}: slide {slide!r} is in their split {theirs!r} but the registry puts it "
                                  f"in {listed.get(slide)!r}; list it under splits.{theirs} in data/datasets.yml")
    obs = pd.DataFrame(index=pd.Index(src.obs_names.astype(str)))
    obs["slide_id"] = pd.Categorical(src.obs["slide_id"].astype(str), categories=slides)
    obs["split"] = pd.Categorical(src.obs["split"].astype(str),
                                  categories=[s for s in ("train", "val", "test") if (src.obs["split"] == s).any()])
    if patients is not None:
        owner = {s: p for p, ids in patients.items() for s in ids}
        obs["patient"] = pd.Categorical(obs["slide_id"].astype(str).map(owner), categories=list(patients))
    else:
        obs["patient"] = pd.Categorical(src.obs.get("patient", obs["slide_id"]).astype(str))
    obs["barcode"] = _barcodes(src.obs, src.obs_names)
    for key in ("in_tissue", "array_row", "array_col"):
        if key in src.obs:
            obs[key] = src.obs[key].to_numpy()
    var = pd.DataFrame(index=pd.Index(src.var_names.astype(str)))
    for key in src.var.columns:
        if key.endswith(("_moran", "_avg_exp")) or key in ("gene_length", "exp_frac", "glob_exp_frac", "gene_symbol",
                                                            "gene_ids"):
            var[key] = src.var[key].to_numpy()
    layers = {k: _dense32(src.layers[k]) for k in CURATED_LAYERS if k in src.layers}
    layers["mask"] = np.asarray(_dense32(src.layers["mask"]) != 0)
    layers.update({ours: _dense32(src.layers[k]) for k, ours in COMPLETION_LAYERS.items() if k in src.layers})
    out = ad.AnnData(X=layers["c_d_log1p"].copy(), obs=obs, var=var, layers=layers)
    out.obsm["spatial"] = np.asarray(src.obsm["spatial"], dtype=np.float64)
    out.uns["spatial"] = _spatial(src.uns.get("spatial", {}), slides)
    patch_keys = sorted(k for k in src.obsm if k.startswith(PATCH_PREFIX))
    patches = None
    if patch_keys:
        flat = np.asarray(src.obsm[patch_keys[0]])
        side = patch_size_of(flat)
        patches = flat.astype(np.uint8, copy=False).reshape(src.n_obs, side, side, 3)
    info = {"file": str(file), "parameters": authors_parameters(file), "patch_key": patch_keys[0] if patch_keys else "",
            "left_out_layers": sorted(set(src.layers) - set(CURATED_LAYERS) - {"mask"} - set(COMPLETION_LAYERS))}
    return out, patches, info


def _spatial(spatial: dict, slides: list[str]) -> dict:
    """Their ``uns["spatial"]`` with image paths of their machine kept aside (the images are not here)."""
    out = {}
    for slide in slides:
        lib = dict(spatial.get(slide, {}))
        lib["images"] = {k: v for k, v in dict(lib.get("images", {})).items() if k in ("hires", "lowres")}
        lib["scalefactors"] = dict(lib.get("scalefactors", {}))
        meta = {k: v for k, v in dict(lib.get("metadata", {}) or {}).items()}
        for key in ("source_image_path", "fullres_path"):
            if key in meta:
                meta[f"authors_{key}"] = str(meta.pop(key))
        lib["metadata"] = meta
        out[slide] = lib
    return out
