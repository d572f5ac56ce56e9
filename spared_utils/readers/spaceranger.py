"""Space Ranger output (10x Visium): spot positions, scale factors, the files of a slide folder,
and :func:`read_spaceranger`, which joins them into one AnnData.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from .counts import read_counts
from .files import PathLike, ReaderError, _first, _library, _open_text, _stem
from .images import IMAGE_SUFFIXES, _want_fullres, read_image

__all__ = ["POSITION_COLUMNS", "discover_spaceranger", "read_positions", "read_scalefactors", "read_spaceranger"]


log = logging.getLogger(__name__)

POSITION_COLUMNS = ["in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]


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
        most :data:`~spared_utils.readers.images.FULLRES_AUTO_MAX_PIXELS` pixels).

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
