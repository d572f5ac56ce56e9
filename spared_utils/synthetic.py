"""The embedded default: a deterministic, Visium-like synthetic dataset.

It lets the whole book run offline on a CPU while exercising exactly the code that real data
goes through. What it imitates, and how:

* **Slides on the Visium grid.** Spots sit at array positions ``(row, col)`` with ``row + col``
  even (10x Genomics' convention); centre-to-centre distance ``spot_spacing_px`` full-resolution
  pixels, spot diameter 55/100 of it (55 µm spots, 100 µm apart). The tissue is a blob with a
  smooth, irregular outline.
* **Tissue domains and smooth programmes.** ``n_factors`` latent fields per slide are Gaussian
  random fields (random Fourier features, length scale ``length_scale_spots`` spot distances).
  The arg-max of the first ``n_domains`` of them gives domains with smooth boundaries.
* **Genes.** A fraction ``frac_spatial`` of genes depend on the domain and on two latent fields
  (spatially autocorrelated); the rest are independent noise around their own mean. Counts are
  negative binomial (gamma–Poisson) with an extra technical dropout that is more likely for
  weakly expressed genes, so zeros are frequent and concentrated where expression is low.
  Each slide has its own sequencing depth and per-gene multiplicative batch effect.
* **An H&E-like image.** Colour follows the Beer–Lambert stain model (haematoxylin and eosin
  optical-density vectors of Ruifrok & Johnston, 2001). Nuclear density and size depend on the
  domain and on the first two latent fields; eosin intensity on the third. A domain looks the
  same on every slide (its look is drawn once per dataset), so what a model learns from the
  images of training slides carries over to held-out slides. The same latent
  fields drive expression, so an image model can learn expression, but only through texture.

Everything is drawn from ``numpy.random.default_rng`` seeded by ``seed``: the same arguments give
the same AnnData, bit for bit.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from PIL import Image
from scipy import ndimage

from .utils import atomic_path

#: Haematoxylin and eosin optical-density vectors (Ruifrok & Johnston, Anal Quant Cytol Histol 2001).
STAIN_H = np.array([0.650, 0.704, 0.286])
STAIN_E = np.array([0.072, 0.990, 0.105])

#: Bumped whenever the same arguments would give other data; cached copies of older versions are
#: regenerated (:func:`spared_utils.datasets.prepare_source`) and re-curated.
GENERATOR_VERSION = 2

SPOT_DIAMETER_UM = 55.0
SPOT_SPACING_UM = 100.0


@dataclass(frozen=True)
class SyntheticConfig:
    """Every knob of :func:`make_dataset` (defaults give ~1,000 spots per slide)."""

    seed: int = 0
    n_slides: int = 4
    n_rows: int = 40
    n_cols: int = 80
    n_genes: int = 256
    frac_spatial: float = 0.5
    n_domains: int = 5
    n_factors: int = 6
    length_scale_spots: float = 5.0
    spot_spacing_px: float = 40.0
    hires_scalef: float = 0.5
    lowres_scalef: float = 0.125
    nb_dispersion: float = 4.0
    batch_sd: float = 0.25
    depth_sd: float = 0.3
    #: technical dropout: a count is zeroed with probability ``dropout_scale / (1 + mean)``
    dropout_scale: float = 0.3


def slide_ids(n_slides: int) -> list[str]:
    """Synthetic slide names: ``SYN_A1``, ``SYN_B1``, … (Visium capture-area style)."""
    if not 1 <= n_slides <= 26:
        raise ValueError(f"n_slides must be between 1 and 26, got {n_slides}")
    return [f"SYN_{chr(ord('A') + i)}1" for i in range(n_slides)]


def default_splits(ids: list[str]) -> dict[str, str]:
    """Slide → split: the last slide is test, the one before val, the rest train."""
    if len(ids) < 3:
        return {s: ("train" if i == 0 else "val") for i, s in enumerate(ids)}
    return {s: "train" if i < len(ids) - 2 else ("val" if i == len(ids) - 2 else "test") for i, s in enumerate(ids)}


def position_barcode(row: np.ndarray, col: np.ndarray) -> np.ndarray:
    """A Visium-like 16-nt barcode per array position (same position → same barcode)."""
    code = (np.asarray(row, dtype=np.int64) * 1000 + np.asarray(col, dtype=np.int64)) * 2654435761 % (4**16)
    letters = np.array(list("ACGT"))
    digits = (code[:, None] // (4 ** np.arange(16)[None, ::-1])) % 4
    return np.array(["".join(letters[d]) + "-1" for d in digits])


def make_dataset(seed: int = 0, images: bool = True, **size) -> ad.AnnData:
    """Generate the embedded Visium-like dataset.

    Parameters
    ----------
    seed
        Seed of every random draw; the same seed and sizes give the same data.
    images
        Render the H&E-like images (``False`` skips them, the slowest part, for callers that only
        need expression; every other value is the same, as the images are drawn last).
    **size
        Any field of :class:`SyntheticConfig` (``n_slides``, ``n_rows``, ``n_cols``,
        ``n_genes``, ``frac_spatial``, ...).

    Returns
    -------
    AnnData
        All slides in one object: raw counts in ``X`` and ``layers["counts"]``; the counts before
        technical dropout in ``layers["counts_before_dropout"]`` (the truth of the entries that
        dropout zeroed; no curation step or method reads it, and it is not written to the
        Space Ranger files); and the expected counts (the negative binomial's mean, before
        sampling and dropout) in ``layers["expected_counts"]`` (float32);
        ``obs`` with ``slide_id``, ``split``, ``patient``, ``array_row``, ``array_col``,
        ``in_tissue`` and the ground-truth ``domain``; ``obsm["spatial"]`` (full-resolution
        pixel x, y); ``var`` with ``gene_symbol``, ``gene_length`` (bp) and the ground-truth
        flag ``spatial_gene``; ``uns["spatial"][slide_id]`` with ``images`` (``hires``,
        ``fullres``) and ``scalefactors`` as scanpy/squidpy expect.
    """
    unknown = set(size) - set(SyntheticConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"make_dataset got unknown size argument(s) {sorted(unknown)}; "
                        f"valid: {sorted(SyntheticConfig.__dataclass_fields__)}")
    cfg = SyntheticConfig(seed=seed, **size)
    if cfg.n_genes < 4 or cfg.n_rows < 6 or cfg.n_cols < 12:
        raise ValueError("make_dataset needs n_genes >= 4, n_rows >= 6 and n_cols >= 12")
    root_seq = np.random.SeedSequence(seed)
    gene_seq, *slide_seqs = root_seq.spawn(cfg.n_slides + 1)
    genes = _gene_programme(cfg, np.random.default_rng(gene_seq))

    ids = slide_ids(cfg.n_slides)
    splits = default_splits(ids)
    half = (cfg.n_slides + 1) // 2
    pieces, spatial = [], {}
    for i, (sid, seq) in enumerate(zip(ids, slide_seqs)):
        rng = np.random.default_rng(seq)
        obs, coords, counts, before, expected, slide_images = _make_slide(cfg, genes, rng, images)
        obs.insert(0, "slide_id", sid)
        obs.insert(1, "split", splits[sid])
        obs.insert(2, "patient", "P1" if i < half else "P2")
        obs.index = [f"{b}_{sid}" for b in obs["barcode"]]
        piece = ad.AnnData(X=counts, obs=obs)
        piece.layers["counts_before_dropout"] = before
        piece.layers["expected_counts"] = expected
        piece.obsm["spatial"] = coords
        pieces.append(piece)
        spatial[sid] = slide_images

    adata = ad.concat(pieces, merge="same")
    adata.var_names = genes["ids"]
    adata.var["gene_symbol"] = genes["symbols"]
    adata.var["gene_length"] = genes["lengths"]
    adata.var["spatial_gene"] = genes["spatial"]
    for key in ("slide_id", "split", "patient", "domain"):
        adata.obs[key] = adata.obs[key].astype("category")
    adata.layers["counts"] = adata.X.copy()
    adata.layers["counts_before_dropout"] = sp.csr_matrix(adata.layers["counts_before_dropout"])
    adata.uns["spatial"] = spatial
    adata.uns["synthetic_config"] = asdict(cfg)
    return adata


def _gene_programme(cfg: SyntheticConfig, rng: np.random.Generator) -> dict:
    g = cfg.n_genes
    n_spatial = int(round(cfg.frac_spatial * g))
    spatial = np.zeros(g, dtype=bool)
    spatial[rng.permutation(g)[:n_spatial]] = True
    base = rng.normal(np.log(1.5), 1.1, size=g)
    loadings = np.zeros((g, cfg.n_factors))
    for j in np.flatnonzero(spatial):
        f = rng.choice(cfg.n_factors, size=2, replace=False)
        loadings[j, f] = rng.normal(0, 0.7, size=2)
    domain_effect = rng.normal(0, 0.8, size=(g, cfg.n_domains)) * spatial[:, None]
    lengths = np.exp(rng.normal(np.log(2500), 0.6, size=g)).astype(np.int64) + 200
    # How each domain looks (nuclear density and size, eosin): one tissue, so the same on every slide.
    look = {
        "density": np.linspace(0.004, 0.016, cfg.n_domains)[rng.permutation(cfg.n_domains)],
        "radius": np.linspace(1.2, 2.6, cfg.n_domains)[rng.permutation(cfg.n_domains)],
        "eosin": np.linspace(0.25, 0.6, cfg.n_domains)[rng.permutation(cfg.n_domains)],
    }
    return {
        "ids": [f"SYNG{i:05d}" for i in range(g)],
        "symbols": [f"Syn{i}" for i in range(g)],
        "lengths": lengths,
        "spatial": spatial,
        "base": base,
        "loadings": loadings,
        "domain_effect": domain_effect,
        "look": look,
    }


def _grid_geometry(cfg: SyntheticConfig) -> tuple[float, float, float, int, int]:
    dx = cfg.spot_spacing_px / 2.0
    dy = dx * np.sqrt(3.0)
    margin = 2.0 * cfg.spot_spacing_px
    width = int(np.ceil(2 * margin + (cfg.n_cols - 1) * dx))
    height = int(np.ceil(2 * margin + (cfg.n_rows - 1) * dy))
    return dx, dy, margin, width, height


def grid_positions(cfg: SyntheticConfig) -> pd.DataFrame:
    """Every array position of the capture area with its full-resolution pixel centre."""
    dx, dy, margin, _, _ = _grid_geometry(cfg)
    rows, cols = np.meshgrid(np.arange(cfg.n_rows), np.arange(cfg.n_cols), indexing="ij")
    keep = (rows + cols) % 2 == 0
    rows, cols = rows[keep], cols[keep]
    return pd.DataFrame(
        {
            "barcode": position_barcode(rows, cols),
            "array_row": rows,
            "array_col": cols,
            "pxl_row_in_fullres": np.round(margin + rows * dy).astype(np.int64),
            "pxl_col_in_fullres": np.round(margin + cols * dx).astype(np.int64),
        }
    )


class _Fields:
    """Smooth random fields f_k(x, y), standardised, from random Fourier features."""

    def __init__(self, n: int, length_scale: float, rng: np.random.Generator, n_features: int = 64):
        self.w = rng.normal(0, 1 / length_scale, size=(n, n_features, 2))
        self.phase = rng.uniform(0, 2 * np.pi, size=(n, n_features))
        self.scale = np.sqrt(2.0 / n_features)

    def __call__(self, xy: np.ndarray) -> np.ndarray:
        proj = np.einsum("pd,kfd->pkf", xy, self.w) + self.phase[None]
        return self.scale * np.cos(proj).sum(axis=2)


def _make_slide(cfg: SyntheticConfig, genes: dict, rng: np.random.Generator, render: bool = True):
    dx, dy, margin, width, height = _grid_geometry(cfg)
    pos = grid_positions(cfg)
    length_px = cfg.length_scale_spots * cfg.spot_spacing_px
    fields = _Fields(cfg.n_factors, length_px, rng)

    # Tissue outline: an ellipse with a smooth random radius r(theta).
    centre = np.array([width / 2, height / 2]) + rng.normal(0, 0.03, 2) * [width, height]
    axes = np.array([0.42 * width, 0.40 * height])
    harm = rng.normal(0, 0.06, size=(4, 2))

    def inside(x, y):
        u, v = (x - centre[0]) / axes[0], (y - centre[1]) / axes[1]
        theta = np.arctan2(v, u)
        radius = 1 + sum(a * np.cos(k * theta) + b * np.sin(k * theta) for k, (a, b) in enumerate(harm, start=2))
        return np.hypot(u, v) < radius

    xy_all = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(float)
    tissue = inside(xy_all[:, 0], xy_all[:, 1])
    pos = pos[tissue].reset_index(drop=True)
    xy = xy_all[tissue]
    z = fields(xy)
    domain = z[:, : cfg.n_domains].argmax(axis=1)

    # Expression: log-mean = gene base + batch + depth + spatial programme (spatial genes only).
    n_spots = len(pos)
    batch = rng.normal(0, cfg.batch_sd, size=len(genes["base"]))
    depth = rng.normal(0, cfg.depth_sd) + rng.normal(0, 0.25, size=n_spots)
    log_mu = genes["base"][None] + batch[None] + depth[:, None]
    log_mu = log_mu + z @ genes["loadings"].T + genes["domain_effect"][:, domain].T
    noise = rng.normal(0, 0.3, size=log_mu.shape) * (~genes["spatial"])[None]
    mu = np.exp(log_mu + noise)
    lam = rng.gamma(cfg.nb_dispersion, mu / cfg.nb_dispersion)
    counts = rng.poisson(lam)
    before = sp.csr_matrix(counts.astype(np.float32))  # kept: no draw is added, so nothing else changes
    dropout = rng.random(counts.shape) < cfg.dropout_scale / (1.0 + mu)
    counts[dropout] = 0

    obs = pd.DataFrame(
        {
            "barcode": pos["barcode"].to_numpy(),
            "in_tissue": np.ones(n_spots, dtype=np.int64),
            "array_row": pos["array_row"].to_numpy(),
            "array_col": pos["array_col"].to_numpy(),
            "domain": [f"D{d}" for d in domain],
        }
    )
    spot_d = cfg.spot_spacing_px * SPOT_DIAMETER_UM / SPOT_SPACING_UM
    if render:
        fullres = _render_he(cfg, fields, genes["look"], inside, width, height, rng)
        pictures = {"hires": _resize(fullres, cfg.hires_scalef), "fullres": fullres}
    else:
        pictures = {}
    images = {
        "images": pictures,
        "scalefactors": {
            "tissue_hires_scalef": cfg.hires_scalef,
            "tissue_lowres_scalef": cfg.lowres_scalef,
            "tissue_fullres_scalef": 1.0,
            "spot_diameter_fullres": spot_d,
            "fiducial_diameter_fullres": spot_d * 1.62,
        },
        "metadata": {"source": "spared_utils.synthetic", "seed": cfg.seed},
    }
    return obs, xy, sp.csr_matrix(counts.astype(np.float32)), before, mu.astype(np.float32), images


def _render_he(cfg, fields, look, inside, width, height, rng) -> np.ndarray:
    """An H&E-like RGB image whose texture follows the latent fields and the domains' ``look``."""
    step = 8  # evaluate the smooth fields on a coarse grid, then interpolate
    ys, xs = np.mgrid[0:height:step, 0:width:step]
    coarse = fields(np.column_stack([xs.ravel(), ys.ravel()]).astype(float))
    coarse = coarse.reshape(ys.shape + (cfg.n_factors,))
    zoom = (height / ys.shape[0], width / ys.shape[1])
    z = np.stack([ndimage.zoom(coarse[..., k], zoom, order=1)[:height, :width] for k in range(3)], -1)
    dom = ndimage.zoom(coarse[..., : cfg.n_domains].argmax(-1), zoom, order=0)[:height, :width]
    yy, xx = np.mgrid[0:height, 0:width]
    tissue = inside(xx, yy)

    # Nuclei: a Poisson point process whose rate follows domain and fields 0-1; size by domain.
    rate = look["density"][dom] * np.exp(0.45 * z[..., 0] - 0.25 * z[..., 1]) * tissue
    centres = rng.random((height, width)) < rate
    nuclei = np.zeros((height, width), dtype=np.float32)
    for r in np.unique(look["radius"]):
        seeds = centres & (look["radius"][dom] == r)
        rr = int(np.ceil(r))
        yk, xk = np.mgrid[-rr : rr + 1, -rr : rr + 1]
        disc = (np.hypot(yk, xk) <= r).astype(np.float32)
        nuclei = np.maximum(nuclei, np.minimum(ndimage.convolve(seeds.astype(np.float32), disc, mode="constant"), 1))
    nuclei = ndimage.gaussian_filter(nuclei, 0.7)

    grain = ndimage.gaussian_filter(rng.normal(0, 1, (height, width)), 1.5)
    grain /= grain.std() + 1e-8
    eosin = tissue * look["eosin"][dom] * np.exp(0.25 * z[..., 2]) * (1 + 0.15 * grain)
    haem = nuclei * (0.9 + 0.1 * grain) + tissue * 0.06
    od = haem[..., None] * STAIN_H + eosin[..., None] * STAIN_E
    rgb = 245.0 * np.exp(-od) + rng.normal(0, 2.0, (height, width, 1))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _resize(image: np.ndarray, scale: float) -> np.ndarray:
    h, w = image.shape[:2]
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


