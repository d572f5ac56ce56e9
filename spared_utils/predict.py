"""The prediction harness: train a patch → expression predictor, evaluate it, store the results.

The protocol of the paper (SPEC §3), shared by every predictor:

* **Scenarios.** ``raw``: the target is ``c_d_log1p`` and the loss is MSE on real values only
  (``mask`` True); ``completed``: the target is SpaCKLE's ``c_t_log1p`` and the loss is MSE on
  every value. **Evaluation is always on real values only** (``c_d_log1p`` where ``mask`` is
  True), so both scenarios are scored against the same measurements.
* **Training.** :func:`spared_utils.training.fit`: a budget of iterations (paper: 1,000), batch
  256, Adam, validation every ``eval_every`` steps on a fixed subsample of validation spots
  (``val_spots``; ``None`` = all), the weights with the lowest validation MSE are kept;
  bfloat16 autocast and channels-last on CUDA; checkpoints from which a run resumes.
* **Learning rate.** Searched per dataset over a grid on the raw scenario
  (:func:`search_learning_rate`), then fixed for both scenarios.
* **Metrics** (:func:`spared_utils.metrics.evaluate`): MSE, MAE, PCC-Gene (per gene across
  spots, then averaged: what the book's figures use) and the pooled PCC, on val and test.

Patches stream from the curation's patch store (:class:`spared_utils.patches.PatchStore`, a
memory map): :class:`PatchDataset` reads one patch per item, applies a random symmetry of the
square (flips and 90° rotations) when training, and yields ``uint8`` tensors; the model
normalises them itself (ImageNet statistics, or the training patches' for STNet), on the device.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from torch import nn
from torch.utils.data import DataLoader, Dataset

from . import metrics, models, patches, paths, results
from .training import TrainConfig, TrainResult, autocast, fit, lr_search, resolve_device, seed_everything, to_device

SCENARIOS = ("raw", "completed")
#: Layer trained on in each scenario.
TARGET_LAYERS = {"raw": "c_d_log1p", "completed": "c_t_log1p"}
#: Ground truth of every evaluation, and the mask of real values.
TRUTH_LAYER = "c_d_log1p"
MASK_LAYER = "mask"
#: The paper's budget (SPEC §3).
PAPER_BUDGET = {"iterations": 1000, "batch_size": 256}
#: Learning rates tried by :func:`search_learning_rate` unless told otherwise.
DEFAULT_LR_GRID = (1e-5, 1e-4, 1e-3)


# ---------------------------------------------------------------------------------------------
# Data: targets, masks and splits of one scenario; the streaming patch dataset
# ---------------------------------------------------------------------------------------------


def _dense(matrix) -> np.ndarray:
    return matrix.toarray() if hasattr(matrix, "toarray") else np.asarray(matrix)


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

        This is the best constant predictor under the scenario's loss (the "trivial predictor"),
        the Δ reference of ViT-B+Δ and STNet's initial head bias. A gene with no real training
        value falls back to the mean of all its values.
        """
        rows = self.rows("train")
        y, m = self.target[rows].astype(np.float64), self.loss_mask[rows]
        n = m.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(n > 0, (y * m).sum(axis=0) / n, y.mean(axis=0))
        return mean.astype(np.float32)

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
        ``"raw"`` or ``"completed"``.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {SCENARIOS}, got {scenario!r}")
    store = open_store(store)
    layer = TARGET_LAYERS[scenario]
    for need in (TRUTH_LAYER, MASK_LAYER, layer):
        if need not in adata.layers:
            hint = ("run SpaCKLE first: spared_utils.completion.complete(adata, method='spackle', layer='c_d_log1p')"
                    if need == "c_t_log1p" else "curate the dataset first (spared_utils.datasets.load(id, processed=True))")
            raise KeyError(f"layer {need!r} is missing from the AnnData (layers: {sorted(adata.layers)}); {hint}")
    if "split" not in adata.obs:
        raise KeyError("obs['split'] (train/val/test) is missing; curated datasets carry it")
    truth = _dense(adata.layers[TRUTH_LAYER]).astype(np.float32)
    real = _dense(adata.layers[MASK_LAYER]).astype(bool)
    target = _dense(adata.layers[layer]).astype(np.float32)
    if scenario == "raw":
        loss_mask = real.copy()
    else:
        loss_mask = np.ones_like(real)
    bad = ~np.isfinite(target) & loss_mask
    if bad.any():
        raise ValueError(f"layer {layer!r} has {int(bad.sum())} non-finite value(s) where the loss reads it")
    split = adata.obs["split"].astype(str).to_numpy()
    splits = {s: np.flatnonzero(split == s) for s in ("train", "val", "test") if (split == s).any()}
    if "train" not in splits:
        raise ValueError("no spot has split 'train'; a predictor needs training slides")
    slides = adata.obs["slide_id"].astype(str).to_numpy() if "slide_id" in adata.obs else np.array(["slide"] * adata.n_obs)
    return PredictionData(
        store=store, scenario=scenario, genes=np.asarray(adata.var_names), target=target, loss_mask=loss_mask,
        truth=truth, real=real, splits=splits, store_rows=store_positions(store, adata.obs_names), slides=slides,
    )


