"""How a predictor run reads its data, trains and predicts: the :class:`Task` every predictor's record names.

Every predictor trains in the same loop (:func:`spared_utils.training.fit`: Adam, a budget of
iterations, validation MSE on real values every ``eval_every`` steps, best weights kept) and is
scored by the same metrics. What differs is what one training step reads and how a spot is
predicted; a :class:`Task` holds exactly that, for one model on one
:class:`~spared_utils.models.data.PredictionData`. Each family's task sits beside its
architecture (``PatchTask`` in :mod:`~spared_utils.models.encoders`, ``SlideTask`` in
:mod:`~spared_utils.models.slide`, ...) and its :class:`~spared_utils.models.PredictorRecord`
names it.

Rules every task keeps (and the tests check): banks of exemplars or retrieved spots hold the
run's *training* spots only, a training spot never retrieves itself nor a spot of its own slide
(EGN/EGGN) or itself (BLEEP); slide and graph inputs never mix spots of two slides. Frozen
features are computed once per run, only for the spots a run reads
(:class:`~spared_utils.models.features.FrozenCache`).

A predictor that needs another trained model first (SEPAL's frozen stage 1) names a *setup*
hook in its record; the engine calls it with a :class:`SetupContext` and passes what it returns
to the task as keyword arguments.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .. import graphs, metrics
from ..training import TrainResult, autocast, resolve_device, to_device
from .data import PatchDataset, PredictionData

__all__ = ["SetupContext", "SetupRun", "Task", "default_num_workers", "load_patches", "make_loader", "masked_mse_loss",
           "predict", "slide_window", "validation_mse"]


def masked_mse_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``(pred - target)²`` over the entries where ``mask`` is True (0 if none)."""
    mask = mask.to(pred.dtype)
    return ((pred.float() - target.float()) ** 2 * mask).sum() / mask.sum().clamp_min(1.0)


def default_num_workers(device: torch.device | str) -> int:
    """DataLoader workers: none on CPU (they would compete with the model for cores), else up to 8."""
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if dev.type == "cpu":
        return 0
    return max(0, min(8, (os.cpu_count() or 2) - 1))


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int, device: torch.device,
                seed: int = 0, drop_last: bool = False) -> DataLoader:
    """A DataLoader with pinned memory on CUDA, persistent workers and a seeded shuffle."""
    generator = torch.Generator().manual_seed(int(seed)) if shuffle else None
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, drop_last=drop_last,
        pin_memory=device.type == "cuda", persistent_workers=num_workers > 0, generator=generator,
        prefetch_factor=4 if num_workers > 0 else None,
    )


@torch.no_grad()
def predict(model: nn.Module, data: PredictionData, rows: np.ndarray, batch_size: int = 64,
            device: str | torch.device = "auto", num_workers: int | None = None, amp: bool = True,
            progress: bool = False, loader: DataLoader | None = None) -> np.ndarray:
    """Predictions (float32, ``len(rows)`` × n_genes) of a *patch* ``model`` for AnnData ``rows``.

    Every kind predicts through its task (:meth:`Task.predict`); a patch task calls this.
    """
    dev = resolve_device(device) if not isinstance(device, torch.device) else device
    if loader is None:
        workers = default_num_workers(dev) if num_workers is None else num_workers
        loader = make_loader(data.dataset(rows, with_targets=False), batch_size, False, workers, dev)
    was_training = model.training
    model.eval()
    model.to(dev)
    out = []
    for images in tqdm(loader, desc="predict", leave=False, disable=not progress):
        images = to_device(images, dev, channels_last=dev.type == "cuda")
        with autocast(dev, amp):
            out.append(model(images).float().cpu())
    model.train(was_training)
    if not out:
        return np.zeros((0, data.n_genes), dtype=np.float32)
    return torch.cat(out).numpy()