# --------------------------------------------------------------------------------------------
# Writing the same data in the Space Ranger layout, so that the real readers are exercised.
# --------------------------------------------------------------------------------------------


def write_10x_h5(path: Path, counts: sp.spmatrix, barcodes, gene_ids, gene_names,
                 library_id: str | None = None) -> None:
    """Write a spots × genes count matrix as a Cell Ranger/Space Ranger v3 HDF5 file.

    With ``library_id``, the file carries Space Ranger's ``library_ids`` attribute, which
    :func:`scanpy.read_visium` reads as the key of ``uns["spatial"]``.
    """
    mat = sp.csc_matrix(counts.T)  # 10x stores genes × barcodes in CSC
    mat.sort_indices()
    with h5py.File(path, "w") as f:
        if library_id is not None:
            f.attrs["library_ids"] = np.array([library_id], dtype="S")
        g = f.create_group("matrix")
        g.create_dataset("barcodes", data=np.array(barcodes, dtype="S"))
        g.create_dataset("data", data=mat.data.astype(np.int32), compression="gzip")
        g.create_dataset("indices", data=mat.indices.astype(np.int64), compression="gzip")
        g.create_dataset("indptr", data=mat.indptr.astype(np.int64))
        g.create_dataset("shape", data=np.array(mat.shape, dtype=np.int32))
        feat = g.create_group("features")
        feat.create_dataset("id", data=np.array(gene_ids, dtype="S"))
        feat.create_dataset("name", data=np.array(gene_names, dtype="S"))
        feat.create_dataset("feature_type", data=np.array(["Gene Expression"] * len(gene_ids), dtype="S"))
        feat.create_dataset("genome", data=np.array(["synthetic"] * len(gene_ids), dtype="S"))
        feat.create_dataset("_all_tag_keys", data=np.array(["genome"], dtype="S"))


