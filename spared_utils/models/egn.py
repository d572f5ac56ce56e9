"""EGN (Yang et al., WACV 2023): a ViT whose patch tokens are revised by exemplar-bridging blocks.

The exemplar bank it retrieves from, its loss and what the implementation changes from the
official code (https://github.com/Yan98/EGN, ``v1/``) are described in
:mod:`spared_utils.models.exemplar`; :class:`ExemplarTask` is how a run trains and predicts it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .encoders import ImageNormalize
from .exemplar import (EGN_PATCH_MEAN, EGN_PATCH_STD, ExpressionRange, egn_loss, frozen_features,
                       query_exemplars, training_bank)
from .task import Task, load_patches

__all__ = ["EGN", "ExemplarBridge", "ExemplarTask", "egn"]

# ---------------------------------------------------------------------------------------------
# EGN
# ---------------------------------------------------------------------------------------------


class _FeedForward(nn.Module):
    """Pre-norm MLP ``Linear → GELU → Linear`` (residual added by the caller)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.norm(x))


class _SelfAttention(nn.Module):
    """Pre-norm multi-head self-attention (no bias on q, k, v; residual added by the caller)."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim) if not (heads == 1 and dim_head == dim) else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        q, k, v = self.to_qkv(self.norm(x)).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(dim_head)) v
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class _ExemplarProjector(nn.Module):
    """Spot feature and exemplar [feature, expression] → ``dim`` tokens, mixed by residual MLPs."""

    def __init__(self, feature_dim: int, n_genes: int, dim: int, n_layers: int, linear_projection: bool):
        super().__init__()
        self.spot = nn.Linear(feature_dim, dim)
        self.exemplar = nn.Linear(feature_dim + n_genes, dim)
        self.layers = nn.ModuleList([_FeedForward(dim, dim) for _ in range(n_layers)])
        self.expression = (nn.Linear(n_genes, dim) if linear_projection
                           else nn.Sequential(nn.Linear(n_genes, dim), nn.GELU(), nn.Linear(dim, dim)))

    def forward(self, spot: Tensor, ex_feat: Tensor, ex_expr: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        tokens = torch.cat((self.spot(spot), self.exemplar(torch.cat((ex_feat, ex_expr), -1))), 1)
        for ff in self.layers:
            tokens = ff(tokens) + tokens
        spot_tok, ex_tok = tokens.split([spot.shape[1], ex_feat.shape[1]], 1)
        return spot_tok, ex_tok, self.expression(ex_expr)


class _ExemplarUpdate(nn.Module):
    """Gate the exemplars' expression tokens by (spot − exemplar, exemplar); update both tokens."""

    def __init__(self, dim: int, hidden: int, update_exemplars: bool = True):
        super().__init__()
        self.update_exemplars = update_exemplars
        self.gates = nn.Sequential(nn.Linear(2 * dim, hidden), nn.SiLU(),
                                   nn.Linear(hidden, 2 * dim if update_exemplars else dim))
        self.value = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim) if update_exemplars else None

    def forward(self, spot: Tensor, ex: Tensor, ex_expr: Tensor) -> tuple[Tensor, Tensor | None]:
        value = self.value(ex_expr)                                        # (B, k, dim)
        gates = self.gates(torch.cat((spot - ex, ex), -1))                 # spot broadcasts over k
        if self.update_exemplars:
            g_spot, g_ex = gates.chunk(2, -1)
            new_ex = self.norm(g_ex.sigmoid() * value + ex)
        else:
            g_spot, new_ex = gates, None
        new_spot = (g_spot.sigmoid() * value).mean(1, keepdim=True) + spot  # (B, 1, dim)
        return new_spot, new_ex


class ExemplarBridge(nn.Module):
    """EGN's Exemplar-Bridging block: the exemplar-updated spot token gates the patch tokens.

    The updated spot token gives one sigmoid gate per (head, patch position); the gated head
    features revise the patch tokens (residual) and, averaged over positions, the spot token.
    """

    def __init__(self, dim: int, n_patches: int, heads: int, dim_head: int, update_hidden: int,
                 update_exemplars: bool = True):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.n_patches = heads, n_patches
        self.update = _ExemplarUpdate(dim, update_hidden, update_exemplars)
        self.to_x = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, inner))
        self.to_gate = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, n_patches * heads))
        self.to_tokens = nn.Linear(inner, dim, bias=False)
        self.to_spot = nn.Linear(inner, dim, bias=False)

    def forward(self, x: Tensor, spot: Tensor, ex: Tensor, ex_expr: Tensor):
        b, p, _ = x.shape
        new_spot, new_ex = self.update(spot, ex, ex_expr)
        gate = self.to_gate(new_spot).view(b, self.heads, p).transpose(1, 2).unsqueeze(-1)  # (B, P, h, 1)
        value = self.to_x(x).view(b, p, self.heads, -1) * gate.sigmoid()                   # (B, P, h, c)
        value = value.reshape(b, p, -1)
        x = self.to_tokens(value) + x
        spot = self.to_spot(value.mean(1, keepdim=True)) + spot  # the block's input spot token
        return x, spot, new_ex


