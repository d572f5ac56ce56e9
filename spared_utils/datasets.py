"""The dataset registry, loading of raw and curated collections, gene ids, and Supp. Table 1.

Everything about a dataset lives in one file, ``data/datasets.yml``: where its files come from
(URLs and checksums, or the embedded generator), how they are laid out, which slides go to
train/val/test, which patient each slide belongs to, and the curation parameters (genes kept,
ComBat key, spot-count threshold, ...). :func:`registry` reads and validates it into
:class:`DatasetSpec` objects; a typo gives an error that names the line of the file.

:func:`load` turns a dataset id into one AnnData with all its slides: it downloads what is
missing into the cache (:mod:`spared_utils.download`), reads every slide with the reader of its
format (:mod:`spared_utils.readers`), and, with ``processed=True``, runs the curation pipeline
(:func:`spared_utils.preprocess.run_pipeline`) and caches the result under
``<processed_dir>/<id>/adata.h5ad``.
"""

from __future__ import annotations

import copy
import difflib
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import yaml
from tqdm.auto import tqdm

from spared_utils import paths

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
ORGANISMS = ("human", "mouse", "synthetic")
COMBAT_KEYS = ("slide_id", "patient")
SOURCE_KINDS = ("remote", "local", "synthetic")
FORMATS = ("spaceranger", "legacy_st", "h5ad")
EXTRACT_KINDS = ("zip", "tar", "tar.gz")
LAYOUT_KEYS = ("slide_dir", "counts", "positions", "scalefactors", "hires", "lowres", "fullres")
ANNOTATION_FILES = {
    "human": ("hgnc_symbol_to_ensembl_human.tsv.gz", "Approved symbol", "Ensembl gene ID"),
    "mouse": ("ensembl_to_symbol_mouse.tsv.gz", "Gene name", "Gene stable ID"),
}
ENSEMBL_ID = re.compile(r"^(ENS[A-Z]*G\d{11})(\.\d+)?$")


class RegistryError(ValueError):
    """``data/datasets.yml`` is malformed; the message names the file and line."""


class UnknownDatasetError(KeyError):
    """No dataset with this id in the registry (the message lists close matches)."""

    def __str__(self) -> str:  # KeyError would print the message with quotes
        return str(self.args[0])


# ------------------------------------------------------------------------------------------------
# The specification of one dataset
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteFile:
    """One file to download: cache path, mirror URLs, checksum, archive type, owning slide."""

    path: str
    urls: tuple[str, ...]
    sha256: str | None = None
    extract: str | None = None
    slide: str | None = None


@dataclass(frozen=True)
class SourceSpec:
    """Where a dataset's files come from and how to find each slide's files in them."""

    kind: str
    format: str
    files: tuple[RemoteFile, ...] = ()
    layout: dict[str, Any] = field(default_factory=dict)
    source_names: dict[str, str] = field(default_factory=dict)
    nested: tuple[str, ...] = ()
    root: str | None = None
    provenance: str | None = None
    layout_verified: bool = False


