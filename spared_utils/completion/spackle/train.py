"""Training SpaCKLE on the training slides, the checkpoint chosen on validation slides."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from anndata import AnnData

from ... import training
from ...preprocess.panel import panel_info
from . import blend, zeros
from .checkpoints import save_checkpoint
from .config import DEFAULT_LAYER, SpackleConfig, config_tag
from .masking import spackle_input, synthetic_hidden
from .inference import predict_centres
from .model import Spackle, SpackleResult, gene_scales
from .neighbourhoods import CentreSampler, Neighbourhoods, check_input, neighbourhoods, resolve_hex_geometry, split_spots, validation_spots

def train_spackle(adata: AnnData, layer: str = DEFAULT_LAYER, config: SpackleConfig | None = None,
                  hex_geometry: bool | None = None, slide_key: str = "slide_id",
                  split_key: str = "split") -> SpackleResult:
    """Train SpaCKLE on the training slides, selecting the checkpoint on validation slides.

    Validation: a fixed synthetic mask hides ρ of the real entries of the validation slides
    (seeded by ``config.seed``); the score is the MSE on those hidden entries of the centre
    spots (at most ``config.val_max_spots`` of them, a fixed subsample).

    With ``config.lr_grid``, one model per learning rate is trained from the same seed
    (:func:`spared_utils.training.lr_search`) and the best on validation is kept.

    Returns
    -------
    SpackleResult
        The best model (on the resolved device, eval mode) and its history.
    """
    cfg = config or SpackleConfig()
    values, real = check_input(adata, layer, slide_key=slide_key)
    hex_geometry = resolve_hex_geometry(adata, hex_geometry)
    index = neighbourhoods(adata, cfg, hex_geometry=hex_geometry, slide_key=slide_key)
    device = training.resolve_device(cfg.train.device)
    data = Neighbourhoods.build(values, real, index, cfg, device)

    spots = split_spots(adata, split_key)
    if "train" not in spots:
        raise ValueError(f"no spot has obs[{split_key!r}] == 'train': SpaCKLE trains on the training slides")
    val_spots, val_name = validation_spots(adata, split_key)
    rng = np.random.default_rng(cfg.train.seed)
    if cfg.val_max_spots is not None and len(val_spots) > cfg.val_max_spots:
        val_spots = np.sort(rng.choice(val_spots, cfg.val_max_spots, replace=False))
    val_hidden = synthetic_hidden(real, cfg.mask_prob, cfg.train.seed + 1, cfg.masking, rows=val_spots)
    if not val_hidden[val_spots].any():
        raise ValueError("the validation slides have no real value to hide; check layers['mask']")
    val_inputs = spackle_input(data.values, data.real, torch.as_tensor(val_hidden, device=device), cfg)
    val_centres = torch.as_tensor(val_spots, device=device)
    val_hidden_c = torch.as_tensor(val_hidden[val_spots], device=device)
    val_truth_c = data.values[val_centres]

    def validate(model: Spackle) -> float:
        pred = predict_centres(model, val_inputs, data.index, val_centres, cfg.predict_batch, cfg.train.amp)
        return float(((pred - val_truth_c) ** 2)[val_hidden_c].mean())

    def loss_fn(model: Spackle, centres: torch.Tensor) -> torch.Tensor:
        return data.training_loss(model, centres, cfg)

    genes = [str(g) for g in adata.var_names]
    n_tokens = index.shape[1] + 1
    run_tag = config_tag(cfg, values, real, index)
    runs: dict[float, tuple[Spackle, training.TrainResult]] = {}

    gene_means = torch.as_tensor(values[spots["train"]].mean(axis=0), dtype=torch.float32)
    scales = gene_scales(values[spots["train"]]) if cfg.gene_scaling else (None, None)

    def run(lr: float) -> training.TrainResult:
        training.seed_everything(cfg.train.seed)
        model = Spackle(len(genes), n_tokens, cfg, gene_scale=scales[0], out_scale=scales[1],
                        gene_centre=gene_means if cfg.centre_input else None)
        if cfg.init_output_bias == "mean":
            # Starts the output at each gene's mean, so training learns deviations from it
            # instead of first climbing from 0 to the scale of log2(TPM + 1) (~10-20).
            with torch.no_grad():
                model.adapter_out.bias.copy_(gene_means / model.out_scale)
        ckpt = None
        if cfg.checkpoint_dir:
            # One folder per (configuration, data, learning rate): fit() resumes from it, so a
            # rerun with identical settings reuses the finished run and anything else starts anew.
            ckpt = str(Path(cfg.checkpoint_dir) / f"{run_tag}_lr_{lr:g}")
        sampler = CentreSampler(spots["train"], cfg.train.batch_size, cfg.train.seed)
        res = training.fit(model, sampler, loss_fn, validate, cfg.train_config(lr, ckpt))
        runs[lr] = (model, res)
        return res

    t0 = time.perf_counter()
    lr_table = None
    if cfg.lr_grid:
        lr, lr_table = training.lr_search(run, cfg.lr_grid)
    else:
        lr = float(cfg.train.learning_rate)
        run(lr)
    model, res = runs[lr]
    model.eval()
    if cfg.neighbour_blend or cfg.zero_posterior:
        fit_after(model, adata, layer, values, real, data, val_spots, cfg, hex_geometry, slide_key)
    result = SpackleResult(
        model=model, config=replace(cfg, train=replace(cfg.train, learning_rate=lr)), genes=genes, learning_rate=lr,
        best_val=res.best_val, best_iteration=res.best_iteration, history=res.history,
        wall_time_s=time.perf_counter() - t0, device=res.device, lr_table=lr_table,
        extra={"validation_split": val_name, "n_validation_spots": int(len(val_spots)),
               "train_wall_time_s": res.wall_time_s, "panel": panel_info(adata, layer)},
    )
    if cfg.checkpoint_dir:
        result.checkpoint = save_checkpoint(result, Path(cfg.checkpoint_dir) / f"spackle_{run_tag}.pt")
    return result


def fit_after(model: Spackle, adata: AnnData, layer: str, values: np.ndarray, real: np.ndarray,
              data: Neighbourhoods, rows: np.ndarray, cfg: SpackleConfig, hex_geometry: bool,
              slide_key: str = "slide_id") -> None:
    """Fit what ours adds after training on the validation spots ``rows``, stored in the model:
    the weights of :mod:`.blend` (``neighbour_blend``) and the gamma shape of :mod:`.zeros`
    (``zero_posterior``; left NaN where the dataset has no counts to map back to).

    At each of :data:`.blend.BLEND_LEVELS` a fixed uniform mask (seeded by ``cfg.train.seed``)
    hides real entries of ``rows``; the model and the neighbour mean predict them from the rest.
    The shape is fitted on the blended predictions of the levels up to 30%, the share of entries
    a slide itself typically misses.
    """
    rings = blend.neighbour_rings(adata, hex_geometry, slide_key)
    device = data.values.device
    centres = torch.as_tensor(rows, device=device)
    samples = []
    for i, level in enumerate(blend.BLEND_LEVELS):
        hidden = synthetic_hidden(real, level, cfg.train.seed + 200 + i, "uniform", rows=rows)
        inputs = spackle_input(data.values, data.real, torch.as_tensor(hidden, device=device), cfg)
        pred = predict_centres(model, inputs, data.index, centres, cfg.predict_batch, cfg.train.amp).cpu().numpy()
        mean, bins = blend.neighbour_mean(values, real & ~hidden, rings, rows)
        samples.append((pred, mean, bins, hidden[rows]))
    if cfg.neighbour_blend:
        weights = blend.fit_weights([(p[h], m[h], values[rows][h], b[h]) for p, m, b, h in samples])
        with torch.no_grad():
            model.blend_weight.copy_(torch.as_tensor(weights))
    if cfg.zero_posterior:
        cmap = zeros.curation_map(adata, layer)
        if cmap is not None:
            weights = blend.blend_weights(model)
            low = [(blend.blend(p, m, b, weights) if weights is not None else p, h)
                   for (p, m, b, h), level in zip(samples, blend.BLEND_LEVELS) if level <= 0.3]
            reps = np.tile(rows, len(low))
            shape = zeros.prior_shape(np.concatenate([p for p, _ in low]), values[reps], cmap, reps,
                                      np.concatenate([h for _, h in low]))
            with torch.no_grad():
                model.zero_shape.fill_(shape)


__all__ = ["fit_after", "train_spackle"]