def write_spaceranger(adata: ad.AnnData, root: str | os.PathLike) -> Path:
    """Write a :func:`make_dataset` object as Space Ranger outputs, one folder per slide.

    Layout (per slide): ``<root>/<slide_id>/filtered_feature_bc_matrix.h5``,
    ``spatial/tissue_positions.csv`` (with header, every capture-area position, ``in_tissue``
    0/1), ``spatial/scalefactors_json.json``, ``spatial/tissue_hires_image.png``,
    ``spatial/tissue_lowres_image.png`` and the full-resolution ``image.tif``; plus
    ``<root>/gene_lengths.tsv`` (columns ``gene``, ``merged``, as the GENCODE tables).
    The folder appears whole or not at all (written to a temporary sibling, then renamed).
    """
    root = Path(root)
    if "synthetic_config" not in adata.uns:
        raise ValueError("write_spaceranger writes objects made by spared_utils.synthetic.make_dataset")
    cfg = SyntheticConfig(**adata.uns["synthetic_config"])
    with atomic_path(root, directory=True) as tmp:
        counts = adata.layers["counts"] if "counts" in adata.layers else adata.X
        pd.DataFrame({"gene": adata.var_names, "merged": adata.var["gene_length"].to_numpy()}).to_csv(
            tmp / "gene_lengths.tsv", sep="\t", index=False
        )
        grid = grid_positions(cfg)
        for sid in adata.obs["slide_id"].cat.categories:
            sel = (adata.obs["slide_id"] == sid).to_numpy()
            sub_obs = adata.obs.loc[sel]
            folder = tmp / sid
            (folder / "spatial").mkdir(parents=True)
            write_10x_h5(
                folder / "filtered_feature_bc_matrix.h5",
                counts[sel],
                sub_obs["barcode"].to_numpy(),
                adata.var_names.to_numpy(),
                adata.var["gene_symbol"].to_numpy(),
                library_id=str(sid),
            )
            positions = grid.copy()
            positions.insert(1, "in_tissue", positions["barcode"].isin(sub_obs["barcode"]).astype(int))
            positions.to_csv(folder / "spatial" / "tissue_positions.csv", index=False)
            lib = adata.uns["spatial"][sid]
            sf = {k: v for k, v in lib["scalefactors"].items() if k != "tissue_fullres_scalef"}
            (folder / "spatial" / "scalefactors_json.json").write_text(json.dumps(sf, indent=2))
            full = lib["images"]["fullres"]
            Image.fromarray(lib["images"]["hires"]).save(folder / "spatial" / "tissue_hires_image.png")
            Image.fromarray(_resize(full, cfg.lowres_scalef)).save(folder / "spatial" / "tissue_lowres_image.png")
            Image.fromarray(full).save(folder / "image.tif", compression="tiff_deflate")
    return root


def write_new_slide(root: str | os.PathLike, seed: int = 0, **size) -> Path:
    """A slide that :func:`make_dataset` with ``seed`` and ``size`` does not contain, as Space Ranger output.

    The slide shares the dataset's gene programme and tissue look (same genes, lengths and domain
    appearance: drawn from the same seed) but is a new section: it is the slide that would come
    after the dataset's last one. It is written by :func:`write_spaceranger` into
    ``<root>/<slide_id>/`` (with ``<root>/gene_lengths.tsv``), the layout a user's own slide has.

    Returns
    -------
    Path
        The slide's folder (what :func:`spared_utils.apply` reads).
    """
    n_slides = int(size.pop("n_slides", SyntheticConfig.n_slides)) + 1
    adata = make_dataset(seed=seed, n_slides=n_slides, **size)
    new = slide_ids(n_slides)[-1]
    one = adata[(adata.obs["slide_id"] == new).to_numpy()].copy()
    one.obs["slide_id"] = one.obs["slide_id"].cat.remove_unused_categories()
    one.uns["spatial"] = {new: adata.uns["spatial"][new]}
    write_spaceranger(one, root)
    return Path(root) / new