@dataclass(frozen=True)
class PaperStats:
    """The authors' published statistics of a dataset (Supp. Table 1 / SpaRED metadata)."""

    slides: int
    patients: int
    spots: int
    genes: int
    task: str
    missing_pct: float
    corrupt_spots_pct: float
    raw_missing_pct: float


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the book knows about one dataset (one entry of ``data/datasets.yml``).

    The curation parameters (``n_genes``, ``combat_key``, ``hex_geometry``, ``cell_min_counts``,
    ``cell_max_counts``, ``gene_min_counts``, ``gene_max_counts``, ``real_data_percentage``,
    ``organism``) are read by :func:`spared_utils.preprocess.run_pipeline`; ``patch_scale`` and
    ``patch_size`` by the patch step.
    """

    id: str
    abbreviation: str | None
    in_paper: bool
    organism: str
    tissue: str
    n_genes: int
    combat_key: str
    splits: dict[str, list[str]]
    patients: dict[str, list[str]]
    source: SourceSpec
    publication: dict[str, Any] = field(default_factory=dict)
    hex_geometry: bool = True
    cell_min_counts: float = 10
    cell_max_counts: float = 1e6
    gene_min_counts: float = 10
    gene_max_counts: float = 1e6
    real_data_percentage: float = 0.7
    patch_scale: float = 1.0
    patch_size: int = 224
    prediction_layer: str = "c_d_log1p"
    pipeline_ready: bool = True
    generator: dict[str, Any] | None = None
    notes: str | None = None
    paper: PaperStats | None = None
    line: int = 0

    @property
    def slides(self) -> list[str]:
        """All slide ids, train then val then test."""
        return [s for split in SPLITS for s in self.splits.get(split, [])]

    @property
    def slide_split(self) -> dict[str, str]:
        """Slide id → split."""
        return {s: split for split in SPLITS for s in self.splits.get(split, [])}

    @property
    def slide_patient(self) -> dict[str, str]:
        """Slide id → patient."""
        return {s: p for p, slides in self.patients.items() for s in slides}

    @property
    def n_slides(self) -> int:
        return len(self.slides)

    @property
    def n_patients(self) -> int:
        return len(self.patients)

    @property
    def task(self) -> str:
        """``"inter-patient"`` (slides of several patients) or ``"intra-patient"``."""
        return "inter-patient" if self.n_patients > 1 else "intra-patient"

    @property
    def top_moran_genes(self) -> int:
        """The authors' name for :attr:`n_genes`."""
        return self.n_genes

    def curation_params(self) -> dict[str, Any]:
        """The values that determine the curated AnnData (used to invalidate its cache)."""
        keys = ("organism", "n_genes", "combat_key", "hex_geometry", "cell_min_counts", "cell_max_counts",
                "gene_min_counts", "gene_max_counts", "real_data_percentage", "splits", "patients", "generator")
        params = {k: getattr(self, k) for k in keys}
        if self.generator is not None:
            from spared_utils.synthetic import GENERATOR_VERSION

            params["generator_version"] = GENERATOR_VERSION
        return params


# ------------------------------------------------------------------------------------------------
# Reading and validating data/datasets.yml
# ------------------------------------------------------------------------------------------------


class _Lined(dict):
    """A mapping from YAML that remembers the line of each key (1-based)."""

    line: int = 0
    lines: dict[str, int]


class _LineLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> _Lined:
    out = _Lined()
    out.line = node.start_mark.line + 1
    out.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in out:
            raise RegistryError(f"{loader.name}:{key_node.start_mark.line + 1}: key {key!r} appears twice "
                                f"(first at line {out.lines[key]}); remove one")
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = key_node.start_mark.line + 1
    return out


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def registry_path() -> Path:
    """``data/datasets.yml`` of the project (see :func:`spared_utils.paths.data_dir`)."""
    return paths.data_dir() / "datasets.yml"


