"""Miniature copies of every remote SpaRED download, in the layout the authors' reader code expects.

Each builder below writes one publication's files as the authors' ``spared`` package
(github.com/BCV-Uniandes/SpaRED, ``spared/readers/*Reader.py``, commit 3ca900f; the same in
``spared`` 2.2.1 on PyPI) downloads and reads them: the same URLs, archive types, folder
nesting, file names and formats, with a few dozen spots per slide and small images drawn by
:func:`spared_utils.synthetic.make_dataset`. A builder returns ``{url: bytes}`` keyed by the
URL the authors' code downloads; :func:`build_mirror` puts each file at the cache path that
``data/datasets.yml`` gives the file with that URL, which is what a mirror set with
``SPARED_MIRROR`` serves (``<prefix>/<path>``). A URL of the authors that the registry does not
list is an error, so the registry's URLs are checked against the reader code too.

What the layouts are taken from (the authors' ``download_data`` and ``get_adata_for_slide``):

* **10x Genomics** (``VisiumReader``, via ``squidpy.datasets.visium(include_hires_tiff=True)``):
  ``filtered_feature_bc_matrix.h5``, ``spatial.tar.gz`` holding ``spatial/`` (Space Ranger 1.1:
  ``tissue_positions_list.csv`` without header, both PNGs, scale factors) and ``image.tif``. The
  authors rescale the patches of ``10xgenomic_human_brain`` and ``10xgenomic_mouse_brain_coronal``
  from 16 bits: those two TIFFs are 16-bit here, one interleaved and one channel-first (their
  reader transposes either).
* **Abalo** (Mendeley ``2bh5fchcv6-1.zip``): ``<slide>/`` at the top, each with the ``.h5``,
  ``spatial/`` (positions, scale factors, hires PNG; no lowres: the authors write it) and one ``*.jpg``.
* **Erickson** (Mendeley ``svw96g68dv-4.zip``): one top folder; counts, positions and scale
  factors flat in ``Count_matrices/Patient 1/Visium_with_annotation/<name>/`` (patient 2 without
  the middle folder), hires PNGs in ``10x_spaceranger_tissue_highres_images/Patient N/``, H&E
  JPEGs in ``Histological_images/Patient_1/Visium/`` and ``Patient_2/``; the authors find a
  slide's files by *substring* (``'H1_5' in path``), so the names here carry more than the
  slide's short name.
* **Fan** (Mendeley ``nrbsxrk9mp-1.zip``): ``Ex-ST/processed_data/spaceranger_output/<x>_<y>_HC1…``
  folders (``split('_')[2]`` is the section), H&E in ``Ex-ST/raw_imgs/*modif*_HC1_A1.jpg``, plus
  the folders the authors delete (standard Visium, stereoscope outputs).
* **Mirzazadeh** (Mendeley ``4w6krnywhn-1.zip`` and ``442mhsrpcm-1.zip``, each with its
  "Supplementary Data" top folder): ``spaceranger_output/<tissue>.tar.gz`` (``<tissue>/<slide>/``
  inside, with slides of no dataset too), H&E in ``images/<tissue>/<slide>*.jpg`` where the
  prostate folder is ``prostate cancer`` (the authors rename it), and the small-intestine H&E in
  the second archive's ``smallintestine/``, some named with ``_`` for ``-`` (the authors fix those).
* **Parigi** (GEO ``GSE169749_RAW.tar``): flat, every file gzipped (the authors gunzip all
  ``*.gz``): ``<GSM>_V19S23-097_<slide>_normalized_data.tsv`` (genes × spots, gene *symbols*,
  spot names ``<barcode>_<n>``, normalised values), ``…_tissue_positions_list.csv``,
  ``…_scalefactors_json.json`` and ``…_<region>_rotated.tif``, a 16-bit RGB TIFF.
* **Vicari** (SciLifeLab figshare): five files per slide, one URL each.
* **Villacampa** (Mendeley ``xjtv62ncwr``, two ``.tar.gz``): ``data/<tissue>/<slide>/`` and
  ``images/<slide>.jpg``.
* **Batiuk** (Zenodo 6921620, two zips): ``visium_spaceranger_output/<slide>/outs/`` with the
  gzipped mtx folder, and ``<slide>_<suffix>.tif`` at the top of the image zip (the authors
  rename them to ``<slide>.tif``).
* **Hudson** (GEO GSE179572): the authors' package has no reader for it (their dispatcher would
  hand it to the 10x reader, which cannot fetch GEO files); the miniature follows the registry's
  own layout, so it checks our reading, not the layout.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp
import tifffile
from PIL import Image

from spared_utils import synthetic
from spared_utils.preprocess import genes as gene_tables
from spared_utils.registry import DatasetSpec

#: Size of the generated slides (a few dozen spots each, 256 genes).
POOL_SIZE = {"n_slides": 8, "n_rows": 10, "n_cols": 20, "n_genes": 256}
POOL_SEED = 11
SQUIDPY_S3 = "https://exampledata.scverse.org/squidpy/10x_genomics"
MENDELEY_S3 = "https://prod-dcd-datasets-cache-zipfiles.s3.eu-west-1.amazonaws.com"


@dataclass(frozen=True)
class Genes:
    """The panel a miniature slide is written with: real Ensembl ids and symbols of one organism."""

    ids: np.ndarray
    symbols: np.ndarray


@dataclass(frozen=True)
class Slide:
    """One generated slide as it is written: in-tissue counts, the whole capture grid, images."""

    barcodes: np.ndarray
    counts: sp.csr_matrix  # spots × genes, whole numbers
    grid: pd.DataFrame  # barcode, in_tissue, array_row, array_col, pxl_row_in_fullres, pxl_col_in_fullres
    scalefactors: dict
    hires: np.ndarray
    fullres: np.ndarray
    genes: Genes

    def spatial(self) -> np.ndarray:
        """Full-resolution (x, y) of the in-tissue spots, in ``barcodes`` order."""
        table = self.grid.set_index("barcode").loc[self.barcodes]
        return table[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(float)


@lru_cache(maxsize=1)
def _pool():
    return synthetic.make_dataset(seed=POOL_SEED, **POOL_SIZE)


@lru_cache(maxsize=2)
def organism_genes(organism: str) -> Genes:
    """The first 256 genes of the vendored symbol table that have a GENCODE length."""
    lengths = gene_tables.load_gene_lengths(organism)
    pairs = [(i, s) for s, i in gene_tables.symbol_to_ensembl(organism).items() if i in lengths.index]
    pairs = sorted(dict(pairs).items())[: POOL_SIZE["n_genes"]]  # one symbol per id, sorted by id
    return Genes(np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs]))


def pool_slide(index: int, organism: str, depth: float = 1.0) -> Slide:
    """Slide ``index`` (modulo the pool) of the generated pool, with ``organism``'s gene panel."""
    return _pool_slide(index % POOL_SIZE["n_slides"], organism, depth)


