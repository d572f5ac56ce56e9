"""Image patches around every spot, written once to disk and streamed from there.

A patch is a square crop of the slide's full-resolution H&E image centred on the spot
(``obsm["spatial"]``, full-resolution pixels), of side ``patch_scale`` × the spot diameter
(``scalefactors["spot_diameter_fullres"]``, rounded to an even number of pixels as the authors
do), resized to ``patch_size`` × ``patch_size`` with bilinear interpolation. Crops that reach
past the image border are filled by mirroring the image (symmetric padding).

The store is a folder::

    patches.npy      uint8 array (n_spots, patch_size, patch_size, 3), read memory-mapped
    obs_names.txt    one spot name per line, in the array's order
    meta.json        patch_scale, patch_size, window (px), image source per slide, ...

written under a temporary name and renamed when complete, one slide image in memory at a time.
:class:`PatchStore` opens it memory-mapped, so a training loop reads only the patches it asks for.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from PIL import Image
from tqdm.auto import tqdm

from . import graphs
from .readers import as_rgb_uint8, read_image
from .utils import atomic_path

ARRAY_NAME = "patches.npy"
NAMES_NAME = "obs_names.txt"
META_NAME = "meta.json"
IMAGE_PATH_KEYS = ("fullres_path", "source_image_path")


class PatchStore:
    """Read-only, memory-mapped access to a patch store written by :func:`extract_patches`.

    ``store[i]`` is the ``(patch_size, patch_size, 3)`` uint8 patch of spot ``store.obs_names[i]``.
    Safe to hand to ``torch.utils.data.DataLoader`` workers (the memory map is reopened in each
    process).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        missing = [n for n in (ARRAY_NAME, NAMES_NAME, META_NAME) if not (self.path / n).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{self.path} is not a complete patch store (missing {missing}); write it with "
                "spared_utils.patches.extract_patches(adata, path)"
            )
        self.meta = json.loads((self.path / META_NAME).read_text())
        self.obs_names = pd.Index((self.path / NAMES_NAME).read_text().splitlines())
        self._array: np.ndarray | None = None
        if len(self.obs_names) != self.meta["n_patches"]:
            raise ValueError(f"{self.path}: {len(self.obs_names)} names but meta says {self.meta['n_patches']} patches")

    @property
    def array(self) -> np.ndarray:
        """The whole store as a read-only memory map (nothing is read until indexed)."""
        if self._array is None:
            self._array = np.load(self.path / ARRAY_NAME, mmap_mode="r")
        return self._array

    @property
    def patch_size(self) -> int:
        return int(self.meta["patch_size"])

    def __len__(self) -> int:
        return len(self.obs_names)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.array(self.array[int(i)])

    def take(self, indices: Sequence[int]) -> np.ndarray:
        """Several patches as one ``(k, size, size, 3)`` array (in the order asked)."""
        return np.stack([self[i] for i in indices]) if len(indices) else np.empty((0, self.patch_size, self.patch_size, 3), np.uint8)

    def positions(self, obs_names: Sequence[str]) -> np.ndarray:
        """Store positions of the given spot names (raises if one is missing)."""
        pos = self.obs_names.get_indexer(pd.Index(obs_names))
        if (pos < 0).any():
            missing = pd.Index(obs_names)[pos < 0][:3].tolist()
            raise KeyError(f"{int((pos < 0).sum())} spot(s) not in the patch store {self.path} (e.g. {missing}); "
                           "re-run extract_patches on this AnnData")
        return pos

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_array"] = None
        return state

    def __repr__(self) -> str:
        return f"PatchStore({str(self.path)!r}, n={len(self)}, size={self.patch_size})"


def window_px(spot_diameter: float, patch_scale: float = 1.0) -> int:
    """Crop side in full-resolution pixels: ``int(diameter × scale)``, made even."""
    window = max(2, int(spot_diameter * patch_scale))
    return window + (window % 2)


def _reflect(idx: np.ndarray, n: int) -> np.ndarray:
    """Symmetric (edge-repeating) reflection of indices into ``[0, n)``."""
    period = 2 * n
    idx = np.mod(idx, period)
    return np.where(idx < n, idx, period - 1 - idx)


