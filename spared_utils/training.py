"""The one training loop, shared by SpaCKLE and every predictor.

The paper's protocol for every model: a fixed budget of iterations (10,000 for SpaCKLE, 1,000 for
predictors), batch 256, Adam with PyTorch defaults, validation every ``eval_every`` iterations,
keep the checkpoint with the lowest validation loss; the learning rate is searched per dataset.

:func:`fit` implements exactly that, with what long runs need: a progress bar with the current
loss, mixed precision (bfloat16 autocast) and channels-last on CUDA, seed control (a rerun with
the same seed gives the same numbers on CPU), and checkpoints (``best.pt`` and ``last.pt``) from
which an interrupted run resumes to the numbers an uninterrupted run gives (the batch stream is
replayed up to the resumed step and the random state restored).
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from .utils import atomic_path


@dataclass
class TrainConfig:
    """Every value that shapes a training run (printed in the chapters)."""

    iterations: int = 1000
    batch_size: int = 256
    learning_rate: float = 1e-3
    eval_every: int = 10
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    channels_last: bool = False
    checkpoint_dir: str | None = None
    resume: bool = True
    progress: bool = True
    weight_decay: float = 0.0
    #: ``last.pt`` (weights, Adam moments) is written at an evaluation only once this many seconds
    #: have passed since the previous write, and always at the end: an interruption loses at most
    #: this much training, and a large model is not written to disk at every evaluation (a ViT-B
    #: checkpoint with Adam's moments is ~1.5 GB). 0 writes at every evaluation.
    checkpoint_every_s: float = 120.0
    #: the learning rate grows linearly from ``learning_rate / warmup_iterations`` to
    #: ``learning_rate`` over the first this many steps (at most ``iterations``; 0: constant from
    #: the first step). A post-LN transformer started at a high rate can stall at a constant
    #: output for the whole budget (chapter 02 measures it on the 128-gene suite dataset).
    warmup_iterations: int = 0
    #: > 0: validation, the best checkpoint and the returned weights are an exponential moving
    #: average of the weights over the steps (``torch.optim.swa_utils.AveragedModel``; each step
    #: moves the average ``1 − ema_decay`` of the way to the current weights). 0: the weights
    #: themselves.
    ema_decay: float = 0.0

    def __post_init__(self):
        if self.iterations <= 0:
            raise ValueError(f"iterations must be a positive number of optimiser steps, got {self.iterations}")
        if self.eval_every <= 0:
            raise ValueError(f"eval_every must be positive, got {self.eval_every}")
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.warmup_iterations < 0:
            raise ValueError(f"warmup_iterations must be >= 0 (0: no warm-up), got {self.warmup_iterations}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1) (0: no averaging), got {self.ema_decay}")

    def learning_rate_at(self, iteration: int) -> float:
        """The learning rate of optimiser step ``iteration`` (1-based), warm-up included."""
        warmup = min(self.warmup_iterations, self.iterations)  # a short run warms up over all of it
        if warmup and iteration < warmup:
            return self.learning_rate * iteration / warmup
        return self.learning_rate

    def identity(self) -> dict[str, Any]:
        """The values that make a run what it is: no progress or checkpoint settings, and fields
        added since results were first stored left out at their defaults (so that old hashes and
        checkpoint tags stay valid)."""
        return {k: v for k, v in asdict(self).items()
                if k not in _NOT_IDENTITY and not (k in LATER_DEFAULTS and v == LATER_DEFAULTS[k])}

    def hash(self, *extra: Any) -> str:
        """Short hash of the config (and any extra identifying values) for the results store."""
        blob = json.dumps([self.identity(), [str(e) for e in extra]], sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


#: Fields that do not change what a run computes (left out of :meth:`TrainConfig.hash`).
_NOT_IDENTITY = frozenset({"progress", "checkpoint_dir", "resume", "checkpoint_every_s"})
#: Fields added after results were first stored, with the default that leaves them out of the hash.
LATER_DEFAULTS: dict[str, Any] = {"warmup_iterations": 0, "ema_decay": 0.0}

#: Field names of :class:`TrainConfig` (the keyword arguments a composed config hands to it).
TRAIN_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(TrainConfig))


def split_train_options(options: dict[str, Any], base: TrainConfig) -> tuple[TrainConfig, dict[str, Any]]:
    """``base`` with the :class:`TrainConfig` fields of ``options`` applied, and the other options."""
    mine = {k: v for k, v in options.items() if k in TRAIN_FIELDS}
    return replace(base, **mine), {k: v for k, v in options.items() if k not in TRAIN_FIELDS}


@dataclass
class TrainResult:
    """What :func:`fit` returns; the model itself holds the best weights afterwards."""

    best_val: float
    best_iteration: int
    history: pd.DataFrame
    wall_time_s: float
    device: str
    checkpoint: Path | None = None
    extra: dict = field(default_factory=dict)


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` → ``cuda`` when available, else ``cpu``; anything else is checked."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} was asked for but no CUDA GPU is visible; use device='auto' or 'cpu'")
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    """Move tensors (also inside tuples, lists and dicts) to ``device``."""
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if channels_last and batch.ndim == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, dict):
        return {k: to_device(v, device, channels_last) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device, channels_last) for v in batch)
    return batch


def cycle(batches: Iterable) -> Iterator:
    """Iterate over ``batches`` forever (a DataLoader reshuffles at each pass)."""
    while True:
        empty = True
        for b in batches:
            empty = False
            yield b
        if empty:
            raise ValueError("the training data gave no batch: is the training split empty?")


def autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast on CUDA when enabled; a no-op elsewhere."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def fit(
    model: nn.Module,
    batches: Iterable,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    validate: Callable[[nn.Module], float],
    config: TrainConfig,
    parameters: Iterable[nn.Parameter] | None = None,
) -> TrainResult:
    """Train ``model`` for ``config.iterations`` Adam steps, keeping the best validation weights.

    Parameters
    ----------
    model
        Any module; it is moved to the resolved device.
    batches
        An iterable of batches (usually a DataLoader), cycled until the budget is spent. Each
        batch is moved to the device, then handed to ``loss_fn``.
    loss_fn
        ``loss_fn(model, batch) -> scalar tensor`` (called under autocast).
    validate
        ``validate(model) -> float``, lower is better (called in eval mode, without grad).
    config
        Budget, learning rate, evaluation period, device, checkpointing.
    parameters
        What Adam optimises (default: every parameter with ``requires_grad``).

    Returns
    -------
    TrainResult
        Best validation value and iteration, the history (one row per evaluation), wall time.
        ``model`` holds the best weights when this returns.
    """
    device = resolve_device(config.device)
    seed_everything(config.seed)
    model.to(device)
    if config.channels_last and device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    params = [p for p in (parameters if parameters is not None else model.parameters()) if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameter")
    optimiser = torch.optim.Adam(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    average = None
    if config.ema_decay:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
    scored = average.module if average is not None else model  # what validation and checkpoints see

    ckpt_dir = Path(config.checkpoint_dir) if config.checkpoint_dir else None
    start, history, best_val, best_it, best_state = 0, [], float("inf"), -1, None
    tag = config.hash(type(model).__name__, sum(p.numel() for p in params))
    resume_rng = None
    if ckpt_dir and config.resume and (ckpt_dir / "last.pt").is_file():
        state = torch.load(ckpt_dir / "last.pt", map_location=device, weights_only=False)
        finished_ok = "model" in state or (ckpt_dir / "best.pt").is_file()
        if state.get("tag") == tag and finished_ok:
            if "model" in state:  # an interrupted run: weights and Adam moments to go on from
                model.load_state_dict(state["model"])
                optimiser.load_state_dict(state["optimiser"])
                if average is not None:
                    average.load_state_dict(state["average"])
            start, history, best_val, best_it = state["iteration"], state["history"], state["best_val"], state["best_iteration"]
            if (ckpt_dir / "best.pt").is_file():
                best_state = torch.load(ckpt_dir / "best.pt", map_location="cpu", weights_only=True)
            resume_rng = state["rng_cpu"]

    from tqdm.auto import tqdm

    t0 = last_write = time.perf_counter()
    best_unsaved = False
    elapsed_before = history[-1]["elapsed_s"] if history else 0.0
    model.train()
    stream = cycle(batches)
    if resume_rng is not None:
        if start < config.iterations:
            # The batches of the first `start` steps are drawn again (and dropped), so that the
            # resumed run reads the same batches as an uninterrupted one: the same final numbers.
            for _ in range(start):
                next(stream)
        torch.set_rng_state(resume_rng)
    bar = tqdm(total=config.iterations, initial=start, disable=not config.progress, desc=type(model).__name__, leave=False)
    running, n_running = 0.0, 0
    for it in range(start + 1, config.iterations + 1):
        batch = to_device(next(stream), device, config.channels_last)
        with autocast(device, config.amp):
            loss = loss_fn(model, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss became {loss.item()} at iteration {it}: lower learning_rate "
                f"(now {config.learning_rate}) or check the input for NaN"
            )
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        if config.warmup_iterations:
            for group in optimiser.param_groups:
                group["lr"] = config.learning_rate_at(it)
        optimiser.step()
        if average is not None:
            average.update_parameters(model)
        running += float(loss.detach())
        n_running += 1
        bar.update(1)
        if it % config.eval_every == 0 or it == config.iterations:
            scored.eval()
            with torch.no_grad(), autocast(device, config.amp):
                val = float(validate(scored))
            model.train()
            row = {
                "iteration": it,
                "train_loss": running / max(n_running, 1),
                "val_loss": val,
                "elapsed_s": elapsed_before + time.perf_counter() - t0,
            }
            history.append(row)
            running, n_running = 0.0, 0
            if val < best_val:
                best_val, best_it, best_unsaved = val, it, True
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in scored.state_dict().items()}
            going_on = it < config.iterations
            if ckpt_dir and (not going_on or time.perf_counter() - last_write >= config.checkpoint_every_s):
                if best_unsaved:  # best.pt first: last.pt's best_val always describes the file on disk
                    _atomic_save(best_state, ckpt_dir / "best.pt")
                    best_unsaved = False
                # Weights and Adam's two moments (3x the model: ~1.5 GB for a ViT-B) are kept only
                # while there is training left to resume; a finished run's last.pt keeps its
                # history and tag, and best.pt the weights that count.
                _atomic_save(
                    {
                        "tag": tag,
                        **({"model": model.state_dict(), "optimiser": optimiser.state_dict(),
                            **({"average": average.state_dict()} if average is not None else {})} if going_on else {}),
                        "iteration": it,
                        "history": history,
                        "best_val": best_val,
                        "best_iteration": best_it,
                        "rng_cpu": torch.get_rng_state(),
                        "config": asdict(config),
                    },
                    ckpt_dir / "last.pt",
                )
                last_write = time.perf_counter()
            bar.set_postfix(train=f"{row['train_loss']:.4f}", val=f"{val:.4f}", best=f"{best_val:.4f}")
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    hist = pd.DataFrame(history, columns=["iteration", "train_loss", "val_loss", "elapsed_s"])
    wall = float(hist["elapsed_s"].iloc[-1]) if len(hist) else time.perf_counter() - t0
    return TrainResult(best_val, best_it, hist, wall, str(device), ckpt_dir / "best.pt" if ckpt_dir else None)


def lr_search(
    train: Callable[[float], TrainResult], grid: Sequence[float]
) -> tuple[float, pd.DataFrame]:
    """Train once per learning rate in ``grid``; return the best one and a summary table.

    ``train(lr)`` must build a fresh model and return its :class:`TrainResult`. Ties go to the
    first (smallest index) learning rate in ``grid``.
    """
    if not grid:
        raise ValueError("the learning-rate grid is empty")
    rows = []
    for lr in grid:
        res = train(float(lr))
        rows.append({"learning_rate": float(lr), "best_val": res.best_val, "best_iteration": res.best_iteration,
                     "wall_time_s": res.wall_time_s})
    table = pd.DataFrame(rows)
    best = float(table.loc[table["best_val"].idxmin(), "learning_rate"])
    return best, table


def _atomic_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters (``requires_grad``) of ``module``."""
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad))


def clone_module(module: nn.Module) -> nn.Module:
    """A deep copy (used to restart each learning rate of a search from the same weights)."""
    return copy.deepcopy(module)