@lru_cache(maxsize=None)
def _pool_slide(index: int, organism: str, depth: float) -> Slide:
    adata = _pool()
    sid = synthetic.slide_ids(POOL_SIZE["n_slides"])[index]
    sel = (adata.obs["slide_id"] == sid).to_numpy()
    obs = adata.obs.loc[sel]
    counts = sp.csr_matrix(adata.layers["counts"][sel] * depth)
    cfg = synthetic.SyntheticConfig(**adata.uns["synthetic_config"])
    grid = synthetic.grid_positions(cfg)
    grid.insert(1, "in_tissue", grid["barcode"].isin(obs["barcode"]).astype(int))
    lib = adata.uns["spatial"][sid]
    factors = {k: v for k, v in lib["scalefactors"].items() if k != "tissue_fullres_scalef"}
    return Slide(obs["barcode"].to_numpy(), counts, grid, factors, lib["images"]["hires"],
                 lib["images"]["fullres"], organism_genes(organism))


# ------------------------------------------------------------------------------------------------
# File formats (each encoding of a slide made once: the same slide appears in several archives)
# ------------------------------------------------------------------------------------------------

_ENCODED: dict[tuple, tuple[object, bytes]] = {}


def _once(kind: str, obj, make: Callable[[], bytes], *key) -> bytes:
    hit = _ENCODED.get((kind, id(obj), *key))
    if hit is None or hit[0] is not obj:
        hit = _ENCODED[(kind, id(obj), *key)] = (obj, make())
    return hit[1]


def h5_bytes(slide: Slide) -> bytes:
    """Space Ranger's ``filtered_feature_bc_matrix.h5``."""
    def make():
        buffer = io.BytesIO()
        synthetic.write_10x_h5(buffer, slide.counts, slide.barcodes, slide.genes.ids, slide.genes.symbols)
        return buffer.getvalue()
    return _once("h5", slide, make)


