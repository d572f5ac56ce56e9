"""SpaCKLE: transformer completion of missing expression values (Mejia et al., MICCAI 2024).

The method of Mejia et al. (MICCAI 2024), as the paper describes it:

* **Neighbourhood tensor.** For spot ``s`` with ``g`` genes, ``x`` is its expression and ``V_x``
  the expression of its ``n ≤ 18`` neighbours within two rings of the Visium hexagonal grid;
  ``E_x = [x; V_x]`` has one token of width ``g`` per spot (the centre first). Neighbourhoods
  are kept as a ``(n_spots, 18)`` index array (:func:`spared_utils.graphs.neighbour_index`,
  ``-1`` = no neighbour) and gathered on the fly, batch by batch; no ``spots × spots`` matrix is
  ever built. **Edge spots** (fewer than 18 neighbours) get padding tokens: their values are 0,
  a key-padding mask hides them from attention, and they never enter the loss or a metric.
* **Training mask.** A random binary mask hides each *real* entry (``layers["mask"]`` True) of
  every token with probability ``ρ = 0.3``; median-completed entries are never hidden. Hidden
  entries are set to 0 (``E_m = E_x ⊙ M``).
* **Model.** ``Ê_x = L_out(T(L_in(E_m)))``: linear adapters ``g → d_model = 128 → g`` around an
  ``nn.TransformerEncoder`` (2 layers, 1 head, PyTorch's default feed-forward width 2048 and
  dropout 0.1) with ``batch_first=True``, so attention runs among the tokens of one
  neighbourhood.
* **Loss.** MSE between ``E_x`` and ``Ê_x`` on the whole matrix (every entry of every present
  token). Validation, metrics and completed values use only hidden entries of the centre token.
* **Inference.** ``M`` is the dataset's real missing-value mask: missing entries are set to 0 in
  every token and the centre token's output replaces them.

Documented alternatives (:class:`SpackleConfig` fields), where the authors' code (the ``spared``
package, github.com/BCV-Uniandes/SpaRED) differs from the paper: ``d_model=None`` (width =
number of genes), ``neighbourhood="knn"`` (18 nearest spots by Euclidean distance), ``masking="per_gene"`` (probability ``ρ / fraction of real values of
the gene``, capped at 1), ``attention="batch"`` (the authors' ``batch_first=False`` encoder fed
``(batch, tokens, genes)``, which attends across the batch's spots), plus ablations of ours:
``positional_encoding`` (a learned embedding per neighbourhood slot), ``loss_on="hidden"``,
``missing_in_training="zero"`` (median-completed entries hidden from the input and the loss),
``gene_scaling`` (per-gene input/output scales around the adapters, the same function class), and
the options of our ``spackle_plus``: ``mask_prob_range`` / ``mask_range_share`` (training over a
range of masking rates), ``mask_indicator``, ``loss_on="real"`` and ``centre_input`` (given
entries read as deviations from their gene's training mean).

One choice of ours is on by default: ``init_output_bias="mean"`` starts the output adapter's bias
at each gene's training mean (PyTorch initialises it near 0). Values of log2(TPM + 1) are about
10–20, and from a zero start the first hundreds of steps only learn that offset.

Training goes through :func:`spared_utils.training.fit` (budget, Adam, validation every
``eval_every`` iterations, best-validation checkpoint, mixed precision on CUDA, progress bar).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from torch import nn

from .. import graphs, training
from ..preprocess.panel import check_panel, package_versions, panel_info
from ..training import count_parameters
from ..utils import atomic_path, dense

#: Layer SpaCKLE completes, and the real-value mask (True = measured).
DEFAULT_LAYER = "c_d_log1p"
MASK_LAYER = "mask"

_CHOICES = {
    "neighbourhood": ("hex", "knn"),
    "masking": ("uniform", "per_gene"),
    "fixed_masking": (None, "uniform", "per_gene"),
    "attention": ("neighbourhood", "batch"),
    "loss_on": ("all", "hidden", "real"),
    "missing_in_training": ("median", "zero"),
    "init_output_bias": ("mean", "default"),
}


#: Fields added after checkpoints were first written, left out of :func:`config_tag` at these
#: defaults (so that earlier runs keep their tags and are reused).
LATER_DEFAULTS: dict[str, Any] = {"centre_input": False}


@dataclass
class SpackleConfig:
    """Every value that shapes a SpaCKLE run (printed in the chapter).

    Defaults follow the paper's text and the authors' architecture; the comments name the
    alternatives from the authors' ``spared`` 2.2.1 code (chapter 02 compares them).
    """

    # --- model -----------------------------------------------------------------------------
    d_model: int | None = 128  #: adapter width; ``None`` = number of genes (authors' code)
    n_layers: int = 2
    n_heads: int = 1
    dim_feedforward: int = 2048  #: PyTorch default
    dropout: float = 0.1  #: PyTorch default
    positional_encoding: bool = False  #: neither the paper nor the authors use one
    gene_scaling: bool = False  #: adapters see x / gene mean, write std · y (same function class; trained worse here)
    init_output_bias: str = "mean"  #: output adapter bias starts at the genes' training means ("default": PyTorch's)
    attention: str = "neighbourhood"  #: ``"batch"`` = the authors' batch_first=False defect
    # --- neighbourhood ---------------------------------------------------------------------
    neighbourhood: str = "hex"  #: 2-hop hexagonal (paper); ``"knn"``: nearest spots (authors)
    n_hops: int = 2
    n_neighbours: int = 18  #: used by ``"knn"``
    # --- masking and loss ------------------------------------------------------------------
    mask_prob: float = 0.3  #: ρ (also the validation mask's level)
    masking: str = "uniform"  #: ``"per_gene"``: ρ / real fraction of the gene (authors)
    #: ours: each training neighbourhood draws its ρ uniformly from this range (``None``: ρ fixed),
    #: so that every masking level of the evaluation is in the training distribution
    mask_prob_range: tuple[float, float] | None = None
    #: ours: share of training neighbourhoods whose ρ is drawn from ``mask_prob_range``; the others
    #: are masked at ``mask_prob`` (so the paper's training distribution stays part of the mix)
    mask_range_share: float = 1.0
    #: ours: the masking rule of the other neighbourhoods (at ``mask_prob``); ``None`` = ``masking``
    fixed_masking: str | None = None
    #: ours: the input adapter also reads which entries are given (1) or unseen (0); unseen
    #: entries are exactly 0 in the input, so the indicator is ``x ≠ 0``
    mask_indicator: bool = False
    #: ours: given entries enter the input adapter as deviations from their gene's training mean
    #: (unseen entries stay 0; with ``mask_indicator`` the model still tells them apart). Raw
    #: log2(TPM + 1) values are 10–20 with spot-to-spot deviations of about 1, so the deviations
    #: are a small part of each token's embedding.
    centre_input: bool = False
    #: whole matrix (paper); ``"hidden"``: hidden entries only; ``"real"``: every real entry
    #: (the median guesses stay in the input but are not targets)
    loss_on: str = "all"
    missing_in_training: str = "median"  #: median-completed entries stay in the input
    # --- training ----------------------------------------------------------------------------
    #: budget, learning rate, evaluation period, seed, device, precision (the paper: 10,000
    #: iterations, batch 256); ``checkpoint_dir`` below, not ``train.checkpoint_dir``, is used
    train: training.TrainConfig = field(default_factory=lambda: training.TrainConfig(iterations=10_000))
    lr_grid: tuple[float, ...] | None = None  #: searched on the validation MSE when given
    val_max_spots: int | None = 2048  #: fixed subsample of validation spots (None = all)
    checkpoint_dir: str | None = None  #: one folder per learning rate under it, and the final model
    predict_batch: int = 2048

    def __post_init__(self):
        if isinstance(self.train, dict):  # read back from a checkpoint or asdict()
            self.train = training.TrainConfig(**self.train)
        if not isinstance(self.train.iterations, (int, np.integer)):
            raise ValueError(f"SpaCKLE iterations must be a positive number of optimiser steps, got "
                             f"{self.train.iterations!r} (the paper uses 10,000; the chapter's CPU default is a few hundred)")
        if not 0 < self.mask_prob < 1:
            raise ValueError(f"mask_prob (ρ) must be in (0, 1), got {self.mask_prob}")
        if self.mask_prob_range is not None:
            lo, hi = (float(v) for v in self.mask_prob_range)
            if not 0 < lo <= hi < 1:
                raise ValueError(f"mask_prob_range must be (low, high) with 0 < low <= high < 1, got {self.mask_prob_range}")
            self.mask_prob_range = (lo, hi)
        if not 0 <= self.mask_range_share <= 1:
            raise ValueError(f"mask_range_share must be in [0, 1], got {self.mask_range_share}")
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"SpackleConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.d_model is not None and self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.lr_grid is not None:
            self.lr_grid = tuple(float(v) for v in self.lr_grid)
            if not self.lr_grid:
                raise ValueError("lr_grid is empty; give learning rates or None")

    def train_config(self, learning_rate: float, checkpoint_dir: str | None = None) -> training.TrainConfig:
        """The shared loop's configuration for one learning rate."""
        return replace(self.train, learning_rate=learning_rate, checkpoint_dir=checkpoint_dir)

    @classmethod
    def from_kwargs(cls, **kwargs) -> tuple[SpackleConfig, dict]:
        """A config from flat keyword arguments (:class:`TrainConfig` fields such as ``iterations``
        or ``seed`` go to :attr:`train`), and the arguments that are neither."""
        names = {f.name for f in fields(cls)} - {"train"}  # checkpoint_dir is SpaCKLE's, not the loop's
        mine = {k: v for k, v in kwargs.items() if k in names}
        train, rest = training.split_train_options({k: v for k, v in kwargs.items() if k not in names},
                                                   cls.__dataclass_fields__["train"].default_factory())
        return cls(train=train, **mine), rest

    def flat(self) -> dict[str, Any]:
        """Every value, the training loop's included, in one flat mapping (for the chapter's table)."""
        return {**{k: v for k, v in asdict(self).items() if k != "train"}, **asdict(self.train)}

    def updated(self, **options) -> SpackleConfig:
        """A copy with some options changed, :class:`TrainConfig` fields (``warmup_iterations``,
        ``iterations``, ...) included: ``base.updated(**PLUS_OPTIONS)``."""
        names = {f.name for f in fields(self)} - {"train"}  # checkpoint_dir is SpaCKLE's, as in from_kwargs
        train, unknown = training.split_train_options({k: v for k, v in options.items() if k not in names}, self.train)
        if unknown:
            raise TypeError(f"unknown SpaCKLE option(s) {sorted(unknown)}")
        return replace(self, train=train, **{k: v for k, v in options.items() if k in names})

    @classmethod
    def make(cls, **kwargs) -> SpackleConfig:
        """:meth:`from_kwargs` that refuses unknown names (``SpackleConfig.make(iterations=200, d_model=64)``)."""
        config, rest = cls.from_kwargs(**kwargs)
        if rest:
            raise TypeError(f"unknown SpaCKLE option(s) {sorted(rest)}; valid: "
                            f"{sorted(({f.name for f in fields(cls)} - {'train'}) | set(training.TRAIN_FIELDS))}")
        return config


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