def crop(image: np.ndarray, x: float, y: float, window: int) -> np.ndarray:
    """A ``window``-pixel square of ``image`` centred on pixel ``(x, y)``; mirrored past the border."""
    cx, cy = int(round(x)), int(round(y))
    half = window // 2
    rows = np.arange(cy - half, cy + half)
    cols = np.arange(cx - half, cx + half)
    h, w = image.shape[:2]
    if rows[0] >= 0 and rows[-1] < h and cols[0] >= 0 and cols[-1] < w:
        return image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    return image[np.ix_(_reflect(rows, h), _reflect(cols, w))]


def slide_image(adata: AnnData, slide: str, image_key: str = "auto") -> tuple[np.ndarray, float, str]:
    """The image to crop from for one slide: ``(image, scale to full-res pixels, source)``.

    ``image_key="auto"`` takes, in order: ``uns["spatial"][slide]["images"]["fullres"]``; the
    file named by ``metadata["fullres_path"]`` (or ``"source_image_path"``); the ``hires``
    image with ``tissue_hires_scalef``; the ``lowres`` image with ``tissue_lowres_scalef`` (both
    with a warning: patches are then blurrier). ``"fullres"``, ``"hires"`` or ``"lowres"`` forces one.
    """
    lib = adata.uns.get("spatial", {}).get(slide)
    if lib is None:
        raise KeyError(f"uns['spatial'] has no entry for slide {slide!r}; the reader must store its images there")
    images, meta = lib.get("images", {}), lib.get("metadata", {}) or {}
    if image_key in ("auto", "fullres"):
        if "fullres" in images:
            return as_rgb_uint8(images["fullres"]), 1.0, "uns images['fullres']"
        for key in IMAGE_PATH_KEYS:
            if meta.get(key):
                return read_image(meta[key]), 1.0, str(meta[key])
        if image_key == "fullres":
            raise KeyError(f"slide {slide!r}: no full-resolution image (images['fullres'] or metadata['fullres_path'])")
    for key in ("hires", "lowres") if image_key == "auto" else (image_key,):
        if key in images:
            scale = float(lib["scalefactors"][f"tissue_{key}_scalef"])
            if image_key == "auto":
                warnings.warn(f"slide {slide!r}: no full-resolution image; cropping the {key} image "
                              f"(scale {scale}) instead, so patches are blurrier", stacklevel=2)
            return as_rgb_uint8(images[key]), scale, f"uns images[{key!r}]"
    raise KeyError(f"slide {slide!r}: no image to crop patches from (fullres, fullres_path, hires or lowres); "
                   f"the reader must store one in uns['spatial'][{slide!r}]")


def _store_matches(path: Path, adata: AnnData, patch_scale: float, patch_size: int, source_id: str | None) -> bool:
    try:
        store = PatchStore(path)
    except (FileNotFoundError, ValueError, KeyError, json.JSONDecodeError):
        return False
    return (store.meta.get("patch_scale") == patch_scale and store.patch_size == patch_size
            and store.meta.get("source_id") == source_id and store.obs_names.equals(pd.Index(adata.obs_names)))


def write_patch_store(patches: np.ndarray, obs_names: Sequence[str], out_path: str | os.PathLike,
                      patch_scale: float = 1.0, source_id: str | None = None, **meta) -> Path:
    """Store patches that were cut elsewhere (the authors' ``obsm["patches_scale_1.0"]``), not re-cut.

    ``patches`` is ``(n_spots, size, size, 3)`` uint8 in the order of ``obs_names``; ``meta``
    adds entries to ``meta.json`` (e.g. where the patches come from). Written atomically, as
    :func:`extract_patches` writes its store, and opened with :class:`PatchStore`.
    """
    patches = np.asarray(patches)
    if patches.ndim != 4 or patches.shape[3] != 3 or patches.shape[1] != patches.shape[2] or patches.dtype != np.uint8:
        raise ValueError(f"patches must be a (n, size, size, 3) uint8 array, got {patches.dtype} {patches.shape}")
    if len(obs_names) != len(patches):
        raise ValueError(f"{len(patches)} patches but {len(obs_names)} spot names")
    out_path = Path(out_path)
    with atomic_path(out_path, directory=True) as tmp:
        np.save(tmp / ARRAY_NAME, patches)
        _write_index(tmp, obs_names, patch_scale=patch_scale, patch_size=int(patches.shape[1]),
                     source_id=source_id, **meta)
    return out_path


