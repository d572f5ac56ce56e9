"""How each kind of predictor reads its data, is trained and predicts: one task per kind.

Every predictor trains in the same loop (:func:`spared_utils.training.fit`: Adam, a budget of
iterations, validation MSE on real values every ``eval_every`` steps, best weights kept) and is
scored by the same metrics. What differs is what one training step reads and how a spot is
predicted; a :class:`Task` holds exactly that, for one model on one :class:`PredictionData`:

==================  ======================  ==========================================================
task                predictors              one training step / one prediction
==================  ======================  ==========================================================
:class:`PatchTask`  ShuffleNet, ViT-B,      a batch of spot patches / one patch → one spot
                    ViT-B+Δ, STNet
:class:`SlideTask`  HisToGene, Hist2ST      ``batch_size`` neighbouring spots of ONE training slide
                                            (a window around a random spot; the whole slide if it
                                            is smaller) / every spot of the slide at once
:class:`ExemplarTask`  EGN                  a batch of patches, each with its k exemplars: the
                                            nearest *training* spots of other slides in a frozen
                                            ResNet-50 feature space / the same per spot
:class:`ExemplarGraphTask`  EGGN            a window of one training slide as a graph of spots and
                                            their exemplars (frozen ResNet-18) / the whole slide
:class:`ContrastiveTask`  BLEEP             contrastive loss on (patch, expression) pairs / mean
                                            expression of the top-k training spots retrieved
:class:`SepalTask`  SEPAL                   neighbourhood graphs of frozen stage-1 (ViT-B+Δ)
                                            embeddings / the same per spot
:class:`ProbeTask`  linear probe            no step: scaler → PCA → ridge fitted in closed form on
                                            frozen features / ridge prediction
==================  ======================  ==========================================================

Rules every task keeps (and the tests check): banks of exemplars or retrieved spots hold the
run's *training* spots only, a training spot never retrieves itself nor a spot of its own slide
(EGN/EGGN) or itself (BLEEP); slide and graph inputs never mix spots of two slides. Frozen
features are computed once per run, only for the spots a run reads (:class:`FrozenCache`).
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .. import graphs, metrics
from ..models import contrastive, exemplar, sepal, slide
from ..training import TrainResult, autocast, resolve_device, to_device
from ..utils import atomic_path
from .data import PatchDataset, PredictionData, random_symmetry

__all__ = ["FEATURE_CACHE_ENV", "ContrastiveTask", "ExemplarGraphTask", "ExemplarTask", "FrozenCache", "PatchTask", "ProbeTask",
           "feature_cache_file", "module_fingerprint",
           "SepalTask", "SlideTask", "TASKS", "Task", "default_num_workers", "load_patches", "make_loader", "masked_mse_loss",
           "predict", "slide_window", "task_class", "validation_mse"]


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

    Other kinds predict through their task (:meth:`Task.predict`); :func:`spared_utils.predict.engine.predict_rows`
    picks the right one.
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
                raise ValueError(f"patches are {tuple(x.shape[-2:])} px but the model reads {size} px")
            x = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            x = x.round().clamp(0, 255).to(torch.uint8)
        out.append(x.contiguous())
    if not out:
        side = size or int(np.asarray(data.store[0]).shape[0])
        return torch.zeros((0, 3, side, side), dtype=torch.uint8)
    return torch.cat(out)


#: Frozen features shared by the runs of one process (e.g. the raw and completed runs of a
#: chapter read the same patches): ``(store, rows, encoder key) → FrozenCache``.
_SHARED: dict[tuple, "FrozenCache"] = {}


def shared_cache(data: PredictionData, key: tuple, make: Callable[[], "FrozenCache"]) -> "FrozenCache":
    """The process-wide :class:`FrozenCache` of ``key`` on ``data``'s patches (made once by ``make``)."""
    store = getattr(data.store, "path", None)
    if store is None:
        return make()
    full = (str(store), hash(data.store_rows.tobytes()), *key)
    if full not in _SHARED:
        if len(_SHARED) >= 8:
            _SHARED.clear()
        _SHARED[full] = make()
    return _SHARED[full]