def open_store(store):
    """A patch store object from a store or a path to one."""
    if isinstance(store, (str, os.PathLike)):
        from .patches import PatchStore

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


# ---------------------------------------------------------------------------------------------
# Loss, prediction, evaluation
# ---------------------------------------------------------------------------------------------


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
    """Predictions (float32, ``len(rows)`` × n_genes) of ``model`` for AnnData ``rows``, in eval mode."""
    dev = resolve_device(device) if not isinstance(device, torch.device) else device
    if loader is None:
        workers = default_num_workers(dev) if num_workers is None else num_workers
        loader = make_loader(data.dataset(rows, with_targets=False), batch_size, False, workers, dev)
    was_training = model.training
    model.eval()
    model.to(dev)
    out = []
    from tqdm.auto import tqdm

    for images in tqdm(loader, desc="predict", leave=False, disable=not progress):
        images = to_device(images, dev, channels_last=dev.type == "cuda")
        with autocast(dev, amp):
            out.append(model(images).float().cpu())
    model.train(was_training)
    if not out:
        return np.zeros((0, data.n_genes), dtype=np.float32)
    return torch.cat(out).numpy()


def evaluate_predictions(pred: np.ndarray, data: PredictionData, rows: np.ndarray) -> dict[str, float]:
    """Metrics of predictions for ``rows`` against real ground truth only."""
    out = metrics.evaluate(pred, data.truth[rows], data.real[rows])
    out["n_spots"] = int(len(rows))
    return out


def trivial_baseline(data: PredictionData, splits: Sequence[str] = ("val", "test"),
                     rows: Mapping[str, np.ndarray] | None = None) -> pd.DataFrame:
    """Metrics of the trivial predictor (the training mean of every gene) on each split present."""
    mean = data.training_mean()
    out = []
    for split in splits:
        if split not in data.splits:
            continue
        r = rows[split] if rows and split in rows else data.rows(split)
        pred = np.broadcast_to(mean, (len(r), data.n_genes))
        out.append({"split": split, **evaluate_predictions(pred, data, r)})
    return pd.DataFrame(out)


# ---------------------------------------------------------------------------------------------
# One training run
# ---------------------------------------------------------------------------------------------


