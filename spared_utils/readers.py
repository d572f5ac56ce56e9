"""Readers: one slide on disk → one AnnData in the book's conventions.

Formats the SpaRED sources use:

* **Space Ranger output** (:func:`read_spaceranger`): ``filtered_feature_bc_matrix.h5`` or the
  ``filtered_feature_bc_matrix/`` folder (mtx), ``spatial/tissue_positions.csv`` (Space Ranger ≥ 2,
  with header) or ``spatial/tissue_positions_list.csv`` (1.x, no header),
  ``spatial/scalefactors_json.json``, ``spatial/tissue_hires_image.png`` /
  ``tissue_lowres_image.png`` and, when present, the full-resolution H&E image (``image.tif``
  beside ``spatial/``). A count table (``.tsv``/``.csv``, genes × spots or spots × genes) may
  stand in for the matrix, as in GEO deposits.
* **Legacy Spatial Transcriptomics** (:func:`read_legacy_st`, e.g. her2st): ``counts.tsv.gz``
  (spots × genes, spot ids ``"XxY"``), ``spots.tsv`` (array x/y, pixel_x/pixel_y, selected) and
  the full-resolution ``he.jpg``.
* **AnnData with** ``uns["spatial"]`` (:func:`read_h5ad_spatial`, e.g. stLearn's test data).

Every reader returns: in-tissue spots only; ``obs_names`` = barcodes; ``obs`` with ``in_tissue``,
``array_row``, ``array_col``; ``obsm["spatial"]`` = full-resolution pixel (x, y); raw counts in
``X`` and ``layers["counts"]`` (CSR, float32); ``var_names`` = gene ids as the source gives them
(Ensembl for 10x, symbols for legacy ST) with ``var["gene_symbol"]``; and
``uns["spatial"][slide_id]`` with ``images`` (``hires``/``lowres``, plus ``fullres`` when small
enough), ``scalefactors`` and ``metadata["source_image_path"]`` (the full-resolution image on
disk, which :func:`spared_utils.patches.slide_image` reads when ``fullres`` is not in memory).

Errors (:class:`ReaderError`) name the file and what to do about it.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import logging
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from PIL import Image

log = logging.getLogger(__name__)

PathLike = str | os.PathLike
#: Full-resolution images up to this many pixels are kept in memory (``load_fullres="auto"``).
FULLRES_AUTO_MAX_PIXELS = 25_000_000
IMAGE_SUFFIXES = (".tif", ".tiff", ".btf", ".jpg", ".jpeg", ".png")
POSITION_COLUMNS = ["in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]
#: Legacy ST geometry: 100 µm spots, 200 µm apart (centre to centre).
ST_SPOT_DIAMETER_OVER_SPACING = 0.5


class ReaderError(ValueError):
    """A slide's files are missing, unreadable or inconsistent (the message says which and why)."""


# ------------------------------------------------------------------------------------------------
# Small file helpers
# ------------------------------------------------------------------------------------------------


def _open_text(path: Path):
    return gzip.open(path, "rt") if path.name.endswith(".gz") else open(path)


def _stem(path: Path) -> str:
    name = path.name
    return name[:-3] if name.endswith(".gz") else name


@contextlib.contextmanager
def _no_pixel_limit():
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # whole-slide images exceed PIL's decompression-bomb guard
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def as_rgb_uint8(array: np.ndarray, source: PathLike | str = "image") -> np.ndarray:
    """An image as ``(H, W, 3)`` uint8: grey, channel-first and RGBA fixed, 16-bit and 0–1 floats rescaled.

    Raises :class:`ReaderError` naming ``source`` when the array is not an image.
    """
    path = source
    array = np.asarray(array)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[2] not in (3, 4):
        array = np.moveaxis(array, 0, -1)  # planar (C, H, W) TIFF
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ReaderError(f"{path}: expected an RGB image, got an array of shape {array.shape}; the file is corrupt, "
                          "truncated or not an H&E image: replace it (download it again)")
    array = array[..., :3]
    if array.dtype == np.uint16:
        array = (array.astype(np.float32) / 65535.0 * 255.0).round()
    elif np.issubdtype(array.dtype, np.floating):
        array = array * 255.0 if array.max(initial=0) <= 1.0 else array
    return np.clip(array, 0, 255).astype(np.uint8)


