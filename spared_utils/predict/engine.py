"""The training engine of a predictor: loss, loaders, prediction, one run, the learning-rate search.

The paper's protocol (Mejia et al., MICCAI 2024, Sec. 3), shared by every predictor:

* **Training.** :func:`spared_utils.training.fit`: a budget of iterations (paper: 1,000), batch
  256, Adam, validation every ``eval_every`` steps on a fixed subsample of validation spots
  (``val_spots``; ``None`` = all), the weights with the lowest validation MSE are kept;
  bfloat16 autocast and channels-last on CUDA; checkpoints from which a run resumes.
* **Learning rate.** Searched per dataset over a grid on the raw scenario
  (:func:`search_learning_rate`), then fixed for both scenarios.
* **Metrics** (:func:`spared_utils.metrics.evaluate`): MSE, MAE, PCC-Gene (per gene across
  spots, then averaged: what the book's figures use) and the pooled PCC, on real values only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .. import metrics, models, paths, results
from ..training import (
    TRAIN_FIELDS,
    TrainConfig,
    TrainResult,
    autocast,
    fit,
    lr_search,
    resolve_device,
    seed_everything,
    split_train_options,
    to_device,
)
from .data import SCENARIOS, TARGET_LAYERS, PredictionData, patch_channel_stats

__all__ = ["DEFAULT_LR_GRID", "PredictorConfig", "PredictorRun", "build_for_data", "checkpoint_dir",
           "default_num_workers", "evaluate_predictions", "make_loader", "masked_mse_loss", "predict",
           "result_rows", "search_learning_rate", "train_predictor", "trivial_baseline"]

#: Learning rates tried by :func:`search_learning_rate` unless told otherwise.
DEFAULT_LR_GRID = (1e-5, 1e-4, 1e-3)


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


@dataclass
class PredictorConfig:
    """Every value that shapes a predictor run (printed in the chapters).

    ``train`` holds the budget and the loop's settings (:class:`~spared_utils.training.TrainConfig`:
    ``iterations`` × ``batch_size`` patches at ``learning_rate``, validation every
    ``eval_every`` iterations, ``seed``, ``device``, mixed precision); its defaults are the
    paper's (1,000 × 256). ``val_spots`` validation spots are predicted at each validation
    (checkpoint selection); ``eval_spots`` spots per split at the final evaluation (``None``:
    every spot, as in the paper). :meth:`make` takes all of them as flat keywords.
    """

    model: str = "shufflenet"
    scenario: str = "raw"
    train: TrainConfig = field(default_factory=lambda: TrainConfig(channels_last=True))
    val_spots: int | None = None
    eval_spots: int | None = None
    eval_batch_size: int = 64
    pretrained: bool = False
    num_workers: int | None = None
    augment: bool = True
    model_options: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.model not in models.NAMES:
            raise ValueError(f"unknown predictor {self.model!r}; known: {', '.join(models.NAMES)}")
        if self.scenario not in SCENARIOS:
            raise ValueError(f"scenario must be one of {SCENARIOS}, got {self.scenario!r}")
        for name in ("val_spots", "eval_spots"):
            v = getattr(self, name)
            if v is not None and int(v) < 1:
                raise ValueError(f"{name} must be a positive number of spots or None (all), got {v}")

    @classmethod
    def make(cls, **kwargs) -> PredictorConfig:
        """A config from flat keywords: :class:`TrainConfig` fields (``iterations``, ``seed``, ...)
        go to :attr:`train`, the others are this class's fields (an unknown name raises)."""
        train, rest = split_train_options(kwargs, TrainConfig(channels_last=True))
        names = {f.name for f in fields(cls)} - {"train"}
        unknown = set(rest) - names
        if unknown:
            raise TypeError(f"unknown predictor option(s) {sorted(unknown)}; valid: {sorted(names | set(TRAIN_FIELDS))}")
        return cls(train=train, **rest)

    def with_train(self, **changes) -> PredictorConfig:
        """A copy whose :attr:`train` has some fields changed (e.g. ``learning_rate``)."""
        return replace(self, train=replace(self.train, **changes))

    def hash(self, dataset: str, n_genes: int) -> str:
        """Short hash identifying the run (results rows, checkpoint folder)."""
        ident = {k: v for k, v in asdict(self).items() if k not in {"train", "num_workers", "eval_batch_size"}}
        return self.train.hash(dataset, n_genes, sorted(ident.items()))


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


