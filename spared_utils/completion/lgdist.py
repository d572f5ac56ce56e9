"""LGDiST: latent gene diffusion for completing missing expression values.

The method of Cárdenas, Manrique, Vega, Ruiz and Arbeláez, "LGDiST: Latent Gene Diffusion for
Spatial Transcriptomics Completion" (arXiv 2509.01864), written here from the paper and the
authors' code (github.com/BCV-Uniandes/LGDiST), whose README gives the protocol:

1. **Neighbourhood autoencoder.** A spot and its 6 nearest spots form a 7-token neighbourhood;
   each token holds the spot's median-pre-completed expression (Δ: minus each gene's training
   mean) of the panel *and* of the context genes (the genes with the next-highest Moran's I,
   :mod:`spared_utils.preprocess.context`; the authors widen every dataset to 1,024 genes). The
   encoder is a linear map with tanh, sinusoidal positions, a transformer encoder over the 7
   tokens and a tanh projection to the latent; the decoder, an MLP, rebuilds the centre spot
   from the centre token's latent. The loss weighs the centre's real panel entries 0.9 and every
   other centre entry (median-completed panel entries, context genes) 0.1; half of the batches
   get Gaussian noise (σ = 0.1) on the latents.
2. **Diffusion transformer in the latent space.** The frozen encoder turns each neighbourhood
   into a 7 × latent matrix, scaled to [-1, 1] by its global minimum and maximum. A DDPM (cosine
   schedule) learns to denoise the centre token while the 6 neighbour tokens stay clean; the
   denoiser (DiT) embeds tokens with a width-3 convolution along the neighbourhood, is
   conditioned per token by adaLN on the timestep plus the neighbourhood with its centre zeroed,
   and the loss is the noise MSE on the centre token.
3. **Completion.** Sampling starts the centre token from noise, re-imposes the clean neighbours
   after every step, and the decoder turns the centre latent into expression; only the missing
   entries are replaced, real values are kept.
4. **Second round.** The diffusion model is trained again from scratch, with the same
   autoencoder, on the layer completed by the first round, and
5. completes a second time from it; that is the final completion.

Where ours differs from the authors' code, and why (:class:`LgdistConfig` names each field):

* **Budget.** Their defaults (:meth:`LgdistConfig.paper`: autoencoder width 512, 4 layers,
  latent 128, 5,000 epochs at 1e-6; DiT width 1024, 12 blocks, 16 heads, 3,000 epochs at 1e-4)
  are a GPU's; :meth:`LgdistConfig.cpu` is the book's CPU budget (small widths, tens of
  epochs, higher learning rates, 20 sampling steps instead of 50), one argument away.
* **Sampling steps.** They train on 1,500 steps but sample with a *new* 50-step cosine schedule
  whose timestep indices 0–49 the model never saw in training; we respace the training
  schedule (evenly spaced training timesteps, the DDPM posterior of the respaced chain), which is
  their sampler exactly when ``sample_steps == diffusion_steps``.
* **Latent scaling.** They scale each split by its own minimum and maximum; we use the training
  spots' for every spot, so validation and test spots do not set their own scale.
* **Checkpoint selection.** They select the DiT on the validation MSE of hidden entries whose
  true values stay in the encoder's input; we hide them (set them missing and refill them with
  the adaptive median of the visible values) before encoding, as in the book's masking protocol.
  Their autoencoder keeps its last weights; so does ours.
* **Context genes in round 2.** They refill every median-completed value of the 1,024 genes with
  round 1's output; we do the same for the context genes when their real-value mask is given
  (``obsm["context_log1p_mask"]``), and keep them as they are otherwise.
* **Edge neighbourhoods.** Their squidpy kNN always finds 6 neighbours; our kNN does too (on a
  slide of at least 7 spots); with ``neighbourhood="hex"`` (first ring of the grid) an absent
  neighbour is a zero token (the genes' training means).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from anndata import AnnData
from torch import nn
from tqdm.auto import tqdm

from .. import graphs, training
from ..preprocess import median_complete
from ..preprocess.context import CONTEXT_KEY, context_genes
from .spackle import (CentreSampler, check_input, gather, hex_geometry_of, knn_index, split_spots,
                      synthetic_hidden, validation_spots)

_CHOICES = {"neighbourhood": ("knn", "hex"), "schedule": ("cosine", "linear")}


@dataclass
class LgdistConfig:
    """Every value of an LGDiST run; defaults are the book's CPU budget (:meth:`cpu`).

    :meth:`paper` gives the authors' defaults (``autoencoder/utils.py`` and
    ``gene_completion/utils.py`` of github.com/BCV-Uniandes/LGDiST); :meth:`make` takes
    ``budget="cpu"`` or ``"paper"`` and any field as a flat option.
    """

    # --- neighbourhood and genes -----------------------------------------------------------
    neighbourhood: str = "knn"  #: nearest spots by pixel distance (authors); "hex": first grid ring
    n_neighbours: int = 6  #: authors: 6 (squidpy's generic kNN)
    #: panel + context genes the autoencoder reads (authors: 1024); None = every context column given
    total_genes: int | None = None
    # --- autoencoder -------------------------------------------------------------------------
    ae_width: int = 64  #: authors: 512
    ae_layers: int = 2  #: authors: 4
    ae_heads: int = 1  #: authors: 1
    ae_feedforward: int = 128  #: authors: 2 × width = 1024
    ae_dropout: float = 0.1
    latent_dim: int = 16  #: authors: 128
    ae_alpha: float = 0.9  #: weight of the centre's real panel entries in the loss
    ae_latent_noise: float = 0.1  #: σ of the noise on the latents ...
    ae_noise_prob: float = 0.5  #: ... added to this share of the batches
    ae_lr: float = 1e-3  #: authors: 1e-6 (AdamW); a CPU budget of tens of epochs needs more
    ae_weight_decay: float = 1e-4
    ae_epochs: int = 30  #: authors: 5000
    # --- diffusion transformer ---------------------------------------------------------------
    dit_width: int = 32  #: authors: 1024
    dit_depth: int = 2  #: authors: 12
    dit_heads: int = 4  #: authors: 16
    mlp_ratio: float = 4.0
    diffusion_steps: int = 1500  #: training timesteps (authors: 1500)
    sample_steps: int = 20  #: sampling timesteps, respaced from the training schedule (authors: 50)
    schedule: str = "cosine"  #: authors: cosine (Nichol & Dhariwal 2021)
    dit_lr: float = 1e-3  #: authors: 1e-4 (AdamW, no weight decay)
    dit_epochs: int = 30  #: authors: 3000, per round
    #: the learning rate × ``lr_gamma`` every this many epochs (authors: 600 of 3000, four decays; ours:
    #: one decay for the last fifth of a short run)
    lr_step_epochs: int = 24
    lr_gamma: float = 0.1
    # --- both --------------------------------------------------------------------------------
    batch_size: int = 128  #: authors: 128
    grad_clip: float = 1.0  #: gradient-norm clipping (authors: 1.0)
    rounds: int = 2  #: completion rounds (authors' protocol: 2)
    n_evals: int = 3  #: validations per DiT run (authors: 10, every num_epochs // 10)
    val_fraction: float = 0.3  #: share of the validation spots' real entries hidden to select
    val_max_spots: int | None = 512  #: validation spots scored (a fixed subsample; None = all)
    predict_batch: int = 2048
    seed: int = 0  #: authors: 1202
    device: str = "auto"
    progress: bool = False

    def __post_init__(self):
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"LgdistConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("ae_epochs", "dit_epochs"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"LgdistConfig.{name} must be >= 0 (0: the untrained model), got {getattr(self, name)}")
        if self.rounds < 1:
            raise ValueError(f"LgdistConfig.rounds must be >= 1 (the authors run 2), got {self.rounds}")
        if not 1 <= self.sample_steps <= self.diffusion_steps:
            raise ValueError(f"sample_steps ({self.sample_steps}) must be in [1, diffusion_steps={self.diffusion_steps}]")
        if self.ae_width % self.ae_heads or self.dit_width % self.dit_heads:
            raise ValueError(f"widths must be divisible by the heads: ae {self.ae_width}/{self.ae_heads}, "
                             f"dit {self.dit_width}/{self.dit_heads}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")

    @classmethod
    def cpu(cls, **options: Any) -> LgdistConfig:
        """The book's CPU budget (the defaults), under ``options``."""
        return replace(cls(), **options)

    @classmethod
    def paper(cls, **options: Any) -> LgdistConfig:
        """The authors' defaults (their argument parsers), under ``options``."""
        authors = dict(total_genes=1024, ae_width=512, ae_layers=4, ae_heads=1, ae_feedforward=1024, latent_dim=128,
                       ae_lr=1e-6, ae_epochs=5000, dit_width=1024, dit_depth=12, dit_heads=16, sample_steps=50,
                       dit_lr=1e-4, dit_epochs=3000, lr_step_epochs=600, n_evals=10, val_max_spots=None, seed=1202)
        return replace(cls(), **{**authors, **options})

    @classmethod
    def smoke(cls, **options: Any) -> LgdistConfig:
        """Seconds on a CPU: a check that every stage runs (the tests' tiny book), not a model."""
        tiny = dict(ae_width=16, ae_feedforward=32, latent_dim=8, ae_epochs=2, dit_width=16, dit_depth=1,
                    dit_epochs=2, lr_step_epochs=2, sample_steps=2, n_evals=1, val_max_spots=32)
        return replace(cls(), **{**tiny, **options})

    @classmethod
    def make(cls, budget: str = "cpu", **options: Any) -> LgdistConfig:
        """A config from a budget (``"cpu"``, ``"paper"`` or ``"smoke"``) and flat options.

        Raises
        ------
        TypeError
            An option that is not a field.
        """
        makers = {"cpu": cls.cpu, "paper": cls.paper, "smoke": cls.smoke}
        if budget not in makers:
            raise ValueError(f"budget must be one of {sorted(makers)}, got {budget!r}")
        unknown = set(options) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown LGDiST option(s) {sorted(unknown)}; valid: {sorted(f.name for f in fields(cls))}")
        return makers[budget](**options)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LgdistConfig:
        return cls(**values)


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def sinusoidal(n: int, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """``(n, dim)`` sine/cosine codes of positions ``0..n-1`` (Vaswani et al. 2017)."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(max_period) / dim))
    out = torch.zeros(n, dim)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return out


class NeighbourhoodAutoencoder(nn.Module):
    """Encoder of a neighbourhood (tokens → latents) and decoder of the centre latent."""

    def __init__(self, n_genes: int, n_tokens: int, cfg: LgdistConfig):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(n_genes, cfg.ae_width), nn.Tanh())
        self.register_buffer("position", sinusoidal(n_tokens, cfg.ae_width))
        layer = nn.TransformerEncoderLayer(cfg.ae_width, cfg.ae_heads, cfg.ae_feedforward, cfg.ae_dropout,
                                           batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, cfg.ae_layers, enable_nested_tensor=False)
        self.to_latent = nn.Sequential(nn.LayerNorm(cfg.ae_width), nn.Linear(cfg.ae_width, cfg.latent_dim), nn.Tanh())
        self.decoder = nn.Sequential(nn.Linear(cfg.latent_dim, cfg.ae_width), nn.Tanh(), nn.Dropout(cfg.ae_dropout),
                                     nn.Linear(cfg.ae_width, n_genes))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, tokens, genes)`` → ``(B, tokens, latent)``."""
        return self.to_latent(self.transformer(self.embed(x) + self.position[: x.shape[1]]))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``(..., latent)`` → ``(..., genes)``."""
        return self.decoder(z)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class DitBlock(nn.Module):
    """Self-attention and MLP among the tokens, each modulated per token by adaLN (Peebles & Xie 2023)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, w))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        s1, g1, gate1, s2, g2, gate2 = self.ada(c).chunk(6, dim=-1)
        x = x + gate1 * self.attention(_modulate(self.norm1(x), s1, g1))
        return x + gate2 * self.mlp(_modulate(self.norm2(x), s2, g2))


