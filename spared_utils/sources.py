"""Sources: a dataset's raw files on disk, read into one AnnData of all its slides.

The second stage of the pipeline (registry → **sources** → curation → ...). For a
:class:`~spared_utils.registry.DatasetSpec`, :func:`prepare_source` makes the raw files
available (downloads them with :mod:`spared_utils.download`, checks a local folder, or writes
the embedded synthetic dataset with :mod:`spared_utils.synthetic`); :func:`read_slide` reads one
slide with the reader of its format (:mod:`spared_utils.readers`); :func:`load_raw` combines
every slide into the raw collection that curation starts from.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import download, paths, readers, synthetic
from .registry import LAYOUT_KEYS, SPLITS, DatasetSpec

log = logging.getLogger(__name__)

__all__ = ["AUTHORS_DATA_ENV", "authors_data_dir", "combine_slides", "dataset_cache_dir", "load_authors", "load_raw",
           "prepare_source", "read_slide", "real_data_dir", "slide_files"]

#: Environment variable naming the folder of the authors' processed datasets (``{authors_data}``).
AUTHORS_DATA_ENV = "SPARED_AUTHORS_DATA_DIR"


def real_data_dir() -> Path:
    """Folder of the real sample slides: ``SPARED_REAL_DATA_DIR``, else ``<root>/../shared/data/real``."""
    env = os.environ.get("SPARED_REAL_DATA_DIR")
    return Path(env).expanduser().resolve() if env else paths.project_root().parent / "shared" / "data" / "real"


def authors_data_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where ``{authors_data}`` points: ``SPARED_AUTHORS_DATA_DIR``, else ``<cache>/authors_processed``."""
    env = os.environ.get(AUTHORS_DATA_ENV)
    return Path(env).expanduser().resolve() if env else download.resolve_cache_dir(cache_dir) / "authors_processed"


def _authors_root(spec: DatasetSpec, cache_dir) -> Path | None:
    if not spec.source.root:
        return None
    root = Path(spec.source.root.replace("{authors_data}", str(authors_data_dir(cache_dir)))
                .replace("{real_data}", str(real_data_dir())))
    return root if root.is_absolute() else paths.project_root() / root


def _prepare_authors(spec: DatasetSpec, cache_dir, redownload: bool, progress: bool) -> Path:
    """The authors' ``adata.h5ad`` of the dataset: ``source.root`` if there, else downloaded from ``source.files``."""
    root = _authors_root(spec, cache_dir)
    if root is not None and root.exists() and not redownload:
        return readers.authors_file(root)
    for item in spec.source.files:
        got = download.fetch_any(list(item.urls), item.path, item.sha256, cache_dir=cache_dir, extract=item.extract,
                                 force=redownload, progressbar=progress)
        return readers.authors_file(got)
    raise FileNotFoundError(
        f"dataset {spec.id!r}: the authors' processed file is expected at {root}, which does not exist. Download "
        f"the dataset's adata.h5ad from the shared folder linked in the README of github.com/BCV-Uniandes/SpaRED "
        f"and put it there (or set {AUTHORS_DATA_ENV} to the folder holding <dataset>/adata.h5ad), or give "
        f"source.files a download link in data/datasets.yml (line {spec.line})")


def load_authors(spec: DatasetSpec, cache_dir: str | os.PathLike | None = None, *, redownload: bool = False,
                 progress: bool = True) -> tuple[ad.AnnData, np.ndarray | None, dict]:
    """A dataset processed by the authors, in the book's curated conventions (``source.kind: authors_processed``).

    Returns :func:`spared_utils.readers.read_authors_processed`'s ``(adata, patches, info)``,
    checked against the registry's splits and with its patients; ``uns["dataset_id"]`` and
    ``uns["organism"]`` are set as for every dataset.
    """
    file = _prepare_authors(spec, cache_dir, redownload, progress)
    adata, patches, info = readers.read_authors_processed(file, spec.splits, spec.patients)
    missing = sorted(set(spec.slides) - set(adata.obs["slide_id"].astype(str)))
    if missing:
        raise readers.ReaderError(f"{file} has no spots of slide(s) {missing} that data/datasets.yml (line {spec.line}) "
                                  f"lists for {spec.id!r}; remove them from its splits")
    adata.uns["dataset_id"] = spec.id
    adata.uns["organism"] = spec.organism
    return adata, patches, info