def checkpoint_dir(root: Path, dataset: str, config: PredictorConfig, config_hash: str) -> Path:
    """``<root>/checkpoints/<dataset>/<model>/<scenario>/lr<lr>_seed<seed>_<hash>``."""
    return (root / "checkpoints" / dataset / config.model / config.scenario
            / f"lr{config.train.learning_rate:g}_seed{config.train.seed}_{config_hash}")


def build_for_data(config: PredictorConfig, data: PredictionData) -> nn.Module:
    """Build the predictor (seeded) and hand it the training statistics it uses."""
    seed_everything(config.train.seed)
    model = models.build(config.model, data.n_genes, pretrained=config.pretrained, **config.model_options)
    if hasattr(model, "set_target_mean"):
        model.set_target_mean(data.training_mean())
    if getattr(model, "input_stats", "imagenet") == "training":
        mean, std = patch_channel_stats(data.store, data.store_rows[data.rows("train")], seed=config.train.seed)
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
        See :func:`spared_utils.paths.output_dir`; the store is ``<out_dir>/results.csv``.
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
    train = config.train
    device = resolve_device(train.device)
    workers = default_num_workers(device) if config.num_workers is None else int(config.num_workers)
    root = paths.output_dir(out_dir)
    chash = config.hash(dataset, data.n_genes)
    ckpt = checkpoint_dir(root, dataset, config, chash) if checkpoints else None

    model = build_for_data(config, data)
    n_params = models.count_parameters(model)

    train_rows = data.rows("train")
    val_rows = data.subsample("val", config.val_spots, seed=train.seed) if "val" in data.splits else train_rows[:0]
    train_set = data.dataset(train_rows, augment=config.augment)
    batch = min(train.batch_size, len(train_set))
    train_loader = make_loader(train_set, batch, True, workers, device, seed=train.seed, drop_last=True)
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
        pred = predict(net, data, val_rows, device=device, amp=train.amp, loader=val_loader)
        return metrics.masked_mse(pred, data.truth[val_rows], data.real[val_rows])

    result = fit(model, train_loader, loss_fn, validate,
                 replace(train, checkpoint_dir=str(ckpt) if ckpt else None))

    preds, rows, tables, metric_rows = {}, {}, {}, []
    for split in eval_splits:
        if split not in data.splits:
            continue
        r = data.subsample(split, config.eval_spots, seed=train.seed)
        p = predict(model, data, r, batch_size=config.eval_batch_size, device=device, num_workers=workers,
                    amp=train.amp, progress=train.progress)
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
        "learning_rate": cfg.train.learning_rate, "seed": cfg.train.seed, "config_hash": run.config_hash,
        "n_params": run.n_params, "wall_time_s": round(run.train.wall_time_s, 3), "device": run.train.device,
        "iterations": cfg.train.iterations, "batch_size": cfg.train.batch_size, "best_iteration": run.train.best_iteration,
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
        run = train_predictor(data, config.with_train(learning_rate=lr), dataset=dataset, out_dir=out_dir,
                              eval_splits=(), stage="predict_lr_search", write_results=False)
        runs[lr] = run
        return run.train

    best, table = lr_search(train_one, list(grid))
    if write_results:
        rows = [{"stage": "predict_lr_search", "dataset": dataset, "model": config.model, "scenario": config.scenario,
                 "learning_rate": lr, "seed": config.train.seed, "split": "val", "mse_val_subsample": run.train.best_val,
                 "config_hash": run.config_hash, "n_params": run.n_params, "wall_time_s": round(run.train.wall_time_s, 3),
                 "device": run.train.device, "iterations": config.train.iterations,
                 "batch_size": config.train.batch_size, "selected": lr == best} for lr, run in runs.items()]
        results.append(rows, path=paths.output_dir(out_dir) / results.STORE_NAME)
    return best, table