@dataclass
class PredictorConfig:
    """Every value that shapes a predictor run (printed in the chapters).

    Costs are all parameters: ``iterations`` × ``batch_size`` patches are trained on;
    ``val_spots`` validation spots are predicted every ``eval_every`` iterations (checkpoint
    selection); ``eval_spots`` spots per split are predicted at the final evaluation (``None``:
    every spot, as in the paper).
    """

    model: str = "shufflenet"
    scenario: str = "raw"
    learning_rate: float = 1e-3
    iterations: int = 1000
    batch_size: int = 256
    eval_every: int = 10
    val_spots: int | None = None
    eval_spots: int | None = None
    eval_batch_size: int = 64
    seed: int = 0
    device: str = "auto"
    pretrained: bool = False
    num_workers: int | None = None
    augment: bool = True
    amp: bool = True
    model_options: dict = field(default_factory=dict)
    resume: bool = True
    progress: bool = True

    def __post_init__(self):
        if self.model not in models.NAMES:
            raise ValueError(f"unknown predictor {self.model!r}; known: {', '.join(models.NAMES)}")
        if self.scenario not in SCENARIOS:
            raise ValueError(f"scenario must be one of {SCENARIOS}, got {self.scenario!r}")
        for name in ("val_spots", "eval_spots"):
            v = getattr(self, name)
            if v is not None and int(v) < 1:
                raise ValueError(f"{name} must be a positive number of spots or None (all), got {v}")

    def train_config(self, checkpoint_dir: str | os.PathLike | None = None) -> TrainConfig:
        """The :class:`~spared_utils.training.TrainConfig` of this run (channels-last asked for; fit applies it on CUDA only)."""
        return TrainConfig(
            iterations=self.iterations, batch_size=self.batch_size, learning_rate=self.learning_rate,
            eval_every=self.eval_every, seed=self.seed, device=self.device, amp=self.amp, channels_last=True,
            checkpoint_dir=str(checkpoint_dir) if checkpoint_dir else None, resume=self.resume, progress=self.progress,
        )

    def hash(self, dataset: str, n_genes: int) -> str:
        """Short hash identifying the run (results rows, checkpoint folder)."""
        ident = {k: v for k, v in asdict(self).items() if k not in {"progress", "resume", "num_workers", "device",
                                                                     "eval_batch_size"}}
        return self.train_config().hash(dataset, n_genes, sorted(ident.items()))


@dataclass
class PredictorRun:
    """What :func:`train_predictor` returns."""

    config: PredictorConfig
    dataset: str
    model: nn.Module
    train: TrainResult
    metrics: pd.DataFrame
    predictions: dict[str, np.ndarray]
    rows: dict[str, np.ndarray]
    gene_tables: dict[str, pd.DataFrame]
    n_params: int
    config_hash: str
    baseline_val_loss: float
    rows_written: list[dict] = field(default_factory=list)

    @property
    def history(self) -> pd.DataFrame:
        return self.train.history


def output_root(out_dir: str | os.PathLike | None = "results") -> Path:
    """Where runs write: the book's results folder for ``"results"`` (``SPARED_RESULTS_DIR``
    overrides it), else ``out_dir`` (relative to the project root)."""
    if out_dir is None or str(out_dir) == "results":
        return paths.results_dir()
    return Path(paths.project_root(), out_dir)


def checkpoint_dir(root: Path, dataset: str, config: PredictorConfig, config_hash: str) -> Path:
    """``<root>/checkpoints/<dataset>/<model>/<scenario>/lr<lr>_seed<seed>_<hash>``."""
    return (root / "checkpoints" / dataset / config.model / config.scenario
            / f"lr{config.learning_rate:g}_seed{config.seed}_{config_hash}")


def build_for_data(config: PredictorConfig, data: PredictionData) -> nn.Module:
    """Build the predictor (seeded) and hand it the training statistics it uses."""
    seed_everything(config.seed)
    model = models.build(config.model, data.n_genes, pretrained=config.pretrained, **config.model_options)
    if hasattr(model, "set_target_mean"):
        model.set_target_mean(data.training_mean())
    if getattr(model, "input_stats", "imagenet") == "training":
        mean, std = patch_channel_stats(data.store, data.store_rows[data.rows("train")], seed=config.seed)
        model.set_input_stats(mean, std)
    return model


