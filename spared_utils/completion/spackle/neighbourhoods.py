"""The data SpaCKLE reads: input checks, neighbourhoods (hexagonal rings or nearest spots), token gathering, batches."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from anndata import AnnData

from ... import graphs
from ...utils import dense
from .config import DEFAULT_LAYER, MASK_LAYER, SpackleConfig
from .masking import mask_probabilities, training_mask
from .model import Spackle

def check_input(adata: AnnData, layer: str = DEFAULT_LAYER, mask_layer: str = MASK_LAYER,
                slide_key: str = "slide_id") -> tuple[np.ndarray, np.ndarray]:
    """Validate a dataset for completion; return ``(values float32, real bool)``.

    Raises
    ------
    KeyError
        ``layer`` or ``mask_layer`` is absent.
    ValueError
        NaN/inf values, a mask of the wrong shape, a slide with a single spot, no spots.
    """
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(f"the dataset is empty ({adata.n_obs} spots × {adata.n_vars} genes): nothing to complete")
    if layer not in adata.layers:
        raise KeyError(f"layer {layer!r} not found (layers: {list(adata.layers)}). For a slide of your own "
                       "(raw counts and spatial coordinates, e.g. read by sc.read_visium), "
                       "su.tl.complete_slide(adata, method=...) curates, trains and completes in one call; "
                       "otherwise pass layer= the median-completed layer")
    if mask_layer not in adata.layers:
        raise KeyError(f"the dataset has no {mask_layer!r} layer (True = real measurement, False = median-completed), "
                       f"so completion cannot tell missing values from real ones; run "
                       f"spared_utils.preprocess.add_mask(adata, 'tpm') or set adata.layers[{mask_layer!r}] = counts > 0")
    values = dense(adata.layers[layer]).astype(np.float32, copy=False)
    real = dense(adata.layers[mask_layer]).astype(bool, copy=False)
    if real.shape != values.shape:
        raise ValueError(f"layer {mask_layer!r} has shape {real.shape} but {layer!r} has {values.shape}")
    bad = ~np.isfinite(values)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ValueError(f"layer {layer!r} holds {int(bad.sum())} NaN/inf values (first: spot {adata.obs_names[r]!r}, "
                         f"gene {adata.var_names[c]!r}); complete from a finite layer (median completion fills "
                         "missing values with numbers) or drop those spots")
    if slide_key in adata.obs:
        sizes = adata.obs[slide_key].astype(str).value_counts()
        lonely = sizes.index[sizes < 2].tolist()
        if lonely:
            raise ValueError(f"slide(s) {lonely} have a single spot: completion needs neighbouring spots on the same "
                             f"slide; drop these slides (adata = adata[adata.obs[{slide_key!r}] != {lonely[0]!r}])")
    elif adata.n_obs < 2:
        raise ValueError("a single spot cannot be completed from neighbours")
    return values, real


def knn_index(adata: AnnData, k: int = 18, slide_key: str = "slide_id") -> np.ndarray:
    """The ``k`` nearest spots of each spot on its slide by Euclidean pixel distance (``-1`` padding).

    The authors' neighbourhood (squidpy's generic kNN graph); ordered by distance.
    """
    from scipy.spatial import cKDTree

    if "spatial" not in adata.obsm:
        raise KeyError("neighbourhood='knn' needs obsm['spatial'] (pixel coordinates of the spots)")
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    out = np.full((adata.n_obs, k), -1, dtype=np.int64)
    for idx in graphs.slide_groups(adata, slide_key).values():
        kk = min(k, len(idx) - 1)
        if kk < 1:
            continue
        _, nb = cKDTree(xy[idx]).query(xy[idx], k=kk + 1)
        out[idx, :kk] = idx[nb[:, 1:]]
    return out


def neighbourhoods(adata: AnnData, config: SpackleConfig, hex_geometry: bool = True,
                   slide_key: str = "slide_id") -> np.ndarray:
    """``(n_spots, n_neighbours)`` index array of the configured neighbourhood."""
    if config.neighbourhood == "knn":
        return knn_index(adata, config.n_neighbours, slide_key)
    return graphs.neighbour_index(adata, n_hops=config.n_hops, hex_geometry=hex_geometry, slide_key=slide_key)


def gather(values: torch.Tensor, index: torch.Tensor, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tokens of the neighbourhoods of ``centres``: ``(x, padding, token_index)``.

    ``x`` is ``(B, 1 + k, genes)`` with zeros at padding tokens, ``padding`` ``(B, 1 + k)``.
    """
    tokens = torch.cat([centres[:, None], index[centres]], dim=1)
    padding = tokens < 0
    safe = tokens.clamp_min(0)
    x = values[safe].masked_fill(padding[..., None], 0.0)
    return x, padding, safe


class CentreSampler:
    """Shuffled batches of centre-spot indices, drawn from a seeded generator (reproducible)."""

    def __init__(self, spots: np.ndarray, batch_size: int, seed: int):
        if len(spots) == 0:
            raise ValueError("no training spot: the dataset needs slides with obs['split'] == 'train'")
        self.spots = torch.as_tensor(np.asarray(spots, dtype=np.int64))
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(int(seed))

    def __iter__(self) -> Iterator[torch.Tensor]:
        perm = self.spots[torch.randperm(len(self.spots), generator=self.generator)]
        if len(perm) <= self.batch_size:
            yield perm
            return
        for start in range(0, len(perm) - self.batch_size + 1, self.batch_size):  # drop_last
            yield perm[start:start + self.batch_size]


