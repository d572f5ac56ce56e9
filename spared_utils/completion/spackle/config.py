"""SpaCKLE's configuration: :class:`SpackleConfig` (every value of a run) and :func:`config_tag`."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

from ... import training

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
LATER_DEFAULTS: dict[str, Any] = {"centre_input": False, "neighbour_skip": False, "neighbour_blend": False,
                                   "zero_posterior": False}


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
    #: ours: the centre token's output is pulled towards the mean of the gene's given values in
    #: the nearest ring that has one (ring 1 of the neighbourhood, else ring 2), by a learned weight
    #: per availability (how many ring-1 neighbours hold the gene; ring 2 only): a spatial-mean path
    #: beside the transformer, trained with it. ``neighbourhood="knn"`` reads its 6 nearest spots as ring 1.
    neighbour_skip: bool = False
    #: ours: after training, the centre's prediction is blended with the neighbour mean (rings
    #: 1–3), one weight per availability bin fitted on the validation slides (:mod:`.blend`)
    neighbour_blend: bool = False
    #: ours: an originally missing entry (a zero count) is completed with the expected expression
    #: given that count, under a gamma–Poisson model around the prediction whose spread is fitted
    #: on the validation slides (:mod:`.zeros`); values hidden on purpose are predicted as before
    zero_posterior: bool = False
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
    def make(cls, **options: Any) -> SpackleConfig:
        """A config from flat options, the one way to build one: ``SpackleConfig.make(iterations=200, d_model=64)``.

        :class:`~spared_utils.training.TrainConfig` fields (``iterations``, ``seed``, ``device``,
        ``warmup_iterations``, ...) go to :attr:`train`; ``checkpoint_dir`` is SpaCKLE's (one
        folder per learning rate under it), not the loop's.

        Raises
        ------
        TypeError
            An option that is neither a field of this class nor of ``TrainConfig``.
        """
        return cls().updated(**options)

    def updated(self, **options: Any) -> SpackleConfig:
        """A copy with some flat options changed (as :meth:`make`): ``base.updated(**PLUS_OPTIONS)``."""
        names = {f.name for f in fields(self)} - {"train"}
        train, unknown = training.split_train_options({k: v for k, v in options.items() if k not in names}, self.train)
        if unknown:
            raise TypeError(f"unknown option(s) {sorted(unknown)} for SpaCKLE; valid: "
                            f"{sorted(names | set(training.TRAIN_FIELDS))}")
        return replace(self, train=train, **{k: v for k, v in options.items() if k in names})

    def flat(self) -> dict[str, Any]:
        """Every value, the training loop's included, in one flat mapping (for the chapter's table)."""
        return {**{k: v for k, v in asdict(self).items() if k != "train"}, **asdict(self.train)}

    def changed(self) -> dict[str, tuple[Any, Any]]:
        """The values that differ from the defaults (:meth:`make` with no argument): name →
        ``(default, this)``; what a chapter shows above the whole configuration."""
        default = type(self).make().flat()
        return {k: (default.get(k), v) for k, v in self.flat().items() if default.get(k) != v}


def config_tag(config: SpackleConfig, values: np.ndarray, real: np.ndarray, index: np.ndarray) -> str:
    """Short hash of everything that determines a training run except the learning rate."""
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


__all__ = ["DEFAULT_LAYER", "LATER_DEFAULTS", "MASK_LAYER", "SpackleConfig", "config_tag"]