def mtx_members(prefix: str, slide: Slide) -> dict[str, bytes]:
    """Space Ranger's gzipped ``filtered_feature_bc_matrix/`` (features.tsv.gz, v3)."""
    matrix = io.BytesIO()
    scipy.io.mmwrite(matrix, sp.coo_matrix(slide.counts.T.astype(np.int64)), field="integer")
    features = "".join(f"{i}\t{s}\tGene Expression\n" for i, s in zip(slide.genes.ids, slide.genes.symbols))
    return {f"{prefix}/matrix.mtx.gz": gzip.compress(matrix.getvalue()),
            f"{prefix}/features.tsv.gz": gzip.compress(features.encode()),
            f"{prefix}/barcodes.tsv.gz": gzip.compress(("\n".join(slide.barcodes) + "\n").encode())}


def positions_bytes(slide: Slide, header: bool = False) -> bytes:
    """``tissue_positions_list.csv`` (Space Ranger 1.x: no header, every capture-area spot)."""
    return slide.grid.to_csv(index=False, header=header).encode()


def scalefactors_bytes(slide: Slide) -> bytes:
    return json.dumps(slide.scalefactors).encode()


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def png_bytes(image: np.ndarray) -> bytes:
    return _once("png", image, lambda: _png(image))


def jpg_bytes(image: np.ndarray) -> bytes:
    def make():
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=92)
        return buffer.getvalue()
    return _once("jpg", image, make)


def tif_bytes(image: np.ndarray, bits: int = 8, planar: bool = False) -> bytes:
    """An RGB TIFF; 16 bits scale 0–255 to 0–65535 (× 257), ``planar`` stores it channel-first."""
    def make():
        data = image.astype(np.uint16) * 257 if bits == 16 else image
        buffer = io.BytesIO()
        if planar:
            tifffile.imwrite(buffer, np.moveaxis(data, -1, 0), photometric="rgb", planarconfig="separate")
        else:
            tifffile.imwrite(buffer, data, photometric="rgb")
        return buffer.getvalue()
    return _once("tif", image, make, bits, planar)


def hires_for_lowres(slide: Slide) -> np.ndarray:
    scale = slide.scalefactors["tissue_lowres_scalef"] / slide.scalefactors["tissue_hires_scalef"]
    h, w = slide.hires.shape[:2]
    return np.asarray(Image.fromarray(slide.hires).resize((max(1, round(w * scale)), max(1, round(h * scale)))))


def spatial_members(prefix: str, slide: Slide, *, lowres: bool = True) -> dict[str, bytes]:
    """A Space Ranger ``spatial/`` folder (positions without header, scale factors, PNGs)."""
    out = {f"{prefix}/tissue_positions_list.csv": positions_bytes(slide),
           f"{prefix}/scalefactors_json.json": scalefactors_bytes(slide),
           f"{prefix}/tissue_hires_image.png": png_bytes(slide.hires)}
    if lowres:
        out[f"{prefix}/tissue_lowres_image.png"] = _once("lowres", slide, lambda: _png(hires_for_lowres(slide)))
    return out


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def tar_bytes(members: dict[str, bytes], gz: bool = True) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w", **({"compresslevel": 1} if gz else {})) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------
# One builder per publication: {authors' URL: bytes}, and the slides written (the truth)
# ------------------------------------------------------------------------------------------------


class Slides:
    """Hands out one pool slide per slide id of a publication (the same id → the same slide)."""

    def __init__(self):
        self.written: dict[str, Slide] = {}

    def __call__(self, slide_id: str, organism: str, depth: float = 1.0) -> Slide:
        if slide_id not in self.written:
            self.written[slide_id] = pool_slide(len(self.written), organism, depth)
        return self.written[slide_id]


def _tenx(specs: list[DatasetSpec], slides: Slides) -> dict[str, bytes]:
    files = {}
    sixteen = {"10xgenomic_human_brain": False, "10xgenomic_mouse_brain_coronal": True}  # id → planar
    for spec in specs:
        for sid in spec.slides:
            s = slides(sid, spec.organism)
            base = f"{SQUIDPY_S3}/{sid}/{sid}"
            files[f"{base}_filtered_feature_bc_matrix.h5"] = h5_bytes(s)
            files[f"{base}_spatial.tar.gz"] = tar_bytes(spatial_members("spatial", s))
            files[f"{base}_image.tif"] = (tif_bytes(s.fullres, 16, planar=sixteen[spec.id]) if spec.id in sixteen
                                          else tif_bytes(s.fullres))
    return files