def train_predictor(
    data: PredictionData,
    config: PredictorConfig,
    dataset: str = "unnamed",
    out_dir: str | os.PathLike | None = "results",
    eval_splits: Sequence[str] = ("val", "test"),
    stage: str = "predict",
    write_results: bool = True,
    checkpoints: bool = True,
) -> PredictorRun:
    """Train one predictor on one scenario, evaluate it on ``eval_splits``, append results rows.

    Parameters
    ----------
    data
        From :func:`prediction_data` (its scenario must match ``config.scenario``).
    config
        Model, learning rate and every cost.
    dataset
        Dataset id (results rows, checkpoint folder).
    out_dir
        See :func:`output_root`; the store is ``<root>/results.csv``.
    eval_splits
        Splits evaluated at the end (those absent from the dataset are skipped).
    stage
        ``stage`` column of the results rows.
    write_results, checkpoints
        Append rows to the store / keep checkpoints (``best.pt``, ``last.pt``; a rerun resumes).

    Returns
    -------
    PredictorRun
        The trained model (best validation weights), history, metrics per split, predictions.
    """
    if data.scenario != config.scenario:
        raise ValueError(f"the data were prepared for scenario {data.scenario!r} but the config asks {config.scenario!r}")
    device = resolve_device(config.device)
    workers = default_num_workers(device) if config.num_workers is None else int(config.num_workers)
    root = output_root(out_dir)
    chash = config.hash(dataset, data.n_genes)
    ckpt = checkpoint_dir(root, dataset, config, chash) if checkpoints else None

    model = build_for_data(config, data)
    n_params = models.count_parameters(model)

    train_rows = data.rows("train")
    val_rows = data.subsample("val", config.val_spots, seed=config.seed) if "val" in data.splits else train_rows[:0]
    train_set = data.dataset(train_rows, augment=config.augment)
    batch = min(config.batch_size, len(train_set))
    train_loader = make_loader(train_set, batch, True, workers, device, seed=config.seed, drop_last=True)
    val_loader = (make_loader(data.dataset(val_rows, with_targets=False), config.eval_batch_size, False, workers, device)
                  if len(val_rows) else None)
    mean = data.training_mean()
    baseline_val = (metrics.masked_mse(np.broadcast_to(mean, (len(val_rows), data.n_genes)), data.truth[val_rows],
                                       data.real[val_rows]) if len(val_rows) and data.real[val_rows].any() else float("nan"))

    def loss_fn(net: nn.Module, b) -> torch.Tensor:
        images, target, mask = b
        return masked_mse_loss(net(images), target, mask)

    def validate(net: nn.Module) -> float:
        if val_loader is None:  # no validation split: select on the training loss instead
            return float("nan")
        pred = predict(net, data, val_rows, device=device, amp=config.amp, loader=val_loader)
        return metrics.masked_mse(pred, data.truth[val_rows], data.real[val_rows])

    result = fit(model, train_loader, loss_fn, validate, config.train_config(ckpt))

    preds, rows, tables, metric_rows = {}, {}, {}, []
    for split in eval_splits:
        if split not in data.splits:
            continue
        r = data.subsample(split, config.eval_spots, seed=config.seed)
        p = predict(model, data, r, batch_size=config.eval_batch_size, device=device, num_workers=workers,
                    amp=config.amp, progress=config.progress)
        preds[split], rows[split] = p, r
        tables[split] = metrics.per_gene_table(p, data.truth[r], data.real[r], data.genes)
        metric_rows.append({"split": split, **evaluate_predictions(p, data, r)})
    table = pd.DataFrame(metric_rows)

    run = PredictorRun(config=config, dataset=dataset, model=model, train=result, metrics=table, predictions=preds,
                       rows=rows, gene_tables=tables, n_params=n_params, config_hash=chash, baseline_val_loss=baseline_val)
    run.rows_written = result_rows(run, stage=stage)
    if write_results and run.rows_written:
        results.append(run.rows_written, path=root / results.STORE_NAME)
    return run


