"""The dataset registry: ``data/datasets.yml`` read and validated into :class:`DatasetSpec` objects.

The first stage of the book's pipeline (registry → sources → curation → completion →
prediction → analysis). Everything about a dataset lives in one file, ``data/datasets.yml``:
where its files come from (URLs and checksums, a local folder, or the embedded generator), how
they are laid out, which slides go to train/val/test, which patient each slide belongs to, and
the curation parameters (genes kept, ComBat key, spot-count thresholds, ...).
:func:`registry` reads and validates it; a typo gives an error that names the line of the file.
This module reads no data: :mod:`spared_utils.sources` gets the files and
:func:`spared_utils.datasets.load` runs the stages.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from . import paths

__all__ = [
    "DatasetSpec", "PaperStats", "PipelineParams", "RegistryError", "RemoteFile", "SPLITS", "SourceSpec",
    "AUTHORS_SUFFIX", "UnknownDatasetError", "authors_spec", "get_spec", "is_known", "parse_registry", "registry",
    "registry_path",
]

SPLITS = ("train", "val", "test")
ORGANISMS = ("human", "mouse", "synthetic")
COMBAT_KEYS = ("slide_id", "patient")
#: ``authors_processed``: a dataset processed by the authors' ``spared`` package (their
#: ``adata.h5ad``), read by :func:`spared_utils.readers.read_authors_processed` instead of curated.
SOURCE_KINDS = ("remote", "local", "synthetic", "authors_processed")
FORMATS = ("spaceranger", "legacy_st", "h5ad")
EXTRACT_KINDS = ("zip", "tar", "tar.gz")
LAYOUT_KEYS = ("slide_dir", "counts", "positions", "scalefactors", "hires", "lowres", "fullres")
#: What ``source.layout_verified`` may say of a remote layout: ``false`` (copied, never exercised),
#: ``"reader-code"`` (a miniature archive in the layout the authors' reader code expects was
#: downloaded from a loopback mirror, extracted, read and curated: ``tests/test_mirror.py``),
#: ``true`` (checked against the real published files).
LAYOUT_VERIFIED = (False, "reader-code", True)
#: ``<id>_authors``: the dataset ``<id>`` of the paper as the authors processed it
#: (:func:`authors_spec`), known without an entry of its own.
AUTHORS_SUFFIX = "_authors"


class RegistryError(ValueError):
    """``data/datasets.yml`` is malformed; the message names the file and line."""


class UnknownDatasetError(KeyError):
    """No dataset with this id in the registry (the message lists close matches)."""

    def __str__(self) -> str:  # KeyError would print the message with quotes
        return str(self.args[0])


@dataclass(frozen=True)
class PipelineParams:
    """Every parameter of the curation pipeline (:func:`spared_utils.preprocess.run_pipeline`).

    The defaults are SpaRED's shared values (Mejia et al., MICCAI 2024, Supp. Table 1); each
    dataset of ``data/datasets.yml`` overrides some of them (``n_genes`` and ``combat_key``
    always), and :attr:`DatasetSpec.curation` holds the result.
    """

    n_genes: int = 128
    combat_key: str | None = "slide_id"
    hex_geometry: bool = True
    cell_min_counts: float = 10
    cell_max_counts: float = 1e6
    gene_min_counts: float = 10
    gene_max_counts: float = 1e6
    real_data_percentage: float = 0.7
    organism: str | None = None
    n_rings: int = 4
    slide_key: str = "slide_id"
    #: context genes kept beside the panel (``obsm["context_log1p"]``): the genes with the next
    #: highest Moran's I, which LGDiST's autoencoder reads (LGDiST widens to 1,024 genes in all:
    #: ``1024 - n_genes``); 0, the default, keeps none (:mod:`spared_utils.preprocess.context`)
    n_context: int = 0

    def with_overrides(self, **overrides) -> PipelineParams:
        """A copy with some fields changed (an unknown name raises with the valid ones)."""
        unknown = set(overrides) - {f.name for f in fields(self)}
        if unknown:
            raise TypeError(f"unknown pipeline parameter(s) {sorted(unknown)}; valid: {[f.name for f in fields(self)]}")
        return replace(self, **overrides)

    def as_uns(self) -> dict:
        """The parameters as h5ad-writable values (None → "None")."""
        return {k: ("None" if v is None else v) for k, v in asdict(self).items()}


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
    layout_verified: bool | str = False


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

    ``curation`` holds the curation parameters (organism, genes kept, ComBat key, grid, count
    thresholds), read by :func:`spared_utils.preprocess.run_pipeline`; ``patch_scale`` and
    ``patch_size`` are read by the patch step.
    """

    id: str
    abbreviation: str | None
    in_paper: bool
    tissue: str
    splits: dict[str, list[str]]
    patients: dict[str, list[str]]
    source: SourceSpec
    curation: PipelineParams
    publication: dict[str, Any] = field(default_factory=dict)
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
    def organism(self) -> str:
        """``"human"``, ``"mouse"`` or ``"synthetic"`` (kept in :attr:`curation`)."""
        return self.curation.organism

    @property
    def n_genes(self) -> int:
        """Genes kept by the curation (the authors' ``top_moran_genes``)."""
        return self.curation.n_genes


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