class _CSRAPool(nn.Module):
    """Class-specific residual attention pooling over tokens: mean + λ·softmax(T·s)-weighted sum."""

    def __init__(self, dim: int, temperature: float = 0.1, lam: float = 0.5):
        super().__init__()
        self.temperature, self.lam = temperature, lam
        self.head = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        score = self.head(x)
        attention = torch.softmax(score * self.temperature, dim=1)
        return score.mean(1) + self.lam * (score * attention).sum(1)


class EGN(nn.Module):
    """Exemplar Guided Network (see the module docstring; build it with :func:`egn`).

    ``forward(patches, exemplar_features, exemplar_expression, query_features)`` → (B, n_genes):

    * ``patches``: (B, 3, H, W) ``uint8`` 0–255 or float 0–1 (resized to ``image_size`` if needed);
    * ``exemplar_features``: (B, k, feature_dim) frozen features of the spot's k exemplars
      (``ExemplarBank.query(...).features``);
    * ``exemplar_expression``: (B, k, n_genes) their expression (``.expression``);
    * ``query_features``: (B, feature_dim) the spot's own frozen feature (``ExemplarBank.encode``).
    """

    exemplar_backbone = "resnet50"
    exemplar_metric = "l2"

    def __init__(self, n_genes: int, image_size: int = 256, patch_size: int = 32, dim: int = 1024,
                 depth: int = 8, heads: int = 16, dim_head: int = 64, mlp_dim: int = 4096,
                 bridge_every: int = 2, bridge_heads: int = 8, bridge_dim_head: int = 64,
                 projector_layers: int = 2, linear_projection: bool = True, feature_dim: int = 2048,
                 k: int = 6, exemplar_pretrained: bool = False):
        super().__init__()
        if n_genes < 1:
            raise ValueError(f"n_genes must be at least 1, got {n_genes}")
        if image_size % patch_size:
            raise ValueError(f"image_size ({image_size}) must be a multiple of patch_size ({patch_size})")
        if bridge_every < 1 or depth < 1:
            raise ValueError("depth and bridge_every must be at least 1")
        self.name = "egn"
        self.n_genes, self.image_size, self.patch_size = n_genes, image_size, patch_size
        self.feature_dim, self.k = feature_dim, k
        self.exemplar_pretrained = exemplar_pretrained
        self.input_stats = "training"
        n_patches = (image_size // patch_size) ** 2
        self.normalize = ImageNormalize(EGN_PATCH_MEAN, EGN_PATCH_STD)
        self.expression_range = ExpressionRange(n_genes)
        self.patch_embedding = nn.Linear(3 * patch_size * patch_size, dim)
        self.pos_embedding = nn.Parameter(torch.randn(1, n_patches, dim))
        self.projector = _ExemplarProjector(feature_dim, n_genes, dim, projector_layers, linear_projection)
        bridged = [(layer + 1) % bridge_every == 0 for layer in range(depth)]
        last_bridge = max((i for i, b in enumerate(bridged) if b), default=-1)
        self.attention = nn.ModuleList([_SelfAttention(dim, heads, dim_head) for _ in range(depth)])
        self.bridges = nn.ModuleDict({
            str(i): ExemplarBridge(dim, n_patches, bridge_heads, bridge_dim_head, 4 * bridge_dim_head,
                                   update_exemplars=i != last_bridge)
            for i in range(depth) if bridged[i]
        })
        self.feed_forward = nn.ModuleList([_FeedForward(dim, mlp_dim) for _ in range(depth)])
        self.pool = _CSRAPool(dim)
        self.head = nn.Sequential(nn.LayerNorm(2 * dim), nn.Linear(2 * dim, n_genes))

    def set_input_stats(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Normalise patches with this channel mean/std (0–1 scale), e.g. of the training patches."""
        self.normalize.set_stats(mean, std)

    def set_expression_range(self, minimum, maximum) -> None:
        """Per-gene training min/max: exemplar expression is min–max normalised, the output mapped back."""
        self.expression_range.set(minimum, maximum)

    def set_target_mean(self, mean) -> None:
        """Start the head's bias at the (normalised) training mean; call after :meth:`set_expression_range`."""
        self.expression_range.start_at(self.head[-1], mean)

    def _patch_tokens(self, patches: Tensor) -> Tensor:
        x = self.normalize(patches)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        b, c, h, w = x.shape
        p = self.patch_size
        x = x.view(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)
        return self.patch_embedding(x)

    def forward(self, patches: Tensor, exemplar_features: Tensor, exemplar_expression: Tensor,
                query_features: Tensor) -> Tensor:
        b = patches.shape[0]
        if exemplar_features.ndim != 3 or exemplar_features.shape[0] != b or exemplar_features.shape[2] != self.feature_dim:
            raise ValueError(f"exemplar_features must be (B={b}, k, {self.feature_dim}), got {tuple(exemplar_features.shape)}")
        if exemplar_expression.shape != (*exemplar_features.shape[:2], self.n_genes):
            raise ValueError(f"exemplar_expression must be {(*exemplar_features.shape[:2], self.n_genes)}, "
                             f"got {tuple(exemplar_expression.shape)}")
        if query_features.shape != (b, self.feature_dim):
            raise ValueError(f"query_features must be (B={b}, {self.feature_dim}), got {tuple(query_features.shape)}")
        x = self._patch_tokens(patches)
        pos = self.pos_embedding
        x = x + pos
        ex_expr = self.expression_range.normalize(exemplar_expression.float())
        spot, ex, ex_value = self.projector(query_features.float().unsqueeze(1), exemplar_features.float(), ex_expr)
        for i, (attn, ff) in enumerate(zip(self.attention, self.feed_forward)):
            x = attn(x + pos) + x
            if str(i) in self.bridges:
                x, spot, ex = self.bridges[str(i)](x, spot, ex, ex_value)
            x = ff(x) + x
        out = self.head(torch.cat((self.pool(x), spot.squeeze(1)), 1))
        return self.expression_range.denormalize(out)


def egn(n_genes: int, pretrained: bool = False, image_size: int = 256, dim: int = 1024, depth: int = 8,
        mlp_dim: int = 4096, k: int = 6, heads: int = 16, dim_head: int = 64, patch_size: int = 32,
        bridge_every: int = 2, bridge_heads: int = 8, bridge_dim_head: int = 64, projector_layers: int = 2,
        linear_projection: bool = True, feature_dim: int = 2048) -> EGN:
    """EGN with the official run's sizes (``v1/README``: 256 px, dim 1024, depth 8, 16 heads × 64,
    MLP 4096, EB every 2nd layer with 8 heads × 64, 2 projector layers, linear projection, 2,048-d
    ResNet-50 features, k = 6); ``n_genes`` outputs (the official code fixes 250).

    ``pretrained`` does not touch the model (its ViT is trained from scratch, as in the paper): it
    is recorded as ``exemplar_pretrained``, the flag :func:`bank_for` builds the frozen ResNet-50
    of the exemplar bank with. ``k`` is the number of exemplars to retrieve (the architecture
    accepts any k).
    """
    return EGN(n_genes, image_size=image_size, patch_size=patch_size, dim=dim, depth=depth, heads=heads,
               dim_head=dim_head, mlp_dim=mlp_dim, bridge_every=bridge_every, bridge_heads=bridge_heads,
               bridge_dim_head=bridge_dim_head, projector_layers=projector_layers,
               linear_projection=linear_projection, feature_dim=feature_dim, k=k, exemplar_pretrained=pretrained)


class ExemplarTask(Task):
    """EGN: each patch with its own frozen ResNet-50 feature and its k exemplars from the training bank."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.features = frozen_features(self)
        self.bank = training_bank(self, self.features, self.model.exemplar_metric)
        (train_feats,) = self.features.get(self.train_rows)
        found = query_exemplars(self, self.bank, train_feats, self.train_rows, self.model.k)
        self.train_features, self.train_exemplars = train_feats.to(self.device), found.indices

    def batches(self):
        return self._patch_loader(self.train_rows, True, True, indexed=True)

    def loss(self, net, batch):
        images, target, mask, pos = batch
        ex = self.train_exemplars[pos]
        pred = net(images, self.bank.features[ex], self.bank.expression[ex], self.train_features[pos])
        return egn_loss(pred.float(), target.float(), mask)

    def _predict(self, net, rows, progress):
        (feats,) = self.features.get(rows)
        found = query_exemplars(self, self.bank, feats, rows, self.model.k)
        feats = feats.to(self.device)
        return self._in_batches(rows, lambda sl: net(load_patches(self.data, rows[sl]).to(self.device),
                                                     found.features[sl], found.expression[sl], feats[sl]), progress)