def _write_index(folder: Path, obs_names: Sequence[str], **meta) -> None:
    """A store's spot names (one per line, the array's order) and ``meta.json`` (``meta`` with
    the count, dtype and layout every store has), beside its array."""
    names = list(obs_names)
    (folder / NAMES_NAME).write_text("".join(f"{name}\n" for name in names))
    info = {"n_patches": len(names), **meta, "dtype": "uint8", "layout": "NHWC"}
    (folder / META_NAME).write_text(json.dumps(info, indent=2))


def extract_patches(
    adata: AnnData,
    out_path: str | os.PathLike,
    patch_scale: float = 1.0,
    patch_size: int = 224,
    image_key: str = "auto",
    slide_key: str = "slide_id",
    overwrite: bool = False,
    progress: bool = True,
    source_id: str | None = None,
) -> Path:
    """Crop, resize and store the patch of every spot of ``adata`` (in ``obs_names`` order).

    Parameters
    ----------
    adata
        Spots with ``obsm["spatial"]`` (full-resolution x, y), ``obs[slide_key]`` and
        ``uns["spatial"][slide]`` (images, ``scalefactors["spot_diameter_fullres"]``).
    out_path
        Folder of the store (created whole or not at all).
    patch_scale
        Crop side in spot diameters (1.0 in SpaRED).
    patch_size
        Side of the stored patch in pixels (224).
    image_key
        ``"auto"``, ``"fullres"`` or ``"hires"`` (see :func:`slide_image`).
    overwrite
        Rewrite an existing store; otherwise a complete store for the same spots and parameters
        is reused as it is.
    source_id
        What the images come from, kept in the store's metadata; a store made from another
        source is rewritten. Default: ``adata.uns["dataset_spec"]`` (the curation fingerprint
        that :func:`spared_utils.preprocess.write_processed` stamps), so re-curated data (other
        parameters, a new synthetic generator) never reuses old patches.

    Returns
    -------
    Path
        ``out_path``; open it with :class:`PatchStore`.
    """
    out_path = Path(out_path)
    if source_id is None:
        source_id = adata.uns.get("dataset_spec")
    if not overwrite and _store_matches(out_path, adata, patch_scale, patch_size, source_id):
        return out_path
    if "spatial" not in adata.obsm:
        raise KeyError("obsm['spatial'] (full-resolution pixel x, y of each spot) is needed to crop patches")
    with atomic_path(out_path, directory=True) as tmp:
        array = np.lib.format.open_memmap(tmp / ARRAY_NAME, mode="w+", dtype=np.uint8,
                                          shape=(adata.n_obs, patch_size, patch_size, 3))
        xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
        sources, windows = {}, {}
        groups = graphs.slide_groups(adata, slide_key)
        bar = tqdm(total=adata.n_obs, desc="patches", unit="patch", disable=not progress)
        for slide, idx in groups.items():
            image, scale, source = slide_image(adata, slide, image_key)
            diameter = float(adata.uns["spatial"][slide]["scalefactors"]["spot_diameter_fullres"])
            window = window_px(diameter * scale, patch_scale)
            for i in idx:
                patch = crop(image, xy[i, 0] * scale, xy[i, 1] * scale, window)
                array[i] = np.asarray(Image.fromarray(patch).resize((patch_size, patch_size), Image.Resampling.BILINEAR))
            bar.update(len(idx))
            sources[slide], windows[slide] = source, window
            del image
        bar.close()
        array.flush()
        del array
        _write_index(tmp, adata.obs_names, patch_scale=patch_scale, patch_size=patch_size, window_px=windows,
                     image_source=sources, source_id=source_id)
    return out_path
