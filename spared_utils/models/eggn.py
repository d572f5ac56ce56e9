"""EGGN (Yang et al., Pattern Recognition 2024): a graph of one slide's spots and their exemplars.

The exemplar bank it retrieves from, its loss and what the implementation changes from the
official code (https://github.com/Yan98/EGN, ``v2/``) are described in
:mod:`spared_utils.models.exemplar`; :class:`ExemplarGraphTask` is how a run trains and predicts it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..graphs import grid_positions, knn_edges, radius_edges
from ..training import autocast
from .exemplar import ExpressionRange, egn_loss, frozen_features, query_exemplars, training_bank
from .pyg import torch_geometric
from .task import SlideContext

__all__ = ["EGGN", "EGGNGraph", "EGGNLayer", "ExemplarBridgeConv", "ExemplarGraphTask", "eggn"]


class EGGNGraph(NamedTuple):
    """One (or several disjoint) slide graphs of EGGN.

    Node types: spots (N) and exemplars (E, the unique exemplars retrieved by a slide's spots).
    Edges are (2, ·) ``source → target`` index tensors.
    """

    #: (E, feature_dim + n_genes) exemplar nodes: [frozen feature, normalised expression]
    exemplar_x: Tensor
    #: (E, n_genes) their normalised expression
    exemplar_expression: Tensor
    #: spot → spot, within the radius on the array grid
    spot_spot: Tensor
    #: exemplar → spot, each spot from the exemplars it retrieved
    exemplar_spot: Tensor
    #: exemplar → exemplar, kNN over ``exemplar_x``
    exemplar_exemplar: Tensor
    #: (N,) slide index of each spot and (E,) of each exemplar node
    spot_batch: Tensor
    exemplar_batch: Tensor


# ---------------------------------------------------------------------------------------------
# EGGN: layers
# ---------------------------------------------------------------------------------------------

_pyg = torch_geometric()  # EGGN's layers subclass PyG's MessagePassing, so PyG is needed at import
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

    def forward(self, h_spot, h_exemplar, h_expression, graph: EGGNGraph):
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


class EGGN(nn.Module):
    """Exemplar Guided Graph Neural Network (see the module docstring; build it with :func:`eggn`).

    ``forward(spot_features, rows, cols, exemplar_features, exemplar_expression,
    exemplar_indices=None, batch=None)`` → (N, n_genes) for the N spots of one slide:

    * ``spot_features``: (N, feature_dim) frozen ResNet-18 features of the spots
      (``ExemplarBank.encode``);
    * ``rows``, ``cols``: (N,) array coordinates (``obs["array_row"]``, ``obs["array_col"]``);
    * ``exemplar_features``: (N, k, feature_dim) and ``exemplar_expression``: (N, k, n_genes): each
      spot's k exemplars (``ExemplarBank.query``);
    * ``exemplar_indices``: optional (N, k) bank positions (``.indices``): exemplars shared by
      several spots become one node; without them, nodes with identical values are merged;
    * ``batch``: optional (N,) slide index, to run several slides at once as *disjoint* graphs
      (no spot–spot, exemplar–spot or exemplar–exemplar edge, nor shared exemplar node, ever joins
      two slides); ``None``: all N spots are one slide.
    """

    exemplar_backbone = "resnet18"
    exemplar_metric = "l1"

    def __init__(self, n_genes: int, hidden: int = 512, n_layers: int = 4, k: int = 6,
                 radius: float = math.sqrt(2.0), feature_dim: int = 512, exemplar_neighbours: int = 3,
                 score_dim: int = 128, hex_geometry: bool = True, exemplar_pretrained: bool = False):
        super().__init__()
        if n_genes < 1:
            raise ValueError(f"n_genes must be at least 1, got {n_genes}")
        self.name = "eggn"
        self.n_genes, self.feature_dim, self.k = n_genes, feature_dim, k
        self.radius, self.exemplar_neighbours, self.hex_geometry = radius, exemplar_neighbours, hex_geometry
        self.exemplar_pretrained = exemplar_pretrained
        self.expression_range = ExpressionRange(n_genes)
        self.spot_in = nn.Linear(feature_dim, hidden, bias=False)
        self.exemplar_in = nn.Linear(feature_dim + n_genes, hidden, bias=False)
        self.post_in = nn.Sequential(nn.LeakyReLU(0.2), nn.Linear(hidden, hidden, bias=False), nn.LeakyReLU(0.2))
        self.expression_in = nn.Linear(n_genes, hidden, bias=False)
        self.layers = nn.ModuleList([EGGNLayer(hidden, score_dim) for _ in range(n_layers)])
        self.pool = _GraphCSRAPool(hidden)
        self.head = nn.Linear(hidden, n_genes)

    def set_expression_range(self, minimum, maximum) -> None:
        """Per-gene training min/max: exemplar expression is min–max normalised, the output mapped back."""
        self.expression_range.set(minimum, maximum)

    def set_target_mean(self, mean) -> None:
        """Start the head's bias at the (normalised) training mean; call after :meth:`set_expression_range`."""
        self.expression_range.start_at(self.head, mean)

    def build_graph(self, rows, cols, exemplar_features: Tensor, exemplar_expression: Tensor,
                    exemplar_indices: Tensor | None = None, batch: Tensor | None = None) -> EGGNGraph:
        """The heterogeneous graph of the official ``generate_graph.py`` (see the module docstring)."""
        n, k = exemplar_features.shape[:2]
        if exemplar_features.shape != (n, k, self.feature_dim):
            raise ValueError(f"exemplar_features must be (N, k, {self.feature_dim}), got {tuple(exemplar_features.shape)}")
        if exemplar_expression.shape != (n, k, self.n_genes):
            raise ValueError(f"exemplar_expression must be (N={n}, k={k}, {self.n_genes}), got {tuple(exemplar_expression.shape)}")
        device = exemplar_features.device
        rows, cols = torch.as_tensor(rows, device=device), torch.as_tensor(cols, device=device)
        if rows.shape != (n,) or cols.shape != (n,):
            raise ValueError(f"rows and cols must be ({n},), got {tuple(rows.shape)} and {tuple(cols.shape)}")
        spot_batch = (torch.zeros(n, dtype=torch.long, device=device) if batch is None
                      else torch.as_tensor(batch, device=device).long())
        pos = grid_positions(rows, cols, self.hex_geometry).to(device)
        spot_spot = radius_edges(pos, self.radius, spot_batch)

        ex_expr = self.expression_range.normalize(exemplar_expression.float())
        ex_x = torch.cat((exemplar_features.float(), ex_expr), -1).reshape(n * k, -1)
        owner_batch = spot_batch.repeat_interleave(k)
        if exemplar_indices is not None:
            idx = torch.as_tensor(exemplar_indices, device=device).long()
            if idx.shape != (n, k):
                raise ValueError(f"exemplar_indices must be (N={n}, k={k}), got {tuple(idx.shape)}")
            keys = torch.stack((owner_batch, idx.reshape(-1)), 1)
        else:
            keys = torch.cat((owner_batch[:, None].to(ex_x.dtype), ex_x.detach()), 1)
        _, inverse = torch.unique(keys, dim=0, return_inverse=True)
        n_nodes = int(inverse.max()) + 1 if len(inverse) else 0
        first = torch.full((n_nodes,), n * k, dtype=torch.long, device=device)
        first = first.scatter_reduce(0, inverse, torch.arange(n * k, device=device), reduce="amin")
        exemplar_x, exemplar_batch = ex_x[first], owner_batch[first]
        owner = torch.arange(n, device=device).repeat_interleave(k)
        exemplar_spot = torch.unique(torch.stack((inverse, owner)), dim=1)
        exemplar_exemplar = knn_edges(exemplar_x.detach(), self.exemplar_neighbours, exemplar_batch)
        return EGGNGraph(exemplar_x, exemplar_x[:, self.feature_dim:], spot_spot, exemplar_spot,
                         exemplar_exemplar, spot_batch, exemplar_batch)

    def forward_graph(self, spot_features: Tensor, graph: EGGNGraph) -> Tensor:
        """Prediction from spot features and a graph from :meth:`build_graph`."""
        if spot_features.ndim != 2 or spot_features.shape[1] != self.feature_dim:
            raise ValueError(f"spot_features must be (N, {self.feature_dim}), got {tuple(spot_features.shape)}")
        h_spot = self.post_in(self.spot_in(spot_features.float()))
        h_ex = self.post_in(self.exemplar_in(graph.exemplar_x))
        h_expr = self.expression_in(graph.exemplar_expression)
        for layer in self.layers:
            h_spot, h_ex, h_expr = layer(h_spot, h_ex, h_expr, graph)
        return self.expression_range.denormalize(self.head(self.pool(h_spot, h_ex, graph.exemplar_spot)))

    def forward(self, spot_features: Tensor, rows, cols, exemplar_features: Tensor, exemplar_expression: Tensor,
                exemplar_indices: Tensor | None = None, batch: Tensor | None = None) -> Tensor:
        if len(spot_features) != len(exemplar_features):
            raise ValueError(f"{len(spot_features)} spots but exemplars for {len(exemplar_features)}")
        graph = self.build_graph(rows, cols, exemplar_features, exemplar_expression, exemplar_indices, batch)
        return self.forward_graph(spot_features, graph)


def eggn(n_genes: int, pretrained: bool = False, hidden: int = 512, n_layers: int = 4, k: int = 6,
         radius: float = math.sqrt(2.0), feature_dim: int = 512, exemplar_neighbours: int = 3,
         score_dim: int = 128, hex_geometry: bool = True) -> EGGN:
    """EGGN with the official run's sizes (``v2/README``, ``model.py``: 512 hidden channels, 4
    layers, 512-d ResNet-18 features, k = 6 exemplars per spot, 3 exemplar–exemplar neighbours,
    gate width 128, spot radius √2); ``n_genes`` outputs (the official code fixes 250).

    ``pretrained`` does not touch the model (trained from scratch): it is recorded as
    ``exemplar_pretrained``, the flag :func:`bank_for` builds the bank's frozen ResNet-18 with.
    ``hex_geometry=False`` reads ``rows``/``cols`` as a square (legacy ST) grid.
    """
    return EGGN(n_genes, hidden=hidden, n_layers=n_layers, k=k, radius=radius, feature_dim=feature_dim,
                exemplar_neighbours=exemplar_neighbours, score_dim=score_dim, hex_geometry=hex_geometry,
                exemplar_pretrained=pretrained)


class ExemplarGraphTask(SlideContext):
    """EGGN: a window of one slide as a graph of spots (frozen ResNet-18 features) and their exemplars."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.features = frozen_features(self)
        self.bank = training_bank(self, self.features, self.model.exemplar_metric)

    def _inputs(self, rows: np.ndarray):
        (feats,) = self.features.get(rows)
        found = query_exemplars(self, self.bank, feats, rows, self.model.k)
        r, c = self._coords(rows)
        return feats.to(self.device), r, c, found.features, found.expression, found.indices

    def batches(self):
        for rows in self.windows():
            yield (*self._inputs(rows), torch.from_numpy(self.data.target[rows]),
                   torch.from_numpy(self.data.loss_mask[rows]))

    def loss(self, net, batch):
        *inputs, target, mask = batch
        return egn_loss(net(*inputs).float(), target.float(), mask)

    def _predict(self, net, rows, progress):
        def run(full):
            with autocast(self.device, self.amp):
                return net(*self._inputs(full))
        return self._per_slide(rows, run, progress)