class _Checker:
    """Validation helpers that raise :class:`RegistryError` naming the file and line."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, line: int, where: str, message: str) -> None:
        raise RegistryError(f"{self.path}:{line}: {where}: {message}")

    def line_of(self, mapping: Any, key: str | None = None) -> int:
        if isinstance(mapping, _Lined):
            return mapping.lines.get(key, mapping.line) if key is not None else mapping.line
        return 0

    def keys(self, mapping: Any, allowed: Iterable[str], where: str, required: Iterable[str] = ()) -> None:
        if not isinstance(mapping, dict):
            self.fail(0, where, f"expected a mapping, got {type(mapping).__name__}")
        allowed = list(allowed)
        for key in mapping:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; allowed: {', '.join(allowed)}"
                self.fail(self.line_of(mapping, key), where, f"unknown key {key!r}{hint}")
        for key in required:
            if key not in mapping or mapping[key] is None:
                self.fail(self.line_of(mapping), where, f"required key {key!r} is missing")

    def choice(self, mapping: dict, key: str, options: Iterable[str], where: str) -> str:
        value = mapping.get(key)
        options = list(options)
        if value not in options:
            close = difflib.get_close_matches(str(value), options, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            self.fail(self.line_of(mapping, key), where, f"{key} {value!r} is not one of {options}{hint}")
        return value

    def number(self, mapping: dict, key: str, where: str, *, integer: bool = False, low: float | None = None,
               high: float | None = None) -> float:
        value = mapping.get(key)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and integer:
            ok = float(value).is_integer()
        if ok and low is not None:
            ok = value >= low
        if ok and high is not None:
            ok = value <= high
        if not ok:
            bounds = f" in [{low}, {high}]" if high is not None else (f" >= {low}" if low is not None else "")
            self.fail(self.line_of(mapping, key), where,
                      f"{key} must be {'an integer' if integer else 'a number'}{bounds}, got {value!r}")
        return int(value) if integer else value

    def string_list(self, mapping: dict, key: str, where: str) -> list[str]:
        value = mapping.get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.fail(self.line_of(mapping, key), where, f"{key} must be a list of names, got {value!r}")
        if len(set(value)) != len(value):
            dup = sorted({v for v in value if value.count(v) > 1})
            self.fail(self.line_of(mapping, key), where, f"{key} lists {dup} more than once")
        return list(value)


DATASET_KEYS = ("abbreviation", "in_paper", "publication", "organism", "tissue", "n_genes", "combat_key",
                "splits", "patients", "source", "paper", "notes", "generator", "hex_geometry", "cell_min_counts",
                "cell_max_counts", "gene_min_counts", "gene_max_counts", "real_data_percentage", "patch_scale",
                "patch_size", "prediction_layer", "pipeline_ready")
DEFAULT_KEYS = ("cell_min_counts", "cell_max_counts", "gene_min_counts", "gene_max_counts", "real_data_percentage",
                "patch_scale", "patch_size", "hex_geometry", "prediction_layer", "in_paper", "pipeline_ready")
#: SpaRED's shared parameters (DatasetSpec's defaults); the file's ``defaults`` and each entry override them.
BUILTIN_DEFAULTS: dict[str, Any] = {**{f.name: f.default for f in fields(DatasetSpec) if f.name in DEFAULT_KEYS},
                                    "in_paper": False}
SOURCE_KEYS = ("kind", "format", "files", "layout", "source_names", "nested", "root", "provenance", "layout_verified")
FILE_KEYS = ("path", "urls", "sha256", "extract", "slide")
PAPER_KEYS = tuple(f.name for f in PaperStats.__dataclass_fields__.values())


def parse_registry(text: str, path: Path | str = "datasets.yml") -> dict[str, DatasetSpec]:
    """Parse and validate the registry's YAML text (see :func:`registry`)."""
    path = Path(path)
    check = _Checker(path)
    try:
        loader = _LineLoader(text)
        loader.name = str(path)
        try:
            doc = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        raise RegistryError(f"{path}:{line}: not valid YAML ({err})") from err
    check.keys(doc, ("schema_version", "defaults", "publications", "datasets"), "top level",
               required=("schema_version", "datasets"))
    if doc["schema_version"] != 1:
        check.fail(check.line_of(doc, "schema_version"), "top level",
                   f"schema_version {doc['schema_version']!r} is not supported (expected 1)")
    defaults = doc.get("defaults") or {}
    check.keys(defaults, DEFAULT_KEYS, "defaults")
    publications = doc.get("publications") or {}
    datasets = doc["datasets"]
    if not isinstance(datasets, dict) or not datasets:
        check.fail(check.line_of(doc, "datasets"), "datasets", "expected a mapping of dataset id → entry")
    return {ds_id: _parse_dataset(ds_id, entry, defaults, publications, check, check.line_of(datasets, ds_id))
            for ds_id, entry in datasets.items()}


