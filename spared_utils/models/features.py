"""Frozen features: computed once per spot, only when asked, and kept on disk between processes.

Predictors that read a frozen encoder's output (EGN and EGGN's ResNet features, SEPAL's stage-1
embeddings, the linear probe's encoder) read it through a :class:`FrozenCache`;
:func:`shared_cache` lets the runs of one process (the scenarios of a chapter) share one.
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..utils import atomic_path
from .data import PredictionData
from .task import load_patches

__all__ = ["FEATURE_CACHE_ENV", "FrozenCache", "feature_cache_file", "module_fingerprint", "native_bf16", "shared_cache"]


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