def _field_names(cls, leave_out: Iterable[str] = ()) -> tuple[str, ...]:
    """The field names of dataclass ``cls``, in declaration order, without ``leave_out``."""
    return tuple(f.name for f in fields(cls) if f.name not in leave_out)


#: Curation parameters a dataset entry may set: the fields of :class:`PipelineParams` but the
#: ones every dataset shares (the median's rings, the slide column).
CURATION_KEYS = _field_names(PipelineParams, leave_out=("n_rings", "slide_key"))
#: The keys of a dataset entry: the fields of :class:`DatasetSpec` (``curation`` spelled out as
#: its keys; ``id`` is the entry's name and ``line`` its place in the file) and CURATION_KEYS.
DATASET_KEYS = (*_field_names(DatasetSpec, leave_out=("id", "curation", "line")), *CURATION_KEYS)
#: The keys the file's ``defaults`` may set: CURATION_KEYS but those each dataset must name, and
#: the per-dataset settings below.
DEFAULT_KEYS = (*(k for k in CURATION_KEYS if k not in ("organism", "n_genes", "combat_key")),
                "patch_scale", "patch_size", "prediction_layer", "in_paper", "pipeline_ready")
#: SpaRED's shared parameters (the defaults of PipelineParams and DatasetSpec); the file's
#: ``defaults`` and each entry override them.
BUILTIN_DEFAULTS: dict[str, Any] = {
    **{f.name: f.default for f in fields(PipelineParams) if f.name in DEFAULT_KEYS},
    **{f.name: f.default for f in fields(DatasetSpec) if f.name in DEFAULT_KEYS},
    "in_paper": False,
}
SOURCE_KEYS = _field_names(SourceSpec)
FILE_KEYS = _field_names(RemoteFile)
PAPER_KEYS = _field_names(PaperStats)


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
    curation = PipelineParams(
        organism=organism, combat_key=combat_key, hex_geometry=merged["hex_geometry"],
        **{k: numbers.pop(k) for k in CURATION_KEYS if k in numbers},
    )
    return DatasetSpec(
        id=ds_id, abbreviation=merged.get("abbreviation"), in_paper=in_paper, tissue=str(merged["tissue"]),
        splits=splits, patients=patients, source=source, curation=curation,
        publication={"key": publication, **dict(publications[publication] or {})},
        prediction_layer=str(merged.get("prediction_layer", "c_d_log1p")),
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
    verified = raw.get("layout_verified", False)
    if not any(verified is v or (isinstance(v, str) and verified == v) for v in LAYOUT_VERIFIED):
        check.fail(check.line_of(raw, "layout_verified"), where,
                   f"layout_verified must be one of false, 'reader-code', true; got {verified!r}")
    files: list[RemoteFile] = []
    if kind == "remote" and not raw.get("files"):
        check.fail(check.line_of(raw), where, "a remote source needs 'files' (path, urls, sha256)")
    if kind == "authors_processed":
        if fmt != "h5ad":
            check.fail(check.line_of(raw, "format"), where, "the authors' processed files are h5ad: set format: h5ad")
        if not isinstance(raw.get("root"), str) and not raw.get("files"):
            check.fail(check.line_of(raw), where, "an authors_processed source needs 'root' (their adata.h5ad or its "
                       "folder, e.g. '{authors_data}/<id>') or 'files' (its download link)")
    if kind in ("remote", "authors_processed"):
        for item in raw.get("files") or ():
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
        if kind == "remote" and "slide_dir" not in layout:
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
                      provenance=raw.get("provenance"), layout_verified=verified)


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