def result_rows(run: PredictorRun, stage: str = "predict") -> list[dict]:
    """One results-store row per evaluated split of ``run``."""
    cfg = run.config
    common = {
        "stage": stage, "dataset": run.dataset, "model": cfg.model, "scenario": cfg.scenario,
        "learning_rate": cfg.learning_rate, "seed": cfg.seed, "config_hash": run.config_hash,
        "n_params": run.n_params, "wall_time_s": round(run.train.wall_time_s, 3), "device": run.train.device,
        "iterations": cfg.iterations, "batch_size": cfg.batch_size, "best_iteration": run.train.best_iteration,
        "best_val_subsample_mse": run.train.best_val, "val_spots": cfg.val_spots, "eval_spots": cfg.eval_spots,
        "pretrained": cfg.pretrained, "target_layer": TARGET_LAYERS[cfg.scenario],
    }
    return [{**common, **row} for row in run.metrics.to_dict("records")]


def search_learning_rate(
    data: PredictionData,
    config: PredictorConfig,
    grid: Sequence[float] = DEFAULT_LR_GRID,
    dataset: str = "unnamed",
    out_dir: str | os.PathLike | None = "results",
    write_results: bool = True,
) -> tuple[float, pd.DataFrame]:
    """Train ``config`` once per learning rate of ``grid`` (on ``data``, normally the raw scenario).

    Every run is evaluated on the validation split only and written with stage
    ``predict_lr_search``. Returns the learning rate with the lowest best validation MSE and the
    table of the search.
    """
    runs: dict[float, PredictorRun] = {}

    def train_one(lr: float) -> TrainResult:
        run = train_predictor(data, replace(config, learning_rate=lr), dataset=dataset, out_dir=out_dir,
                              eval_splits=(), stage="predict_lr_search", write_results=False)
        runs[lr] = run
        return run.train

    best, table = lr_search(train_one, list(grid))
    if write_results:
        rows = [{"stage": "predict_lr_search", "dataset": dataset, "model": config.model, "scenario": config.scenario,
                 "learning_rate": lr, "seed": config.seed, "split": "val", "mse_val_subsample": run.train.best_val,
                 "config_hash": run.config_hash, "n_params": run.n_params, "wall_time_s": round(run.train.wall_time_s, 3),
                 "device": run.train.device, "iterations": config.iterations, "batch_size": config.batch_size,
                 "selected": lr == best} for lr, run in runs.items()]
        results.append(rows, path=output_root(out_dir) / results.STORE_NAME)
    return best, table


# ---------------------------------------------------------------------------------------------
# A whole chapter: load, (search lr), train both scenarios, evaluate, return what is plotted
# ---------------------------------------------------------------------------------------------


def load_dataset(dataset: str, seed: int = 0) -> tuple[AnnData, Any]:
    """The curated AnnData of ``dataset`` and its patch store (extracted on first use).

    Reads ``datasets.load(dataset, processed=True)``; the patch store is
    ``<processed_dir>/<dataset>/patches`` (written by the curation; extracted here from the
    full-resolution images if it is missing).
    """
    from . import datasets
    from .preprocess import processed_path

    adata = datasets.load(dataset, processed=True)
    store_path = processed_path(dataset, "patches")
    try:
        store = patches.PatchStore(store_path)
        store.positions(adata.obs_names)
        if store.meta.get("source_id") == adata.uns.get("dataset_spec"):
            return adata, store
    except (FileNotFoundError, KeyError):
        pass  # no store, or one without these spots: cut it
    source = adata
    if not _has_fullres(adata):  # the cached curated file drops full-resolution images: read them again
        raw = datasets.load(dataset, processed=False, load_fullres=True)
        missing = adata.obs_names.difference(raw.obs_names)
        if len(missing):
            raise KeyError(f"{len(missing)} curated spot(s) of {dataset!r} are not in its raw collection "
                           f"(e.g. {list(missing[:3])}); re-curate with datasets.load({dataset!r}, force=True)")
        source = raw[adata.obs_names]
    patches.extract_patches(source, store_path, source_id=adata.uns.get("dataset_spec"))
    return adata, patches.PatchStore(store_path)


