"""What a predictor run reads: targets, masks and splits of one scenario, and the patches.

:func:`prediction_data` collects, from a curated (or completed) dataset and its patch store,
everything a run needs for one scenario (:class:`PredictionData`); :class:`PatchDataset` streams
the patches from the store (a memory map), one per item, applying a random symmetry of the
square (flips and 90° rotations) when training, and yields ``uint8`` tensors that the model
normalises itself on the device.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from torch.utils.data import Dataset

from ..completion import hex_geometry_of
from ..patches import PatchStore
from ..utils import dense

__all__ = ["MASKED_LOSS", "MASK_LAYER", "PAPER_PAIR", "SCENARIOS", "Scenario", "TARGET_LAYERS", "TRUTH_LAYER", "ZERO_FILLED",
           "PatchDataset", "PredictionData", "open_store", "patch_channel_stats", "prediction_data", "random_symmetry", "store_positions"]

#: The training scenarios (Mejia et al., MICCAI 2024, and the authors' code, BCV-Uniandes/SpaRED;
#: compared in chapter 90). Every scenario is scored the same way: on real values of ``c_d_log1p`` only.
#:
#: ``raw``        the paper's raw scenario: the curated layer with every value that was missing
#:                before completion set back to 0 (log scale), the loss on *every* entry (the
#:                authors' ``noisy`` layer; their ``robust_loss``, which skips missing values,
#:                is off by default). On the Δ scale (ViT-B+Δ, SEPAL) a missing value becomes
#:                minus the gene's training mean.
#: ``masked``     the same layer, the loss on real values only (no completion needed): a
#:                stronger baseline than the paper's raw one.
#: ``median``     the median-completed ``c_d_log1p`` (the curation's adaptive median), loss on
#:                every entry.
#: ``completed``  SpaCKLE's ``c_t_log1p``, loss on every entry.
Scenario = Literal["raw", "masked", "median", "completed"]
SCENARIOS: tuple[str, ...] = get_args(Scenario)
#: Layer each scenario's targets are read from.
TARGET_LAYERS = {"raw": "c_d_log1p", "masked": "c_d_log1p", "median": "c_d_log1p", "completed": "c_t_log1p"}
#: Scenarios whose targets are 0 where the value was missing (the paper's raw scenario).
ZERO_FILLED = frozenset({"raw"})
#: Scenarios whose loss reads real values only.
MASKED_LOSS = frozenset({"masked"})
#: The pair the paper compares (``scenario="both"``).
PAPER_PAIR = ("raw", "completed")
#: Ground truth of every evaluation, and the mask of real values.
TRUTH_LAYER = "c_d_log1p"
MASK_LAYER = "mask"


@dataclass
class PredictionData:
    """Everything a predictor run reads from a curated dataset, for one scenario.

    Arrays are indexed by the AnnData's rows (spots); ``splits`` maps each split to the rows in
    it and ``store_rows`` maps every AnnData row to its row in the patch store.
    """

    store: Any
    scenario: str
    genes: np.ndarray
    target: np.ndarray
    loss_mask: np.ndarray
    truth: np.ndarray
    real: np.ndarray
    splits: dict[str, np.ndarray]
    store_rows: np.ndarray
    slides: np.ndarray
    #: (n_spots, 2) integer array row and column (``obs["array_row"]``, ``obs["array_col"]``), if present
    coords: np.ndarray | None = None
    #: spot ids (``obs_names``): what retrieval banks use to keep a spot from retrieving itself
    obs_names: np.ndarray | None = None
    #: Visium hexagonal grid (True) or legacy ST square grid
    hex_geometry: bool = True
    #: the AnnData the arrays come from (neighbourhood graphs read it)
    adata: AnnData | None = None

    def __post_init__(self):
        if self.obs_names is None:
            self.obs_names = np.asarray([str(i) for i in range(self.target.shape[0])])

    @property
    def n_genes(self) -> int:
        return self.target.shape[1]

    def rows(self, split: str) -> np.ndarray:
        """AnnData rows of a split (raises with the available splits if it is empty)."""
        if split not in self.splits or len(self.splits[split]) == 0:
            raise ValueError(f"the dataset has no spot in split {split!r}; splits present: {sorted(self.splits)}")
        return self.splits[split]

    def training_mean(self) -> np.ndarray:
        """Per-gene mean of the training targets over the values the loss sees.

        This is the best constant predictor under the scenario's loss, the Δ reference of
        ViT-B+Δ and SEPAL and the initial head bias of STNet and the slide models. The trivial
        predictor every run is compared with is :meth:`real_mean` (for ``masked`` the two agree). A gene with no real training
        value falls back to the mean of all its values.
        """
        rows = self.rows("train")
        y = self.target[rows].astype(np.float64)
        return _masked_column_mean(y, self.loss_mask[rows], fallback=y.mean(axis=0))

    def real_mean(self) -> np.ndarray:
        """Per-gene mean of the *real* training values, whatever the scenario: the trivial
        predictor every run is compared with (a gene with no real training value: NaN → 0)."""
        rows = self.rows("train")
        return _masked_column_mean(self.truth[rows].astype(np.float64), self.real[rows], fallback=0.0)

    def target_shift(self) -> float:
        """How far the scenario's targets pull a model away from the real values: the mean over
        genes of :meth:`training_mean` − :meth:`real_mean` (log scale).

        0 for ``masked`` (the loss reads real values only); negative when the entries that were
        missing are filled with values below the gene's real mean (0 in ``raw``, a completion's
        estimate in ``median`` / ``completed``). Evaluation reads real values only, so a model
        trained on shifted targets starts biased by about this much (chapter 90).
        """
        return float(np.mean(self.training_mean().astype(np.float64) - self.real_mean()))

    def subsample(self, split: str, n_spots: int | None, seed: int = 0) -> np.ndarray:
        """A fixed random subset of ``n_spots`` rows of ``split`` (all rows if ``None`` or larger)."""
        rows = self.rows(split)
        if n_spots is None or n_spots >= len(rows):
            return rows
        if n_spots < 1:
            raise ValueError(f"a subsample needs at least one spot, got n_spots={n_spots}")
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(rows, size=int(n_spots), replace=False))

    def dataset(self, rows: np.ndarray, augment: bool = False, with_targets: bool = True) -> PatchDataset:
        """A :class:`PatchDataset` over AnnData ``rows``."""
        if with_targets:
            return PatchDataset(self.store, self.store_rows[rows], self.target[rows], self.loss_mask[rows], augment)
        return PatchDataset(self.store, self.store_rows[rows], augment=augment)


def _masked_column_mean(values: np.ndarray, mask: np.ndarray, fallback) -> np.ndarray:
    """float32 mean of each column over its ``mask``-ed entries (``fallback`` where none is)."""
    n = mask.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, np.where(mask, values, 0.0).sum(axis=0) / n, fallback)
    return mean.astype(np.float32)


def prediction_data(adata: AnnData, store, scenario: str = "raw") -> PredictionData:
    """Collect targets, masks, splits and patch-store rows of ``adata`` for one scenario.

    Parameters
    ----------
    adata
        A curated dataset: layers ``c_d_log1p`` and ``mask`` (and ``c_t_log1p`` for the completed
        scenario), ``obs["split"]``.
    store
        The dataset's :class:`~spared_utils.patches.PatchStore` (or a path to one).
    scenario
        One of :data:`SCENARIOS`: ``"raw"`` (zero-filled, loss everywhere: the paper's),
        ``"masked"`` (loss on real values), ``"median"`` or ``"completed"`` (SpaCKLE).
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {SCENARIOS}, got {scenario!r}")
    store = open_store(store)
    layer = TARGET_LAYERS[scenario]
    for need in (TRUTH_LAYER, MASK_LAYER, layer):
        if need not in adata.layers:
            hint = ("complete the dataset first: adata = spared_utils.completion.ensure(adata, dataset_id, 'spackle') "
                    "(or spared_utils.completion.complete(adata, method='spackle'))"
                    if need == "c_t_log1p" else "curate the dataset first (spared_utils.datasets.load(id))")
            raise KeyError(f"layer {need!r} is missing from the AnnData (layers: {sorted(adata.layers)}); {hint}")
    if "split" not in adata.obs:
        raise KeyError("obs['split'] (train/val/test) is missing; curated datasets carry it")
    truth = dense(adata.layers[TRUTH_LAYER]).astype(np.float32)
    real = dense(adata.layers[MASK_LAYER]).astype(bool)
    target = dense(adata.layers[layer]).astype(np.float32)
    if scenario in ZERO_FILLED:
        target = np.where(real, target, np.float32(0.0))
    loss_mask = real.copy() if scenario in MASKED_LOSS else np.ones_like(real)
    bad = ~np.isfinite(target) & loss_mask
    if bad.any():
        raise ValueError(f"layer {layer!r} has {int(bad.sum())} non-finite value(s) where the loss reads it")
    split = adata.obs["split"].astype(str).to_numpy()
    splits = {s: np.flatnonzero(split == s) for s in ("train", "val", "test") if (split == s).any()}
    if "train" not in splits:
        raise ValueError("no spot has split 'train'; a predictor needs training slides")
    slides = adata.obs["slide_id"].astype(str).to_numpy() if "slide_id" in adata.obs else np.array(["slide"] * adata.n_obs)
    coords = (adata.obs[["array_row", "array_col"]].to_numpy().astype(np.int64)
              if {"array_row", "array_col"} <= set(adata.obs) else None)
    return PredictionData(
        store=store, scenario=scenario, genes=np.asarray(adata.var_names), target=target, loss_mask=loss_mask,
        truth=truth, real=real, splits=splits, store_rows=store_positions(store, adata.obs_names), slides=slides,
        coords=coords, obs_names=np.asarray(adata.obs_names).astype(str), hex_geometry=hex_geometry_of(adata),
        adata=adata,
    )


def open_store(store):
    """A patch store object from a store or a path to one."""
    if isinstance(store, (str, os.PathLike)):
        return PatchStore(store)
    for attr in ("__len__", "__getitem__", "obs_names"):
        if not hasattr(store, attr):
            raise TypeError(f"{type(store).__name__} is not a patch store (no {attr}); pass a PatchStore or its path")
    return store


def store_positions(store, obs_names: Sequence[str]) -> np.ndarray:
    """Row of each spot of ``obs_names`` in the patch store (raises if one is missing)."""
    if hasattr(store, "positions"):
        return np.asarray(store.positions(obs_names), dtype=np.int64)
    pos = pd.Index(store.obs_names).get_indexer(pd.Index(obs_names))
    if (pos < 0).any():
        raise KeyError(f"{int((pos < 0).sum())} spot(s) have no patch in the store; re-extract the patches for this AnnData")
    return pos.astype(np.int64)


def random_symmetry(image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One of the 8 symmetries of the square, uniformly: a 90°·k rotation, optionally mirrored.

    Same distribution as SpaRED's training transform (horizontal flip, vertical flip and a 90°
    rotation, each with probability 1/2).
    """
    k = int(torch.randint(8, (1,), generator=generator))
    if k >= 4:
        image = torch.flip(image, dims=(-1,))
    return torch.rot90(image, k % 4, dims=(-2, -1))


class PatchDataset(Dataset):
    """Spot patches streamed from a patch store, with their targets and loss mask.

    Items are ``(image, target, mask)``: ``image`` a ``uint8`` (3, H, W) tensor, ``target``
    float32 (n_genes,), ``mask`` bool (n_genes,) — or the image alone when built without targets.
    Only the patches asked for are read (the store is a memory map; worker processes reopen it).

    Parameters
    ----------
    store
        A :class:`~spared_utils.patches.PatchStore` (or its path).
    rows
        Store rows of the items, in order.
    targets, mask
        Arrays aligned with ``rows`` (or ``None`` for prediction only).
    augment
        Apply :func:`random_symmetry` to every image (training only).
    """

    def __init__(self, store, rows: np.ndarray, targets: np.ndarray | None = None,
                 mask: np.ndarray | None = None, augment: bool = False):
        self.store = open_store(store)
        self.rows = np.asarray(rows, dtype=np.int64)
        if targets is not None:
            targets = np.ascontiguousarray(targets, dtype=np.float32)
            mask = np.ones(targets.shape, dtype=bool) if mask is None else np.ascontiguousarray(mask, dtype=bool)
            if len(targets) != len(self.rows) or mask.shape != targets.shape:
                raise ValueError(f"{len(self.rows)} rows but targets {targets.shape} and mask {mask.shape}")
        self.targets, self.mask, self.augment = targets, mask, augment

    def __len__(self) -> int:
        return len(self.rows)

    def image(self, i: int) -> torch.Tensor:
        patch = np.asarray(self.store[int(self.rows[i])])
        if patch.ndim != 3 or patch.shape[2] != 3:
            raise ValueError(f"patch {self.rows[i]} has shape {patch.shape}; expected (H, W, 3) uint8")
        image = torch.from_numpy(np.ascontiguousarray(patch)).permute(2, 0, 1)
        if self.augment:
            image = random_symmetry(image)
        return image.contiguous()

    def __getitem__(self, i: int):
        image = self.image(i)
        if self.targets is None:
            return image
        return image, torch.from_numpy(self.targets[i]), torch.from_numpy(self.mask[i])


def patch_channel_stats(store, rows: np.ndarray, n_patches: int = 384, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (0–1 scale) of up to ``n_patches`` random patches of ``rows``.

    ST-Net normalises its input with statistics estimated this way on training patches (a dozen
    batches of 32 in the original code).
    """
    store = open_store(store)
    rows = np.asarray(rows)
    rng = np.random.default_rng(seed)
    pick = rng.choice(rows, size=min(n_patches, len(rows)), replace=False)
    total = np.zeros(3)
    total_sq = np.zeros(3)
    count = 0
    for r in pick:
        p = np.asarray(store[int(r)], dtype=np.float64).reshape(-1, 3) / 255.0
        total += p.sum(0)
        total_sq += (p**2).sum(0)
        count += len(p)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
    return mean.astype(np.float32), np.maximum(std, 1e-3).astype(np.float32)
