"""SpaCKLE checkpoints: a trained model with its configuration and gene panel, written atomically and read back."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch
from anndata import AnnData

from ... import training
from ...preprocess.panel import check_panel, package_versions
from ...utils import atomic_path
from .config import SpackleConfig
from .model import Spackle, SpackleResult

def save_checkpoint(result: SpackleResult, path: str | os.PathLike) -> Path:
    """Write the model, its configuration and gene panel atomically to ``path`` (a ``.pt`` file).

    The file carries the weights, the :class:`SpackleConfig`, the genes, and the panel of the
    training data (:func:`spared_utils.preprocess.panel.panel_info`: symbols, gene lengths,
    curation parameters, the training dataset's id and fingerprint, per-gene training
    statistics) with the package versions, so that :func:`spared_utils.apply` can bring a new
    slide to the same scale and :func:`check_genes` can name what disagrees.
    """
    path = Path(path)
    blob = {
        "kind": "spackle",
        "panel": result.extra.get("panel"),
        "versions": package_versions(),
        "state_dict": {k: v.detach().cpu() for k, v in result.model.state_dict().items()},
        "config": asdict(result.config),
        "genes": list(result.genes),
        "n_tokens": result.model.n_tokens,
        "learning_rate": result.learning_rate,
        "best_val": result.best_val,
        "best_iteration": result.best_iteration,
        "history": result.history.to_dict(orient="list"),
    }
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)
    return path


def load_checkpoint(path: str | os.PathLike, device: str = "auto") -> SpackleResult:
    """Read a checkpoint written by :func:`save_checkpoint` (model in eval mode on ``device``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SpaCKLE checkpoint {path} not found; train with complete(adata, method='spackle') first")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file fails in many ways
        raise ValueError(f"SpaCKLE checkpoint {path} cannot be read ({type(err).__name__}: {err}); the file is "
                         "truncated or not a checkpoint: train again (chapters/02_completion) or copy it again") from err
    if not isinstance(blob, dict) or "state_dict" not in blob or blob.get("kind", "spackle") != "spackle":
        raise ValueError(f"{path} is not a SpaCKLE checkpoint (written by spared_utils.completion.save_checkpoint); "
                         "pass the spackle_*.pt file that chapter 02 writes under results/<dataset>/completion/")
    cfg_values = dict(blob["config"])
    cfg_values["train"] = {**cfg_values["train"], "device": device}
    if cfg_values.get("lr_grid") is not None:
        cfg_values["lr_grid"] = tuple(cfg_values["lr_grid"])
    cfg = SpackleConfig(**cfg_values)
    model = Spackle(len(blob["genes"]), int(blob["n_tokens"]), cfg)
    model.load_state_dict(blob["state_dict"])
    model.to(training.resolve_device(device)).eval()
    return SpackleResult(model=model, config=cfg, genes=list(blob["genes"]), learning_rate=blob["learning_rate"],
                         best_val=blob["best_val"], best_iteration=blob["best_iteration"],
                         history=pd.DataFrame(blob["history"]), wall_time_s=0.0, device=str(device), checkpoint=path,
                         extra={"panel": blob.get("panel"), "versions": blob.get("versions", {})})


def check_genes(result: SpackleResult, adata: AnnData, source: str = "the checkpoint") -> None:
    """Raise if the data's genes are not exactly the model's genes, in the same order."""
    data_genes = [str(g) for g in adata.var_names]
    if data_genes == result.genes:
        return
    if result.checkpoint is not None:
        panel = result.extra.get("panel") or {"genes": result.genes}
        data = f"the data ({adata.uns.get('dataset_id', 'unnamed dataset')})"
        check_panel({**panel, "genes": result.genes}, data_genes, str(result.checkpoint), data)
    missing = [g for g in result.genes if g not in set(data_genes)]
    extra = [g for g in data_genes if g not in set(result.genes)]
    detail = (f"{len(missing)} of the model's genes are absent (e.g. {missing[:3]}), {len(extra)} genes are new "
              f"(e.g. {extra[:3]})") if (missing or extra) else "the same genes in a different order"
    raise ValueError(f"genes mismatch between {source} ({len(result.genes)} genes) and the data "
                     f"({len(data_genes)} genes): {detail}; complete with a model trained on this dataset "
                     "(or reorder with adata = adata[:, genes])")


__all__ = ["check_genes", "load_checkpoint", "save_checkpoint"]
