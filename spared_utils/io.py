"""``su.io``: where each stage keeps what it made, and how to read it back.

Curated datasets (``<processed_dir>/<id>/adata.h5ad``), patch stores (memory-mapped), SpaCKLE
checkpoints, predictor checkpoint folders, and the results store (one CSV every run appends to).
Every write is atomic (:func:`spared_utils.utils.atomic_path`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _lazy_face

if TYPE_CHECKING:  # the face's names, each imported from its module on first use (see _lazy_face)
    from .completion import load_checkpoint as load_spackle, save_checkpoint as save_spackle
    from .patches import PatchStore
    from .paths import output_dir, shown_path
    from .predict import checkpoint_dir as predictor_checkpoint_dir, load_predictor, save_predictor
    from .preprocess import processed_path, read_processed, write_processed
    from .results import append as append_results, benchmark_provenance, describe_provenance, read as read_results
    from .results import read_benchmark, select as select_results

__all__ = [
    "PatchStore", "append_results", "benchmark_provenance", "describe_provenance", "load_predictor", "load_spackle", "output_dir", "predictor_checkpoint_dir", "processed_path",
    "read_benchmark", "read_processed", "read_results", "save_predictor", "save_spackle", "select_results", "shown_path", "write_processed",
]

__getattr__, __dir__ = _lazy_face(__name__)