def load_patches(data: PredictionData, rows: np.ndarray, size: int | None = None, chunk: int = 256) -> torch.Tensor:
    """``uint8`` (n, 3, size, size) patches of AnnData ``rows`` (resized with antialiasing if ``size`` differs)."""
    rows = np.asarray(rows, dtype=np.int64)
    out = []
    take = getattr(data.store, "take", None) or (lambda idx: np.stack([np.asarray(data.store[int(i)]) for i in idx]))
    for start in range(0, len(rows), chunk):
        part = take(data.store_rows[rows[start:start + chunk]])
        x = torch.from_numpy(np.ascontiguousarray(part)).permute(0, 3, 1, 2)
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            if min(x.shape[-2:]) < size:
                raise ValueError(f"patches are {tuple(x.shape[-2:])} px but the model reads {size} px (upsampling "
                                 f"would invent detail): give the model a patch_size or input_size of at most "
                                 f"{min(x.shape[-2:])} (a chapter: -p patch_size {min(x.shape[-2:])}), or cut "
                                 "larger patches")
            x = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            x = x.round().clamp(0, 255).to(torch.uint8)
        out.append(x.contiguous())
    if not out:
        side = size or int(np.asarray(data.store[0]).shape[0])
        return torch.zeros((0, 3, side, side), dtype=torch.uint8)
    return torch.cat(out)



def slide_window(rows: np.ndarray, coords: np.ndarray, size: int, rng: np.random.Generator,
                 hex_geometry: bool = True) -> np.ndarray:
    """The ``size`` spots of ``rows`` (one slide) nearest a random one of them (all if fewer), sorted."""
    rows = np.asarray(rows)
    if len(rows) <= size:
        return rows
    pos = graphs.grid_positions(torch.as_tensor(coords[rows, 0]), torch.as_tensor(coords[rows, 1]), hex_geometry).numpy()
    centre = pos[rng.integers(len(rows))]
    nearest = np.argsort(((pos - centre) ** 2).sum(1), kind="stable")[:size]
    return np.sort(rows[nearest])


class _Indexed(Dataset):
    """A :class:`PatchDataset` whose items also carry their position ``i`` (to look up precomputed inputs)."""

    def __init__(self, patches: PatchDataset):
        self.patches = patches

    def __len__(self) -> int:
        return len(self.patches)

    def __getitem__(self, i: int):
        return (*self.patches[i], i)


@dataclass
class SetupRun:
    """A predictor trained by a setup hook's :meth:`SetupContext.train`: its best weights and its
    checkpoint folder (where the hook may save what it derives from it)."""

    model: nn.Module
    checkpoint_dir: Path


@dataclass
class SetupContext:
    """What a record's setup hook receives: the run it prepares, and how to train another predictor first.

    ``options`` are the run's setup options (:attr:`~spared_utils.predict.PredictorConfig.setup`);
    ``train(name, **options)`` trains predictor ``name`` on the same data, scenario, seed and
    device (its record's CPU budget, changed by ``options``; nothing written to the results
    store) and returns a :class:`SetupRun`.
    """

    data: PredictionData
    dataset: str
    scenario: str
    seed: int
    options: Mapping[str, Any] = field(default_factory=dict)
    train: Callable[..., SetupRun] | None = None


