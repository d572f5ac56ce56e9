"""stLearn's SME imputation, re-implemented (the paper's third completion method).

SME – *spatial location, morphology and expression* – is stLearn's normalisation and
imputation (Pham et al., "stLearn: integrating spatial location, tissue morphology and gene
expression to find cell types, cell-cell interactions and spatial trajectories within
undissociated tissues", bioRxiv 2020; Nat Commun 14, 7739, 2023). Its imputation of zeros
(``stlearn.spatial.SME.SME_impute0``), as published in stLearn's repository
(github.com/BiomedicalMachineLearning/stLearn, ``SME/_weighting_matrix.py``), works per slide:

1. **S, spatial location.** ``unit`` is the image distance of one array step, from two linear
   regressions (image row on array row, image column on array column):
   ``unit = sqrt(coef_row² + coef_col²)``. Spot ``j`` is a neighbour of ``i`` when their image
   distance is below ``rate · unit`` (``rate`` = 3 on Visium, 1.5 on the legacy ST grid):
   ``S_ij ∈ {0, 1}``.
2. **M, morphology.** A CNN (ResNet-50 pretrained on ImageNet in stLearn) embeds the image tile
   around each spot (``crop_size`` = 40 image pixels), reduced to 50 principal components;
   ``M_ij = max(0, cosine similarity)``.
3. **E, expression.** ``E_ij`` = Pearson correlation of the spots' expression PCA coordinates.
4. **Weights** ``w_ij = S_ij · M_ij · E_ij``. For each spot, the 3 largest weights — the spot
   itself included (its weight is 1) — give ``imputed_i = Σ w_ij x_j / Σ w_ij``.
5. Zero (missing) entries are replaced by ``imputed``; measured values are kept.

Differences from stLearn's code, all on purpose: pairs are found with a k-d tree inside the
radius (no dense ``spots × spots`` matrices); missing entries are given by an explicit mask
rather than by ``== 0``; the backbone is a timm model with ``pretrained`` as a parameter (stLearn
downloads Keras ImageNet weights). stLearn ≥ 1.1 (2025) computes both regression coefficients
from the column regression (one ``LinearRegression`` object fitted twice), which shrinks the
radius on Visium from 3 to ≈ 2.1 spot spacings; ``unit_rule="stlearn_1.2"`` reproduces that for
the numerical check against the installed package (``benchmarks/bench_completion.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from anndata import AnnData

from .. import graphs
from ..training import resolve_device

#: Weightings with a spatial term (the only ones that keep memory linear in the spots).
WEIGHTS = ("all", "pd_md", "pd_gd", "physical")


@dataclass
class SmeConfig:
    """Parameters of SME imputation (stLearn's defaults unless noted)."""

    weights: str = "all"  #: S·M·E; "pd_md" S·M, "pd_gd" S·E, "physical" S only
    n_top: int | None = None  #: spots averaged: 3 (6 for "physical"), as stLearn
    rate: float | None = None  #: radius in units; None → 3 (Visium) or 1.5 (square grid)
    unit_rule: str = "published"  #: or "stlearn_1.2" (see the module docstring)
    n_pcs: int = 50  #: expression PCs
    n_morph_components: int = 50  #: morphology PCs
    backbone: str = "resnet50"  #: any timm model name
    pretrained: bool = False  #: ImageNet weights (needs internet or a timm cache)
    crop_size: int = 40  #: tile side in pixels of the image used
    tile_size: int = 224  #: tile side fed to the backbone
    image_key: str = "hires"
    batch_size: int = 32
    device: str = "auto"
    progress: bool = False

    def __post_init__(self):
        if self.weights not in WEIGHTS:
            raise ValueError(f"SmeConfig.weights must be one of {WEIGHTS}, got {self.weights!r} "
                             "(weightings without the spatial term need dense spots × spots matrices)")
        if self.unit_rule not in ("published", "stlearn_1.2"):
            raise ValueError(f"unit_rule must be 'published' or 'stlearn_1.2', got {self.unit_rule!r}")

    @property
    def top(self) -> int:
        return self.n_top or (6 if self.weights == "physical" else 3)

    @property
    def uses_morphology(self) -> bool:
        return self.weights in ("all", "pd_md")

    @property
    def uses_expression(self) -> bool:
        return self.weights in ("all", "pd_gd")


# ---------------------------------------------------------------------------------------------
# The three similarities
# ---------------------------------------------------------------------------------------------


def array_unit(image_row: np.ndarray, image_col: np.ndarray, array_row: np.ndarray, array_col: np.ndarray,
               rule: str = "published") -> float:
    """Image distance of one array step from least-squares fits of image on array coordinates."""
    def slope(y, x):
        x = np.asarray(x, dtype=np.float64)
        if np.ptp(x) == 0:
            return 0.0
        return float(np.polyfit(x, np.asarray(y, dtype=np.float64), 1)[0])

    c_col = slope(image_col, array_col)
    if rule == "stlearn_1.2":
        return float(np.hypot(c_col, c_col))
    return float(np.hypot(slope(image_row, array_row), c_col))


def radius_pairs(image_xy: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """All ordered pairs ``(i, j)`` (self pairs included) with distance ``< radius``."""
    from scipy.spatial import cKDTree

    tree = cKDTree(image_xy)
    pairs = tree.query_pairs(r=radius, output_type="ndarray")
    if len(pairs):
        d = np.linalg.norm(image_xy[pairs[:, 0]] - image_xy[pairs[:, 1]], axis=1)
        pairs = pairs[d < radius]  # strict, as stLearn's ``pd >= rate * unit → 0``
    n = len(image_xy)
    i = np.concatenate([np.arange(n), pairs[:, 0], pairs[:, 1]]) if len(pairs) else np.arange(n)
    j = np.concatenate([np.arange(n), pairs[:, 1], pairs[:, 0]]) if len(pairs) else np.arange(n)
    return i, j


def _unit_rows(a: np.ndarray, centre: bool) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if centre:
        a = a - a.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(a, axis=1, keepdims=True)
    return np.divide(a, norm, out=np.zeros_like(a), where=norm > 0)


def pair_similarity(features: np.ndarray, i: np.ndarray, j: np.ndarray, kind: str) -> np.ndarray:
    """``cosine`` (clipped at 0, morphology) or ``correlation`` (Pearson, expression) per pair."""
    u = _unit_rows(features, centre=(kind == "correlation"))
    s = np.einsum("ij,ij->i", u[i], u[j])
    return np.maximum(s, 0.0) if kind == "cosine" else s


def expression_pcs(x: np.ndarray, n_pcs: int = 50) -> np.ndarray:
    """PCA coordinates of the spots (centred, full SVD; stLearn expects ``obsm['X_pca']``)."""
    x = np.asarray(x, dtype=np.float64)
    k = max(1, min(n_pcs, x.shape[0] - 1, x.shape[1] - 1 if x.shape[1] > 1 else 1))
    xc = x - x.mean(axis=0)
    u, s, _ = np.linalg.svd(xc, full_matrices=False)
    return u[:, :k] * s[:k]


def top_weights(i: np.ndarray, j: np.ndarray, w: np.ndarray, n: int, top: int):
    """Per spot, the ``top`` largest positive weights: a row-normalised sparse matrix ``(n, n)``."""
    import scipy.sparse as sp

    order = np.lexsort((-w, i))
    i, j, w = i[order], j[order], w[order]
    start = np.searchsorted(i, np.arange(n))
    rank = np.arange(len(i)) - start[i]
    keep = (rank < top) & (w > 0)
    mat = sp.csr_matrix((w[keep], (i[keep], j[keep])), shape=(n, n))
    sums = np.asarray(mat.sum(axis=1)).ravel()
    scale = np.divide(1.0, sums, out=np.zeros_like(sums), where=sums > 0)
    return sp.diags(scale) @ mat


# ---------------------------------------------------------------------------------------------
# Morphology features
# ---------------------------------------------------------------------------------------------


def slide_image(adata: AnnData, slide: str, image_key: str = "hires") -> tuple[np.ndarray, float, str]:
    """The slide's image (uint8 RGB), its scale factor from full-resolution pixels and its key."""
    lib = adata.uns.get("spatial", {}).get(slide, {})
    images = lib.get("images", {})
    for key in (image_key, "hires", "lowres", "fullres"):
        if key in images:
            img = np.asarray(images[key])
            scale = 1.0 if key == "fullres" else float(lib.get("scalefactors", {}).get(f"tissue_{key}_scalef", 1.0))
            if img.dtype != np.uint8:
                img = np.clip(img * (255.0 if img.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
            if img.ndim == 2:
                img = np.repeat(img[..., None], 3, axis=2)
            return img[..., :3], scale, key
    raise ValueError(f"slide {slide!r} has no image in uns['spatial'][{slide!r}]['images'] "
                     f"(have {list(images)}): SME's morphology term needs the H&E image; "
                     "use SmeConfig(weights='pd_gd') to impute from location and expression only")


def tile_features(image: np.ndarray, centres_xy: np.ndarray, config: SmeConfig) -> np.ndarray:
    """Backbone features (global-pooled) of the ``crop_size`` tiles centred on ``centres_xy``."""
    import timm
    import torch
    from PIL import Image

    device = resolve_device(config.device)
    try:
        model = timm.create_model(config.backbone, pretrained=config.pretrained, num_classes=0)
    except Exception as err:  # no internet, unknown name
        raise RuntimeError(f"cannot build backbone {config.backbone!r} (pretrained={config.pretrained}): {err}; "
                           "use pretrained=False offline or a timm model name that exists") from err
    model.eval().to(device)
    pil = Image.fromarray(image)
    half = config.crop_size / 2
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)
    feats = []
    with torch.no_grad():
        for start in range(0, len(centres_xy), config.batch_size):
            tiles = []
            for x, y in centres_xy[start:start + config.batch_size]:
                tile = pil.crop((int(round(x - half)), int(round(y - half)),
                                 int(round(x + half)), int(round(y + half))))
                tiles.append(np.asarray(tile.resize((config.tile_size, config.tile_size), Image.BILINEAR)))
            batch = torch.as_tensor(np.stack(tiles), device=device).permute(0, 3, 1, 2).float() / 255.0
            feats.append(model((batch - mean) / std).float().cpu().numpy())
    return np.concatenate(feats).astype(np.float64)


def morphology_pcs(features: np.ndarray, n_components: int = 50) -> np.ndarray:
    """stLearn's ``X_morphology``: PCA of the tile features."""
    return expression_pcs(features, n_components)


# ---------------------------------------------------------------------------------------------
# Imputation
# ---------------------------------------------------------------------------------------------


def sme_impute_slide(values: np.ndarray, observed: np.ndarray, image_xy: np.ndarray, array_row: np.ndarray,
                     array_col: np.ndarray, config: SmeConfig, morphology: np.ndarray | None = None,
                     expression: np.ndarray | None = None, hex_geometry: bool = True) -> np.ndarray:
    """SME imputation of one slide: ``values`` with unobserved entries replaced.

    Parameters
    ----------
    values, observed
        ``(spots, genes)`` expression and mask (True = measured); unobserved entries are set
        to 0 before imputation, as stLearn's input holds zeros there.
    image_xy
        Spot centres in image pixels (x = column, y = row).
    morphology, expression
        ``X_morphology`` and ``X_pca`` (spots × components); ``expression`` defaults to the
        PCA of the zero-filled input.
    """
    x = np.where(observed, values, 0).astype(np.float64)
    n = len(x)
    rate = config.rate if config.rate is not None else (3.0 if hex_geometry else 1.5)
    unit = array_unit(image_xy[:, 1], image_xy[:, 0], array_row, array_col, config.unit_rule)
    i, j = radius_pairs(np.asarray(image_xy, dtype=np.float64), rate * unit)
    w = np.ones(len(i))
    if config.uses_morphology:
        if morphology is None:
            raise ValueError(f"weights={config.weights!r} needs morphology features")
        w = w * pair_similarity(morphology, i, j, "cosine")
    if config.uses_expression:
        pcs = expression if expression is not None else expression_pcs(x, config.n_pcs)
        w = w * pair_similarity(pcs, i, j, "correlation")
    if config.weights == "physical":
        # All neighbours tie at 1; stLearn's argsort then picks arbitrary ones; we take the nearest.
        d = np.linalg.norm(image_xy[i] - image_xy[j], axis=1)
        w = 1.0 + 1e-9 * (1.0 - d / (d.max() + 1.0))
    weights = top_weights(i, j, w, n, config.top)
    imputed = np.asarray(weights @ x)
    return np.where(observed, values, imputed).astype(np.float32)


def sme_fill(adata: AnnData, values: np.ndarray, observed: np.ndarray, rows: np.ndarray | None = None,
             config: SmeConfig | None = None, feature_cache: dict | None = None, hex_geometry: bool = True,
             slide_key: str = "slide_id") -> np.ndarray:
    """SME completion of the slides holding ``rows``; returns those rows (all spots by default).

    Morphology features are computed once per slide and kept in ``feature_cache`` (a dict) when
    one is given.
    """
    cfg = config or SmeConfig()
    rows = np.arange(adata.n_obs) if rows is None else np.asarray(rows)
    cache = feature_cache if feature_cache is not None else {}
    out = np.zeros((adata.n_obs, adata.n_vars), dtype=np.float32)
    xy_full = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    a_row = adata.obs["array_row"].to_numpy()
    a_col = adata.obs["array_col"].to_numpy()
    for slide, idx in graphs.slides_containing(adata, rows, slide_key).items():
        scale, morph = 1.0, None
        if cfg.uses_morphology:
            key = (slide, cfg.backbone, cfg.pretrained, cfg.crop_size, cfg.tile_size, cfg.image_key)
            if key not in cache:
                image, scale, _ = slide_image(adata, slide, cfg.image_key)
                feats = tile_features(image, xy_full[idx] * scale, cfg)
                cache[key] = (morphology_pcs(feats, cfg.n_morph_components), scale)
            morph, scale = cache[key]
        out[idx] = sme_impute_slide(values[idx], observed[idx], xy_full[idx] * scale, a_row[idx], a_col[idx],
                                    cfg, morphology=morph, hex_geometry=hex_geometry)
    return out[rows]


__all__: Sequence[str] = ("SmeConfig", "sme_fill", "sme_impute_slide", "tile_features", "morphology_pcs",
                          "expression_pcs", "array_unit", "radius_pairs", "pair_similarity", "top_weights",
                          "slide_image")