def image_size(path: PathLike) -> tuple[int, int]:
    """(width, height) of an image file without decoding its pixels."""
    path = Path(path)
    try:
        if _stem(path).lower().endswith((".tif", ".tiff", ".btf")) and not path.name.endswith(".gz"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                shape = tif.pages[0].shape
                axes = tif.pages[0].axes
            h, w = (shape[axes.index("Y")], shape[axes.index("X")]) if "Y" in axes else shape[:2]
            return int(w), int(h)
        with _no_pixel_limit(), _open_image(path) as im:
            return im.size
    except ReaderError:
        raise
    except Exception as err:  # noqa: BLE001 - any decoder failure means the same to the user
        raise ReaderError(f"{path}: cannot read the image ({type(err).__name__}: {err}); the file is "
                          "corrupt or not an image: replace it (download it again)") from err


def _open_image(path: Path) -> Image.Image:
    if path.name.endswith(".gz"):
        with gzip.open(path, "rb") as handle:
            return Image.open(io.BytesIO(handle.read()))
    return Image.open(path)


def read_image(path: PathLike) -> np.ndarray:
    """Read an image file (PNG/JPEG/TIFF, optionally gzipped) as an RGB ``uint8`` array.

    Raises
    ------
    ReaderError
        The file is missing or cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise ReaderError(f"image {path} not found: put the slide's image there, or point the "
                          "layout in data/datasets.yml at the right file")
    try:
        if _stem(path).lower().endswith((".tif", ".tiff", ".btf")) and not path.name.endswith(".gz"):
            import tifffile

            return as_rgb_uint8(tifffile.imread(path), path)
        with _no_pixel_limit(), _open_image(path) as im:
            im.load()
            return as_rgb_uint8(np.asarray(im.convert("RGB") if im.mode not in ("RGB", "I;16") else im), path)
    except ReaderError:
        raise
    except Exception as err:  # noqa: BLE001
        raise ReaderError(f"{path}: cannot read the image ({type(err).__name__}: {err}); the file is "
                          "corrupt or truncated: replace it (download it again)") from err


def _scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    return max(1, round(width * scale)), max(1, round(height * scale))


def _resize_to(image: np.ndarray, width: int, height: int, scale: float) -> np.ndarray:
    """Resize ``image`` to ``scale`` × the (width, height) of the full-resolution image."""
    size = _scaled_size(width, height, scale)
    if image.shape[1::-1] == size:
        return image
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def read_image_scaled(path: PathLike, scale: float) -> np.ndarray:
    """Read an image downscaled by ``scale`` without decoding it at full size when avoidable.

    JPEGs are decoded directly at a reduced size (``PIL.Image.draft``), then resized to exactly
    ``scale`` × the original size, so scale factors stay exact.
    """
    path = Path(path)
    if scale >= 1.0 or not _stem(path).lower().endswith((".jpg", ".jpeg")) or path.name.endswith(".gz"):
        image = read_image(path)
        h, w = image.shape[:2]
        return _resize_to(image, w, h, scale)
    try:
        with _no_pixel_limit(), Image.open(path) as im:
            width, height = im.size
            im.draft("RGB", _scaled_size(width, height, scale))
            small = im.convert("RGB").resize(_scaled_size(width, height, scale), Image.Resampling.LANCZOS)
            return np.asarray(small)
    except Exception as err:  # noqa: BLE001
        raise ReaderError(f"{path}: cannot read the image ({type(err).__name__}: {err}); the file is "
                          "corrupt or truncated: replace it (download it again)") from err


# ------------------------------------------------------------------------------------------------
# Counts
# ------------------------------------------------------------------------------------------------


def check_counts(matrix, source: PathLike, *, require_integers: bool = False) -> None:
    """Raise :class:`ReaderError` if a count matrix holds NaN, infinite or negative values.

    Non-integer values only log a warning (unless ``require_integers``): some deposits hold
    normalised values, which the pipeline's TPM step will treat as counts.
    """
    values = matrix.data if sp.issparse(matrix) else np.asarray(matrix).ravel()
    if values.size == 0:
        return
    bad = ~np.isfinite(values)
    if bad.any():
        raise ReaderError(f"{source}: {int(bad.sum())} count value(s) are NaN or infinite; the matrix is "
                          "damaged or not a count matrix: use the raw counts from the original source")
    if (values < 0).any():
        raise ReaderError(f"{source}: {int((values < 0).sum())} count value(s) are negative (minimum "
                          f"{values.min():g}); these are not raw counts (scaled or log data?): use the raw "
                          "count matrix (Space Ranger's filtered_feature_bc_matrix)")
    if not np.array_equal(values, np.round(values)):
        message = (f"{source}: count values are not whole numbers (e.g. {values[values != np.round(values)][0]:g}); "
                   "the matrix looks normalised, not raw: use the raw UMI counts (Space Ranger's "
                   "filtered_feature_bc_matrix) if you have them")
        if require_integers:
            raise ReaderError(message)
        log.warning(message)


def _finish_counts(adata: ad.AnnData) -> ad.AnnData:
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    adata.layers["counts"] = adata.X.copy()
    return adata


def read_counts(path: PathLike) -> ad.AnnData:
    """Read a count matrix: 10x HDF5, 10x mtx folder, or a text table (spots × genes or genes × spots).

    Returns an AnnData with barcodes as ``obs_names``, gene ids as ``var_names`` (Ensembl ids for
    10x files) and ``var["gene_symbol"]``. A text table is returned with spots as rows if its
    orientation can be told (genes × spots tables have gene-like row names); the caller aligns it
    with the positions file.
    """
    path = Path(path)
    if not path.exists():
        raise ReaderError(f"count matrix {path} not found: it should be Space Ranger's "
                          "filtered_feature_bc_matrix.h5 (or the filtered_feature_bc_matrix/ folder)")
    import scanpy as sc

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # scanpy: "Variable names are not unique"
            if path.is_dir():
                adata = sc.read_10x_mtx(path, var_names="gene_ids", make_unique=False)
                symbols = adata.var.pop("gene_symbols") if "gene_symbols" in adata.var else adata.var_names
            elif _stem(path).endswith((".h5", ".hdf5")):
                adata = sc.read_10x_h5(path)
                symbols = adata.var_names.to_numpy()
                adata.var_names = adata.var.pop("gene_ids").astype(str).to_numpy()
            elif _stem(path).endswith((".tsv", ".csv", ".txt")):
                return _read_count_table(path)
            else:
                raise ReaderError(f"{path}: unknown count-matrix format; expected a 10x .h5 file, a 10x mtx "
                                  "folder or a .tsv/.csv table")
    except ReaderError:
        raise
    except Exception as err:  # noqa: BLE001 - h5py/scipy/pandas raise many types for a broken file
        raise ReaderError(f"{path}: cannot read the count matrix ({type(err).__name__}: {err}). The file is "
                          "corrupt or truncated: delete it and download it again "
                          "(spared_utils.datasets.load(..., force=True) re-downloads)") from err
    adata.var["gene_symbol"] = np.asarray(symbols, dtype=str)
    adata.var = adata.var[["gene_symbol"]]
    adata.obs = pd.DataFrame(index=adata.obs_names.astype(str))
    if not adata.obs_names.is_unique:
        dup = adata.obs_names[adata.obs_names.duplicated()][:3].tolist()
        raise ReaderError(f"{path}: barcode(s) {dup} appear more than once; the matrix is damaged or joins two runs: "
                          "use the filtered_feature_bc_matrix of one Space Ranger run")
    check_counts(adata.X, path)
    return _finish_counts(adata)


def _read_count_table(path: Path) -> ad.AnnData:
    sep = "," if _stem(path).endswith(".csv") else "\t"
    table = pd.read_csv(path, sep=sep, index_col=0)
    if table.empty:
        raise ReaderError(f"{path}: the count table is empty")
    if _looks_like_genes(table.index) and not _looks_like_genes(table.columns):
        table = table.T
    table.index = table.index.astype(str)
    table.columns = table.columns.astype(str)
    if not all(np.issubdtype(t, np.number) for t in table.dtypes):
        raise ReaderError(f"{path}: the count table has non-numeric columns; expected spots × genes "
                          "(or genes × spots) numbers with ids in the first column")
    matrix = table.to_numpy(dtype=np.float64)
    check_counts(matrix, path)
    adata = ad.AnnData(X=sp.csr_matrix(matrix), obs=pd.DataFrame(index=table.index),
                       var=pd.DataFrame({"gene_symbol": table.columns.to_numpy()}, index=table.columns))
    return _finish_counts(adata)


def _looks_like_genes(names: Iterable) -> bool:
    sample = [str(n) for n in list(names)[:200]]
    barcode_like = sum(_is_barcode(n) for n in sample)
    return barcode_like < 0.5 * max(1, len(sample))


def _is_barcode(name: str) -> bool:
    core = name.split("-")[0].split("_")[0]
    return (len(core) >= 10 and set(core) <= set("ACGTN")) or ("x" in name and name.replace("x", "").replace(".", "").isdigit())


# ------------------------------------------------------------------------------------------------
# Space Ranger
# ------------------------------------------------------------------------------------------------


def read_positions(path: PathLike) -> pd.DataFrame:
    """Read Space Ranger's tissue positions, with header (≥ 2.0) or without (``*_list.csv``).

    Returns a frame indexed by barcode with columns ``in_tissue``, ``array_row``, ``array_col``,
    ``pxl_row_in_fullres``, ``pxl_col_in_fullres``.
    """
    path = Path(path)
    if not path.is_file():
        raise ReaderError(f"tissue positions file {path} not found: Space Ranger writes it as "
                          "spatial/tissue_positions.csv (or tissue_positions_list.csv before 2.0)")
    with _open_text(path) as handle:
        first = handle.readline().split(",")[0].strip().strip('"')
    try:
        table = pd.read_csv(path, header=0 if first.lower() == "barcode" else None, index_col=0)
    except Exception as err:  # noqa: BLE001
        raise ReaderError(f"{path}: cannot parse the positions table ({err})") from err
    if table.shape[1] != 5:
        raise ReaderError(f"{path}: expected 6 columns (barcode, in_tissue, array_row, array_col, "
                          f"pxl_row_in_fullres, pxl_col_in_fullres), found {table.shape[1] + 1}")
    table.columns = POSITION_COLUMNS
    table.index = table.index.astype(str)
    numeric = table.apply(pd.to_numeric, errors="coerce")
    if numeric.isna().any().any():
        row = numeric.index[numeric.isna().any(axis=1)][0]
        raise ReaderError(f"{path}: non-numeric or missing values (first at barcode {row!r})")
    for col in ("in_tissue", "array_row", "array_col"):
        numeric[col] = numeric[col].astype(np.int64)
    if not numeric.index.is_unique:
        raise ReaderError(f"{path}: barcodes are repeated; each spot must appear once")
    return numeric


def read_scalefactors(path: PathLike) -> dict:
    """Read ``scalefactors_json.json`` (must hold ``spot_diameter_fullres``)."""
    path = Path(path)
    if not path.is_file():
        raise ReaderError(f"scale factors {path} not found: Space Ranger writes it as "
                          "spatial/scalefactors_json.json")
    try:
        with _open_text(path) as handle:
            factors = json.load(handle)
    except (json.JSONDecodeError, OSError, UnicodeDecodeError) as err:
        raise ReaderError(f"{path}: not valid JSON ({err}); the file is damaged: replace it") from err
    if "spot_diameter_fullres" not in factors:
        raise ReaderError(f"{path}: 'spot_diameter_fullres' is missing; patches need the spot size")
    return {k: float(v) for k, v in factors.items() if isinstance(v, (int, float))}


def _first(candidates: Iterable[Path]) -> Path | None:
    for candidate in candidates:
        if candidate.exists():
            return candidate
    return None


def _find(folder: Path, names: tuple[str, ...], want_dir: bool = False) -> Path | None:
    """First match of ``names`` in ``folder``, its ``spatial``/``outs`` subfolders, then anywhere below."""
    for base in (folder, folder / "spatial", folder / "outs", folder / "outs" / "spatial"):
        for name in names:
            hit = sorted(base.glob(name))
            hit = [h for h in hit if h.is_dir() == want_dir]
            if hit:
                return hit[0]
    for name in names:
        hit = sorted(h for h in folder.rglob(name) if h.is_dir() == want_dir)
        if hit:
            return hit[0]
    return None


def _find_fullres(folder: Path) -> Path | None:
    for base in (folder, folder / "outs"):
        named = _first(base / n for n in ("image.tif", "image.tiff", "source_image.jpg", "source_image.tif"))
        if named:
            return named
        files = sorted(p for p in base.glob("*") if p.is_file() and _stem(p).lower().endswith(IMAGE_SUFFIXES))
        if len(files) == 1:
            return files[0]
        if len(files) > 1:
            raise ReaderError(f"{folder}: several candidate full-resolution images "
                              f"({', '.join(p.name for p in files)}); name the right one with fullres=... "
                              "(or the layout's fullres in data/datasets.yml)")
    return None


def discover_spaceranger(path: PathLike) -> dict[str, Path | None]:
    """Find a slide's Space Ranger files in a folder: counts, positions, scalefactors and images."""
    folder = Path(path)
    if not folder.is_dir():
        raise ReaderError(f"slide folder {folder} not found")
    counts = _find(folder, ("filtered_feature_bc_matrix.h5", "*filtered_feature_bc_matrix.h5"))
    if counts is None:
        counts = _find(folder, ("filtered_feature_bc_matrix",), want_dir=True)
    return {
        "counts": counts,
        "positions": _find(folder, ("tissue_positions.csv", "tissue_positions_list.csv",
                                    "*tissue_positions.csv", "*tissue_positions_list.csv")),
        "scalefactors": _find(folder, ("scalefactors_json.json", "*scalefactors_json.json")),
        "hires": _find(folder, ("tissue_hires_image.png", "*tissue_hires_image.png")),
        "lowres": _find(folder, ("tissue_lowres_image.png", "*tissue_lowres_image.png")),
        "fullres": _find_fullres(folder),
    }


def _want_fullres(load_fullres: bool | str, path: Path) -> bool:
    if load_fullres == "auto":
        w, h = image_size(path)
        return w * h <= FULLRES_AUTO_MAX_PIXELS
    return bool(load_fullres)


def _library(images: dict, scalefactors: dict, metadata: dict) -> dict:
    return {"images": images, "scalefactors": scalefactors, "metadata": metadata}


def read_spaceranger(
    path: PathLike,
    *,
    slide_id: str | None = None,
    counts: PathLike | None = None,
    positions: PathLike | None = None,
    scalefactors: PathLike | None = None,
    hires: PathLike | None = None,
    lowres: PathLike | None = None,
    fullres: PathLike | None = None,
    load_fullres: bool | str = "auto",
) -> ad.AnnData:
    """Read one Visium slide from a Space Ranger output folder.

    Parameters
    ----------
    path
        The slide's folder (the one holding ``spatial/``, or Space Ranger's ``outs/`` parent).
    slide_id
        Name of the slide (key of ``uns["spatial"]``); default: the folder name.
    counts, positions, scalefactors, hires, lowres, fullres
        Explicit files overriding what is found in ``path`` (see :func:`discover_spaceranger`).
        ``counts`` may be a 10x ``.h5``, an mtx folder or a ``.tsv``/``.csv`` table.
    load_fullres
        Keep the full-resolution image in ``uns["spatial"][slide]["images"]["fullres"]``:
        ``True``, ``False`` (path only, in ``metadata["source_image_path"]``) or ``"auto"`` (only if it has at
        most :data:`FULLRES_AUTO_MAX_PIXELS` pixels).

    Returns
    -------
    AnnData
        In-tissue spots with raw counts (see the module docstring for the layout).

    Raises
    ------
    ReaderError
        Missing or corrupt files, counts barcodes absent from the positions file, NaN or
        negative counts, no in-tissue spot, or no tissue image at all.
    """
    folder = Path(path)
    found = discover_spaceranger(folder) if folder.is_dir() else {}
    if not folder.is_dir() and counts is None:
        raise ReaderError(f"slide folder {folder} not found")
    slide_id = slide_id or (folder.parent.name if folder.name == "outs" else folder.name)
    given = {"counts": counts, "positions": positions, "scalefactors": scalefactors,
             "hires": hires, "lowres": lowres, "fullres": fullres}
    files = {k: Path(v) if v is not None else found.get(k) for k, v in given.items()}
    for key in ("counts", "positions", "scalefactors"):
        if files[key] is None:
            expected = {"counts": "filtered_feature_bc_matrix.h5 (or filtered_feature_bc_matrix/)",
                        "positions": "spatial/tissue_positions.csv (or tissue_positions_list.csv)",
                        "scalefactors": "spatial/scalefactors_json.json"}[key]
            raise ReaderError(f"slide {slide_id!r}: no {key} file in {folder}; expected {expected}")
    for key in ("hires", "lowres", "fullres"):
        if given[key] is not None and not Path(given[key]).is_file():
            raise ReaderError(f"slide {slide_id!r}: {key} image {given[key]} not found: put the image "
                              "there or correct the path (layout in data/datasets.yml)")
    if not any(files[k] for k in ("hires", "lowres", "fullres")):
        raise ReaderError(f"slide {slide_id!r}: no tissue image in {folder} (looked for "
                          "spatial/tissue_hires_image.png, spatial/tissue_lowres_image.png and a "
                          "full-resolution image such as image.tif); patches need one: put the H&E "
                          "image there")

    adata = read_counts(files["counts"])
    table = read_positions(files["positions"])
    adata = _align_positions(adata, table, slide_id, files["counts"], files["positions"])
    factors = read_scalefactors(files["scalefactors"])
    images: dict[str, np.ndarray] = {}
    for key in ("hires", "lowres"):
        if files[key] is not None:
            images[key] = read_image(files[key])
    if files["fullres"] is not None and _want_fullres(load_fullres, files["fullres"]):
        images["fullres"] = read_image(files["fullres"])
    metadata = {"reader": "spaceranger", "counts_file": str(Path(files["counts"]).resolve()),
                "source_image_path": str(Path(files["fullres"]).resolve()) if files["fullres"] else ""}
    adata.uns["spatial"] = {slide_id: _library(images, factors, metadata)}
    return adata


def _align_positions(adata: ad.AnnData, table: pd.DataFrame, slide_id: str,
                     counts_path: Path, positions_path: Path) -> ad.AnnData:
    barcodes = adata.obs_names
    missing = barcodes.difference(table.index)
    if len(missing) and len(missing) == len(barcodes):
        # GEO-style tables suffix barcodes ("AAAC...-1_1"): retry on the part before '_'
        stripped = pd.Index([b.split("_")[0] for b in barcodes])
        if stripped.isin(table.index).all() and stripped.is_unique:
            adata.obs_names = stripped
            barcodes, missing = adata.obs_names, pd.Index([])
    if len(missing):
        raise ReaderError(
            f"slide {slide_id!r}: {len(missing)} of {len(barcodes)} barcodes in {counts_path} are missing "
            f"from {positions_path} (e.g. {list(missing[:3])}); check that both files come from the "
            "same Space Ranger run")
    pos = table.loc[barcodes]
    keep = (pos["in_tissue"] == 1).to_numpy()
    if not keep.any():
        raise ReaderError(f"slide {slide_id!r}: none of the {len(barcodes)} spots of {counts_path} is marked "
                          f"in_tissue = 1 in {positions_path}; the slide has no tissue spots to use: "
                          "check the positions file or drop the slide from data/datasets.yml")
    if not keep.all():
        log.info("slide %s: dropping %d spots outside the tissue", slide_id, int((~keep).sum()))
    adata = adata[keep].copy()
    pos = pos.loc[adata.obs_names]
    adata.obs = pd.DataFrame({"in_tissue": pos["in_tissue"].to_numpy(),
                              "array_row": pos["array_row"].to_numpy(),
                              "array_col": pos["array_col"].to_numpy()}, index=adata.obs_names)
    adata.obsm["spatial"] = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=np.float64)
    return adata


