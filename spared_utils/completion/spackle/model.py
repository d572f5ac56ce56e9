"""SpaCKLE's model: the adapters and encoder (:class:`Spackle`), its output at centre spots, a trained result."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from ...training import count_parameters
from .blend import N_BINS
from .config import SpackleConfig

#: The neighbour-mean path's weights are ``softmax(SKIP_GAIN · logits)``: a few hundred Adam steps
#: at the transformer's learning rate then move a weight across its whole range, not a few hundredths.
SKIP_GAIN = 10.0


class Spackle(nn.Module):
    """Linear adapter → transformer encoder → linear adapter, over neighbourhood tokens.

    ``forward(x, padding)`` takes ``x`` of shape ``(batch, tokens, genes)`` (centre token first)
    and ``padding`` ``(batch, tokens)`` (True = absent neighbour) and returns ``(batch, tokens,
    genes)``.
    """

    def __init__(self, n_genes: int, n_tokens: int, config: SpackleConfig | None = None,
                 gene_scale: torch.Tensor | None = None, out_scale: torch.Tensor | None = None,
                 gene_centre: torch.Tensor | None = None):
        super().__init__()
        cfg = config or SpackleConfig()
        d = cfg.d_model or n_genes
        if d % cfg.n_heads:
            raise ValueError(f"model width {d} is not divisible by n_heads={cfg.n_heads}")
        self.n_genes, self.n_tokens, self.d_model = n_genes, n_tokens, d
        self.within_neighbourhood = cfg.attention == "neighbourhood"
        self.indicator = bool(cfg.mask_indicator)
        self.adapter_in = nn.Linear(n_genes * (2 if self.indicator else 1), d)
        layer = nn.TransformerEncoderLayer(d, cfg.n_heads, cfg.dim_feedforward, cfg.dropout,
                                           batch_first=self.within_neighbourhood)
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.adapter_out = nn.Linear(d, n_genes)
        self.position = nn.Parameter(torch.zeros(n_tokens, d)) if cfg.positional_encoding else None
        # Per-gene scales: the input adapter reads x / gene_scale (the gene's mean, so values are
        # near 1 instead of log2(TPM + 1) ≈ 10–20 and masked entries stay exactly 0) and the output
        # adapter writes out_scale · y (the gene's standard deviation). Composed with the linear
        # adapters these are again linear maps g → d → g: the model is the paper's, the scales only
        # precondition training.
        ones = torch.ones(n_genes)
        self.register_buffer("gene_scale", ones.clone() if gene_scale is None else torch.as_tensor(gene_scale).float().clone())
        self.register_buffer("out_scale", ones.clone() if out_scale is None else torch.as_tensor(out_scale).float().clone())
        # The neighbour-mean path (``config.neighbour_skip``): one weight per availability bin.
        self.ring1 = ring1_size(n_tokens, cfg)
        self.skip_logit = nn.Parameter(torch.zeros(self.ring1 + 1, 3)) if cfg.neighbour_skip else None
        if cfg.neighbour_blend:  # fitted after training (train_spackle), saved with the weights
            self.register_buffer("blend_weight", torch.ones(N_BINS))
        else:
            self.blend_weight = None
        if cfg.zero_posterior:  # the gamma shape of zeros.py, fitted after training (NaN: not fitted)
            self.register_buffer("zero_shape", torch.tensor(float("nan")))
        else:
            self.zero_shape = None
        if cfg.centre_input:  # only then, so that checkpoints without it still load
            centre = torch.zeros(n_genes) if gene_centre is None else torch.as_tensor(gene_centre).float().clone()
            self.register_buffer("gene_centre", centre)
        else:
            self.gene_centre = None

    def forward(self, x: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        given = x != 0
        xin = x if self.gene_centre is None else (x - self.gene_centre) * given
        xin = xin / self.gene_scale
        if self.indicator:
            xin = torch.cat([xin, given.to(xin.dtype)], dim=-1)
        h = self.adapter_in(xin)
        if self.position is not None:
            h = h + self.position[: h.shape[1]]
        if self.within_neighbourhood:
            h = self.encoder(h, src_key_padding_mask=padding)
        else:
            # The authors' layout: a (batch, tokens, d) tensor read as (sequence, batch, d).
            h = self.encoder(h)
        out = self.adapter_out(h) * self.out_scale
        if self.skip_logit is not None:
            out = self._neighbour_skip(x, given, out)
        return out

    def _neighbour_skip(self, x: torch.Tensor, given: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The centre token's output mixed with the neighbour means of each gene's given values.

        Three candidates per gene: the transformer's output, the mean of the gene's given values
        in ring 1 (tokens ``1..ring1``) and the mean in the rest of the neighbourhood (ring 2).
        Their weights are a softmax of learned logits, one set per availability bin (how many
        ring-1 spots hold the gene, ``0..ring1``); a mean with no value behind it gets no weight.
        """
        g = given.to(out.dtype)
        near, far = slice(1, 1 + self.ring1), slice(1 + self.ring1, None)
        c1, c2 = g[:, near].sum(1), g[:, far].sum(1)
        m1 = (x[:, near] * g[:, near]).sum(1) / c1.clamp_min(1)
        m2 = (x[:, far] * g[:, far]).sum(1) / c2.clamp_min(1)
        logits = SKIP_GAIN * self.skip_logit[c1.long()]  # (B, genes, 3)
        absent = torch.stack([torch.zeros_like(c1, dtype=torch.bool), c1 == 0, c2 == 0], dim=-1)
        weight = torch.softmax(logits.masked_fill(absent, float("-inf")), dim=-1)
        candidates = torch.stack([out[:, 0], m1.to(out.dtype), m2.to(out.dtype)], dim=-1)
        centre = (weight * candidates).sum(-1)
        return torch.cat([centre[:, None], out[:, 1:]], dim=1)


def ring1_size(n_tokens: int, config: SpackleConfig) -> int:
    """How many tokens after the centre form ring 1: 6 on the hexagonal grid, 4 on the square one
    (told apart by the token count of ``config.n_hops`` rings), 6 for ``neighbourhood="knn"``."""
    k = n_tokens - 1
    if config.neighbourhood == "hex":
        h = config.n_hops
        if k == 2 * h * (h + 1):  # square grid: 4 h (h + 1) / 2 positions
            return min(4, k)
    return max(1, min(6, k))


@dataclass
class SpackleResult:
    """A trained SpaCKLE model with what produced it."""

    model: Spackle
    config: SpackleConfig
    genes: list[str]
    learning_rate: float
    best_val: float
    best_iteration: int
    history: pd.DataFrame
    wall_time_s: float
    device: str
    lr_table: pd.DataFrame | None = None
    checkpoint: Path | None = None
    extra: dict = field(default_factory=dict)

    @property
    def n_params(self) -> int:
        return count_parameters(self.model)


def gene_scales(values: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-gene input and output scales: mean absolute value and standard deviation (1 if ~0)."""
    v = np.asarray(values, dtype=np.float64)
    m, sd = np.abs(v).mean(axis=0), v.std(axis=0)
    return (torch.as_tensor(np.where(m > 1e-6, m, 1.0), dtype=torch.float32),
            torch.as_tensor(np.where(sd > 1e-6, sd, 1.0), dtype=torch.float32))


__all__ = ["Spackle", "SpackleResult", "gene_scales", "ring1_size"]
