"""Legacy Spatial Transcriptomics slides (her2st and the like): counts table, spot table and H&E.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from .counts import read_counts
from .files import PathLike, ReaderError, _first, _library
from .images import _resize_to, _want_fullres, image_size, read_image, read_image_scaled

__all__ = ["ST_SPOT_DIAMETER_OVER_SPACING", "read_legacy_st"]


#: Legacy ST geometry: 100 µm spots, 200 µm apart (centre to centre).
ST_SPOT_DIAMETER_OVER_SPACING = 0.5


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
        As in :func:`~spared_utils.readers.read_spaceranger`.
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
