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
* **A dataset processed by the authors** (:func:`read_authors_processed`): their ``spared``
  package's ``adata.h5ad``, already curated (source kind ``authors_processed``).

Every reader returns: in-tissue spots only; ``obs_names`` = barcodes; ``obs`` with ``in_tissue``,
``array_row``, ``array_col``; ``obsm["spatial"]`` = full-resolution pixel (x, y); raw counts in
``X`` and ``layers["counts"]`` (CSR, float32); ``var_names`` = gene ids as the source gives them
(Ensembl for 10x, symbols for legacy ST) with ``var["gene_symbol"]``; and
``uns["spatial"][slide_id]`` with ``images`` (``hires``/``lowres``, plus ``fullres`` when small
enough), ``scalefactors`` and ``metadata["source_image_path"]`` (the full-resolution image on
disk, which :func:`spared_utils.patches.slide_image` reads when ``fullres`` is not in memory).

Errors (:class:`ReaderError`) name the file and what to do about it.
"""

from .authors import authors_file, authors_parameters, read_authors_processed
from .counts import check_counts, read_counts
from .files import PathLike, ReaderError
from .h5ad import read_h5ad_spatial
from .images import FULLRES_AUTO_MAX_PIXELS, IMAGE_SUFFIXES, as_rgb_uint8, image_size, read_image, read_image_scaled
from .legacy_st import ST_SPOT_DIAMETER_OVER_SPACING, read_legacy_st
from .spaceranger import POSITION_COLUMNS, discover_spaceranger, read_positions, read_scalefactors, read_spaceranger

__all__ = [
    "FULLRES_AUTO_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "POSITION_COLUMNS",
    "ST_SPOT_DIAMETER_OVER_SPACING",
    "PathLike",
    "ReaderError",
    "as_rgb_uint8",
    "authors_file",
    "authors_parameters",
    "check_counts",
    "discover_spaceranger",
    "image_size",
    "read_authors_processed",
    "read_counts",
    "read_h5ad_spatial",
    "read_image",
    "read_image_scaled",
    "read_legacy_st",
    "read_positions",
    "read_scalefactors",
    "read_spaceranger",
]