def _abalo(specs, slides) -> dict[str, bytes]:
    members = {}
    for spec in specs:
        for sid in spec.slides:
            s = slides(sid, spec.organism)
            members[f"{sid}/filtered_feature_bc_matrix.h5"] = h5_bytes(s)
            members.update(spatial_members(f"{sid}/spatial", s, lowres=False))
            members[f"{sid}/{sid}_HE.jpg"] = jpg_bytes(s.fullres)
    return {f"{MENDELEY_S3}/2bh5fchcv6-1.zip": zip_bytes(members)}


def _erickson(specs, slides) -> dict[str, bytes]:
    top = "Spatially resolved clonal copy number alterations in benign and malignant tissueJus"
    members = {f"{top}/README.txt": b"miniature"}
    for spec in specs:
        for sid in spec.slides:
            s = slides(sid, spec.organism)
            patient, name = sid.split("_")[0][1], sid.split("_")[1].replace("-", "_")  # P1_H1-5 -> 1, H1_5
            counts = (f"{top}/Count_matrices/Patient {patient}/Visium_with_annotation/Patient{patient}_{name}"
                      if patient == "1" else f"{top}/Count_matrices/Patient {patient}/Patient{patient}_{name}")
            members[f"{counts}/filtered_feature_bc_matrix.h5"] = h5_bytes(s)
            members[f"{counts}/tissue_positions_list.csv"] = positions_bytes(s)
            members[f"{counts}/scalefactors_json.json"] = scalefactors_bytes(s)
            members[f"{top}/10x_spaceranger_tissue_highres_images/Patient {patient}/"
                    f"Patient{patient}_{name}_tissue_hires_image.png"] = png_bytes(s.hires)
            he = f"{top}/Histological_images/Patient_{patient}/" + ("Visium/" if patient == "1" else "")
            members[f"{he}Patient{patient}_{name}_HE.jpg"] = jpg_bytes(s.fullres)
    return {f"{MENDELEY_S3}/svw96g68dv-4.zip": zip_bytes(members)}


def _fan(specs, slides) -> dict[str, bytes]:
    sections = {"HC1": "A1", "HC2": "B1", "MOB1": "C1", "MOB2": "D1"}  # the authors' slices_names
    out = "Ex-ST/processed_data/spaceranger_output"
    members = {"Ex-ST/processed_data/stereoscope_output_modified_visium/res.tsv": b"x",
               "Ex-ST/processed_data/stereoscope_output_expST_standard_Visium_MOB_hippocampus/res.tsv": b"x"}
    for spec in specs:
        for sid in spec.slides:
            s = slides(sid, spec.organism)
            section = spec.source.source_names[sid]  # HC_A1 -> HC1 (the archive's name)
            assert sid == f"{section[:-1]}_{sections[section]}", (sid, section)
            folder = f"{out}/Visium_modified_{section}"
            members[f"{folder}/filtered_feature_bc_matrix.h5"] = h5_bytes(s)
            members.update(spatial_members(f"{folder}/spatial", s))
            members[f"Ex-ST/raw_imgs/expST_modified_{section}_{sections[section]}.jpg"] = jpg_bytes(s.fullres)
            members[f"Ex-ST/raw_imgs/expST_standard_{section}_{sections[section]}.jpg"] = jpg_bytes(s.hires)
    decoy = slides("hippocampus_standard", "mouse")
    members[f"{out}/hippocampus_standard_Visium_10XGenomics/filtered_feature_bc_matrix.h5"] = h5_bytes(decoy)
    return {f"{MENDELEY_S3}/nrbsxrk9mp-1.zip": zip_bytes(members)}


MIRZAZADEH_TARS = {"colon": "colon", "pediatric_brain_tumor": "pediatricbraintumor",
                   "prostate_cancer": "prostatecancer", "small_intestine": "smallintestine",
                   "bone": "mousebone", "brain": "mousebrain"}


def _mirzazadeh_tissue(dataset_id: str) -> str:
    rest = dataset_id.removeprefix("mirzazadeh_").split("_", 1)[1]  # drop the organism
    rest = rest.removesuffix("_p1").removesuffix("_p2")
    return MIRZAZADEH_TARS[rest]