# ------------------------------------------------------------------------------------------------
# Legacy Spatial Transcriptomics (her2st and the like)
# ------------------------------------------------------------------------------------------------


def read_legacy_st(
    path: PathLike,
    *,
    slide_id: str | None = None,
    counts: PathLike | None = None,
    spots: PathLike | None = None,
    image: PathLike | None = None,
    load_fullres: bool | str = "auto",
    hires_max_side: int = 2000,
    lowres_max_side: int = 600,
) -> ad.AnnData:
    """Read one legacy ST slide: counts table, spot coordinates and the full-resolution H&E.

    Parameters
    ----------
    path
        Folder with ``counts.tsv.gz`` (spots × genes; first column the spot id ``"XxY"``),
        ``spots.tsv`` (columns ``x``, ``y``, ``pixel_x``, ``pixel_y``, optional ``selected``) and
        ``he.jpg``.
    slide_id
        Slide name; default the folder name.
    counts, spots, image
        Explicit files overriding the default names.
    load_fullres
        As in :func:`read_spaceranger`.
    hires_max_side, lowres_max_side
        Longest side of the derived ``hires`` / ``lowres`` images (their scale factors are
        recorded in ``scalefactors``).

    Notes
    -----
    ``array_row`` = ``y`` and ``array_col`` = ``x`` on the square ST grid (neighbours at ±1),
    so ``hex_geometry`` must be false for these datasets. ``spot_diameter_fullres`` is half the
    median nearest-neighbour distance in pixels (ST: 100 µm spots, 200 µm apart).
    """
    folder = Path(path)
    slide_id = slide_id or folder.name
    counts_path = Path(counts) if counts else _first(folder / n for n in ("counts.tsv.gz", "counts.tsv"))
    spots_path = Path(spots) if spots else _first(folder / n for n in ("spots.tsv", "spots.tsv.gz"))
    image_path = Path(image) if image else _first(folder / n for n in ("he.jpg", "he.tif", "he.png"))
    for what, value, default in (("counts", counts_path, "counts.tsv.gz"), ("spots", spots_path, "spots.tsv"),
                                 ("image", image_path, "he.jpg")):
        if value is None or not value.is_file():
            raise ReaderError(f"slide {slide_id!r}: {what} file {value or folder / default} not found; a legacy ST "
                              f"slide needs counts.tsv.gz, spots.tsv and he.jpg in {folder}")

    adata = read_counts(counts_path)
    table = pd.read_csv(spots_path, sep="\t")
    need = {"x", "y", "pixel_x", "pixel_y"}
    if not need <= set(table.columns):
        raise ReaderError(f"{spots_path}: columns {sorted(need - set(table.columns))} are missing; expected "
                          "x, y, pixel_x, pixel_y (and selected)")
    table.index = table["x"].astype(int).astype(str) + "x" + table["y"].astype(int).astype(str)
    if "selected" not in table:
        table["selected"] = 1
    missing = adata.obs_names.difference(table.index)
    if len(missing):
        raise ReaderError(f"slide {slide_id!r}: {len(missing)} spots of {counts_path} have no coordinates in "
                          f"{spots_path} (e.g. {list(missing[:3])}); check that both files belong to the same "
                          "section")
    pos = table.loc[adata.obs_names]
    keep = (pos["selected"] == 1).to_numpy()
    if not keep.any():
        raise ReaderError(f"slide {slide_id!r}: no spot of {counts_path} is selected (under tissue) in "
                          f"{spots_path}; drop the slide or fix the spot selection")
    adata = adata[keep].copy()
    pos = pos.loc[adata.obs_names]
    adata.obs = pd.DataFrame({"in_tissue": np.ones(adata.n_obs, dtype=np.int64),
                              "array_row": pos["y"].astype(np.int64).to_numpy(),
                              "array_col": pos["x"].astype(np.int64).to_numpy()}, index=adata.obs_names)
    xy = pos[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
    adata.obsm["spatial"] = xy

    width, height = image_size(image_path)
    keep_full = _want_fullres(load_fullres, image_path)
    hires_scale = min(1.0, hires_max_side / max(width, height))
    lowres_scale = min(1.0, lowres_max_side / max(width, height))
    full = read_image(image_path) if keep_full else None
    hires = (_resize_to(full, width, height, hires_scale) if full is not None
             else read_image_scaled(image_path, hires_scale))
    lowres = _resize_to(hires, width, height, lowres_scale)
    images = {"hires": hires, "lowres": lowres}
    if full is not None:
        images["fullres"] = full
    factors = {"spot_diameter_fullres": _st_spot_diameter(xy), "tissue_hires_scalef": hires_scale,
               "tissue_lowres_scalef": lowres_scale}
    metadata = {"reader": "legacy_st", "counts_file": str(counts_path.resolve()),
                "source_image_path": str(image_path.resolve())}
    adata.uns["spatial"] = {slide_id: _library(images, factors, metadata)}
    return adata


def _st_spot_diameter(xy: np.ndarray) -> float:
    from scipy.spatial import cKDTree

    if len(xy) < 2:
        raise ReaderError("a legacy ST slide needs at least two spots to know its spot spacing")
    dist, _ = cKDTree(xy).query(xy, k=2)
    return float(np.median(dist[:, 1]) * ST_SPOT_DIAMETER_OVER_SPACING)


# ------------------------------------------------------------------------------------------------
# AnnData with uns["spatial"]
# ------------------------------------------------------------------------------------------------


def read_h5ad_spatial(
    path: PathLike,
    *,
    slide_id: str | None = None,
    counts_layer: str | None = None,
    hires: PathLike | None = None,
    lowres: PathLike | None = None,
    require_counts: bool = True,
) -> ad.AnnData:
    """Read an AnnData file that carries one slide with ``uns["spatial"]`` (scanpy/stLearn style).

    Parameters
    ----------
    path
        The ``.h5ad`` (or AnnData ``.h5``) file.
    slide_id
        New key of ``uns["spatial"]``; default the library id stored in the file.
    counts_layer
        Layer holding the raw counts; default ``X``.
    hires, lowres
        Image files to put in ``images`` when the file stores none (stLearn keeps them apart).
    require_counts
        Raise if the values are not counts (negative, NaN). With ``False`` the values are kept
        in ``X`` only (no ``counts`` layer) and ``uns["counts_are_raw"]`` is ``False``.
    """
    path = Path(path)
    if not path.is_file():
        raise ReaderError(f"AnnData file {path} not found")
    try:
        adata = ad.read_h5ad(path)
    except Exception as err:  # noqa: BLE001
        raise ReaderError(f"{path}: cannot read the AnnData file ({type(err).__name__}: {err}); the file is "
                          "corrupt or truncated: replace it") from err
    libraries = adata.uns.get("spatial", {})
    if len(libraries) != 1:
        raise ReaderError(f"{path}: uns['spatial'] holds {len(libraries)} libraries ({list(libraries)}); "
                          "this reader reads one slide per file")
    library_id = next(iter(libraries))
    for key in ("array_row", "array_col"):
        if key not in adata.obs:
            raise ReaderError(f"{path}: obs[{key!r}] is missing; spot neighbourhoods need the array coordinates")
    if "spatial" not in adata.obsm:
        raise ReaderError(f"{path}: obsm['spatial'] is missing; patches need the full-resolution spot centres")
    if "in_tissue" in adata.obs:
        adata = adata[adata.obs["in_tissue"].astype(int) == 1].copy()
    if adata.n_obs == 0:
        raise ReaderError(f"{path}: no spot is in tissue")
    values = adata.layers[counts_layer] if counts_layer else adata.X
    raw = True
    try:
        check_counts(values, f"{path} ({'layers[' + repr(counts_layer) + ']' if counts_layer else 'X'})")
    except ReaderError:
        if require_counts:
            raise
        raw = False
    out = ad.AnnData(X=sp.csr_matrix(values, dtype=np.float32), obs=pd.DataFrame(index=adata.obs_names.astype(str)))
    out.obs["in_tissue"] = 1
    out.obs["array_row"] = adata.obs["array_row"].astype(np.int64).to_numpy()
    out.obs["array_col"] = adata.obs["array_col"].astype(np.int64).to_numpy()
    out.obsm["spatial"] = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    if "gene_ids" in adata.var:
        out.var_names = adata.var["gene_ids"].astype(str).to_numpy()
        out.var["gene_symbol"] = adata.var_names.astype(str).to_numpy()
    else:
        out.var_names = adata.var_names.astype(str)
        out.var["gene_symbol"] = adata.var_names.astype(str).to_numpy()
    if raw:
        out.layers["counts"] = out.X.copy()
    else:
        out.uns["counts_are_raw"] = False
    library = libraries[library_id]
    images = {k: np.asarray(v) for k, v in library.get("images", {}).items() if np.asarray(v).size}
    for key, file in (("hires", hires), ("lowres", lowres)):
        if file is not None:
            images[key] = read_image(file)
    if not images:
        raise ReaderError(f"{path}: uns['spatial'][{library_id!r}] holds no image; pass hires=<image file> "
                          "(e.g. the tissue_hires_image.png of the same slide)")
    factors = {k: float(v) for k, v in library.get("scalefactors", {}).items()}
    if "spot_diameter_fullres" not in factors:
        raise ReaderError(f"{path}: scalefactors lack 'spot_diameter_fullres'")
    metadata = {"reader": "h5ad", "counts_file": str(path.resolve()), "source_image_path": "",
                "library_id": str(library_id)}
    out.uns["spatial"] = {slide_id or str(library_id): _library(images, factors, metadata)}
    return out
