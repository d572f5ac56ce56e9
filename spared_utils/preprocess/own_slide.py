"""A slide that never went through the registry: what curation needs, read from a reader's AnnData.

The registry (``data/datasets.yml``) gives every spot of a dataset its slide, split and patient
and names the organism. A slide read by :func:`scanpy.read_visium`, :func:`squidpy.read.visium`
or :func:`spared_utils.readers.read_spaceranger` has none of this, only what Space Ranger writes:
counts, ``obs["array_row"]``/``obs["array_col"]`` (the capture-area grid), ``obs["in_tissue"]``,
``obsm["spatial"]`` (pixel positions) and ``uns["spatial"][library_id]``. This module fills the
rest with single-slide defaults (:func:`fill_slide_fields`), checks what cannot be filled
(:func:`prepare_slide`: raw counts, grid positions) with one-line messages that name the field and
the fix. :func:`spared_utils.preprocess.curate_slide` then curates with the book's defaults.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .collection import subset
from .genes import ANNOTATION_FILES, ENSEMBL_ID, strip_version, symbol_to_ensembl

log = logging.getLogger(__name__)

__all__ = ["SINGLE_SLIDE", "SlideFieldError", "check_positions", "counts_source",
           "fill_slide_fields", "infer_organism", "prepare_slide", "read_gene_lengths", "slide_labels"]

#: ``obs["slide_id"]`` of a one-slide AnnData whose ``uns["spatial"]`` names no library.
SINGLE_SLIDE = "slide"
#: Ensembl gene-id prefix → organism (Ensembl's stable-id prefixes).
_ENSEMBL_PREFIX = {"ENSG": "human", "ENSMUSG": "mouse"}


class SlideFieldError(ValueError):
    """A field a slide needs is absent; the message names it and the fix."""


def _libraries(adata: AnnData) -> list[str]:
    spatial = adata.uns.get("spatial")
    return [str(k) for k in spatial] if isinstance(spatial, dict) else []


def slide_labels(adata: AnnData, slide_key: str = "slide_id") -> tuple[pd.Series, str]:
    """Each spot's slide and where it came from (``obs[slide_key]``, ``obs["library_id"]``,
    the one library of ``uns["spatial"]`` or :data:`SINGLE_SLIDE`)."""
    if slide_key in adata.obs:
        return adata.obs[slide_key].astype(str), f"obs[{slide_key!r}]"
    if "library_id" in adata.obs:  # squidpy's and sc.concat(..., label="library_id")'s column
        return adata.obs["library_id"].astype(str), "obs['library_id']"
    libraries = _libraries(adata)
    if len(libraries) > 1:
        raise SlideFieldError(
            f"obs[{slide_key!r}] is missing and uns['spatial'] holds {len(libraries)} libraries "
            f"({libraries[:3]}), so which spot is on which slide is unknown; set "
            f"adata.obs[{slide_key!r}] (or obs['library_id']) to each spot's library")
    name = libraries[0] if libraries else SINGLE_SLIDE
    where = "uns['spatial']" if libraries else "single-slide default"
    return pd.Series(name, index=adata.obs_names, dtype=str), where


def fill_slide_fields(adata: AnnData, slide_key: str = "slide_id") -> AnnData:
    """The obs fields of the curation pipeline, filled with single-slide defaults where absent.

    ``obs[slide_key]`` from ``obs["library_id"]`` or the one library of ``uns["spatial"]`` (else
    :data:`SINGLE_SLIDE`); ``obs["split"]`` ``"train"`` (the Δ layers' mean is then over every
    spot); ``obs["patient"]`` = the slide. Fields already present are kept.

    Returns
    -------
    AnnData
        ``adata`` itself when nothing is missing, else a new object with its own ``obs`` whose
        matrices and ``uns`` are shared with ``adata`` (which is not modified);
        ``uns["slide_fields"]`` says what was filled.

    Raises
    ------
    SlideFieldError
        Several libraries in ``uns["spatial"]`` and no column saying which spot is on which.
    """
    missing = [k for k in (slide_key, "split", "patient") if k not in adata.obs]
    if not missing:
        return adata
    slides, where = slide_labels(adata, slide_key)
    out = subset(adata)
    filled = {}
    if slide_key not in out.obs:
        out.obs[slide_key] = slides.to_numpy()
        filled[slide_key] = where
    if "split" not in out.obs:
        out.obs["split"] = "train"
        filled["split"] = "train (no held-out slide)"
    if "patient" not in out.obs:
        out.obs["patient"] = out.obs[slide_key].astype(str).to_numpy()
        filled["patient"] = f"obs[{slide_key!r}]"
    out.uns["slide_fields"] = filled
    log.info("filled %s", ", ".join(f"obs[{k!r}] from {v}" for k, v in filled.items()))
    return out


def check_positions(adata: AnnData) -> None:
    """Refuse spots without integer grid positions (``obs["array_row"]``, ``obs["array_col"]``)."""
    missing = [k for k in ("array_row", "array_col") if k not in adata.obs]
    if missing:
        hint = (" (obsm['spatial'] holds pixels, not the grid)" if "spatial" in adata.obsm else "")
        raise SlideFieldError(
            f"obs{missing} missing: spots need their capture-area grid position{hint}; re-read the "
            "slide with sc.read_visium, sq.read.visium or spared_utils.readers.read_spaceranger, which fill it")
    for key in ("array_row", "array_col"):
        values = pd.to_numeric(adata.obs[key], errors="coerce").to_numpy(dtype=np.float64)
        if not np.isfinite(values).all() or not np.allclose(values, np.round(values)):
            raise SlideFieldError(f"obs[{key!r}] holds non-integer or missing values; set it to "
                                  "each spot's capture-area grid index from tissue_positions.csv")


def counts_source(adata: AnnData, counts_layer: str | None = None) -> tuple[object, str]:
    """The raw count matrix and its name: ``layers[counts_layer]``, ``layers["counts"]`` or ``X``.

    Raises
    ------
    SlideFieldError
        No counts anywhere, or a matrix that is not raw counts (negative or non-integer values).
    """
    if counts_layer is not None:
        if counts_layer not in adata.layers:
            raise SlideFieldError(f"layers[{counts_layer!r}] missing (layers: {list(adata.layers)}); "
                                  "pass counts_layer= the layer that holds raw UMI counts")
        matrix, name = adata.layers[counts_layer], f"layers[{counts_layer!r}]"
    elif "counts" in adata.layers:
        matrix, name = adata.layers["counts"], "layers['counts']"
    else:
        matrix, name = adata.X, "X"
    if matrix is None or 0 in getattr(matrix, "shape", (0,)):
        raise SlideFieldError("no counts: X is empty and layers has no 'counts'; put the raw UMI counts in "
                              "adata.layers['counts'] (or pass layer= a processed layer to complete)")
    data = matrix.data if sp.issparse(matrix) else np.asarray(matrix).ravel()
    sample = np.asarray(data[: 200_000], dtype=np.float64)
    if sample.size and (not np.isfinite(sample).all() or (sample < 0).any()
                        or not np.allclose(sample, np.round(sample))):
        raw = " (adata.raw.X may hold them)" if adata.raw is not None else ""
        raise SlideFieldError(
            f"{name} is not raw counts (negative, non-integer or NaN values){raw}: put raw UMI counts in "
            "adata.layers['counts'], or pass layer= the processed layer to complete as it is")
    return matrix, name


def _ensembl_var_names(adata: AnnData) -> AnnData:
    """Ensembl ids as ``var_names`` when scanpy/squidpy put symbols there and ids in ``var["gene_ids"]``."""
    if "gene_ids" not in adata.var or any(ENSEMBL_ID.match(str(n)) for n in adata.var_names[:50]):
        return adata
    ids = pd.Index([strip_version(str(g)) for g in adata.var["gene_ids"]])
    if not ids.is_unique or not all(ENSEMBL_ID.match(i) for i in ids[:50]):
        return adata
    out = subset(adata)
    if "gene_symbol" not in out.var:
        out.var["gene_symbol"] = np.asarray(adata.var_names.astype(str))
    out.var_names = ids
    return out


def infer_organism(adata: AnnData) -> str | None:
    """``"human"`` or ``"mouse"`` from the genes (Ensembl prefixes, else the vendored symbol
    tables, a majority of genes having to match); ``None`` when neither fits."""
    names = [str(n) for n in adata.var_names]
    prefixes = pd.Series([m.group(1).rstrip("0123456789") for n in names if (m := ENSEMBL_ID.match(n))])
    if len(prefixes) > len(names) / 2:
        top = prefixes.value_counts().index[0]
        return _ENSEMBL_PREFIX.get(top)
    hits = {org: sum(n in symbol_to_ensembl(org) for n in names) for org in ANNOTATION_FILES}
    best = max(hits, key=hits.get)
    return best if hits[best] > len(names) / 2 else None


def read_gene_lengths(lengths: pd.Series | str | Path) -> pd.Series:
    """Gene lengths (bp) by gene id: a Series, or a ``.tsv`` with columns ``gene`` and ``merged``
    (GENCODE's merged-exon length, the table the book vendors)."""
    if isinstance(lengths, pd.Series):
        table = lengths.astype(np.float64)
    else:
        path = Path(lengths)
        if not path.is_file():
            raise SlideFieldError(f"gene-length table {path} not found; give a .tsv with columns gene, merged")
        frame = pd.read_csv(path, sep="\t")
        if not {"gene", "merged"} <= set(frame.columns):
            raise SlideFieldError(f"{path}: columns {list(frame.columns)}; give a .tsv with columns gene, merged")
        table = frame.set_index("gene")["merged"].astype(np.float64)
    table.index = [strip_version(str(g)) for g in table.index]
    return table[~table.index.duplicated()]


def prepare_slide(adata: AnnData, slide_key: str = "slide_id", counts_layer: str | None = None,
                  gene_lengths: pd.Series | str | Path | None = None, need_counts: bool = True) -> AnnData:
    """A reader's AnnData made ready for :func:`~spared_utils.preprocess.run_pipeline`.

    Checks the grid positions and (``need_counts``) that raw counts exist; fills
    :func:`fill_slide_fields`; puts Ensembl ids in ``var_names`` when ``var["gene_ids"]`` holds
    them; infers the organism (:func:`infer_organism`); sets ``var["gene_length"]`` from
    ``gene_lengths`` when given. ``adata`` is not modified: matrices are shared, ``obs``/``var``
    copied.

    Returns
    -------
    AnnData
        With raw counts in ``layers["counts"]`` and ``uns["slide_fields"]`` recording what was
        filled, the organism (``"None"`` if unknown) and the counts' source.

    Raises
    ------
    SlideFieldError
        Grid positions or counts absent or not what they should be; the message names the
        field and the fix.
    """
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise SlideFieldError(f"the AnnData is empty ({adata.n_obs} spots × {adata.n_vars} genes); check "
                              "that the slide was read (filtered_feature_bc_matrix and tissue positions)")
    check_positions(adata)
    matrix, source = counts_source(adata, counts_layer) if need_counts else (None, "none")
    out = fill_slide_fields(adata, slide_key)
    out = subset(out) if out is adata else out
    out = _ensembl_var_names(out)
    if matrix is not None:
        out.layers["counts"] = matrix
    if gene_lengths is not None:
        table = read_gene_lengths(gene_lengths)
        lengths = table.reindex([strip_version(str(g)) for g in out.var_names]).to_numpy()
        if "gene_ids" in out.var:  # scanpy/squidpy: symbols as names, the table may use the ids
            by_id = table.reindex([strip_version(str(g)) for g in out.var["gene_ids"]]).to_numpy()
            lengths = np.where(np.isnan(lengths), by_id, lengths)
        out.var["gene_length"] = lengths
    organism = infer_organism(out)
    out.uns["slide_fields"] = {**dict(out.uns.get("slide_fields", {})),
                               "organism": str(organism), "counts": source}
    return out
