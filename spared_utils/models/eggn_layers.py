"""EGGN's graph layers (:class:`~spared_utils.models.exemplar.EGGN`), on torch_geometric.

They subclass PyG's ``MessagePassing``, so this module imports torch_geometric (slow to import);
:mod:`~spared_utils.models.exemplar` loads it when an EGGN is built.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .pyg import torch_geometric

_pyg = torch_geometric()
MessagePassing, SAGEConv = _pyg.nn.MessagePassing, _pyg.nn.SAGEConv
segment_softmax = _pyg.utils.softmax


def _trunc_normal_(weight: Tensor) -> None:
    nn.init.trunc_normal_(weight, std=0.02, a=-2.0, b=2.0)


class ExemplarBridgeConv(MessagePassing):
    """EGGN's exemplar-bridging step on exemplar → spot edges; updates both node types.

    Each edge (exemplar j → spot i) gets two sigmoid gate vectors from the difference of the
    (shared) attention projections of j and i. The spot receives the mean over its exemplars of the
    gated [exemplar feature, exemplar expression, spot feature] (averaged over the three parts); the
    exemplar receives the same with the other gate, over the spots that retrieved it.
    """

    def __init__(self, channels: int, score_dim: int = 128):
        super().__init__(aggr="mean", node_dim=0)
        if (3 * channels) % score_dim:
            raise ValueError(f"3 × channels ({3 * channels}) must be a multiple of score_dim ({score_dim})")
        self.channels, self.score_dim = channels, score_dim
        self.repeat = 3 * channels // score_dim
        self.lin_exemplar = nn.Linear(channels, channels, bias=False)
        self.lin_spot = nn.Linear(channels, channels, bias=False)
        self.lin_expression = nn.Linear(channels, channels, bias=False)
        self.att = nn.Linear(channels, score_dim, bias=False)
        self.score = nn.Linear(score_dim, 2 * score_dim)
        self.bias_exemplar = nn.Parameter(torch.zeros(channels))
        self.bias_spot = nn.Parameter(torch.zeros(channels))
        self.out_exemplar = nn.Linear(channels, channels)
        self.out_spot = nn.Linear(channels, channels)
        for lin in (self.lin_exemplar, self.lin_spot, self.lin_expression, self.att, self.score,
                    self.out_exemplar, self.out_spot):
            _trunc_normal_(lin.weight)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)

    def forward(self, h_exemplar: Tensor, h_spot: Tensor, h_expression: Tensor,
                edge_index: Tensor) -> tuple[Tensor, Tensor]:
        ex = F.leaky_relu(self.lin_exemplar(h_exemplar), 0.2)
        sp = F.leaky_relu(self.lin_spot(h_spot), 0.2)
        ex_full = torch.cat((ex, self.lin_expression(h_expression)), -1)
        a_ex, a_sp = self.att(ex), self.att(sp)  # the official in-place LeakyReLU already applied
        src, dst = edge_index
        gates = torch.sigmoid(self.score(F.leaky_relu(a_ex[src] - a_sp[dst], 0.2)))
        g_spot, g_exemplar = gates.split(self.score_dim, -1)
        sizes = (len(ex), len(sp))
        to_spot = self.propagate(edge_index, x=(ex_full, sp), gate=g_spot, size=sizes)
        to_exemplar = self.propagate(edge_index.flip(0), x=(sp, ex_full), gate=g_exemplar, size=sizes[::-1])
        return (self.out_exemplar(to_exemplar + self.bias_exemplar),
                self.out_spot(to_spot + self.bias_spot))

    def message(self, x_j: Tensor, x_i: Tensor, gate: Tensor) -> Tensor:
        joined = torch.cat((x_j, x_i), -1) * gate.repeat_interleave(self.repeat, -1)
        return joined.view(-1, 3, self.channels).mean(1)


class EGGNLayer(nn.Module):
    """One EGGN layer: SAGEConv (spot–spot), SAGEConv (exemplar–exemplar), exemplar bridging
    (exemplar → spot, both ways); a node type's outputs averaged, then LeakyReLU(0.2)."""

    def __init__(self, channels: int, score_dim: int = 128):
        super().__init__()
        self.spot_conv = SAGEConv(channels, channels)
        self.exemplar_conv = SAGEConv(channels, channels)
        self.bridge = ExemplarBridgeConv(channels, score_dim)

    def forward(self, h_spot, h_exemplar, h_expression, graph):
        ex_b, sp_b = self.bridge(h_exemplar, h_spot, h_expression, graph.exemplar_spot)
        sp = (self.spot_conv(h_spot, graph.spot_spot) + sp_b) / 2
        ex = (self.exemplar_conv(h_exemplar, graph.exemplar_exemplar) + ex_b) / 2
        return F.leaky_relu(sp, 0.2), F.leaky_relu(ex, 0.2), F.leaky_relu(h_expression, 0.2)


class _GraphCSRAPool(MessagePassing):
    """EGGN's read-out: each spot adds λ × a per-channel softmax-weighted sum of its exemplars."""

    def __init__(self, channels: int, temperature: float = 0.1):
        super().__init__(aggr="sum", node_dim=0)
        self.temperature = temperature
        self.lam = nn.Parameter(torch.full((1,), 0.1))
        self.head = nn.Linear(channels, channels)

    def forward(self, h_spot: Tensor, h_exemplar: Tensor, edge_index: Tensor) -> Tensor:
        query = self.head(h_spot)
        out = self.propagate(edge_index, x=(h_exemplar, query), size=(len(h_exemplar), len(query)))
        return query + self.lam * out

    def message(self, x_j: Tensor, x_i: Tensor, index: Tensor, ptr, size_i) -> Tensor:
        alpha = segment_softmax((x_j - x_i) * self.temperature, index, ptr, size_i)
        return x_j * alpha


__all__ = ["EGGNLayer", "ExemplarBridgeConv"]