@dataclass
class Neighbourhoods:
    """Everything a SpaCKLE model reads, as tensors on one device."""

    values: torch.Tensor  #: (n_spots, genes) median-completed expression (the targets)
    real: torch.Tensor  #: (n_spots, genes) bool, True = measured
    index: torch.Tensor  #: (n_spots, k) neighbour indices, -1 = absent
    hide_prob: torch.Tensor  #: (genes,) probability of hiding a real entry in training
    real_frac: torch.Tensor | None = None  #: (genes,) fraction of real entries (for ``mask_prob_range``)

    @classmethod
    def build(cls, values: np.ndarray, real: np.ndarray, index: np.ndarray, config: SpackleConfig,
              device: torch.device) -> Neighbourhoods:
        return cls(
            values=torch.as_tensor(values, dtype=torch.float32).to(device),
            real=torch.as_tensor(real, dtype=torch.bool).to(device),
            index=torch.as_tensor(index, dtype=torch.long).to(device),
            hide_prob=torch.as_tensor(mask_probabilities(real, config.mask_prob, config.masking)).to(device),
            real_frac=torch.as_tensor(real.mean(axis=0), dtype=torch.float32).to(device),
        )

    def step_hide_prob(self, batch: int, config: SpackleConfig) -> torch.Tensor:
        """Probability of hiding each real entry in one step: per gene, or per (neighbourhood, gene)
        with ρ drawn from ``config.mask_prob_range``."""
        if config.mask_prob_range is None:
            return self.hide_prob
        lo, hi = config.mask_prob_range
        rho = torch.rand((batch, 1, 1), device=self.values.device) * (hi - lo) + lo
        if config.mask_range_share >= 1:
            return self._rule(rho, config.masking)
        fixed = torch.rand((batch, 1, 1), device=self.values.device) >= config.mask_range_share
        at_fixed = self._rule(torch.full_like(rho, config.mask_prob), config.fixed_masking or config.masking)
        return torch.where(fixed, at_fixed, self._rule(rho, config.masking))

    def _rule(self, rho: torch.Tensor, masking: str) -> torch.Tensor:
        """Hiding probabilities for rates ``rho`` (batch, 1, 1): ``rho`` itself (uniform) or, per
        gene, ``rho`` / the gene's real fraction capped at 1 (the authors' rule)."""
        if masking == "uniform":
            return rho
        frac = self.real_frac[None, None, :]
        return torch.where(frac > 0, (rho / frac.clamp_min(1e-6)).clamp(max=1.0), torch.zeros_like(frac))

    def training_loss(self, model: Spackle, centres: torch.Tensor, config: SpackleConfig) -> torch.Tensor:
        """Random ρ-mask of real entries, forward pass, MSE (whole matrix or hidden entries)."""
        x, padding, tokens = gather(self.values, self.index, centres)
        real = self.real[tokens] & ~padding[..., None]
        hide = training_mask(real, self.step_hide_prob(len(centres), config))
        keep = ~hide
        if config.missing_in_training == "zero":
            keep = keep & real
        out = model(x * keep, padding)
        if config.loss_on == "hidden":
            sel = hide
        elif config.loss_on == "real" or config.missing_in_training == "zero":
            sel = real  # median guesses are not targets when the model never sees them
        else:
            sel = ~padding[..., None].expand_as(x)
        err = (out.float() - x) ** 2
        return err[sel].mean() if sel.any() else err.sum() * 0.0


def split_spots(adata: AnnData, split_key: str = "split") -> dict[str, np.ndarray]:
    """Integer positions of the spots of each split (``train``/``val``/``test``)."""
    if split_key not in adata.obs:
        return {"train": np.arange(adata.n_obs)}
    labels = adata.obs[split_key].astype(str).to_numpy()
    return {s: np.flatnonzero(labels == s) for s in ("train", "val", "test") if (labels == s).any()}


def validation_spots(adata: AnnData, split_key: str = "split") -> tuple[np.ndarray, str]:
    """Spots used for checkpoint selection: the val split, else test, else train (named)."""
    spots = split_spots(adata, split_key)
    for name in ("val", "test", "train"):
        if name in spots:
            return spots[name], name
    raise ValueError("the dataset has no spot")


def hex_geometry_of(adata: AnnData, default: bool = True) -> bool:
    """The dataset's grid (from the curation parameters in ``uns["preprocessing"]``)."""
    pre = adata.uns.get("preprocessing")
    params = pre.get("params", {}) if isinstance(pre, Mapping) else {}
    value = params.get("hex_geometry", default)
    return bool(value) if not isinstance(value, str) else value.lower() == "true"


def resolve_hex_geometry(adata: AnnData, hex_geometry: bool | None) -> bool:
    """``hex_geometry`` when given, else the dataset's grid (:func:`hex_geometry_of`)."""
    return hex_geometry_of(adata) if hex_geometry is None else bool(hex_geometry)


__all__ = ["CentreSampler", "Neighbourhoods", "check_input", "gather", "hex_geometry_of", "knn_index", "neighbourhoods",
           "resolve_hex_geometry", "split_spots", "validation_spots"]