def _has_fullres(adata: AnnData) -> bool:
    libs = adata.uns.get("spatial", {}).values()
    return bool(libs) and all("fullres" in lib.get("images", {})
                              or any((lib.get("metadata") or {}).get(k) for k in patches.IMAGE_PATH_KEYS)
                              for lib in libs)


def ensure_completed(adata: AnnData, dataset: str | None = None, iterations: int = 200, seed: int = 0,
                     device: str = "auto", progress: bool = True, save: bool = True) -> AnnData:
    """Add SpaCKLE's ``c_t_log1p`` layer if the dataset does not carry it yet.

    The completion chapter (02) normally writes it into the processed dataset. When it is missing,
    SpaCKLE is trained here for ``iterations`` steps (the paper: 10,000) with the completion
    chapter's CPU settings, and the processed dataset is saved with the layer (``save``) so that
    the other predictor chapters reuse it.
    """
    if TARGET_LAYERS["completed"] in adata.layers:
        return adata
    from . import completion

    completion.complete(adata, method="spackle", layer=TRUTH_LAYER, iterations=int(iterations), seed=seed,
                        device=device, progress=progress, learning_rate=3e-3, dim_feedforward=512)
    if TARGET_LAYERS["completed"] not in adata.layers:
        raise KeyError("completion.complete did not add layer 'c_t_log1p'")
    if save and dataset is not None:
        completion.save_completed(adata, dataset)
    return adata


def parse_scenarios(scenario: str | Sequence[str]) -> list[str]:
    """``"both"`` → ``["raw", "completed"]``; a name or list is checked."""
    names = list(SCENARIOS) if scenario in ("both", "all") else ([scenario] if isinstance(scenario, str) else list(scenario))
    for s in names:
        if s not in SCENARIOS:
            raise ValueError(f"scenario must be 'raw', 'completed' or 'both', got {s!r}")
    return names


@dataclass
class ChapterRun:
    """What :func:`run_chapter` returns: one run per scenario and the tables a chapter shows."""

    dataset: str
    model: str
    config: PredictorConfig
    adata: AnnData
    data: dict[str, PredictionData]
    runs: dict[str, PredictorRun]
    baseline: pd.DataFrame
    lr_table: pd.DataFrame | None
    learning_rate: float
    seconds: float

    @property
    def histories(self) -> dict[str, pd.DataFrame]:
        return {s: r.history for s, r in self.runs.items()}

    @property
    def baseline_val_loss(self) -> float:
        """Validation MSE of the trivial predictor on the spots used during training (raw scenario if run)."""
        run = self.runs["raw"] if "raw" in self.runs else next(iter(self.runs.values()))
        return run.baseline_val_loss

    @property
    def eval_split(self) -> str:
        """The split shown in maps and gene tables: test if the dataset has one, else val."""
        first = next(iter(self.runs.values()))
        return "test" if "test" in first.predictions else "val"

    def metrics(self) -> pd.DataFrame:
        """Tidy table: one row per (scenario or ``training mean``, split) with the metrics."""
        frames = [r.metrics.assign(scenario=s, model=models.display_name(self.model), n_params=r.n_params,
                                   wall_time_s=r.train.wall_time_s) for s, r in self.runs.items()]
        frames.append(self.baseline.assign(model="training mean", n_params=0))
        table = pd.concat(frames, ignore_index=True)
        front = ["model", "scenario", "split", "mse", "pcc_gene", "pcc_global", "mae", "n_spots", "n_values"]
        return table[[c for c in front if c in table] + [c for c in table if c not in front]]

    def gene_tables(self, split: str | None = None) -> dict[str, pd.DataFrame]:
        split = split or self.eval_split
        return {s: r.gene_tables[split] for s, r in self.runs.items() if split in r.gene_tables}

    def best_and_worst_genes(self, scenario: str | None = None, split: str | None = None) -> tuple[str, str]:
        """Genes with the highest and lowest PCC (NaN skipped) in one scenario's evaluation."""
        scenario = scenario or next(iter(self.runs))
        table = self.runs[scenario].gene_tables[split or self.eval_split].dropna(subset=["pcc"])
        if table.empty:
            genes = self.data[scenario].genes
            return str(genes[0]), str(genes[-1])
        table = table.sort_values("pcc")
        return str(table["gene"].iloc[-1]), str(table["gene"].iloc[0])

    def map_inputs(self, scenario: str, split: str | None = None, slide: str | None = None):
        """``(slide, rows, predictions)`` of one evaluated slide, for :func:`plots.predicted_vs_true_maps`."""
        split = split or self.eval_split
        run, data = self.runs[scenario], self.data[scenario]
        rows, pred = run.rows[split], run.predictions[split]
        slides = data.slides[rows]
        slide = slide or pd.Series(slides).value_counts().index[0]
        keep = slides == slide
        return slide, rows[keep], pred[keep]


