"""The training engine of a predictor: loss, loaders, prediction, one run, the learning-rate search.

The paper's protocol (Mejia et al., MICCAI 2024, Sec. 3), shared by every predictor:

* **Training.** :func:`spared_utils.training.fit`: a budget of iterations (paper: 1,000), batch
  256, Adam, validation every ``eval_every`` steps on a fixed subsample of validation spots
  (``val_spots``; ``None`` = all), the weights with the lowest validation MSE are kept;
  bfloat16 autocast and channels-last on CUDA; checkpoints from which a run resumes.
* **Learning rate.** Searched per dataset over a grid on the raw scenario
  (:func:`search_learning_rate`), then fixed for every scenario.
* **Metrics** (:func:`spared_utils.metrics.evaluate`): MSE, MAE, PCC-Gene (per gene across
  spots, then averaged: what the book's figures use) and the pooled PCC, on real values only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from .. import graphs, metrics, models, paths, results
from ..models.data import SCENARIOS, TARGET_LAYERS, PredictionData, Scenario, patch_channel_stats
from ..models.task import SetupContext, SetupRun, Task, default_num_workers, validation_mse
from ..training import (
    TRAIN_FIELDS,
    TrainConfig,
    TrainResult,
    fit,
    lr_search,
    resolve_device,
    seed_everything,
    split_train_options,
)
from .bundle import save_predictor

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_LR_GRID", "PredictorConfig", "PredictorRun", "build_for_data", "checkpoint_dir",
           "evaluate_predictions", "make_task", "result_rows", "run_setup", "search_learning_rate", "train_predictor",
           "trivial_baseline"]

#: Learning rates tried by :func:`search_learning_rate` unless told otherwise.
DEFAULT_LR_GRID = (1e-5, 1e-4, 1e-3)


def evaluate_predictions(pred: np.ndarray, data: PredictionData, rows: np.ndarray) -> dict[str, float]:
    """Metrics of predictions for ``rows`` against real ground truth only: the errors
    (:func:`spared_utils.metrics.evaluate`) and, where the data have array coordinates, what the
    predicted maps keep of the tissue's structure (:func:`spared_utils.metrics.structure` on the
    first-ring grid graph of the scored spots)."""
    out = metrics.evaluate(pred, data.truth[rows], data.real[rows])
    out["n_spots"] = int(len(rows))
    if data.coords is not None and len(rows):
        adj = graphs.grid_adjacency(data.slides[rows], data.coords[rows, 0], data.coords[rows, 1], data.hex_geometry)
        out.update(metrics.structure(np.broadcast_to(pred, (len(rows), data.n_genes)), data.truth[rows],
                                     data.real[rows], adj))
    return out


def trivial_baseline(data: PredictionData, splits: Sequence[str] = ("val", "test"),
                     rows: Mapping[str, np.ndarray] | None = None) -> pd.DataFrame:
    """Metrics of the trivial predictor (every gene's mean over its real training values, the
    same in every scenario) on each split present."""
    mean = data.real_mean()
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
    (checkpoint selection); ``eval_spots`` spots per split at the final evaluation and
    ``train_spots`` training spots read (a fixed random subset; for retrieval models also the
    bank) — ``None``: every spot, as in the paper. For slide and graph models ``batch_size`` is
    the number of neighbouring spots of one slide per step. :meth:`make` takes all of them as
    flat keywords.
    """

    model: str
    scenario: Scenario = "raw"
    train: TrainConfig = field(default_factory=lambda: TrainConfig(channels_last=True))
    val_spots: int | None = None
    eval_spots: int | None = None
    train_spots: int | None = None
    eval_batch_size: int = 64
    pretrained: bool = False
    num_workers: int | None = None
    augment: bool = True
    model_options: dict = field(default_factory=dict)
    #: options of the record's setup hook (:attr:`~spared_utils.models.PredictorRecord.setup`;
    #: see the record's ``setup`` for the names it reads)
    setup: dict = field(default_factory=dict)
    #: the completion method behind the ``completed`` scenario's targets (a name of
    #: :data:`spared_utils.completion.METHODS`; the paper's: SpaCKLE)
    completion: str = "spackle"

    def __post_init__(self):
        if self.model not in models.NAMES:
            raise ValueError(f"unknown predictor {self.model!r}; known: {', '.join(models.NAMES)}")
        if self.scenario not in SCENARIOS:
            raise ValueError(f"scenario must be one of {SCENARIOS}, got {self.scenario!r}")
        for name in ("val_spots", "eval_spots", "train_spots"):
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
        if self.completion == "spackle":  # the default leaves the hashes of earlier runs unchanged
            ident.pop("completion")
        if not self.setup:  # predictors without a setup hook
            ident.pop("setup")
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
    #: how it was trained and predicts (:meth:`~spared_utils.models.task.Task.predict` gives more predictions)
    task: Task | None = None

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
    train = data.rows("train")
    if hasattr(model, "set_expression_range"):  # EGN, EGGN: min-max scaling of exemplar expression
        lo, hi = training_range(data)
        model.set_expression_range(lo, hi)
    if hasattr(model, "set_target_mean"):
        model.set_target_mean(data.training_mean())
    if getattr(model, "input_stats", "imagenet") == "training":
        mean, std = patch_channel_stats(data.store, data.store_rows[train], seed=config.train.seed)
        model.set_input_stats(mean, std)
    return model