def _mirzazadeh(specs, slides) -> dict[str, bytes]:
    top1 = "Spatially resolved transcriptomic profiling of degraded and challenging fresh frozen samples Supplementary Data 1"
    top2 = "Spatially resolved transcriptomic profiling of degraded and challenging fresh frozen samples Supplementary Data 2"
    tars: dict[str, dict[str, bytes]] = {}
    zip1, zip2 = {}, {}
    for spec in specs:
        tissue = _mirzazadeh_tissue(spec.id)
        for sid in spec.slides:
            s = slides(sid, spec.organism, depth=4.0 if tissue == "smallintestine" else 1.0)
            inner = tars.setdefault(tissue, {})
            inner[f"{tissue}/{sid}/filtered_feature_bc_matrix.h5"] = h5_bytes(s)
            inner.update(spatial_members(f"{tissue}/{sid}/spatial", s, lowres=False))
            if tissue == "smallintestine":  # second archive, some names with '_' for the first '-'
                name = sid.replace("-", "_", 1) if sid.startswith("V19T26") else sid
                zip2[f"{top2}/smallintestine/{name}.jpg"] = jpg_bytes(s.fullres)
            else:
                folder = "prostate cancer" if tissue == "prostatecancer" else tissue
                zip1[f"{top1}/images/{folder}/{sid}.jpg"] = jpg_bytes(s.fullres)
    extra = slides("V99X99-000_A1", "human")  # a slide of no dataset: the authors delete such folders
    tars["colon"].update({f"colon/V99X99-000_A1/filtered_feature_bc_matrix.h5": h5_bytes(extra),
                          **spatial_members("colon/V99X99-000_A1/spatial", extra, lowres=False)})
    for tissue, inner in tars.items():
        zip1[f"{top1}/spaceranger_output/{tissue}.tar.gz"] = tar_bytes(inner)
    return {f"{MENDELEY_S3}/4w6krnywhn-1.zip": zip_bytes(zip1), f"{MENDELEY_S3}/442mhsrpcm-1.zip": zip_bytes(zip2)}


def _parigi(specs, slides) -> dict[str, bytes]:
    samples = {"A1_S1": ("GSM5213483", "Region1_colon_d0"), "B1_S2": ("GSM5213484", "Region2_colon_d14")}
    members = {}
    for spec in specs:
        for sid in spec.slides:
            s = slides(sid, spec.organism)
            sample, region = samples[sid]
            stem = f"{sample}_V19S23-097_{sid}"
            scale = 1.0 + 0.25 * np.arange(s.counts.shape[0])[:, None] / s.counts.shape[0]  # normalised values
            s = slides.written[sid] = replace(s, counts=sp.csr_matrix(s.counts.toarray() * scale))
            table = pd.DataFrame(s.counts.toarray().T, index=pd.Index(s.genes.symbols, name="gene"),
                                 columns=[f"{b}_1" for b in s.barcodes])
            members[f"{stem}_normalized_data.tsv.gz"] = gzip.compress(table.to_csv(sep="\t").encode(), compresslevel=1)
            members[f"{stem}_tissue_positions_list.csv.gz"] = gzip.compress(positions_bytes(s), compresslevel=1)
            members[f"{stem}_scalefactors_json.json.gz"] = gzip.compress(scalefactors_bytes(s), compresslevel=1)
            members[f"{stem}_{region}_rotated.tif.gz"] = gzip.compress(tif_bytes(s.fullres, 16), compresslevel=1)
    return {"https://www.ncbi.nlm.nih.gov/geo/download/?acc=GSE169749&format=file": tar_bytes(members, gz=False)}


def _vicari(specs, slides) -> dict[str, bytes]:
    """The figshare ids are the registry's (each checked against the authors' ``links`` table)."""
    files = {}
    for spec in specs:
        for item in spec.source.files:
            s = slides(item.slide, spec.organism)
            name = item.path.split("/", 2)[2]
            files[item.urls[0]] = {
                "filtered_feature_bc_matrix.h5": lambda: h5_bytes(s),
                "spatial/tissue_positions_list.csv": lambda: positions_bytes(s),
                "spatial/scalefactors_json.json": lambda: scalefactors_bytes(s),
                "spatial/tissue_hires_image.png": lambda: png_bytes(s.hires),
                "source_image.jpg": lambda: jpg_bytes(s.fullres),
            }[name]()
    return files