class Spackle(nn.Module):
    """Linear adapter → transformer encoder → linear adapter, over neighbourhood tokens.

    ``forward(x, padding)`` takes ``x`` of shape ``(batch, tokens, genes)`` (centre token first)
    and ``padding`` ``(batch, tokens)`` (True = absent neighbour) and returns ``(batch, tokens,
    genes)``.
    """

    def __init__(self, n_genes: int, n_tokens: int, config: SpackleConfig | None = None,
                 gene_scale: torch.Tensor | None = None, out_scale: torch.Tensor | None = None,
                 gene_centre: torch.Tensor | None = None):
        super().__init__()
        cfg = config or SpackleConfig()
        d = cfg.d_model or n_genes
        if d % cfg.n_heads:
            raise ValueError(f"model width {d} is not divisible by n_heads={cfg.n_heads}")
        self.n_genes, self.n_tokens, self.d_model = n_genes, n_tokens, d
        self.within_neighbourhood = cfg.attention == "neighbourhood"
        self.indicator = bool(cfg.mask_indicator)
        self.adapter_in = nn.Linear(n_genes * (2 if self.indicator else 1), d)
        layer = nn.TransformerEncoderLayer(d, cfg.n_heads, cfg.dim_feedforward, cfg.dropout,
                                           batch_first=self.within_neighbourhood)
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.adapter_out = nn.Linear(d, n_genes)
        self.position = nn.Parameter(torch.zeros(n_tokens, d)) if cfg.positional_encoding else None
        # Per-gene scales: the input adapter reads x / gene_scale (the gene's mean, so values are
        # near 1 instead of log2(TPM + 1) ≈ 10–20 and masked entries stay exactly 0) and the output
        # adapter writes out_scale · y (the gene's standard deviation). Composed with the linear
        # adapters these are again linear maps g → d → g: the model is the paper's, the scales only
        # precondition training.
        ones = torch.ones(n_genes)
        self.register_buffer("gene_scale", ones.clone() if gene_scale is None else torch.as_tensor(gene_scale).float().clone())
        self.register_buffer("out_scale", ones.clone() if out_scale is None else torch.as_tensor(out_scale).float().clone())
        if cfg.centre_input:  # only then, so that checkpoints without it still load
            centre = torch.zeros(n_genes) if gene_centre is None else torch.as_tensor(gene_centre).float().clone()
            self.register_buffer("gene_centre", centre)
        else:
            self.gene_centre = None

    def forward(self, x: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        given = x != 0
        xin = x if self.gene_centre is None else (x - self.gene_centre) * given
        xin = xin / self.gene_scale
        if self.indicator:
            xin = torch.cat([xin, given.to(xin.dtype)], dim=-1)
        h = self.adapter_in(xin)
        if self.position is not None:
            h = h + self.position[: h.shape[1]]
        if self.within_neighbourhood:
            h = self.encoder(h, src_key_padding_mask=padding)
        else:
            # The authors' layout: a (batch, tokens, d) tensor read as (sequence, batch, d).
            h = self.encoder(h)
        return self.adapter_out(h) * self.out_scale


# ---------------------------------------------------------------------------------------------
# Data: checks, neighbourhoods, gathering
# ---------------------------------------------------------------------------------------------


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
        raise KeyError(f"layer {layer!r} not found (layers: {list(adata.layers)}); run the curation pipeline "
                       "(spared_utils.preprocess.run_pipeline) or pass layer= the median-completed layer")
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


def mask_probabilities(real: np.ndarray, rho: float, scheme: str = "uniform") -> np.ndarray:
    """Per-gene probability of hiding a real entry.

    ``uniform``: ρ for every gene (≈ ρ of the real values hidden). ``per_gene``: ρ divided by the
    gene's fraction of real values, capped at 1 (the authors' code; ≈ ρ of *all* entries hidden).
    ``lgdist``: ``p_miss / (1 − p_miss)``, capped at 1, with ``p_miss`` the gene's fraction of
    missing entries (LGDiST, Cárdenas et al., arXiv 2509.01864; ρ is not used): a gene loses
    about as many real values as it misses.
    """
    g = real.shape[1]
    if scheme == "uniform":
        return np.full(g, rho, dtype=np.float32)
    frac = real.mean(axis=0)
    if scheme == "lgdist":
        miss = 1.0 - frac
        with np.errstate(divide="ignore", invalid="ignore"):
            p = np.where(frac > 0, miss / np.maximum(frac, 1e-12), 0.0)
        return np.minimum(p, 1.0).astype(np.float32)
    if scheme != "per_gene":
        raise ValueError(f"masking scheme must be 'uniform', 'per_gene' or 'lgdist', got {scheme!r}")
    with np.errstate(divide="ignore"):
        p = np.where(frac > 0, rho / np.maximum(frac, 1e-12), 0.0)
    return np.minimum(p, 1.0).astype(np.float32)


def training_mask(real: torch.Tensor, hide_prob: torch.Tensor | float) -> torch.Tensor:
    """Entries hidden in one training step: each real entry with its gene's probability.

    ``real`` is False at median-completed entries and padding tokens, so those are never hidden.
    """
    return (torch.rand(real.shape, device=real.device) < hide_prob) & real


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


@torch.no_grad()
def predict_centres(model: Spackle, inputs: torch.Tensor, index: torch.Tensor, centres: torch.Tensor,
                    batch: int = 2048, amp: bool = True) -> torch.Tensor:
    """The model's output for the centre token of each spot in ``centres`` (float32, on device)."""
    was_training = model.training
    model.eval()
    device = inputs.device
    outs = []
    for start in range(0, len(centres), batch):
        c = centres[start:start + batch]
        x, padding, _ = gather(inputs, index, c)
        with training.autocast(device, amp):
            outs.append(model(x, padding)[:, 0].float())
    model.train(was_training)
    return torch.cat(outs) if outs else torch.empty((0, inputs.shape[1]), device=device)


def spackle_input(values: np.ndarray | torch.Tensor, real, hidden, config: SpackleConfig):
    """What the model sees when ``hidden`` entries are to be predicted.

    Hidden entries are 0; originally missing entries keep their median values (as in training)
    unless ``config.missing_in_training == "zero"``.
    """
    if isinstance(values, torch.Tensor):
        keep = ~hidden if config.missing_in_training == "median" else (~hidden & real)
        return values * keep
    keep = ~hidden if config.missing_in_training == "median" else (~hidden & real)
    return (values * keep).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


@dataclass
class SpackleResult:
    """A trained SpaCKLE model with what produced it."""

    model: Spackle
    config: SpackleConfig
    genes: list[str]
    learning_rate: float
    best_val: float
    best_iteration: int
    history: pd.DataFrame
    wall_time_s: float
    device: str
    lr_table: pd.DataFrame | None = None
    checkpoint: Path | None = None
    extra: dict = field(default_factory=dict)

    @property
    def n_params(self) -> int:
        return count_parameters(self.model)


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


def synthetic_hidden(real: np.ndarray, fraction: float, seed: int, scheme: str = "uniform",
                     rows: np.ndarray | None = None) -> np.ndarray:
    """A fixed random mask hiding real entries (only in ``rows`` when given).

    ``uniform``: each real entry hidden with probability ``fraction`` (≈ ``fraction`` of the
    real values); ``per_gene``: the authors' rule (≈ ``fraction`` of all entries, see
    :func:`mask_probabilities`); ``lgdist``: LGDiST's rule (``fraction`` is not used).
    """
    if scheme != "lgdist" and not 0 < fraction < 1:
        raise ValueError(f"masking fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    p = mask_probabilities(real, fraction, scheme)
    hidden = (rng.random(real.shape, dtype=np.float32) < p) & real
    if rows is not None:
        keep = np.zeros(real.shape[0], dtype=bool)
        keep[rows] = True
        hidden &= keep[:, None]
    return hidden


def train_spackle(adata: AnnData, layer: str = DEFAULT_LAYER, config: SpackleConfig | None = None,
                  hex_geometry: bool | None = None, slide_key: str = "slide_id",
                  split_key: str = "split") -> SpackleResult:
    """Train SpaCKLE on the training slides, selecting the checkpoint on validation slides.

    Validation: a fixed synthetic mask hides ρ of the real entries of the validation slides
    (seeded by ``config.seed``); the score is the MSE on those hidden entries of the centre
    spots (at most ``config.val_max_spots`` of them, a fixed subsample).

    With ``config.lr_grid``, one model per learning rate is trained from the same seed
    (:func:`spared_utils.training.lr_search`) and the best on validation is kept.

    Returns
    -------
    SpackleResult
        The best model (on the resolved device, eval mode) and its history.
    """
    cfg = config or SpackleConfig()
    values, real = check_input(adata, layer, slide_key=slide_key)
    hex_geometry = _hex_geometry(adata, hex_geometry)
    index = neighbourhoods(adata, cfg, hex_geometry=hex_geometry, slide_key=slide_key)
    device = training.resolve_device(cfg.train.device)
    data = Neighbourhoods.build(values, real, index, cfg, device)

    spots = split_spots(adata, split_key)
    if "train" not in spots:
        raise ValueError(f"no spot has obs[{split_key!r}] == 'train': SpaCKLE trains on the training slides")
    val_spots, val_name = validation_spots(adata, split_key)
    rng = np.random.default_rng(cfg.train.seed)
    if cfg.val_max_spots is not None and len(val_spots) > cfg.val_max_spots:
        val_spots = np.sort(rng.choice(val_spots, cfg.val_max_spots, replace=False))
    val_hidden = synthetic_hidden(real, cfg.mask_prob, cfg.train.seed + 1, cfg.masking, rows=val_spots)
    if not val_hidden[val_spots].any():
        raise ValueError("the validation slides have no real value to hide; check layers['mask']")
    val_inputs = spackle_input(data.values, data.real, torch.as_tensor(val_hidden, device=device), cfg)
    val_centres = torch.as_tensor(val_spots, device=device)
    val_hidden_c = torch.as_tensor(val_hidden[val_spots], device=device)
    val_truth_c = data.values[val_centres]

    def validate(model: Spackle) -> float:
        pred = predict_centres(model, val_inputs, data.index, val_centres, cfg.predict_batch, cfg.train.amp)
        return float(((pred - val_truth_c) ** 2)[val_hidden_c].mean())

    def loss_fn(model: Spackle, centres: torch.Tensor) -> torch.Tensor:
        return data.training_loss(model, centres, cfg)

    genes = [str(g) for g in adata.var_names]
    n_tokens = index.shape[1] + 1
    run_tag = config_tag(cfg, values, real, index)
    runs: dict[float, tuple[Spackle, training.TrainResult]] = {}

    gene_means = torch.as_tensor(values[spots["train"]].mean(axis=0), dtype=torch.float32)
    scales = gene_scales(values[spots["train"]]) if cfg.gene_scaling else (None, None)

    def run(lr: float) -> training.TrainResult:
        training.seed_everything(cfg.train.seed)
        model = Spackle(len(genes), n_tokens, cfg, gene_scale=scales[0], out_scale=scales[1],
                        gene_centre=gene_means if cfg.centre_input else None)
        if cfg.init_output_bias == "mean":
            # Starts the output at each gene's mean, so training learns deviations from it
            # instead of first climbing from 0 to the scale of log2(TPM + 1) (~10-20).
            with torch.no_grad():
                model.adapter_out.bias.copy_(gene_means / model.out_scale)
        ckpt = None
        if cfg.checkpoint_dir:
            # One folder per (configuration, data, learning rate): fit() resumes from it, so a
            # rerun with identical settings reuses the finished run and anything else starts anew.
            ckpt = str(Path(cfg.checkpoint_dir) / f"{run_tag}_lr_{lr:g}")
        sampler = CentreSampler(spots["train"], cfg.train.batch_size, cfg.train.seed)
        res = training.fit(model, sampler, loss_fn, validate, cfg.train_config(lr, ckpt))
        runs[lr] = (model, res)
        return res

    t0 = time.perf_counter()
    lr_table = None
    if cfg.lr_grid:
        lr, lr_table = training.lr_search(run, cfg.lr_grid)
    else:
        lr = float(cfg.train.learning_rate)
        run(lr)
    model, res = runs[lr]
    model.eval()
    result = SpackleResult(
        model=model, config=replace(cfg, train=replace(cfg.train, learning_rate=lr)), genes=genes, learning_rate=lr,
        best_val=res.best_val, best_iteration=res.best_iteration, history=res.history,
        wall_time_s=time.perf_counter() - t0, device=res.device, lr_table=lr_table,
        extra={"validation_split": val_name, "n_validation_spots": int(len(val_spots)),
               "train_wall_time_s": res.wall_time_s, "panel": panel_info(adata, layer)},
    )
    if cfg.checkpoint_dir:
        result.checkpoint = save_checkpoint(result, Path(cfg.checkpoint_dir) / f"spackle_{run_tag}.pt")
    return result


def config_tag(config: SpackleConfig, values: np.ndarray, real: np.ndarray, index: np.ndarray) -> str:
    """Short hash of everything that determines a training run except the learning rate."""
    import hashlib

    train = {k: v for k, v in asdict(config.train).items()
             if k not in ("progress", "checkpoint_dir", "device", "learning_rate", "resume")
             and not (k in training.LATER_DEFAULTS and v == training.LATER_DEFAULTS[k])}
    keep = {k: v for k, v in asdict(config).items()
            if k not in ("train", "checkpoint_dir", "lr_grid", "predict_batch")
            and not (k in LATER_DEFAULTS and v == LATER_DEFAULTS[k])} | train
    h = hashlib.sha1(repr(sorted(keep.items())).encode())
    for arr in (values, real, index):
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:10]


def gene_scales(values: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-gene input and output scales: mean absolute value and standard deviation (1 if ~0)."""
    v = np.asarray(values, dtype=np.float64)
    m, sd = np.abs(v).mean(axis=0), v.std(axis=0)
    return (torch.as_tensor(np.where(m > 1e-6, m, 1.0), dtype=torch.float32),
            torch.as_tensor(np.where(sd > 1e-6, sd, 1.0), dtype=torch.float32))


def _hex_geometry(adata: AnnData, hex_geometry: bool | None) -> bool:
    if hex_geometry is not None:
        return bool(hex_geometry)
    params = adata.uns.get("preprocessing", {}).get("params", {}) if isinstance(adata.uns.get("preprocessing"), dict) else {}
    return bool(params.get("hex_geometry", True))


# ---------------------------------------------------------------------------------------------
# Checkpoints and inference
# ---------------------------------------------------------------------------------------------


def save_checkpoint(result: SpackleResult, path: str | os.PathLike) -> Path:
    """Write the model, its configuration and gene panel atomically to ``path`` (a ``.pt`` file).

    The file carries the weights, the :class:`SpackleConfig`, the genes, and the panel of the
    training data (:func:`spared_utils.preprocess.panel.panel_info`: symbols, gene lengths,
    curation parameters, the training dataset's id and fingerprint, per-gene training
    statistics) with the package versions, so that :func:`spared_utils.apply` can bring a new
    slide to the same scale and :func:`check_genes` can name what disagrees.
    """
    path = Path(path)
    blob = {
        "kind": "spackle",
        "panel": result.extra.get("panel"),
        "versions": package_versions(),
        "state_dict": {k: v.detach().cpu() for k, v in result.model.state_dict().items()},
        "config": asdict(result.config),
        "genes": list(result.genes),
        "n_tokens": result.model.n_tokens,
        "learning_rate": result.learning_rate,
        "best_val": result.best_val,
        "best_iteration": result.best_iteration,
        "history": result.history.to_dict(orient="list"),
    }
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)
    return path


def load_checkpoint(path: str | os.PathLike, device: str = "auto") -> SpackleResult:
    """Read a checkpoint written by :func:`save_checkpoint` (model in eval mode on ``device``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SpaCKLE checkpoint {path} not found; train with complete(adata, method='spackle') first")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file fails in many ways
        raise ValueError(f"SpaCKLE checkpoint {path} cannot be read ({type(err).__name__}: {err}); the file is "
                         "truncated or not a checkpoint: train again (chapters/02_completion) or copy it again") from err
    if not isinstance(blob, dict) or "state_dict" not in blob or blob.get("kind", "spackle") != "spackle":
        raise ValueError(f"{path} is not a SpaCKLE checkpoint (written by spared_utils.completion.save_checkpoint); "
                         "pass the spackle_*.pt file that chapter 02 writes under results/<dataset>/completion/")
    cfg_values = dict(blob["config"])
    cfg_values["train"] = {**cfg_values["train"], "device": device}
    if cfg_values.get("lr_grid") is not None:
        cfg_values["lr_grid"] = tuple(cfg_values["lr_grid"])
    cfg = SpackleConfig(**cfg_values)
    model = Spackle(len(blob["genes"]), int(blob["n_tokens"]), cfg)
    model.load_state_dict(blob["state_dict"])
    model.to(training.resolve_device(device)).eval()
    return SpackleResult(model=model, config=cfg, genes=list(blob["genes"]), learning_rate=blob["learning_rate"],
                         best_val=blob["best_val"], best_iteration=blob["best_iteration"],
                         history=pd.DataFrame(blob["history"]), wall_time_s=0.0, device=str(device), checkpoint=path,
                         extra={"panel": blob.get("panel"), "versions": blob.get("versions", {})})


def check_genes(result: SpackleResult, adata: AnnData, source: str = "the checkpoint") -> None:
    """Raise if the data's genes are not exactly the model's genes, in the same order."""
    data_genes = [str(g) for g in adata.var_names]
    if data_genes == result.genes:
        return
    if result.checkpoint is not None:
        panel = result.extra.get("panel") or {"genes": result.genes}
        data = f"the data ({adata.uns.get('dataset_id', 'unnamed dataset')})"
        check_panel({**panel, "genes": result.genes}, data_genes, str(result.checkpoint), data)
    missing = [g for g in result.genes if g not in set(data_genes)]
    extra = [g for g in data_genes if g not in set(result.genes)]
    detail = (f"{len(missing)} of the model's genes are absent (e.g. {missing[:3]}), {len(extra)} genes are new "
              f"(e.g. {extra[:3]})") if (missing or extra) else "the same genes in a different order"
    raise ValueError(f"genes mismatch between {source} ({len(result.genes)} genes) and the data "
                     f"({len(data_genes)} genes): {detail}; complete with a model trained on this dataset "
                     "(or reorder with adata = adata[:, genes])")


def complete_with(result: SpackleResult, adata: AnnData, layer: str = DEFAULT_LAYER,
                  hex_geometry: bool | None = None, slide_key: str = "slide_id") -> np.ndarray:
    """Complete the missing entries of ``layers[layer]`` with a trained model.

    The real missing-value mask is the model's mask (missing entries are 0 in every token);
    the centre token's output replaces the missing entries, real values are kept.
    """
    check_genes(result, adata)
    values, real = check_input(adata, layer, slide_key=slide_key)
    cfg = result.config
    index = neighbourhoods(adata, cfg, hex_geometry=_hex_geometry(adata, hex_geometry), slide_key=slide_key)
    if index.shape[1] + 1 != result.model.n_tokens:
        raise ValueError(f"the model was trained on {result.model.n_tokens} tokens per neighbourhood but this "
                         f"dataset's neighbourhoods have {index.shape[1] + 1}; use the same neighbourhood settings")
    device = next(result.model.parameters()).device
    inputs = torch.as_tensor(values * real, device=device)
    centres = torch.arange(adata.n_obs, device=device)
    pred = predict_centres(result.model, inputs, torch.as_tensor(index, device=device), centres,
                           cfg.predict_batch, cfg.train.amp).cpu().numpy()
    return np.where(real, values, pred).astype(np.float32)


def predict_hidden(result: SpackleResult, adata: AnnData, hidden: np.ndarray, rows: np.ndarray,
                   layer: str = DEFAULT_LAYER, index: np.ndarray | None = None,
                   hex_geometry: bool | None = None, slide_key: str = "slide_id") -> np.ndarray:
    """Predictions for the spots ``rows`` when the entries ``hidden`` (spots × genes) are hidden.

    Used by the synthetic-masking evaluation; returns a ``(len(rows), genes)`` array.
    """
    check_genes(result, adata)
    values, real = check_input(adata, layer, slide_key=slide_key)
    if index is None:
        index = neighbourhoods(adata, result.config, hex_geometry=_hex_geometry(adata, hex_geometry),
                               slide_key=slide_key)
    device = next(result.model.parameters()).device
    inputs = torch.as_tensor(spackle_input(values, real, hidden, result.config), device=device)
    pred = predict_centres(result.model, inputs, torch.as_tensor(index, device=device),
                           torch.as_tensor(np.asarray(rows, dtype=np.int64), device=device),
                           result.config.predict_batch, result.config.train.amp)
    return pred.cpu().numpy()


__all__: Sequence[str] = (
    "SpackleConfig", "Spackle", "SpackleResult", "Neighbourhoods", "CentreSampler", "train_spackle",
    "complete_with", "predict_hidden", "save_checkpoint", "load_checkpoint", "check_input", "check_genes",
    "neighbourhoods", "knn_index", "gather", "training_mask", "config_tag", "mask_probabilities", "synthetic_hidden", "split_spots",
)