def dataset_cache_dir(spec: DatasetSpec, cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache>/<dataset id>``: where a dataset's generated or derived raw files go."""
    return download.resolve_cache_dir(cache_dir) / spec.id


def prepare_source(spec: DatasetSpec, cache_dir: str | os.PathLike | None = None, *, redownload: bool = False,
                   regenerate: bool = False, progress: bool = True) -> Path:
    """Make a dataset's raw files available on disk and return the root its layout refers to.

    Remote sources are downloaded (and extracted) into the cache, local ones are checked, and
    synthetic ones are generated with :func:`spared_utils.synthetic.make_dataset` and written in
    the Space Ranger layout under ``<cache>/<id>/raw``.
    """
    source = spec.source
    if source.kind == "authors_processed":  # their adata.h5ad itself (see load_authors)
        return _prepare_authors(spec, cache_dir, redownload, progress)
    if source.kind == "local":
        root = Path(source.root.replace("{real_data}", str(real_data_dir())))
        if not root.is_absolute():
            root = paths.project_root() / root
        if not root.is_dir():
            raise FileNotFoundError(
                f"dataset {spec.id!r}: its files are expected in {root}, which does not exist. They ship in "
                f"../shared/data/real beside the repository; set SPARED_REAL_DATA_DIR to their folder")
        return root
    if source.kind == "synthetic":
        root = dataset_cache_dir(spec, cache_dir) / "raw"
        stamp = root / "generator.json"
        wanted = json.dumps({"version": synthetic.GENERATOR_VERSION, "arguments": spec.generator}, sort_keys=True)
        if regenerate or not (root / "gene_lengths.tsv").is_file() or not stamp.is_file() or stamp.read_text() != wanted:
            synthetic.write_spaceranger(synthetic.make_dataset(**spec.generator), root)
            stamp.write_text(wanted)  # written last: a run cut short before it regenerates next time
        return root
    root = download.resolve_cache_dir(cache_dir)
    for item in tqdm(source.files, desc=f"{spec.id}: files", disable=not progress or len(source.files) < 2,
                     leave=False):
        download.fetch(list(item.urls), item.path, item.sha256, cache_dir=root, extract=item.extract,
                       force=redownload, progressbar=progress)
    for pattern in source.nested:
        for archive in sorted(root.glob(pattern)):
            download.extract_archive(archive, force=redownload)
    return root


def _fill(pattern: str, spec: DatasetSpec, slide: str) -> str:
    patient = spec.slide_patient[slide]
    return (pattern.replace("{slide_id}", slide)
            .replace("{source_name}", spec.source.source_names.get(slide, slide))
            .replace("{patient_number}", re.sub(r"\D", "", patient) or patient))


def _glob(base: Path, pattern: str, want_dir: bool | None) -> list[Path]:
    if not any(ch in pattern for ch in "*?["):
        hits = [base / pattern] if (base / pattern).exists() else []
    else:
        hits = sorted(base.glob(pattern))
    hits = [h for h in hits if "__MACOSX" not in h.parts]
    if want_dir is not None:
        hits = [h for h in hits if h.is_dir() == want_dir]
    return hits


def _match(patterns: Any, spec: DatasetSpec, slide: str, root: Path, slide_dir: Path | None,
           want_dir: bool | None, what: str) -> Path:
    tried = []
    for pattern in patterns if isinstance(patterns, list) else [patterns]:
        filled = _fill(pattern, spec, slide)
        if filled.startswith("{root}"):
            base, rel = root, filled.removeprefix("{root}").lstrip("/")
        else:
            base, rel = (slide_dir or root), filled
        hits = _glob(base, rel, want_dir)
        tried.append(str(base / rel))
        if hits:
            if len(hits) > 1:
                log.warning("dataset %s, slide %s: %d matches for %s (%s); using %s", spec.id, slide, len(hits),
                            what, ", ".join(str(h) for h in hits[:4]), hits[0])
            return hits[0]
    raise FileNotFoundError(
        f"dataset {spec.id!r}, slide {slide!r}: no {what} matches {' or '.join(tried)}. If the files were "
        f"downloaded, the archive's layout differs from data/datasets.yml (line {spec.line}): fix "
        f"source.layout.{what}; otherwise place the slide's files there by hand")


def slide_files(spec: DatasetSpec, slide: str, root: Path) -> dict[str, Path]:
    """Locate one slide's files from the dataset's ``source.layout`` (see ``data/datasets.yml``)."""
    layout = spec.source.layout
    slide_dir = _match(layout.get("slide_dir", "{slide_id}"), spec, slide, root, None, True, "slide_dir")
    files = {"slide_dir": slide_dir}
    for key in LAYOUT_KEYS[1:]:
        if key in layout:
            files[key] = _match(layout[key], spec, slide, root, slide_dir, None, key)
    return files


def read_slide(spec: DatasetSpec, slide: str, root: Path, load_fullres: bool | str = "auto") -> ad.AnnData:
    """Read one slide of a dataset with the reader of its ``source.format``."""
    files = slide_files(spec, slide, root)
    fmt = spec.source.format
    if fmt == "spaceranger":
        folder = files.pop("slide_dir")
        if {"counts", "positions", "scalefactors"} <= set(files):
            # every file is named by the layout: read those, without looking for others in a folder
            # that may hold other slides' files too (GEO's flat RAW tar)
            folder = files["counts"]
        return _scaled_images(readers.read_spaceranger(folder, slide_id=slide, load_fullres=load_fullres, **files),
                              slide)
    if fmt == "legacy_st":
        return readers.read_legacy_st(files["slide_dir"], slide_id=slide, counts=files.get("counts"),
                                      spots=files.get("positions"), image=files.get("fullres"),
                                      load_fullres=load_fullres)
    counts = files.get("counts")
    if counts is None:
        raise FileNotFoundError(f"dataset {spec.id!r}: an h5ad source needs layout.counts (the .h5ad file)")
    return readers.read_h5ad_spatial(counts, slide_id=slide, hires=files.get("hires"), lowres=files.get("lowres"),
                                     require_counts=spec.pipeline_ready)


def _scaled_images(adata: ad.AnnData, slide: str) -> ad.AnnData:
    """Add ``hires``/``lowres`` made from the full-resolution image with the slide's scale factors
    when the source has only that image (GEO's Parigi deposit; the authors' ``ParigiReader`` does
    the same), so that every slide carries the images scanpy-style plots read."""
    library = adata.uns["spatial"][slide]
    source = library["metadata"].get("source_image_path")
    for key in ("hires", "lowres"):
        scale = library["scalefactors"].get(f"tissue_{key}_scalef")
        if key not in library["images"] and source and scale:
            library["images"][key] = readers.read_image_scaled(source, float(scale))
    return adata


def _gene_lengths_file(root: Path) -> pd.Series | None:
    path = root / "gene_lengths.tsv"
    if not path.is_file():
        return None
    table = pd.read_csv(path, sep="\t")
    return table.set_index(table["gene"].astype(str))["merged"].astype(np.float64)


def combine_slides(pieces: Mapping[str, ad.AnnData], spec: DatasetSpec) -> ad.AnnData:
    """One AnnData from per-slide AnnData: obs ``slide_id``/``split``/``patient``, genes shared by all."""
    split_of, patient_of = spec.slide_split, spec.slide_patient
    renamed = []
    for slide, piece in pieces.items():
        piece = piece.copy()
        piece.obs.insert(0, "barcode", piece.obs_names.astype(str))
        piece.obs.insert(0, "patient", patient_of[slide])
        piece.obs.insert(0, "split", split_of[slide])
        piece.obs.insert(0, "slide_id", slide)
        piece.obs_names = [f"{b}_{slide}" for b in piece.obs["barcode"]]
        renamed.append(piece)
    n_genes = {slide: p.n_vars for slide, p in pieces.items()}
    adata = ad.concat(renamed, join="inner", merge="first")
    if adata.n_vars < max(n_genes.values()):
        log.info("dataset %s: %d genes shared by all slides (per slide: %s)", spec.id, adata.n_vars, n_genes)
    if adata.n_vars == 0:
        raise ValueError(f"dataset {spec.id!r}: the slides share no gene id ({n_genes}); were they read with "
                         "different references?")
    adata.obs["slide_id"] = pd.Categorical(adata.obs["slide_id"], categories=list(pieces))
    adata.obs["split"] = pd.Categorical(adata.obs["split"], categories=[s for s in SPLITS if s in spec.splits])
    adata.obs["patient"] = pd.Categorical(adata.obs["patient"], categories=list(spec.patients))
    adata.uns["spatial"] = {slide: piece.uns["spatial"][slide] for slide, piece in pieces.items()}
    adata.uns["dataset_id"] = spec.id
    adata.uns["organism"] = spec.organism
    return adata


def load_raw(spec: DatasetSpec, cache_dir: str | os.PathLike | None = None, *, regenerate: bool = False,
             redownload: bool = False, progress: bool = True, load_fullres: bool | str = "auto") -> ad.AnnData:
    """The raw collection of a dataset: every slide read and combined (see :func:`combine_slides`).

    All in-tissue spots, raw counts in ``X`` and ``layers["counts"]``, the genes shared by all
    slides; ``var["gene_length"]`` for the synthetic dataset (its generator writes the lengths).
    ``regenerate`` rewrites a synthetic dataset's files, ``redownload`` fetches remote files again.
    """
    if spec.source.kind == "authors_processed":
        return _authors_raw(spec, cache_dir, redownload, progress)
    root = prepare_source(spec, cache_dir, redownload=redownload, regenerate=regenerate, progress=progress)
    pieces = {}
    for slide in tqdm(spec.slides, desc=f"{spec.id}: reading slides", disable=not progress, leave=False):
        pieces[slide] = read_slide(spec, slide, root, load_fullres=load_fullres)
    adata = combine_slides(pieces, spec)
    lengths = _gene_lengths_file(root) if spec.source.kind == "synthetic" else None
    if lengths is not None:
        adata.var["gene_length"] = lengths.reindex(adata.var_names).to_numpy()
    return adata


def _authors_raw(spec: DatasetSpec, cache_dir, redownload: bool, progress: bool) -> ad.AnnData:
    """The raw stage of an authors-processed dataset: their ``counts`` layer (their spots and genes)."""
    import scipy.sparse as sp

    adata, _, info = load_authors(spec, cache_dir, redownload=redownload, progress=progress)
    counts = sp.csr_matrix(adata.layers["counts"])
    keep = [k for k in ("gene_length", "gene_symbol", "gene_ids") if k in adata.var]
    raw = ad.AnnData(X=counts.copy(), obs=adata.obs.copy(), var=adata.var[keep].copy(), layers={"counts": counts},
                     obsm={"spatial": adata.obsm["spatial"]}, uns={k: adata.uns[k] for k in
                                                                    ("spatial", "dataset_id", "organism")})
    raw.uns["authors_processed"] = {"file": info["file"], "stage": "their counts of the spots and genes they kept"}
    return raw
