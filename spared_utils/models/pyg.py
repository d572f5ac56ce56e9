"""torch_geometric (PyG), imported without its import-time deprecation warning.

With recent torch, importing ``torch_geometric`` raises ``FutureWarning: `torch.jit.script` is
deprecated`` from inside torch (PyG decorates a few helpers with ``torch.jit.script`` at import);
it says nothing to our readers and lands in every chapter's output. The graph predictors import
PyG through :func:`torch_geometric`, which silences that warning for that import alone: the same
warning raised by a reader's own ``torch.jit.script`` call still shows.
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