def _villacampa(specs, slides) -> dict[str, bytes]:
    data, images = {}, {}
    for spec in specs:
        tissue = "".join(spec.id.split("_")[1:])  # the authors' self.tissue
        for sid in spec.slides:
            s = slides(sid, spec.organism)
            data[f"data/{tissue}/{sid}/filtered_feature_bc_matrix.h5"] = h5_bytes(s)
            data.update(spatial_members(f"data/{tissue}/{sid}/spatial", s, lowres=False))
            images[f"images/{sid}.jpg"] = jpg_bytes(s.fullres)
    base = "https://data.mendeley.com/public-files/datasets/xjtv62ncwr/files"
    return {f"{base}/d2386c24-a17f-4ea7-b3e5-bc5091c3d1c3/file_downloaded": tar_bytes(data),
            f"{base}/65ea796b-6df6-4908-9c62-bcf728a98894/file_downloaded": tar_bytes(images)}


def _batiuk(specs, slides) -> dict[str, bytes]:
    counts = {name: b"RDS" for name in ("annotations_final.RDS", "snRNA-seq_Conos_object.RDS",
                                        "snRNA-seq_raw_countmatrices.RDS",
                                        "visium_spatial_transcriptomics_raw_countmatrices.RDS")}
    counts["visium_spatial_transcriptomics_histological_cortical_layer_annotations.zip"] = zip_bytes({"a.csv": b"x"})
    images = {}
    for spec in specs:
        for sid in spec.slides:
            s = slides(sid, spec.organism)
            outs = f"visium_spaceranger_output/{sid}/outs"
            counts.update(mtx_members(f"{outs}/filtered_feature_bc_matrix", s))
            counts.update(spatial_members(f"{outs}/spatial", s))
            images[f"{sid}_Visium_HE.tif"] = tif_bytes(s.fullres)
    base = "https://zenodo.org/records/6921620/files"
    return {f"{base}/snRNA-seq_and_spatial_transcriptomics.zip?download=1": zip_bytes(counts),
            f"{base}/visium_sample_images.zip?download=1": zip_bytes(images)}


def _hudson(specs, slides) -> dict[str, bytes]:
    """No reader of the authors: the registry's own GEO layout (per-sample files, one image tar)."""
    files, images = {}, {}
    for spec in specs:
        for item in spec.source.files:
            if item.slide is None:
                continue
            s = slides(item.slide, spec.organism)
            name = Path(item.path).name
            files[item.urls[0]] = (h5_bytes(s) if name == "filtered_feature_bc_matrix.h5"
                                   else tar_bytes(spatial_members("spatial", s)))
            images[f"GSE179572_all_spatial_images/pt{spec.source.source_names[item.slide]}.tif"] = tif_bytes(s.fullres)
        series = next(f for f in spec.source.files if f.slide is None)
        files[series.urls[0]] = tar_bytes(images)
    return files


BUILDERS: dict[str, Callable[[list[DatasetSpec], Slides], dict[str, bytes]]] = {
    "10x": _tenx, "abalo": _abalo, "erickson": _erickson, "fan": _fan, "mirzazadeh": _mirzazadeh,
    "parigi": _parigi, "vicari": _vicari, "villacampa": _villacampa, "batiuk": _batiuk, "hudson": _hudson,
}
#: Publications whose miniature follows the registry, for want of a reader of the authors'.
REGISTRY_LAYOUT = ("hudson",)


@dataclass
class Mirror:
    """A built mirror: its folder, the SHA-256 of each file (by cache path) and the slides written."""

    root: Path
    sha256: dict[str, str]
    slides: dict[str, dict[str, Slide]]  # dataset id → slide id → slide

    def covered(self) -> list[str]:
        return list(self.slides)


def build_mirror(root: Path, specs: Iterable[DatasetSpec]) -> Mirror:
    """Write every remote dataset's miniature files under ``root`` at their registry cache paths."""
    remote = [s for s in specs if s.source.kind == "remote"]
    by_publication: dict[str, list[DatasetSpec]] = {}
    for spec in remote:
        by_publication.setdefault(spec.publication["key"], []).append(spec)
    missing = sorted(set(by_publication) - set(BUILDERS))
    if missing:
        raise KeyError(f"no miniature builder for publication(s) {missing}")
    sha, slides_of = {}, {}
    for publication, group in by_publication.items():
        where = {u: f.path for spec in group for f in spec.source.files for u in f.urls}
        slides = Slides()
        for url, data in BUILDERS[publication](group, slides).items():
            if url not in where:
                raise KeyError(f"{publication}: the authors' code downloads {url}, which data/datasets.yml "
                               f"does not list (its URLs: {sorted(where)[:4]} ...)")
            target = root / where[url]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            sha[where[url]] = hashlib.sha256(data).hexdigest()
        for spec in group:
            slides_of[spec.id] = {sid: slides.written[sid] for sid in spec.slides}
    return Mirror(root, sha, slides_of)