def native_bf16(device: torch.device) -> bool:
    """Whether bfloat16 runs natively on ``device`` (CUDA; a CPU with AVX-512 BF16 / AMX)."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


#: Set to "0" to keep frozen features in memory only (no files under ``<patch store>/features/``).
FEATURE_CACHE_ENV = "SPARED_FEATURE_CACHE"


def module_fingerprint(module: nn.Module) -> str:
    """A short hash of every tensor of ``module.state_dict()`` (names, shapes, dtypes, bytes):
    two modules with the same fingerprint compute the same function."""
    h = hashlib.sha1()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def feature_cache_file(data: PredictionData, module: nn.Module, name: str, size: int | None, bf16: bool,
                       device: torch.device) -> Path | None:
    """Where :class:`FrozenCache` keeps ``module``'s features of ``data``'s spots on disk:
    ``<patch store>/features/<key>.pt``, the key made of the module's weights
    (:func:`module_fingerprint`), the spots' order, the patch size, bf16 and the device type.
    ``None`` when the store is not a folder or ``SPARED_FEATURE_CACHE=0``."""
    store = getattr(data.store, "path", None)
    if store is None or os.environ.get(FEATURE_CACHE_ENV, "1") == "0":
        return None
    rows = hashlib.sha1(np.ascontiguousarray(data.store_rows, dtype=np.int64).tobytes()).hexdigest()[:12]
    key = f"{module_fingerprint(module)}|{rows}|{size}|{bool(bf16)}|{torch.device(device).type}|{name}"
    return Path(store) / "features" / f"{hashlib.sha1(key.encode()).hexdigest()[:20]}.pt"


class FrozenCache:
    """Outputs of a frozen function of a spot's patch, computed once per spot, only when asked.

    ``encode(uint8 patches on the device) -> tensor or tuple of tensors``, one row per patch.
    :meth:`get` returns float32 CPU tensors for any AnnData rows, encoding the missing ones in
    batches of ``batch_size`` (with a progress bar when there are many).

    ``bf16``: encode under bfloat16 autocast (``None``: on CUDA, and on a CPU with native
    bfloat16 matrix units, where it is ~1.6× faster for a ViT-B; never where bfloat16 would be
    emulated). Frozen features are inputs, not trained weights: the rounding is far below what
    the models downstream can resolve, and on one machine the values are the same every run.

    ``module``: the ``nn.Module`` whose weights ``encode`` applies. With it the features also
    live on disk (:func:`feature_cache_file`), so later processes — the batch driver runs one
    notebook per scenario and seed — read them instead of encoding again. The file is written
    atomically, whenever the encoding done since the last write took longer than a write does
    (so writing never costs more than the work it keeps); ``n_loaded`` counts spots read from it.
    """

    def __init__(self, data: PredictionData, encode: Callable[[torch.Tensor], Any], device: torch.device,
                 batch_size: int = 32, size: int | None = None, name: str = "frozen features", progress: bool = False,
                 bf16: bool | None = None, module: nn.Module | None = None):
        self.data, self.encode, self.device = data, encode, torch.device(device)
        self.batch_size, self.size, self.name, self.progress = int(batch_size), size, name, progress
        self.bf16 = native_bf16(self.device) if bf16 is None else bool(bf16)
        self.done = np.zeros(data.target.shape[0], dtype=bool)
        self.values: list[torch.Tensor] | None = None
        self.n_encoded = 0
        self.n_loaded = 0
        self.file = (feature_cache_file(data, module, name, size, self.bf16, self.device)
                     if module is not None else None)
        self._pending_s, self._write_s = 0.0, 0.0
        if self.file is not None and self.file.is_file():
            self._load()

    def _load(self) -> None:
        try:
            saved = torch.load(self.file, map_location="cpu", weights_only=True)
            done = saved["done"].numpy().astype(bool)
            values = list(saved["values"])
            if done.shape != self.done.shape or any(len(v) != len(done) for v in values):
                raise ValueError(f"{len(done)} spots saved, {len(self.done)} expected")
        except Exception as err:  # a damaged or foreign file is recomputed, never trusted
            warnings.warn(f"{self.file}: unreadable feature cache ({err}); encoding again", stacklevel=3)
            return
        self.done, self.values, self.n_loaded = done, values, int(done.sum())

    def save(self) -> None:
        """Write the features encoded so far to :attr:`file` (atomically; nothing without a file)."""
        if self.file is None or self.values is None:
            return
        t0 = time.perf_counter()
        try:
            with atomic_path(self.file) as tmp:
                torch.save({"done": torch.from_numpy(self.done), "values": self.values}, tmp)
        except OSError as err:  # a full disk or a read-only store costs speed, not the run
            warnings.warn(f"{self.file}: could not save frozen features ({err}); continuing without", stacklevel=2)
            self.file = None
            return
        self._write_s, self._pending_s = time.perf_counter() - t0, 0.0

    @torch.no_grad()
    def get(self, rows: np.ndarray) -> tuple[torch.Tensor, ...]:
        rows = np.asarray(rows, dtype=np.int64)
        todo = np.unique(rows[~self.done[rows]])
        t0 = time.perf_counter()
        starts = range(0, len(todo), self.batch_size)
        for start in tqdm(starts, desc=self.name, leave=False, disable=not (self.progress and len(todo) > 4 * self.batch_size)):
            part = todo[start:start + self.batch_size]
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                out = self.encode(load_patches(self.data, part, self.size).to(self.device))
            out = out if isinstance(out, tuple) else (out,)
            if self.values is None:
                self.values = [torch.zeros((len(self.done), *o.shape[1:]), dtype=torch.float32) for o in out]
            for store, o in zip(self.values, out):
                store[torch.from_numpy(part)] = o.float().cpu()
            self.done[part] = True
            self.n_encoded += len(part)
        if len(todo) and self.file is not None:
            self._pending_s += time.perf_counter() - t0
            if self._pending_s >= self._write_s:
                self.save()
        if self.values is None:
            raise ValueError("no spot was asked for")
        index = torch.from_numpy(rows)
        return tuple(v[index] for v in self.values)

    def all(self) -> tuple[torch.Tensor, ...]:
        """The full per-spot arrays (rows not yet encoded are zeros)."""
        if self.values is None:
            raise ValueError("nothing encoded yet")
        return tuple(self.values)


def slide_window(rows: np.ndarray, coords: np.ndarray, size: int, rng: np.random.Generator,
                 hex_geometry: bool = True) -> np.ndarray:
    """The ``size`` spots of ``rows`` (one slide) nearest a random one of them (all if fewer), sorted."""
    rows = np.asarray(rows)
    if len(rows) <= size:
        return rows
    pos = exemplar.grid_positions(torch.as_tensor(coords[rows, 0]), torch.as_tensor(coords[rows, 1]), hex_geometry).numpy()
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


class PatchTask(Task):
    """One patch → one spot (ShuffleNet, ViT-B, ViT-B+Δ, STNet): masked MSE on each batch."""

    def batches(self) -> Iterable:
        return self._patch_loader(self.train_rows, True, True)

    def loss(self, net, batch):
        images, target, mask = batch
        return masked_mse_loss(net(images), target, mask)

    def _predict(self, net, rows, progress):
        return predict(net, self.data, rows, device=self.device, amp=self.amp, progress=progress,
                       loader=self._patch_loader(rows, False, False))


class _SlideContext(Task):
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


class SlideTask(_SlideContext):
    """HisToGene and Hist2ST: a transformer (and Hist2ST's GNN) over the spots of one slide.

    A training step reads a window of ``batch_size`` neighbouring spots of one training slide
    (the official code reads the whole slide: set ``batch_size`` at least the largest slide's
    spot count, as the paper budget does). Prediction runs each slide whole.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.size = int(self.model.patches.patch_size)
        self.cache: dict[str, torch.Tensor] = {}

    def _patches(self, rows: np.ndarray) -> torch.Tensor:
        return load_patches(self.data, rows, self.size)

    def batches(self):
        for rows in self.windows():
            patches = self._patches(rows)
            if self.augment:
                patches = torch.stack([random_symmetry(p) for p in patches])
            r, c = self.data.coords[rows, 0], self.data.coords[rows, 1]
            yield (patches, torch.as_tensor(r), torch.as_tensor(c), torch.from_numpy(self.data.target[rows]),
                   torch.from_numpy(self.data.loss_mask[rows]))

    def loss(self, net, batch):
        patches, r, c, target, mask = batch
        if isinstance(net, slide.Hist2ST):
            return slide.hist2st_loss(net, patches, r, c, target, mask)
        return masked_mse_loss(net(patches, r, c), target, mask)

    def _predict(self, net, rows, progress):
        def run(full):
            key = str(self.data.slides[full[0]])
            if key not in self.cache:
                self.cache[key] = self._patches(full)
            r, c = self._coords(full)
            with autocast(self.device, self.amp):
                return net(self.cache[key].to(self.device), r, c)
        return self._per_slide(rows, run, progress)


def _frozen_resnet(task: Task) -> FrozenCache:
    """The frozen ResNet features of the model's exemplar bank (shared by the runs of a process)."""
    backbone, pretrained = task.model.exemplar_backbone, bool(task.model.exemplar_pretrained)

    def make() -> FrozenCache:
        frozen = exemplar.FrozenEncoder(backbone, pretrained).to(task.device)
        return FrozenCache(task.data, frozen, task.device, name=f"frozen {backbone} features", progress=task.progress,
                           module=frozen)

    return shared_cache(task.data, (backbone, pretrained, str(task.device)), make)


def _exemplar_bank(task: Task, features: FrozenCache, metric: str) -> exemplar.ExemplarBank:
    """The bank of the run's training spots (their frozen features and scenario targets)."""
    rows = task.train_rows
    (feats,) = features.get(rows)
    bank = exemplar.ExemplarBank(feats, task.data.target[rows], task.data.slides[rows], task.ids[rows],
                                 np.asarray(["train"] * len(rows)), metric=metric)
    return bank.to(task.device)


def _query(task: Task, bank: exemplar.ExemplarBank, features: torch.Tensor, rows: np.ndarray, k: int) -> exemplar.Exemplars:
    """Exemplars of ``rows``: never the spot itself, nor a spot of its own slide (the official rule).

    With a single training slide the slide rule would leave a training spot no exemplar at all;
    then only the spot itself is excluded (with a warning).
    """
    slides = task.data.slides[rows]
    if len(np.unique(bank.slides)) < 2:
        warnings.warn("the exemplar bank holds one slide only: training spots retrieve exemplars from their own "
                      "slide (never themselves); the official rule needs two or more training slides", stacklevel=2)
        slides = None
    return bank.query(features.to(bank.device), k, exclude_slides=slides, exclude_ids=task.ids[rows])


class ExemplarTask(Task):
    """EGN: each patch with its own frozen ResNet-50 feature and its k exemplars from the training bank."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.features = _frozen_resnet(self)
        self.bank = _exemplar_bank(self, self.features, self.model.exemplar_metric)
        (train_feats,) = self.features.get(self.train_rows)
        found = _query(self, self.bank, train_feats, self.train_rows, self.model.k)
        self.train_features, self.train_exemplars = train_feats.to(self.device), found.indices

    def batches(self):
        return self._patch_loader(self.train_rows, True, True, indexed=True)

    def loss(self, net, batch):
        images, target, mask, pos = batch
        ex = self.train_exemplars[pos]
        pred = net(images, self.bank.features[ex], self.bank.expression[ex], self.train_features[pos])
        return exemplar.egn_loss(pred.float(), target.float(), mask)

    def _predict(self, net, rows, progress):
        (feats,) = self.features.get(rows)
        found = _query(self, self.bank, feats, rows, self.model.k)
        feats = feats.to(self.device)
        return self._in_batches(rows, lambda sl: net(load_patches(self.data, rows[sl]).to(self.device),
                                                     found.features[sl], found.expression[sl], feats[sl]), progress)


class ExemplarGraphTask(_SlideContext):
    """EGGN: a window of one slide as a graph of spots (frozen ResNet-18 features) and their exemplars."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.features = _frozen_resnet(self)
        self.bank = _exemplar_bank(self, self.features, self.model.exemplar_metric)

    def _inputs(self, rows: np.ndarray):
        (feats,) = self.features.get(rows)
        found = _query(self, self.bank, feats, rows, self.model.k)
        r, c = self._coords(rows)
        return feats.to(self.device), r, c, found.features, found.expression, found.indices

    def batches(self):
        for rows in self.windows():
            yield (*self._inputs(rows), torch.from_numpy(self.data.target[rows]),
                   torch.from_numpy(self.data.loss_mask[rows]))

    def loss(self, net, batch):
        *inputs, target, mask = batch
        return exemplar.egn_loss(net(*inputs).float(), target.float(), mask)

    def _predict(self, net, rows, progress):
        def run(full):
            with autocast(self.device, self.amp):
                return net(*self._inputs(full))
        return self._per_slide(rows, run, progress)


class ContrastiveTask(Task):
    """BLEEP: trained with its contrastive loss; predicts from a bank of the run's training spots.

    The bank (expression embeddings of the training spots, their targets) is rebuilt from the
    current weights at every validation and at the end; a training spot that queries it skips
    its own entry.
    """

    def batches(self):
        return self._patch_loader(self.train_rows, True, True)

    def loss(self, net, batch):
        images, target, _mask = batch
        return net.contrastive_loss(images, target)

    def build_bank(self, net) -> contrastive.RetrievalBank:
        rows = self.train_rows
        mask = None if self._loss_mask_is_full(rows) else self.data.loss_mask[rows]
        return contrastive.build_bank(net, self.data.target[rows], train_ids=self.ids[rows],
                                      splits=np.asarray(["train"] * len(rows)), mask=mask)

    def _predict(self, net, rows, progress):
        self.build_bank(net)  # from the current weights (net is in eval mode here)
        return self._in_batches(rows, lambda sl: net.predict(load_patches(self.data, rows[sl]).to(self.device),
                                                             exclude_ids=self.ids[rows[sl]]), progress)

    @torch.no_grad()
    def retrieved(self, net, rows: np.ndarray, k: int | None = None) -> np.ndarray:
        """(len(rows), k) AnnData rows of the training spots each of ``rows`` retrieves (bank
        rebuilt from ``net``'s current weights): what a chapter counts to see whether retrieval
        spreads over the bank or keeps returning the same few spots."""
        net.eval()
        self.build_bank(net)
        idx = self._in_batches(rows, lambda sl: net.predict(load_patches(self.data, rows[sl]).to(self.device), k=k,
                                                            exclude_ids=self.ids[rows[sl]], return_indices=True)[1],
                               progress=False)
        return self.train_rows[idx]


class SepalTask(Task):
    """SEPAL stage 2 over frozen stage-1 (ViT-B+Δ) embeddings of each spot's neighbourhood.

    ``stage1``: the frozen ViT-B+Δ of the same dataset, scenario and seed (the engine loads it
    with :func:`spared_utils.models.sepal.load_stage1`, which refuses another one).
    """

    def __init__(self, *args, stage1: nn.Module | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if stage1 is None:
            raise ValueError("SEPAL's stage 2 needs its stage-1 ViT-B+Δ model (stage1=...)")
        if self.data.adata is None:
            raise ValueError("SEPAL needs the AnnData (spot neighbourhoods); build the data with prediction_data")
        self.stage1 = stage1.to(self.device).eval()

        def encode(x):
            e = self.stage1.embed(x)
            return e, self.stage1.head(e) + self.stage1.offset

        self.cache = FrozenCache(self.data, encode, self.device, name="stage-1 ViT embeddings", progress=self.progress,
                                 module=self.stage1)
        self.index = graphs.neighbour_index(self.data.adata, self.model.n_hops, self.model.hex_geometry)
        self.nodes(self.train_rows)  # encode every node the training graphs read, once

    def nodes(self, rows: np.ndarray) -> np.ndarray:
        """The spots of ``rows``' neighbourhoods (encoded in the cache when missing)."""
        nodes = np.concatenate([rows, self.index[rows].ravel()])
        nodes = np.unique(nodes[nodes >= 0])
        self.cache.get(nodes)
        return nodes

    def _inputs(self, rows: np.ndarray):
        self.nodes(rows)
        emb, pred = self.cache.all()
        node_emb, offsets, node_mask = sepal.gather_neighbourhoods(self.index, rows, emb, self.model.n_hops,
                                                                   self.model.hex_geometry)
        return (pred[torch.from_numpy(rows)].to(self.device), node_emb.to(self.device), offsets.to(self.device),
                node_mask.to(self.device))

    def batches(self):
        rows = self.train_rows
        ds = torch.utils.data.TensorDataset(torch.from_numpy(rows), torch.from_numpy(self.data.target[rows]),
                                            torch.from_numpy(self.data.loss_mask[rows]))
        size = max(1, min(self.batch_size, len(ds)))
        return DataLoader(ds, batch_size=size, shuffle=True, drop_last=True,
                          generator=torch.Generator().manual_seed(self.seed))

    def loss(self, net, batch):
        rows, target, mask = batch
        return masked_mse_loss(net(*self._inputs(rows.cpu().numpy())), target, mask)

    def _predict(self, net, rows, progress):
        return self._in_batches(rows, lambda sl: net(*self._inputs(rows[sl])), progress)


class ProbeTask(Task):
    """Linear probe: frozen features of the training spots → scaler → PCA → ridge, in closed form."""

    closed_form = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        encoder = self.model.encoder
        if encoder is None:
            raise ValueError("the linear probe needs an encoder to read patches (linear_probe(..., encoder='resnet50'))")
        encoder.to(self.device)
        # the encoder's weights are fixed by its name, pretrained flag and the seed it was built with
        key = ("probe", type(getattr(encoder, "model", encoder)).__name__, repr(encoder)[:2000], self.seed,
               str(self.device), hash(tuple(float(p.double().sum()) for p in list(encoder.parameters())[:4])))
        self.features = shared_cache(self.data, key, lambda: FrozenCache(
            self.data, encoder, self.device, name="frozen encoder features", progress=self.progress, module=encoder))

    def fit(self, net, validate):
        t0 = time.perf_counter()
        rows = self.train_rows
        (feats,) = self.features.get(rows)
        mask = None if self._loss_mask_is_full(rows) else self.data.loss_mask[rows]
        net.fit(feats.numpy(), self.data.target[rows], mask=mask)
        val = float(validate(net))
        wall = time.perf_counter() - t0
        history = pd.DataFrame([{"iteration": 1, "train_loss": float("nan"), "val_loss": val, "elapsed_s": wall}])
        return TrainResult(val, 1, history, wall, str(self.device))

    def _predict(self, net, rows, progress):
        (feats,) = self.features.get(rows)
        return net.predict(feats.numpy())


#: The task of each predictor that is not a plain patch predictor.
TASKS: dict[str, type[Task]] = {
    "histogene": SlideTask, "hist2st": SlideTask, "egn": ExemplarTask, "eggn": ExemplarGraphTask,
    "bleep": ContrastiveTask, "sepal": SepalTask, "linear_probe": ProbeTask,
}


def task_class(name: str) -> type[Task]:
    """The :class:`Task` subclass that trains predictor ``name`` (``PatchTask`` unless listed in :data:`TASKS`)."""
    return TASKS.get(name, PatchTask)


def validation_mse(task: Task, rows: np.ndarray) -> Callable[[nn.Module], float]:
    """``validate(net)``: masked MSE of the task's predictions for ``rows`` (NaN without rows)."""
    data = task.data

    def validate(net: nn.Module) -> float:
        if not len(rows):
            return float("nan")
        return metrics.masked_mse(task.predict(net, rows), data.truth[rows], data.real[rows])

    return validate