class LatentDit(nn.Module):
    """The denoiser: ``forward(x_t, t, cond)`` with ``(B, tokens, latent)`` inputs → predicted noise."""

    def __init__(self, latent_dim: int, cfg: LgdistConfig, frequencies: int = 256):
        super().__init__()
        w = cfg.dit_width
        self.frequencies = frequencies
        self.time = nn.Sequential(nn.Linear(frequencies, w), nn.SiLU(), nn.Linear(w, w))
        # width-3 convolutions along the neighbourhood's tokens, as the authors embed x and the condition
        self.embed_x = nn.Conv1d(latent_dim, w, kernel_size=3, padding=1)
        self.embed_cond = nn.Conv1d(latent_dim, w, kernel_size=3, padding=1)
        self.blocks = nn.ModuleList(DitBlock(w, cfg.dit_heads, cfg.mlp_ratio) for _ in range(cfg.dit_depth))
        self.final_norm = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(w, 2 * w))
        self.out = nn.Linear(w, latent_dim)
        self._init()

    def _init(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for lin in (self.time[0], self.time[2]):
            nn.init.normal_(lin.weight, std=0.02)
        for block in self.blocks:  # adaLN-zero: each block starts as the identity
            nn.init.zeros_(block.ada[-1].weight)
            nn.init.zeros_(block.ada[-1].bias)
        for lin in (self.final_ada[-1], self.out):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def time_code(self, t: torch.Tensor) -> torch.Tensor:
        half = self.frequencies // 2
        freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        angles = t.float()[:, None] * freq[None]
        return self.time(torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.embed_x(x.transpose(1, 2)).transpose(1, 2)
        c = self.embed_cond(cond.transpose(1, 2)).transpose(1, 2) + self.time_code(t)[:, None, :]
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.final_ada(c).chunk(2, dim=-1)
        return self.out(_modulate(self.final_norm(h), shift, scale))


# ---------------------------------------------------------------------------------------------
# Noise schedule
# ---------------------------------------------------------------------------------------------


def alphas_cumprod(steps: int, schedule: str = "cosine", max_beta: float = 0.999) -> torch.Tensor:
    """ᾱ_t of the DDPM chain: the cosine schedule of Nichol & Dhariwal (2021) or the linear one."""
    if schedule == "cosine":
        f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        betas = torch.tensor([min(1 - f((i + 1) / steps) / f(i / steps), max_beta) for i in range(steps)])
    else:
        betas = torch.linspace(1e-4, 0.02, steps, dtype=torch.float64)
    return torch.cumprod(1 - betas.double(), dim=0).float()


def sampling_timesteps(steps: int, sample_steps: int) -> list[int]:
    """Evenly spaced training timesteps, descending (all of them when ``sample_steps == steps``)."""
    return sorted({int(round(v)) for v in np.linspace(0, steps - 1, sample_steps)}, reverse=True)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def neighbour_index(adata: AnnData, cfg: LgdistConfig, hex_geometry: bool = True,
                    slide_key: str = "slide_id") -> np.ndarray:
    """``(n_spots, k)`` neighbours (``-1`` = absent): the ``k`` nearest spots, or the first grid ring."""
    if cfg.neighbourhood == "knn":
        return knn_index(adata, cfg.n_neighbours, slide_key)
    return graphs.neighbour_index(adata, n_hops=1, hex_geometry=hex_geometry, slide_key=slide_key)


def _context_of(adata: AnnData, context: np.ndarray | None, n_panel: int,
                cfg: LgdistConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """The context matrix (argument, else ``obsm["context_log1p"]``, else none) and its mask."""
    mask = None
    if context is None and CONTEXT_KEY in adata.obsm:
        context = adata.obsm[CONTEXT_KEY]
        mask = adata.obsm.get(CONTEXT_KEY + "_mask")
    if context is None:
        return np.zeros((adata.n_obs, 0), dtype=np.float32), None
    context = np.asarray(context, dtype=np.float32)
    if context.ndim != 2 or context.shape[0] != adata.n_obs:
        raise ValueError(f"the context matrix has shape {context.shape}; it needs one row per spot "
                         f"({adata.n_obs}) and one column per context gene")
    if not np.isfinite(context).all():
        raise ValueError("the context matrix holds NaN/inf values; pass the median-completed context genes")
    if cfg.total_genes is not None:
        keep = max(cfg.total_genes - n_panel, 0)
        context = context[:, :keep]
        mask = None if mask is None else np.asarray(mask)[:, :keep]
    return context, (None if mask is None else np.asarray(mask, dtype=bool))


@dataclass
class _Data:
    """The tensors one run reads (on the device)."""

    values: np.ndarray  #: (spots, panel) the layer being completed
    real: np.ndarray  #: (spots, panel) True = measured
    context: np.ndarray  #: (spots, n_context)
    context_real: np.ndarray | None
    index: torch.Tensor  #: (spots, k) neighbours
    mean: np.ndarray  #: (panel + context,) training means (Δ = value − mean)
    weights: torch.Tensor  #: (spots, panel + context) the autoencoder's loss weights
    device: torch.device

    @property
    def n_panel(self) -> int:
        return self.values.shape[1]

    def deltas(self, panel: np.ndarray, context: np.ndarray | None = None) -> torch.Tensor:
        full = np.concatenate([panel, self.context if context is None else context], axis=1)
        return torch.as_tensor(full - self.mean, dtype=torch.float32, device=self.device)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def _optimise(model: nn.Module, loss_fn, spots: np.ndarray, epochs: int, lr: float, weight_decay: float,
              cfg: LgdistConfig, seed: int, desc: str, step_epochs: int | None = None,
              evaluate=None, eval_every: int | None = None) -> dict[str, Any]:
    """AdamW with gradient clipping (and a step decay), ``epochs`` passes over ``spots`` in seeded batches.

    With ``evaluate`` the weights of the best evaluation are kept (evaluated every ``eval_every``
    epochs and at the end).
    """
    history: list[dict[str, float]] = []
    best = (float("inf"), -1, None)
    if epochs == 0:
        return {"history": history, "best_val": float("nan"), "best_epoch": 0}
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=step_epochs or epochs + 1, gamma=cfg.lr_gamma)
    sampler = CentreSampler(spots, cfg.batch_size, seed)
    gen = torch.Generator().manual_seed(seed + 7)
    bar = tqdm(range(1, epochs + 1), desc=desc, disable=not cfg.progress, leave=False)
    model.train()
    for epoch in bar:
        total, n = 0.0, 0
        for centres in sampler:
            loss = loss_fn(model, centres, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            total, n = total + float(loss.detach()), n + 1
        sched.step()
        row = {"epoch": epoch, "train_loss": total / max(n, 1)}
        if evaluate is not None and (epoch % eval_every == 0 or epoch == epochs):
            model.eval()
            row["val_mse"] = float(evaluate(model))
            model.train()
            if row["val_mse"] < best[0]:
                best = (row["val_mse"], epoch, {k: v.detach().clone() for k, v in model.state_dict().items()})
        history.append(row)
        bar.set_postfix(loss=f"{row['train_loss']:.4f}")
    if best[2] is not None:
        model.load_state_dict(best[2])
    model.eval()
    return {"history": history, "best_val": best[0] if evaluate else float("nan"),
            "best_epoch": best[1] if evaluate else epochs}


def _train_autoencoder(data: _Data, train_spots: np.ndarray, cfg: LgdistConfig) -> tuple[NeighbourhoodAutoencoder, dict]:
    training.seed_everything(cfg.seed)
    n_tokens = data.index.shape[1] + 1
    model = NeighbourhoodAutoencoder(data.n_panel + data.context.shape[1], n_tokens, cfg).to(data.device)
    x_all = data.deltas(data.values)

    def loss_fn(model, centres, gen):
        centres = centres.to(data.device)
        x, _, _ = gather(x_all, data.index, centres)
        z = model.encode(x)[:, 0]
        if torch.rand((), generator=gen) < cfg.ae_noise_prob:
            z = z + cfg.ae_latent_noise * torch.randn(z.shape, generator=gen).to(z.device)
        err = (model.decode(z) - x[:, 0]) ** 2
        w = data.weights[centres]
        main, rest = w > 0.5, w <= 0.5
        loss = cfg.ae_alpha * err[main].mean() if main.any() else err.sum() * 0
        return loss + ((1 - cfg.ae_alpha) * err[rest].mean() if rest.any() else 0)

    info = _optimise(model, loss_fn, train_spots, cfg.ae_epochs, cfg.ae_lr, cfg.ae_weight_decay, cfg, cfg.seed,
                     "LGDiST autoencoder")
    return model, info


@torch.no_grad()
def _encode(ae: NeighbourhoodAutoencoder, x_all: torch.Tensor, index: torch.Tensor, batch: int) -> torch.Tensor:
    """Latents of every spot's neighbourhood: ``(spots, tokens, latent)``."""
    ae.eval()
    out = []
    for start in range(0, x_all.shape[0], batch):
        centres = torch.arange(start, min(start + batch, x_all.shape[0]), device=x_all.device)
        out.append(ae.encode(gather(x_all, index, centres)[0]))
    return torch.cat(out)


@dataclass
class LgdistRound:
    """One round's diffusion model and the scale of its latents."""

    model: LatentDit
    low: float  #: latent minimum over the training neighbourhoods
    high: float  #: latent maximum
    best_val: float
    best_epoch: int
    history: list = field(default_factory=list)

    def scale(self, z: torch.Tensor) -> torch.Tensor:
        return 2 * (z - self.low) / max(self.high - self.low, 1e-8) - 1

    def unscale(self, z: torch.Tensor) -> torch.Tensor:
        return (z + 1) / 2 * (self.high - self.low) + self.low


@torch.no_grad()
def _sample(rnd: LgdistRound, z: torch.Tensor, cfg: LgdistConfig, seed: int) -> torch.Tensor:
    """Centre latents (unscaled) sampled from the neighbours' latents ``z`` ``(spots, tokens, latent)``."""
    model = rnd.model
    model.eval()
    abar = alphas_cumprod(cfg.diffusion_steps, cfg.schedule).to(z.device)
    steps = sampling_timesteps(cfg.diffusion_steps, cfg.sample_steps)
    gen = torch.Generator().manual_seed(seed)
    cond_all = rnd.scale(z)
    out = []
    for start in range(0, z.shape[0], cfg.predict_batch):
        cond = cond_all[start:start + cfg.predict_batch].clone()
        cond[:, 0] = 0
        x = cond.clone()
        x[:, 0] = torch.randn(x[:, 0].shape, generator=gen).to(z.device)
        for i, t in enumerate(steps):
            a_t = abar[t]
            a_prev = abar[steps[i + 1]] if i + 1 < len(steps) else torch.ones((), device=z.device)
            beta = 1 - a_t / a_prev
            eps = model(x, torch.full((len(x),), t, device=z.device), cond)[:, 0]
            x0 = ((x[:, 0] - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)
            mean = (beta * a_prev.sqrt() * x0 + (1 - a_prev) * (1 - beta).sqrt() * x[:, 0]) / (1 - a_t)
            if i + 1 < len(steps):
                var = beta * (1 - a_prev) / (1 - a_t)
                mean = mean + var.clamp_min(1e-20).sqrt() * torch.randn(mean.shape, generator=gen).to(z.device)
            x[:, 0] = mean  # the neighbours stay the clean condition
        out.append(x[:, 0])
    return rnd.unscale(torch.cat(out))


@torch.no_grad()
def _predict(ae: NeighbourhoodAutoencoder, rnd: LgdistRound, data: _Data, panel: np.ndarray,
             context: np.ndarray | None, spots: np.ndarray, cfg: LgdistConfig, seed: int) -> np.ndarray:
    """Decoded predictions (log1p scale, panel + context genes) for ``spots`` from the layer ``panel``."""
    ae.eval()
    x_all = data.deltas(panel, context)
    centres = torch.as_tensor(np.asarray(spots, dtype=np.int64), device=data.device)
    z = torch.cat([ae.encode(gather(x_all, data.index, centres[s:s + cfg.predict_batch])[0])
                   for s in range(0, len(centres), cfg.predict_batch)]) if len(centres) else \
        torch.zeros((0, data.index.shape[1] + 1, cfg.latent_dim), device=data.device)
    pred = ae.decode(_sample(rnd, z, cfg, seed)).cpu().numpy()
    return pred + data.mean


def _train_round(ae: NeighbourhoodAutoencoder, data: _Data, panel: np.ndarray, context: np.ndarray,
                 train_spots: np.ndarray, cfg: LgdistConfig, seed: int, evaluate) -> LgdistRound:
    """Train one diffusion model on the neighbourhood latents of the layer ``panel``."""
    z_all = _encode(ae, data.deltas(panel, context), data.index, cfg.predict_batch)
    z_train = z_all[torch.as_tensor(train_spots, device=data.device)]
    training.seed_everything(seed)
    model = LatentDit(cfg.latent_dim, cfg).to(data.device)
    rnd = LgdistRound(model, float(z_train.min()), float(z_train.max()), float("nan"), cfg.dit_epochs)
    z_scaled = rnd.scale(z_all)
    abar = alphas_cumprod(cfg.diffusion_steps, cfg.schedule).to(data.device)

    def loss_fn(model, centres, gen):
        x0 = z_scaled[centres.to(data.device)]
        noise = torch.randn(x0[:, 0].shape, generator=gen).to(data.device)
        t = torch.randint(1, cfg.diffusion_steps, (len(x0),), generator=gen).to(data.device)
        a = abar[t][:, None]
        x_t = x0.clone()
        x_t[:, 0] = a.sqrt() * x0[:, 0] + (1 - a).sqrt() * noise  # only the centre is noised
        cond = x0.clone()
        cond[:, 0] = 0
        return F.mse_loss(model(x_t, t, cond)[:, 0], noise)

    every = max(cfg.dit_epochs // max(cfg.n_evals, 1), 1)
    info = _optimise(model, loss_fn, train_spots, cfg.dit_epochs, cfg.dit_lr, 0.0, cfg, seed, "LGDiST diffusion",
                     cfg.lr_step_epochs, (lambda m: evaluate(rnd)) if evaluate else None, every)
    rnd.best_val, rnd.best_epoch, rnd.history = info["best_val"], info["best_epoch"], info["history"]
    return rnd


@dataclass
class LgdistResult:
    """A trained LGDiST: the autoencoder, one diffusion model per round, and what produced them."""

    autoencoder: NeighbourhoodAutoencoder
    rounds: list[LgdistRound]
    config: LgdistConfig
    genes: list[str]
    n_context: int
    #: the panel part of each round's training layer (log1p): the median-pre-completed layer,
    #: then each round's completion
    inputs: list[np.ndarray]
    device: str
    wall_time_s: float
    extra: dict = field(default_factory=dict)

    @property
    def best_val(self) -> float:
        return self.rounds[-1].best_val

    @property
    def n_params(self) -> int:
        return training.count_parameters(self.autoencoder) + sum(training.count_parameters(r.model) for r in self.rounds)

    def predict_hidden(self, adata: AnnData, hidden: np.ndarray, rows: np.ndarray, layer: str = "c_d_log1p",
                       hex_geometry: bool | None = None, slide_key: str = "slide_id",
                       context: np.ndarray | None = None) -> np.ndarray:
        """Predictions ``(len(rows), genes)`` when the real entries ``hidden`` are hidden.

        Hidden entries become missing and are refilled by the adaptive median of the visible
        values; then every round completes in turn, as :func:`complete_lgdist` does.
        """
        data = _prepare(adata, layer, self.config, context, hex_geometry, slide_key, self.device)
        _check_genes(self, adata, data)
        visible = data.real & ~np.asarray(hidden, dtype=bool)
        start = _median_refill(adata, data.values, visible, hex_geometry, slide_key)
        slides = graphs.slides_containing(adata, np.asarray(rows), slide_key)
        spots = np.sort(np.concatenate(list(slides.values())))
        out = _complete_rounds(self, data, start, visible, spots)
        return out[np.asarray(rows)]


def _median_refill(adata: AnnData, values: np.ndarray, visible: np.ndarray, hex_geometry: bool | None,
                   slide_key: str) -> np.ndarray:
    """``values`` with every non-visible entry refilled by the adaptive median of the visible ones."""
    sub = AnnData(obs=adata.obs[[c for c in (slide_key, "array_row", "array_col") if c in adata.obs]].copy(),
                  var=pd.DataFrame(index=[str(g) for g in adata.var_names]))
    sub.layers["visible"] = np.where(visible, values, 0).astype(np.float32)
    geo = hex_geometry_of(adata) if hex_geometry is None else bool(hex_geometry)
    median_complete(sub, "visible", "refilled", hex_geometry=geo, slide_key=slide_key, progress=False)
    return np.where(visible, values, sub.layers["refilled"]).astype(np.float32)


def _complete_rounds(result: LgdistResult, data: _Data, panel: np.ndarray, visible: np.ndarray,
                     spots: np.ndarray, upto: int | None = None) -> np.ndarray:
    """Run the rounds on ``spots``: each fills the non-visible panel entries from the previous layer."""
    cfg, n = result.config, data.n_panel
    context = data.context
    for r, rnd in enumerate(result.rounds[:upto]):
        pred = _predict(result.autoencoder, rnd, data, panel, context, spots, cfg, cfg.seed + 100 + r)
        panel = panel.copy()
        panel[spots] = np.where(visible[spots], panel[spots], pred[:, :n])
        if data.context_real is not None:
            context = context.copy()
            context[spots] = np.where(data.context_real[spots], context[spots], pred[:, n:])
    return panel


def _prepare(adata: AnnData, layer: str, cfg: LgdistConfig, context: np.ndarray | None,
             hex_geometry: bool | None, slide_key: str, device: str | torch.device,
             mask_layer: str = "mask") -> _Data:
    values, real = check_input(adata, layer, mask_layer=mask_layer, slide_key=slide_key)
    ctx, ctx_real = _context_of(adata, context, values.shape[1], cfg)
    geo = hex_geometry_of(adata) if hex_geometry is None else bool(hex_geometry)
    index = neighbour_index(adata, cfg, geo, slide_key)
    train = split_spots(adata).get("train", np.arange(adata.n_obs))
    full = np.concatenate([values, ctx], axis=1)
    weights = np.concatenate([real, np.zeros_like(ctx, dtype=bool)], axis=1)
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    return _Data(values=values, real=real, context=ctx, context_real=ctx_real,
                 index=torch.as_tensor(index, device=dev), mean=full[train].mean(axis=0).astype(np.float32),
                 weights=torch.as_tensor(weights, device=dev), device=dev)


def _check_genes(result: LgdistResult, adata: AnnData, data: _Data) -> None:
    genes = [str(g) for g in adata.var_names]
    if genes != result.genes or data.context.shape[1] != result.n_context:
        raise ValueError(f"the model was trained on {len(result.genes)} panel genes and {result.n_context} context "
                         f"genes; this dataset has {len(genes)} and {data.context.shape[1]} (or other genes): "
                         "complete the dataset it was trained on, or train again")


def train_lgdist(adata: AnnData, layer: str = "c_d_log1p", config: LgdistConfig | None = None,
                 context: np.ndarray | None = None, mask_layer: str = "mask", progress: bool = False,
                 hex_geometry: bool | None = None, slide_key: str = "slide_id") -> LgdistResult:
    """Train LGDiST (autoencoder, then one diffusion model per round) on the training slides.

    Parameters
    ----------
    adata
        Curated dataset: ``layers[layer]`` (median-pre-completed log1p), ``layers[mask_layer]``
        (True = real), ``obs["split"]``, ``obs["slide_id"]``, ``obsm["spatial"]`` (for
        ``neighbourhood="knn"``) or ``obs["array_row"/"array_col"]`` (``"hex"``).
    config
        :class:`LgdistConfig` (default: the CPU budget; ``LgdistConfig.paper()`` the authors').
    context
        ``(spots, n_context)`` median-completed expression of the context genes, on the panel's
        scale; default ``obsm["context_log1p"]`` when present (with ``obsm["context_log1p_mask"]``),
        else none (the autoencoder then reads the panel only).
    progress
        tqdm bars for each training stage (also ``config.progress``).

    Returns
    -------
    LgdistResult
        The models in eval mode; ``inputs`` holds each round's training layer, ``rounds[r]``
        each diffusion model's validation history. Round ``r + 1`` trains on round ``r``'s
        completion of the whole dataset (real values kept).
    """
    cfg = replace(config or LgdistConfig(), progress=bool(progress or (config.progress if config else False)))
    device = training.resolve_device(cfg.device)
    t0 = time.perf_counter()
    data = _prepare(adata, layer, cfg, context, hex_geometry, slide_key, device, mask_layer)
    spots = split_spots(adata)
    if "train" not in spots:
        raise ValueError("no spot has obs['split'] == 'train': LGDiST trains on the training slides")
    train_spots = spots["train"]
    ae, ae_info = _train_autoencoder(data, train_spots, cfg)

    # validation: a fixed share of the validation spots' real entries hidden, refilled by the median
    val_spots, val_name = validation_spots(adata)
    rng = np.random.default_rng(cfg.seed)
    if cfg.val_max_spots is not None and len(val_spots) > cfg.val_max_spots:
        val_spots = np.sort(rng.choice(val_spots, cfg.val_max_spots, replace=False))
    hidden = synthetic_hidden(data.real, cfg.val_fraction, cfg.seed + 1, "uniform", rows=val_spots)
    visible = data.real & ~hidden
    val_start = _median_refill(adata, data.values, visible, hex_geometry, slide_key)
    val_slides = np.sort(np.concatenate(list(graphs.slides_containing(adata, val_spots, slide_key).values())))

    result = LgdistResult(autoencoder=ae, rounds=[], config=cfg, genes=[str(g) for g in adata.var_names],
                          n_context=data.context.shape[1], inputs=[data.values.copy()], device=str(device),
                          wall_time_s=0.0, extra={"autoencoder_history": ae_info["history"],
                                                  "validation_split": val_name, "n_validation_spots": len(val_spots)})
    panel, context_now = data.values, data.context
    for r in range(cfg.rounds):
        def evaluate(rnd: LgdistRound, r=r) -> float:
            result.rounds.append(rnd)
            try:
                pred = _complete_rounds(result, data, val_start, visible, val_slides)
            finally:
                result.rounds.pop()
            return float(np.mean((pred[hidden] - data.values[hidden]) ** 2)) if hidden.any() else float("nan")

        rnd = _train_round(ae, data, panel, context_now, train_spots, cfg, cfg.seed + 1000 * (r + 1),
                           evaluate if hidden.any() else None)
        result.rounds.append(rnd)
        if r + 1 < cfg.rounds:
            # the next round trains on this round's completion of the real missing entries
            everyone = np.arange(adata.n_obs)
            pred = _predict(ae, rnd, data, panel, context_now, everyone, cfg, cfg.seed + 100 + r)
            panel = np.where(data.real, data.values, pred[:, :data.n_panel]).astype(np.float32)
            if data.context_real is not None:
                context_now = np.where(data.context_real, data.context, pred[:, data.n_panel:]).astype(np.float32)
            result.inputs.append(panel.copy())
    result.wall_time_s = time.perf_counter() - t0
    return result


def complete_lgdist(adata: AnnData, result: LgdistResult | None = None, layer: str = "c_d_log1p",
                    config: LgdistConfig | None = None, context: np.ndarray | None = None,
                    mask_layer: str = "mask", progress: bool = False, hex_geometry: bool | None = None,
                    slide_key: str = "slide_id") -> np.ndarray:
    """The completed ``layers[layer]``: real entries unchanged, missing ones filled by LGDiST.

    ``result=None`` trains first (:func:`train_lgdist` with ``config``). Every round completes
    in turn (round ``r + 1`` reads round ``r``'s completion), the last one's values are returned.
    """
    if result is None:
        result = train_lgdist(adata, layer, config, context, mask_layer, progress, hex_geometry, slide_key)
    data = _prepare(adata, layer, result.config, context, hex_geometry, slide_key, result.device, mask_layer)
    _check_genes(result, adata, data)
    out = _complete_rounds(result, data, data.values, data.real, np.arange(adata.n_obs))
    return np.where(data.real, data.values, out).astype(np.float32)


__all__ = ["LatentDit", "LgdistConfig", "LgdistResult", "LgdistRound", "NeighbourhoodAutoencoder", "alphas_cumprod",
           "complete_lgdist", "context_genes", "neighbour_index", "sampling_timesteps", "train_lgdist"]