def training_range(data: PredictionData) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene min and max of the training targets the loss sees (0 and 1 for a gene with none)."""
    rows = data.rows("train")
    y = np.where(data.loss_mask[rows], data.target[rows], np.nan)
    seen = data.loss_mask[rows].any(0)
    lo = np.where(seen, np.nanmin(np.where(seen, y, 0.0), 0), 0.0)
    hi = np.where(seen, np.nanmax(np.where(seen, y, 1.0), 0), 1.0)
    return lo.astype(np.float32), hi.astype(np.float32)


def make_task(config: PredictorConfig, data: PredictionData, model: nn.Module, **extra) -> Task:
    """The :class:`~spared_utils.models.task.Task` of ``config.model``'s record, on ``data`` (``extra``:
    what the record's setup hook returned)."""
    train = config.train
    device = resolve_device(train.device)
    workers = default_num_workers(device) if config.num_workers is None else int(config.num_workers)
    rows = data.subsample("train", config.train_spots, seed=train.seed)
    return models.record(config.model).task(
        model, data, rows, device=device, workers=workers, batch_size=train.batch_size,
        eval_batch_size=config.eval_batch_size, augment=config.augment, amp=train.amp, seed=train.seed,
        progress=train.progress, **extra)


def run_setup(data: PredictionData, config: PredictorConfig, dataset: str,
              out_dir: str | os.PathLike | None) -> dict:
    """What the record's setup hook returns for this run (``{}`` for a predictor without one).

    The hook gets a :class:`~spared_utils.models.task.SetupContext` whose ``train(name, **options)``
    trains predictor ``name`` on the same data, scenario, seed and device — its record's CPU
    budget and CPU options, changed by ``options`` — with checkpoints (so the same run made by
    that predictor's own chapter is reused) and without results rows.
    """
    setup = models.record(config.model).setup
    if setup is None:
        return {}
    scenario, seed = config.scenario, config.train.seed

    def train(name: str, **options) -> SetupRun:
        record = models.record(name)
        flat = {**asdict(record.cpu), "model_options": dict(record.cpu_options), **options}
        other = PredictorConfig.make(model=name, scenario=scenario, seed=seed, device=config.train.device,
                                     amp=config.train.amp, progress=config.train.progress,
                                     pretrained=config.pretrained, num_workers=config.num_workers, **flat)
        run = train_predictor(data, other, dataset=dataset, out_dir=out_dir, eval_splits=(),
                              stage=f"predict_setup_{name}", write_results=False)
        return SetupRun(run.model, checkpoint_dir(paths.output_dir(out_dir), dataset, other, run.config_hash))

    return setup(SetupContext(data, dataset, scenario, seed, dict(config.setup), train))


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

    Every predictor goes through here: its :class:`~spared_utils.models.task.Task` (its record's
    ``task``; the record's ``setup`` hook first, where it has one) says what a training step
    reads and how a spot is predicted; the loop, the checkpoint selection on validation MSE and
    the metrics are the same for all.

    Parameters
    ----------
    data
        From :func:`prediction_data` (its scenario must match ``config.scenario``).
    config
        Model, learning rate and every cost.
    dataset
        Dataset id (results rows, checkpoint folder; what a setup hook checks).
    out_dir
        See :func:`spared_utils.paths.output_dir`; the store is ``<out_dir>/results.csv``.
    eval_splits
        Splits evaluated at the end (those absent from the dataset are skipped).
    stage
        ``stage`` column of the results rows.
    write_results, checkpoints
        Append rows to the store / keep checkpoints (``best.pt``, ``last.pt``; a rerun resumes).
        A patch predictor's folder also gets ``predictor.json`` (:func:`~spared_utils.predict.bundle.save_predictor`):
        with it the folder is a checkpoint that :func:`spared_utils.apply` uses on new slides.

    Returns
    -------
    PredictorRun
        The trained model (best validation weights), history, metrics per split, predictions.
    """
    if data.scenario != config.scenario:
        raise ValueError(f"the data were prepared for scenario {data.scenario!r} but the config asks {config.scenario!r}")
    train = config.train
    root = paths.output_dir(out_dir)
    chash = config.hash(dataset, data.n_genes)
    ckpt = checkpoint_dir(root, dataset, config, chash) if checkpoints else None

    extra = run_setup(data, config, dataset, out_dir)
    model = build_for_data(config, data)
    n_params = models.count_parameters(model)
    task = make_task(config, data, model, **extra)

    val_rows = data.subsample("val", config.val_spots, seed=train.seed) if "val" in data.splits else data.rows("train")[:0]
    mean = data.real_mean()
    baseline_val = (metrics.masked_mse(np.broadcast_to(mean, (len(val_rows), data.n_genes)), data.truth[val_rows],
                                       data.real[val_rows]) if len(val_rows) and data.real[val_rows].any() else float("nan"))
    validate = validation_mse(task, val_rows)
    if task.closed_form:
        result = task.fit(model, validate)
    else:
        result = fit(model, task.batches(), task.loss, validate,
                     replace(train, checkpoint_dir=str(ckpt) if ckpt else None), parameters=task.parameters())

    preds, rows, tables, metric_rows = {}, {}, {}, []
    shift = data.target_shift()
    for split in eval_splits:
        if split not in data.splits:
            continue
        r = data.subsample(split, config.eval_spots, seed=train.seed)
        p = task.predict(model, r, progress=train.progress)
        preds[split], rows[split] = p, r
        tables[split] = metrics.per_gene_table(p, data.truth[r], data.real[r], data.genes)
        metric_rows.append({"split": split, **evaluate_predictions(p, data, r), "target_shift": shift})
    table = pd.DataFrame(metric_rows)

    run = PredictorRun(config=config, dataset=dataset, model=model, train=result, metrics=table, predictions=preds,
                       rows=rows, gene_tables=tables, n_params=n_params, config_hash=chash, baseline_val_loss=baseline_val,
                       task=task)
    if ckpt is not None and models.record(config.model).kind == "patch" and data.adata is not None \
            and hasattr(data.store, "patch_size"):
        try:  # predictor.json beside best.pt: a checkpoint new slides can use (spared_utils.apply)
            save_predictor(run, ckpt)
        except ValueError as err:  # data that are not a curated dataset: the run stands, without the description
            log.warning("%s: no predictor.json written (%s); spared_utils.apply cannot use this run", ckpt, err)
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
        "train_spots": cfg.train_spots,
        "pretrained": cfg.pretrained, "target_layer": TARGET_LAYERS[cfg.scenario], "threads": torch.get_num_threads(),
        "cpu": results.cpu_kernels() if run.train.device == "cpu" else "",
        **({"completion": cfg.completion} if cfg.scenario == "completed" else {}),
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