def run_chapter(
    dataset: str = "synthetic",
    model: str = "shufflenet",
    scenario: str | Sequence[str] = "both",
    learning_rate: float | None = 1e-3,
    lr_grid: Sequence[float] = DEFAULT_LR_GRID,
    out_dir: str | os.PathLike | None = "results",
    adata: AnnData | None = None,
    store=None,
    completion_iterations: int = 200,
    **costs,
) -> ChapterRun:
    """Everything a predictor chapter computes, in one call.

    Loads the curated dataset and its patches (unless ``adata`` and ``store`` are given), adds
    SpaCKLE completion when the completed scenario needs it, searches the learning rate on the
    raw scenario over ``lr_grid`` when ``learning_rate`` is ``None`` (then fixes it for both
    scenarios, as the paper does), trains and evaluates one run per scenario and writes the
    results rows (plus the trivial predictor's, stage ``predict_baseline``).

    ``**costs`` are fields of :class:`PredictorConfig` (``iterations``, ``batch_size``,
    ``eval_every``, ``val_spots``, ``eval_spots``, ``seed``, ``device``, ``pretrained``, ...);
    ``completion_iterations`` is SpaCKLE's budget if the dataset has no ``c_t_log1p`` yet
    (see :func:`ensure_completed`).
    """
    t0 = time.perf_counter()
    scenarios = parse_scenarios(scenario)
    loaded = adata is None or store is None
    if loaded:
        adata, store = load_dataset(dataset)
    if "completed" in scenarios:  # a completed layer made here is saved only into a dataset loaded here
        adata = ensure_completed(adata, dataset=dataset if loaded else None, iterations=completion_iterations,
                                 seed=costs.get("seed", 0), device=costs.get("device", "auto"),
                                 progress=costs.get("progress", True))
    base = PredictorConfig(model=model, scenario="raw", learning_rate=learning_rate or 1e-3, **costs)
    data = {s: prediction_data(adata, store, s) for s in scenarios}

    lr_table = None
    if learning_rate is None:
        raw = data.get("raw") or prediction_data(adata, store, "raw")
        learning_rate, lr_table = search_learning_rate(raw, base, lr_grid, dataset=dataset, out_dir=out_dir)
    runs = {}
    for s in scenarios:
        cfg = replace(base, scenario=s, learning_rate=float(learning_rate))
        runs[s] = train_predictor(data[s], cfg, dataset=dataset, out_dir=out_dir)

    # The trivial predictor of the raw scenario (the best constant under the masked loss), scored
    # on the same spots as the runs.
    ref = "raw" if "raw" in data else scenarios[0]
    baseline = trivial_baseline(data[ref], rows=runs[ref].rows).assign(scenario=ref)
    rows = [{"stage": "predict_baseline", "dataset": dataset, "model": "training_mean", "learning_rate": float("nan"),
             "seed": base.seed, "n_params": 0, "eval_spots": base.eval_spots, **r} for r in baseline.to_dict("records")]
    if rows:
        results.append(rows, path=output_root(out_dir) / results.STORE_NAME)
    return ChapterRun(dataset=dataset, model=model, config=replace(base, learning_rate=float(learning_rate)),
                      adata=adata, data=data, runs=runs, baseline=baseline, lr_table=lr_table,
                      learning_rate=float(learning_rate), seconds=time.perf_counter() - t0)


