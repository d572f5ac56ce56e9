"""torch_geometric (PyG), imported on first use and without its import-time deprecation warning.

Importing ``torch_geometric`` takes longer than the rest of ``su.tl`` and, with recent torch,
raises ``FutureWarning: `torch.jit.script` is deprecated`` from inside torch (PyG decorates a
few helpers with ``torch.jit.script`` at import). Only the graph predictors need PyG, so they
call :func:`torch_geometric` when they build a model; the warning is silenced for that import
alone — the same warning raised by a reader's own ``torch.jit.script`` call still shows.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from types import ModuleType

__all__ = ["torch_geometric"]


def torch_geometric() -> ModuleType:
    """The ``torch_geometric`` package with ``nn`` and ``utils`` loaded.

    Returns
    -------
    ModuleType
        ``torch_geometric``; ``torch_geometric.nn`` and ``torch_geometric.utils`` are imported.
    """
    if "torch_geometric.nn" not in sys.modules:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated",
                                    category=FutureWarning, module=r"torch\.jit\._script")
            importlib.import_module("torch_geometric.nn")
            importlib.import_module("torch_geometric.utils")
    return sys.modules["torch_geometric"]