def _parse_dataset(ds_id: Any, entry: Any, defaults: dict, publications: dict, check: _Checker,
                   line: int) -> DatasetSpec:
    where = f"dataset {ds_id!r}"
    if not isinstance(ds_id, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_]*", ds_id):
        check.fail(line, where, "dataset ids are lower-case letters, digits and '_'")
    if not isinstance(entry, dict):
        check.fail(line, where, "expected a mapping")
    check.keys(entry, DATASET_KEYS, where,
               required=("organism", "tissue", "n_genes", "combat_key", "splits", "patients", "source", "publication"))
    merged = _Lined({**BUILTIN_DEFAULTS, **defaults, **entry})
    merged.line, merged.lines = check.line_of(entry), {**getattr(defaults, "lines", {}), **entry.lines}
    organism = check.choice(merged, "organism", ORGANISMS, where)
    combat_key = check.choice(merged, "combat_key", COMBAT_KEYS, where)
    publication = merged["publication"]
    if publication not in publications:
        close = difflib.get_close_matches(str(publication), list(publications), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        check.fail(check.line_of(entry, "publication"), where,
                   f"publication {publication!r} is not defined under 'publications'{hint}")

    splits_raw = merged["splits"]
    check.keys(splits_raw, SPLITS, f"{where} splits", required=("train",))
    splits = {name: check.string_list(splits_raw, name, f"{where} splits") for name in SPLITS if name in splits_raw}
    if not splits["train"]:
        check.fail(check.line_of(splits_raw, "train"), where, "the train split has no slide")
    slides = [s for name in SPLITS for s in splits.get(name, [])]
    seen: dict[str, str] = {}
    for name in SPLITS:
        for slide in splits.get(name, []):
            if slide in seen:
                check.fail(check.line_of(splits_raw, name), where,
                           f"slide {slide!r} is in both {seen[slide]!r} and {name!r}; a slide belongs to one split")
            seen[slide] = name

    patients_raw = merged["patients"]
    if not isinstance(patients_raw, dict) or not patients_raw:
        check.fail(check.line_of(entry, "patients"), where, "patients must map each patient to its slides")
    patients: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for patient in patients_raw:
        listed = check.string_list(patients_raw, patient, f"{where} patients")
        for slide in listed:
            if slide not in seen:
                close = difflib.get_close_matches(slide, slides, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                check.fail(check.line_of(patients_raw, patient), where,
                           f"patient {patient!r} lists slide {slide!r}, which is in no split{hint}")
            if slide in owner:
                check.fail(check.line_of(patients_raw, patient), where,
                           f"slide {slide!r} belongs to patients {owner[slide]!r} and {patient!r}")
            owner[slide] = str(patient)
        patients[str(patient)] = listed
    orphans = [s for s in slides if s not in owner]
    if orphans:
        check.fail(check.line_of(entry, "patients"), where, f"slides {orphans} are assigned to no patient")

    in_paper = merged.get("in_paper", False)
    if not isinstance(in_paper, bool):
        check.fail(check.line_of(entry, "in_paper"), where, f"in_paper must be true or false, got {in_paper!r}")
    paper = None
    if "paper" in entry:
        paper_raw = entry["paper"]
        check.keys(paper_raw, PAPER_KEYS, f"{where} paper", required=PAPER_KEYS)
        values = {k: paper_raw[k] for k in PAPER_KEYS}
        for key in ("slides", "patients", "spots", "genes"):
            values[key] = check.number(paper_raw, key, f"{where} paper", integer=True, low=1)
        values["task"] = check.choice(paper_raw, "task", ("intra-patient", "inter-patient"), f"{where} paper")
        for key in ("missing_pct", "corrupt_spots_pct", "raw_missing_pct"):
            values[key] = check.number(paper_raw, key, f"{where} paper", low=0, high=100)
        paper = PaperStats(**values)
    if in_paper and (paper is None or not merged.get("abbreviation")):
        check.fail(line, where, "a paper dataset (in_paper: true) needs 'abbreviation' and 'paper' statistics")

    generator = merged.get("generator")
    source = _parse_source(merged["source"], slides, check, where, generator)
    numbers = {
        "n_genes": check.number(merged, "n_genes", where, integer=True, low=1),
        "cell_min_counts": check.number(merged, "cell_min_counts", where, low=0),
        "cell_max_counts": check.number(merged, "cell_max_counts", where, low=0),
        "gene_min_counts": check.number(merged, "gene_min_counts", where, low=0),
        "gene_max_counts": check.number(merged, "gene_max_counts", where, low=0),
        "real_data_percentage": check.number(merged, "real_data_percentage", where, low=0, high=1),
        "patch_scale": check.number(merged, "patch_scale", where, low=0),
        "patch_size": check.number(merged, "patch_size", where, integer=True, low=1),
    }
    for key in ("hex_geometry", "pipeline_ready"):
        if not isinstance(merged.get(key), bool):
            check.fail(check.line_of(merged, key), where, f"{key} must be true or false, got {merged.get(key)!r}")
    return DatasetSpec(
        id=ds_id, abbreviation=merged.get("abbreviation"), in_paper=in_paper, organism=organism,
        tissue=str(merged["tissue"]), combat_key=combat_key, splits=splits, patients=patients, source=source,
        publication={"key": publication, **dict(publications[publication] or {})},
        hex_geometry=merged["hex_geometry"], prediction_layer=str(merged.get("prediction_layer", "c_d_log1p")),
        pipeline_ready=merged["pipeline_ready"], generator=dict(generator) if generator is not None else None,
        notes=merged.get("notes"), paper=paper, line=line, **numbers,
    )


def _parse_source(raw: Any, slides: list[str], check: _Checker, where: str, generator: Any) -> SourceSpec:
    where = f"{where} source"
    check.keys(raw, SOURCE_KEYS, where, required=("kind", "format"))
    kind = check.choice(raw, "kind", SOURCE_KINDS, where)
    fmt = check.choice(raw, "format", FORMATS, where)
    layout = raw.get("layout") or {}
    check.keys(layout, LAYOUT_KEYS, f"{where} layout")
    for key, value in layout.items():
        patterns = value if isinstance(value, list) else [value]
        if not all(isinstance(p, str) and p for p in patterns):
            check.fail(check.line_of(layout, key), where, f"layout {key} must be a path pattern or a list of them")
    source_names = raw.get("source_names") or {}
    for slide in source_names:
        if slide not in slides:
            check.fail(check.line_of(source_names, slide), where, f"source_names lists unknown slide {slide!r}")
    files: list[RemoteFile] = []
    if kind == "remote":
        if not raw.get("files"):
            check.fail(check.line_of(raw), where, "a remote source needs 'files' (path, urls, sha256)")
        for item in raw["files"]:
            check.keys(item, FILE_KEYS, f"{where} file", required=("path", "urls"))
            urls = item["urls"] if isinstance(item["urls"], list) else [item["urls"]]
            if not urls or not all(isinstance(u, str) and re.match(r"https?://", u) for u in urls):
                check.fail(check.line_of(item, "urls"), where, f"urls must be http(s) URLs, got {urls!r}")
            sha = item.get("sha256")
            if sha is not None and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
                check.fail(check.line_of(item, "sha256"), where,
                           f"sha256 must be 64 lower-case hex digits or null (unknown), got {sha!r}")
            extract = item.get("extract")
            if extract is not None:
                check.choice(item, "extract", EXTRACT_KINDS, where)
            slide = item.get("slide")
            if slide is not None and slide not in slides:
                close = difflib.get_close_matches(str(slide), slides, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                check.fail(check.line_of(item, "slide"), where, f"file for unknown slide {slide!r}{hint}")
            path = str(item["path"])
            if path.startswith("/") or ".." in Path(path).parts:
                check.fail(check.line_of(item, "path"), where, f"path {path!r} must stay inside the cache")
            files.append(RemoteFile(path=path, urls=tuple(urls), sha256=sha, extract=extract, slide=slide))
        if "slide_dir" not in layout:
            check.fail(check.line_of(raw), where, "layout.slide_dir is required to find each slide's files")
    elif kind == "local":
        if not isinstance(raw.get("root"), str):
            check.fail(check.line_of(raw), where, "a local source needs 'root' (e.g. '{real_data}/her2st_patient_c')")
    elif not isinstance(generator, dict):
        check.fail(check.line_of(raw), where,
                   "a synthetic source needs the dataset's 'generator' (arguments of synthetic.make_dataset)")
    return SourceSpec(kind=kind, format=fmt, files=tuple(files), layout=dict(layout),
                      source_names={str(k): str(v) for k, v in source_names.items()},
                      nested=tuple(raw.get("nested") or ()), root=raw.get("root"),
                      provenance=raw.get("provenance"), layout_verified=bool(raw.get("layout_verified", False)))


@lru_cache(maxsize=4)
def _registry_cached(path: str, mtime_ns: int) -> dict[str, DatasetSpec]:
    return parse_registry(Path(path).read_text(encoding="utf-8"), path)


def registry(path: str | os.PathLike | None = None) -> dict[str, DatasetSpec]:
    """All datasets of ``data/datasets.yml``, validated, in file order.

    Parameters
    ----------
    path
        Another registry file (default :func:`registry_path`).

    Returns
    -------
    dict[str, DatasetSpec]
        Dataset id → specification (a fresh copy: changing it does not change the registry).

    Raises
    ------
    RegistryError
        The file is malformed; the message names ``file:line`` and the problem.
    """
    path = Path(path) if path is not None else registry_path()
    if not path.is_file():
        raise FileNotFoundError(f"dataset registry {path} not found; it is data/datasets.yml in the repository "
                                "(set SPARED_BOOK_ROOT to the repository root if you run from elsewhere)")
    return copy.deepcopy(_registry_cached(str(path.resolve()), path.stat().st_mtime_ns))


def get_spec(dataset_id: str, path: str | os.PathLike | None = None) -> DatasetSpec:
    """The :class:`DatasetSpec` of one dataset; an unknown id raises with the closest ids."""
    specs = registry(path)
    if dataset_id not in specs:
        close = difflib.get_close_matches(str(dataset_id), list(specs), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
        raise UnknownDatasetError(
            f"unknown dataset id {dataset_id!r}: {hint}Known ids are the keys under 'datasets' in "
            f"{Path(path) if path else registry_path()} (spared_utils.datasets.registry() lists them); "
            "add an entry there to register a new dataset")
    return specs[dataset_id]


# ------------------------------------------------------------------------------------------------
# Gene identifiers
# ------------------------------------------------------------------------------------------------


def strip_version(gene_id: str) -> str:
    """``ENSG00000223972.6`` → ``ENSG00000223972``; other names unchanged."""
    match = ENSEMBL_ID.match(gene_id)
    return match.group(1) if match else gene_id


@lru_cache(maxsize=4)
def symbol_to_ensembl(organism: str) -> dict[str, str]:
    """Gene symbol → Ensembl gene id from the vendored HGNC (human) / Ensembl (mouse) tables.

    A symbol listed with several ids keeps the one that has a GENCODE gene length (so TPM can
    use it), then the smallest id, so the choice is deterministic.
    """
    if organism not in ANNOTATION_FILES:
        raise ValueError(f"no symbol table for organism {organism!r}; known: {sorted(ANNOTATION_FILES)}")
    name, symbol_col, id_col = ANNOTATION_FILES[organism]
    path = paths.data_dir() / "annotations" / name
    if not path.is_file():
        raise FileNotFoundError(f"annotation table {path} not found; it is vendored in the repository's "
                                "data/annotations/ (set SPARED_BOOK_ROOT to the repository root)")
    table = pd.read_csv(path, sep="\t", usecols=[symbol_col, id_col], dtype=str).dropna()
    table[id_col] = table[id_col].map(strip_version)
    try:
        from spared_utils.preprocess.normalise import load_gene_lengths

        known = set(load_gene_lengths(organism).index)
    except (ImportError, FileNotFoundError, ValueError):
        known = set()
    table["has_length"] = table[id_col].isin(known)
    table = table.sort_values([symbol_col, "has_length", id_col], ascending=[True, False, True])
    table = table.drop_duplicates(symbol_col)
    return dict(zip(table[symbol_col], table[id_col]))


def harmonise_gene_ids(adata: ad.AnnData, organism: str) -> ad.AnnData:
    """Ensembl gene ids as ``var_names``: map symbols, strip versions, merge duplicates.

    Pipeline step 1 (called by :func:`spared_utils.preprocess.collect`).

    * Ensembl ids (``ENSG…``, ``ENSMUSG…``) lose their version suffix.
    * Other names are gene symbols, mapped with the vendored tables (:func:`symbol_to_ensembl`);
      symbols without a mapping are dropped.
    * Genes that end up with the same id (a symbol and its id both present, two versions of one
      id, a repeated symbol) are merged by summing their values in ``X`` and every layer (the
      collection holds counts at this step); other ``var`` columns keep the first gene's value.
    * ``var["gene_symbol"]`` is kept (or filled from the table when absent).

    For an organism without tables (``"synthetic"``) only versions are stripped and duplicates
    merged.

    Parameters
    ----------
    adata
        A collection with raw counts (any ``var_names``).
    organism
        ``"human"``, ``"mouse"`` or another value (no symbol mapping).

    Returns
    -------
    AnnData
        A new object; ``uns["gene_id_harmonisation"]`` counts mapped, dropped and merged genes.
    """
    names = pd.Index(adata.var_names.astype(str))
    symbols = (adata.var["gene_symbol"].astype(str).to_numpy() if "gene_symbol" in adata.var
               else names.to_numpy())
    is_ensembl = np.array([bool(ENSEMBL_ID.match(n)) for n in names])
    new_ids = np.array([strip_version(n) for n in names], dtype=object)
    mapping = symbol_to_ensembl(organism) if organism in ANNOTATION_FILES else {}
    n_mapped = 0
    if mapping:
        for i in np.flatnonzero(~is_ensembl):
            target = mapping.get(names[i])
            new_ids[i] = target
            n_mapped += target is not None
    keep = np.array([v is not None for v in new_ids])
    out_ids = pd.Index(new_ids[keep].astype(str))
    codes, uniques = pd.factorize(out_ids)
    n_out = len(uniques)
    # Sum genes sharing an id: (n_in_kept × n_out) indicator matrix.
    kept_idx = np.flatnonzero(keep)
    merge = sp.csr_matrix((np.ones(len(kept_idx), dtype=np.float32), (np.arange(len(kept_idx)), codes)),
                          shape=(len(kept_idx), n_out))

    def combine(matrix):
        if matrix is None:
            return None
        part = matrix[:, kept_idx]
        if n_out == len(kept_idx):  # no duplicates: factorize numbered the genes in order
            return part
        if sp.issparse(part):
            return sp.csr_matrix(sp.csr_matrix(part) @ merge, dtype=part.dtype)
        return np.asarray((merge.T @ np.asarray(part).T).T, dtype=part.dtype)

    first = pd.Series(np.arange(len(kept_idx))).groupby(codes).first().to_numpy()
    var = adata.var.iloc[kept_idx[first]].copy()
    var.index = pd.Index(uniques.astype(str))
    filled = symbols[kept_idx[first]]
    if "gene_symbol" not in adata.var and mapping:
        reverse = {v: k for k, v in mapping.items()}
        filled = np.array([reverse.get(i, s) if ENSEMBL_ID.match(s) else s for i, s in zip(var.index, filled)])
    var["gene_symbol"] = filled
    # uns is shared, not copied: it may hold large images that this step does not touch
    out = ad.AnnData(X=combine(adata.X), obs=adata.obs.copy(), var=var, uns=dict(adata.uns),
                     obsm={k: v.copy() for k, v in adata.obsm.items()})
    for key, layer in adata.layers.items():
        out.layers[key] = combine(layer)
    out.uns["gene_id_harmonisation"] = {
        "organism": str(organism), "n_input": int(adata.n_vars), "n_ensembl_input": int(is_ensembl.sum()),
        "n_symbols_mapped": int(n_mapped), "n_dropped_unmapped": int((~keep).sum()),
        "n_merged_duplicates": int(len(kept_idx) - n_out), "n_output": int(n_out),
    }
    if (~keep).any():
        log.info("harmonise_gene_ids: %d of %d gene symbols have no %s Ensembl id and were dropped",
                 int((~keep).sum()), int((~is_ensembl).sum()), organism)
    return out


# ------------------------------------------------------------------------------------------------
# Getting the raw files and reading every slide
# ------------------------------------------------------------------------------------------------


def real_data_dir() -> Path:
    """Folder of the real sample slides: ``SPARED_REAL_DATA_DIR``, else ``<root>/../shared/data/real``."""
    env = os.environ.get("SPARED_REAL_DATA_DIR")
    return Path(env).expanduser().resolve() if env else paths.project_root().parent / "shared" / "data" / "real"


def dataset_cache_dir(spec: DatasetSpec, cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache>/<dataset id>``: where a dataset's generated or derived raw files go."""
    from spared_utils.download import resolve_cache_dir

    return resolve_cache_dir(cache_dir) / spec.id


def prepare_source(spec: DatasetSpec, cache_dir: str | os.PathLike | None = None, *, redownload: bool = False,
                   regenerate: bool = False, progress: bool = True) -> Path:
    """Make a dataset's raw files available on disk and return the root its layout refers to.

    Remote sources are downloaded (and extracted) into the cache, local ones are checked, and
    synthetic ones are generated with :func:`spared_utils.synthetic.make_dataset` and written in
    the Space Ranger layout under ``<cache>/<id>/raw``.
    """
    from spared_utils import download

    source = spec.source
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
        from spared_utils import synthetic

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
    from spared_utils import readers

    files = slide_files(spec, slide, root)
    fmt = spec.source.format
    if fmt == "spaceranger":
        return readers.read_spaceranger(files.pop("slide_dir"), slide_id=slide, load_fullres=load_fullres, **files)
    if fmt == "legacy_st":
        return readers.read_legacy_st(files["slide_dir"], slide_id=slide, counts=files.get("counts"),
                                      spots=files.get("positions"), image=files.get("fullres"),
                                      load_fullres=load_fullres)
    counts = files.get("counts")
    if counts is None:
        raise FileNotFoundError(f"dataset {spec.id!r}: an h5ad source needs layout.counts (the .h5ad file)")
    return readers.read_h5ad_spatial(counts, slide_id=slide, hires=files.get("hires"), lowres=files.get("lowres"),
                                     require_counts=spec.pipeline_ready)


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


def spec_fingerprint(spec: DatasetSpec) -> str:
    """A string that changes whenever a dataset's curation parameters change (stored in the
    curated file's ``uns["dataset_spec"]``; :func:`load` recomputes when it differs)."""
    return json.dumps(spec.curation_params(), sort_keys=True, default=str)


def load(
    dataset_id: str,
    processed: bool = True,
    cache_dir: str | os.PathLike | None = None,
    force: bool = False,
    *,
    redownload: bool = False,
    progress: bool = True,
    load_fullres: bool | str = "auto",
) -> ad.AnnData:
    """Load a dataset of the registry as one AnnData (downloading and curating it if needed).

    Parameters
    ----------
    dataset_id
        A key of ``data/datasets.yml`` (e.g. ``"synthetic"``, ``"10xgenomic_human_brain"``).
    processed
        ``True``: the curated collection of :func:`spared_utils.preprocess.run_pipeline`, cached
        at ``<processed_dir>/<id>/adata.h5ad`` and reused while the dataset's curation parameters
        are unchanged. ``False``: the raw collection (all in-tissue spots, raw counts in ``X`` and
        ``layers["counts"]``, genes shared by all slides).
    cache_dir
        Download cache; default ``SPARED_CACHE_DIR`` or pooch's OS cache.
    force
        Recompute: re-read the raw files (regenerating a synthetic dataset) and re-run the
        pipeline, ignoring a cached curated file. Downloads are kept (see ``redownload``).
    redownload
        Download every file again.
    progress
        Show progress bars.
    load_fullres
        Keep full-resolution images in memory (``True``/``False``/``"auto"``, see
        :func:`spared_utils.readers.read_spaceranger`).

    Returns
    -------
    AnnData
        ``obs``: ``slide_id``, ``split``, ``patient`` (from the registry), ``barcode``,
        ``in_tissue``, ``array_row``, ``array_col``; ``obsm["spatial"]``; ``uns["spatial"]`` per
        slide; ``var["gene_symbol"]`` (and ``var["gene_length"]`` for synthetic data).

    Raises
    ------
    UnknownDatasetError
        ``dataset_id`` is not in the registry.
    FileNotFoundError, spared_utils.download.DownloadError, spared_utils.readers.ReaderError
        Files missing, not downloadable, or unreadable (messages say where to put them).
    """
    spec = get_spec(dataset_id)
    if processed:
        return _load_processed(spec, cache_dir, force, redownload, progress, load_fullres)
    root = prepare_source(spec, cache_dir, redownload=redownload, regenerate=force, progress=progress)
    pieces = {}
    for slide in tqdm(spec.slides, desc=f"{spec.id}: reading slides", disable=not progress, leave=False):
        pieces[slide] = read_slide(spec, slide, root, load_fullres=load_fullres)
    adata = combine_slides(pieces, spec)
    lengths = _gene_lengths_file(root) if spec.source.kind == "synthetic" else None
    if lengths is not None:
        adata.var["gene_length"] = lengths.reindex(adata.var_names).to_numpy()
    return adata


def _load_processed(spec: DatasetSpec, cache_dir, force: bool, redownload: bool, progress: bool,
                    load_fullres) -> ad.AnnData:
    from spared_utils.preprocess import run_pipeline
    from spared_utils.preprocess.store import processed_path, write_processed

    if not spec.pipeline_ready:
        raise ValueError(f"dataset {spec.id!r} cannot be curated: {spec.notes or 'pipeline_ready is false'} "
                         f"(data/datasets.yml line {spec.line}); load it with processed=False")
    fingerprint = spec_fingerprint(spec)
    path = processed_path(spec.id)
    if path.is_file() and not force and not redownload:
        cached = ad.read_h5ad(path)
        if cached.uns.get("dataset_spec") == fingerprint:
            return cached
        log.warning("%s was curated with other parameters than data/datasets.yml now holds; curating again", path)
    raw = load(spec.id, processed=False, cache_dir=cache_dir, force=force, redownload=redownload,
               progress=progress, load_fullres=load_fullres)
    curated = run_pipeline(raw, spec, progress=progress)
    curated = raw if curated is None else curated
    write_processed(curated, spec.id, spec=spec)  # stamps uns["dataset_spec"] and uns["dataset_id"]
    return curated


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
            from spared_utils.preprocess.store import processed_path

            path = processed_path(spec.id)
            row.update(_ours(ad.read_h5ad(path) if path.is_file() else load(spec.id, processed=True)))
        rows.append(row)
    columns = ["dataset", "abbreviation", "in_paper", "organism", "tissue", "task", "slides", "patients", "genes",
               "train", "val", "test", "slides_paper", "patients_paper", "spots_paper", "genes_paper", "task_paper",
               "missing_pct_paper", "corrupt_spots_pct_paper", "raw_missing_pct_paper", "spots_ours", "genes_ours",
               "slides_ours", "patients_ours", "missing_pct_ours", "corrupt_spots_pct_ours"]
    table = pd.DataFrame(rows).reindex(columns=columns).set_index("dataset")
    order = table["spots_paper"].fillna(-1).sort_values(ascending=False, kind="stable").index
    return table.loc[order]