def beats_training_mean(chapter: ChapterRun, split: str | None = None) -> dict[str, bool]:
    """Scenario → whether its model's MSE on ``split`` (default: the chapter's) is below the
    trivial predictor's on the same spots."""
    split = split or chapter.eval_split
    base = chapter.baseline.set_index("split")
    if split not in base.index:
        return {}
    out = {}
    for scenario, run in chapter.runs.items():
        m = run.metrics.set_index("split")
        if split in m.index:
            out[scenario] = bool(m.loc[split, "mse"] < base.loc[split, "mse"])
    return out


def summary_lines(chapter: ChapterRun) -> list[str]:
    """The numbers of a chapter's "What we saw", as markdown bullet lines."""
    cfg, split = chapter.config, chapter.eval_split
    name = models.display_name(chapter.model)
    first = next(iter(chapter.runs.values()))
    lines = [
        f"- **{name}**: {first.n_params:,} trainable parameters; {cfg.iterations} iterations × batch "
        f"{cfg.batch_size} at learning rate {chapter.learning_rate:g} per scenario, on `{first.train.device}` "
        f"({chapter.seconds:.0f} s for the whole chapter)."
    ]
    base = chapter.baseline.set_index("split")
    for scenario, run in chapter.runs.items():
        m = run.metrics.set_index("split")
        parts = [f"{s} MSE {m.loc[s, 'mse']:.3f} (training mean {base.loc[s, 'mse']:.3f}), "
                 f"PCC-Gene {m.loc[s, 'pcc_gene']:.3f}" for s in m.index if s in base.index]
        lines.append(f"- **{scenario}** data: " + "; ".join(parts)
                     + f"; best validation MSE at iteration {run.train.best_iteration}.")
    verdict = beats_training_mean(chapter)
    if verdict:
        behind = [k for k, ok in verdict.items() if not ok]
        text = ", ".join(f"{scenario} {'yes' if ok else 'no'}" for scenario, ok in verdict.items())
        advice = ""
        if behind:
            subject = f"the {' and '.join(behind)} " + ("models have" if len(behind) > 1 else "model has")
            weights = "" if cfg.pretrained else " or start from ImageNet weights (`pretrained = True`)"
            advice = (f" At this budget {subject} not yet learned more than the mean: raise `iterations`"
                      f" (the learning curve shows whether it is still falling){weights}.")
        lines.append(f"- Below the training mean on {split} MSE: {text}.{advice}")
    if {"raw", "completed"} <= set(chapter.runs):
        raw = chapter.runs["raw"].metrics.set_index("split").loc[split]
        done = chapter.runs["completed"].metrics.set_index("split").loc[split]
        lines.append(f"- Training on completed instead of raw data changed {split} MSE by {done['mse'] - raw['mse']:+.3f} "
                     f"and PCC-Gene by {done['pcc_gene'] - raw['pcc_gene']:+.3f} (both scored on real values only).")
    scenario = "completed" if "completed" in chapter.runs else next(iter(chapter.runs))
    table = chapter.runs[scenario].gene_tables[split].set_index("gene")
    best, worst = chapter.best_and_worst_genes(scenario, split)
    lines.append(f"- Per gene ({scenario}, {split}): best {best} (PCC {table.loc[best, 'pcc']:.2f}), "
                 f"worst {worst} (PCC {table.loc[worst, 'pcc']:.2f}).")
    return lines