def authors_spec(spec: DatasetSpec) -> DatasetSpec:
    """The dataset ``spec`` of the paper as the authors processed it, id ``<id>_authors``.

    The authors share one processed ``adata.h5ad`` per SpaRED dataset (a shared folder linked
    from the README of github.com/BCV-Uniandes/SpaRED). This entry reads it from
    ``{authors_data}/<id>`` (the folder ``SPARED_AUTHORS_DATA_DIR`` names, one sub-folder per
    dataset) with source kind ``authors_processed``: their layers are the curated stage, their
    patches the patch store and their SpaCKLE completion the completion ``"authors"``. Splits,
    patients and everything else are ``spec``'s, so the reader refuses a file whose slides or
    splits contradict the registry. It is not counted among the paper's datasets (``in_paper``
    False): it is one of them, read another way.
    """
    source = SourceSpec(kind="authors_processed", format="h5ad", root=f"{{authors_data}}/{spec.id}",
                        provenance=f"the authors' processed adata.h5ad of {spec.id} (spared 2.2.1), from the shared "
                                   "folder linked in the README of github.com/BCV-Uniandes/SpaRED")
    return replace(spec, id=spec.id + AUTHORS_SUFFIX, in_paper=False, source=source, pipeline_ready=True,
                   notes=f"{spec.id} as the authors processed it; data/datasets.yml line {spec.line} holds {spec.id}")


def _derived(dataset_id: str, specs: dict[str, DatasetSpec]) -> DatasetSpec | None:
    base = dataset_id[: -len(AUTHORS_SUFFIX)] if dataset_id.endswith(AUTHORS_SUFFIX) else None
    return authors_spec(specs[base]) if base in specs and specs[base].in_paper else None


def is_known(dataset_id: str, path: str | os.PathLike | None = None) -> bool:
    """Whether :func:`get_spec` knows ``dataset_id``: an entry of the registry, or ``<id>_authors``
    for a dataset ``<id>`` of the paper (:func:`authors_spec`)."""
    specs = registry(path)
    return dataset_id in specs or _derived(str(dataset_id), specs) is not None


def get_spec(dataset_id: str, path: str | os.PathLike | None = None) -> DatasetSpec:
    """The :class:`DatasetSpec` of one dataset (an entry of the registry, or ``<id>_authors`` for a
    dataset of the paper, :func:`authors_spec`); an unknown id raises with the closest ids."""
    specs = registry(path)
    derived = _derived(str(dataset_id), specs) if dataset_id not in specs else None
    if derived is not None:
        return derived
    if dataset_id not in specs:
        close = difflib.get_close_matches(str(dataset_id), list(specs), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
        raise UnknownDatasetError(
            f"unknown dataset id {dataset_id!r}: {hint}Known ids are the keys under 'datasets' in "
            f"{Path(path) if path else registry_path()} (spared_utils.registry.registry() lists them); "
            "add an entry there to register a new dataset")
    return specs[dataset_id]