class Task:
    """What one run of one predictor reads; subclasses say how it trains and predicts.

    Parameters
    ----------
    model
        The built predictor.
    data
        The run's :class:`PredictionData` (one scenario).
    train_rows
        The AnnData rows it trains on (all training spots, or the budget's ``train_spots`` subset).
    device, workers, batch_size, eval_batch_size, augment, amp, seed, progress
        From the run's config.
    """

    #: True for predictors fitted in closed form (:meth:`fit` instead of the training loop).
    closed_form = False
    #: True where a training step reads neighbouring spots of one slide (``batch_size`` = spots of a window).
    per_slide = False

    def __init__(self, model: nn.Module, data: PredictionData, train_rows: np.ndarray, *, device: torch.device,
                 workers: int = 0, batch_size: int = 32, eval_batch_size: int = 64, augment: bool = True,
                 amp: bool = True, seed: int = 0, progress: bool = False, **_: Any):
        self.model, self.data, self.train_rows = model, data, np.asarray(train_rows, dtype=np.int64)
        self.device, self.workers, self.batch_size = device, int(workers), int(batch_size)
        self.eval_batch_size, self.augment, self.amp = int(eval_batch_size), bool(augment), bool(amp)
        self.seed, self.progress = int(seed), bool(progress)

    # -- what subclasses provide -------------------------------------------------------------

    def batches(self) -> Iterable:
        """Training batches (cycled by the training loop)."""
        raise NotImplementedError

    def loss(self, net: nn.Module, batch) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, net: nn.Module, rows: np.ndarray, progress: bool = False) -> np.ndarray:
        """(len(rows), n_genes) float32 predictions of ``net`` for AnnData ``rows``, in their order
        (in eval mode, without gradients; the mode is restored afterwards)."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return np.zeros((0, self.data.n_genes), dtype=np.float32)
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad():
                return np.asarray(self._predict(net, rows, progress), dtype=np.float32)
        finally:
            net.train(was_training)

    def _predict(self, net: nn.Module, rows: np.ndarray, progress: bool) -> np.ndarray:
        raise NotImplementedError

    def parameters(self) -> Iterable[nn.Parameter] | None:
        """What the optimiser trains (``None``: every trainable parameter of the model)."""
        return None

    def fit(self, net: nn.Module, validate: Callable[[nn.Module], float]) -> TrainResult:
        """Closed-form fit (only where :attr:`closed_form`)."""
        raise NotImplementedError(f"{type(self).__name__} trains with the training loop, not in closed form")

    # -- shared helpers ------------------------------------------------------------------------

    @property
    def ids(self) -> np.ndarray:
        return self.data.obs_names

    def _patch_loader(self, rows: np.ndarray, with_targets: bool, shuffle: bool, indexed: bool = False) -> DataLoader:
        ds = self.data.dataset(rows, augment=self.augment and shuffle, with_targets=with_targets)
        if indexed:
            ds = _Indexed(ds)
        size = min(self.batch_size if shuffle else self.eval_batch_size, len(ds))
        return make_loader(ds, max(size, 1), shuffle, self.workers, self.device, seed=self.seed, drop_last=shuffle)

    def _in_batches(self, rows: np.ndarray, predict_part: Callable[[slice], torch.Tensor],
                    progress: bool) -> np.ndarray:
        """Concatenated ``predict_part(slice)`` over ``eval_batch_size`` chunks of ``rows`` (under
        autocast); floating outputs come back as float32, integer ones (indices) unchanged."""
        out = []
        for start in tqdm(range(0, len(rows), self.eval_batch_size), desc="predict", leave=False, disable=not progress):
            with autocast(self.device, self.amp):
                part = predict_part(slice(start, start + self.eval_batch_size))
            out.append((part.float() if part.is_floating_point() else part).cpu())
        return torch.cat(out).numpy()

    def _loss_mask_is_full(self, rows: np.ndarray) -> bool:
        return bool(self.data.loss_mask[rows].all())



class SlideContext(Task):
    """Shared by slide and slide-graph tasks: spots grouped by slide, windows of one slide."""

    per_slide = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.data.coords is None:
            raise KeyError("slide and graph predictors need the spots' array coordinates (obs['array_row'], "
                           "obs['array_col']); curated datasets carry them")
        self.by_slide = {s: np.flatnonzero(self.data.slides == s) for s in np.unique(self.data.slides)}
        train_slides = self.data.slides[self.train_rows]
        self.train_by_slide = {s: self.train_rows[train_slides == s] for s in np.unique(train_slides)}
        self.rng = np.random.default_rng(self.seed)

    def windows(self) -> Iterator[np.ndarray]:
        """Forever: a window of ``batch_size`` spots of one training slide (slides drawn uniformly)."""
        names = sorted(self.train_by_slide)
        while True:
            name = names[self.rng.integers(len(names))]
            yield slide_window(self.train_by_slide[name], self.data.coords, self.batch_size, self.rng,
                               self.data.hex_geometry)

    def _per_slide(self, rows: np.ndarray, run_slide: Callable[[np.ndarray], torch.Tensor],
                   progress: bool = False) -> np.ndarray:
        """Predict ``rows`` by running ``run_slide`` on every spot of each slide they belong to."""
        out = np.zeros((len(rows), self.data.n_genes), dtype=np.float32)
        slides = self.data.slides[rows]
        for name in tqdm(np.unique(slides), desc="predict slides", leave=False, disable=not progress):
            full = self.by_slide[name]
            pred = run_slide(full).float().cpu().numpy()
            where = np.flatnonzero(slides == name)
            out[where] = pred[np.searchsorted(full, rows[where])]
        return out

    def _coords(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        c = torch.as_tensor(self.data.coords[rows], dtype=torch.long, device=self.device)
        return c[:, 0], c[:, 1]



def validation_mse(task: Task, rows: np.ndarray) -> Callable[[nn.Module], float]:
    """``validate(net)``: masked MSE of the task's predictions for ``rows`` (NaN without rows)."""
    data = task.data

    def validate(net: nn.Module) -> float:
        if not len(rows):
            return float("nan")
        return metrics.masked_mse(task.predict(net, rows), data.truth[rows], data.real[rows])

    return validate
