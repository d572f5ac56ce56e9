"""A predictor checkpoint that stands on its own: weights plus everything needed to use them.

:func:`~spared_utils.predict.engine.train_predictor` writes, beside the loop's ``best.pt`` in
each run's checkpoint folder, ``predictor.json``: the predictor's name and builder options, the
scenario and target layer, the patch geometry (``patch_size`` px cut from ``patch_scale`` spot
diameters), the gene panel of the training data
(:func:`spared_utils.preprocess.panel.panel_info`: genes, symbols, gene lengths, the curation
parameters, the training dataset's id and fingerprint) and the package versions. The folder is
then a checkpoint :func:`load_predictor` reads without the training data, for new slides
(:func:`spared_utils.apply`).

Only patch predictors (one patch → one spot: ShuffleNet, ViT-B, ViT-B+Δ, STNet) are self-contained
this way; slide, graph, retrieval and probe predictors read neighbouring or training spots at
prediction time and are refused with that reason.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import models
from ..preprocess.panel import PanelMismatchError, package_versions, panel_info
from ..training import autocast, resolve_device
from ..utils import atomic_path
from ..models.data import TARGET_LAYERS

__all__ = ["BUNDLE_NAME", "WEIGHTS_NAME", "PredictorBundle", "check_patch_size", "load_predictor", "predict_patches",
           "save_predictor"]

BUNDLE_NAME = "predictor.json"
WEIGHTS_NAME = "best.pt"


@dataclass
class PredictorBundle:
    """A loaded predictor checkpoint: the model (eval mode) and what it was trained on."""

    model: nn.Module
    name: str
    meta: dict[str, Any]
    path: Path

    @property
    def genes(self) -> list[str]:
        return list(self.meta["panel"]["genes"])

    @property
    def panel(self) -> dict[str, Any]:
        return self.meta["panel"]

    @property
    def patch_size(self) -> int:
        return int(self.meta["patch_size"])

    @property
    def patch_scale(self) -> float:
        return float(self.meta["patch_scale"])


def _check_kind(name: str) -> None:
    kind = models.record(name).kind
    if kind != "patch":
        patch = [n for n, r in models.RECORDS.items() if r.kind == "patch"]
        raise ValueError(f"predictor {name!r} is a {kind} model: it reads neighbouring or training spots when it "
                         f"predicts, so it cannot be saved for new slides on its own; use a patch predictor ({patch})")


def save_predictor(run, folder: str | os.PathLike, adata=None, store=None) -> Path:
    """Write ``predictor.json`` for a finished run into its checkpoint ``folder`` (beside ``best.pt``).

    Parameters
    ----------
    run
        A :class:`~spared_utils.predict.engine.PredictorRun` of a patch predictor.
    folder
        The run's checkpoint folder; ``best.pt`` is written there (from the run's model) if absent.
    adata, store
        The curated dataset and patch store it was trained on (default: the run's).

    Returns
    -------
    Path
        ``folder``, which :func:`load_predictor` reads.
    """
    cfg = run.config
    _check_kind(cfg.model)
    folder = Path(folder)
    data = run.task.data if run.task is not None else None
    adata = adata if adata is not None else getattr(data, "adata", None)
    store = store if store is not None else getattr(data, "store", None)
    if adata is None or store is None:
        raise ValueError("save_predictor needs the curated dataset and patch store the run was trained on "
                         "(pass adata= and store=)")
    meta = {
        "kind": "predictor", "model": cfg.model, "model_options": dict(cfg.model_options),
        "scenario": cfg.scenario, "target_layer": TARGET_LAYERS[cfg.scenario], "config_hash": run.config_hash,
        "learning_rate": cfg.train.learning_rate, "seed": cfg.train.seed, "iterations": cfg.train.iterations,
        "patch_size": int(store.patch_size), "patch_scale": float(store.meta.get("patch_scale", 1.0)),
        "config": json.loads(json.dumps(asdict(cfg), default=str)),
        "panel": panel_info(adata), "versions": package_versions(),
    }
    if list(meta["panel"]["genes"]) != [str(g) for g in data.genes]:
        raise ValueError("the run's genes differ from the dataset's; pass the adata it was trained on")
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        with atomic_path(weights) as tmp:
            torch.save({k: v.detach().cpu() for k, v in run.model.state_dict().items()}, tmp)
    with atomic_path(folder / BUNDLE_NAME) as tmp:
        tmp.write_text(json.dumps(meta, indent=1, default=_json_default))
    return folder


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)


def load_predictor(path: str | os.PathLike, device: str = "auto") -> PredictorBundle:
    """Read a predictor checkpoint folder (``predictor.json`` + ``best.pt``; or the json file itself).

    Raises
    ------
    FileNotFoundError, ValueError
        The folder lacks either file, or they cannot be read (the message names the file and the fix).
    """
    path = Path(path)
    folder = path.parent if path.name == BUNDLE_NAME else path
    meta_file, weights = folder / BUNDLE_NAME, folder / WEIGHTS_NAME
    if not folder.is_dir():
        raise FileNotFoundError(f"predictor checkpoint {folder} not found: pass the run's checkpoint folder "
                                "(results/checkpoints/<dataset>/<model>/<scenario>/lr…_seed…_<hash>/)")
    for file in (meta_file, weights):
        if not file.is_file():
            raise FileNotFoundError(f"{file} not found: a predictor checkpoint folder holds {BUNDLE_NAME} and "
                                    f"{WEIGHTS_NAME}; train the predictor again (its chapter writes both) or copy the whole folder")
    try:
        meta = json.loads(meta_file.read_text())
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"predictor checkpoint {folder}: cannot read {meta_file.name} or {weights.name} "
                         f"({type(err).__name__}: {err}); the files are truncated: train again or copy them again") from err
    if meta.get("kind") != "predictor" or "panel" not in meta:
        raise ValueError(f"{meta_file} is not a predictor checkpoint description (written by save_predictor)")
    _check_kind(meta["model"])
    model = models.build(meta["model"], len(meta["panel"]["genes"]), pretrained=False, **meta.get("model_options", {}))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{weights} does not fit the {meta['model']!r} model described by {meta_file.name} ({err}); "
                         "the two files come from different runs: copy the whole checkpoint folder again") from err
    model.to(resolve_device(device)).eval()
    return PredictorBundle(model=model, name=meta["model"], meta=meta, path=folder)


def check_patch_size(bundle: PredictorBundle, patch_size: int, source: str) -> None:
    """Raise :class:`PanelMismatchError` if ``source``'s patches are not the checkpoint's size."""
    if int(patch_size) != bundle.patch_size:
        raise PanelMismatchError(
            f"predictor checkpoint {bundle.path} reads {bundle.patch_size} px patches (of {bundle.patch_scale:g} spot "
            f"diameters) but {source} holds {int(patch_size)} px patches; cut the patches again with "
            f"spared_utils.patches.extract_patches(adata, path, patch_size={bundle.patch_size}, "
            f"patch_scale={bundle.patch_scale:g})")


@torch.no_grad()
def predict_patches(bundle: PredictorBundle, patches, batch_size: int = 64, progress: bool = True,
                    source: str = "the patches") -> np.ndarray:
    """Expression predicted for each patch (``(n, H, W, 3)`` uint8, e.g. a :class:`PatchStore`).

    Returns an ``(n, n_genes)`` float32 array on the scale of the checkpoint's target layer.
    """
    n = len(patches)
    first = np.asarray(patches[0]) if n else np.zeros((bundle.patch_size, bundle.patch_size, 3), np.uint8)
    if first.shape[0] != first.shape[1]:
        raise PanelMismatchError(f"{source}: patches are {first.shape[:2]} px, not square")
    check_patch_size(bundle, first.shape[0], source)
    device = next(bundle.model.parameters()).device
    if isinstance(patches, np.ndarray):
        take = patches.__getitem__
    else:  # a PatchStore reads a batch at once; any other sequence one patch at a time
        take = getattr(patches, "take", None) or (lambda idx: np.stack([np.asarray(patches[int(i)]) for i in idx]))
    out = []
    for start in tqdm(range(0, n, batch_size), desc="predict", unit="batch", disable=not progress):
        x = torch.from_numpy(np.ascontiguousarray(take(np.arange(start, min(n, start + batch_size)))))
        x = x.permute(0, 3, 1, 2).to(device)
        with autocast(device, True):
            out.append(bundle.model(x).float().cpu())
    if not out:
        return np.zeros((0, len(bundle.genes)), dtype=np.float32)
    return torch.cat(out).numpy().astype(np.float32)


def describe(bundle: PredictorBundle) -> Mapping[str, Any]:
    """A short summary (for tables): model, scenario, training dataset, genes, patch size."""
    return {"model": bundle.name, "scenario": bundle.meta["scenario"], "dataset": bundle.panel["dataset_id"],
            "genes": len(bundle.genes), "patch_size": bundle.patch_size, "checkpoint": str(bundle.path)}
