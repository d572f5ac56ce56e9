"""Slide-level predictors: one forward pass reads every spot of ONE slide (HisToGene, Hist2ST).

Both models see a slide as a sequence of spots: each spot's patch is embedded, a learned
embedding of its array row and of its array column is added, and a transformer encoder lets every
spot attend to every other spot of the same slide. Hist2ST adds a graph network over the spots'
neighbourhood graph. Neither has pretrained weights: both are trained from scratch.

==============  ==============================================================================
name            architecture (defaults = the official code's sizes)
==============  ==============================================================================
``histogene``   112 px patch flattened (3·112·112 = 37,632 values) → linear to 1024, + row and
                column embeddings → dropout 0.1 → 8 pre-norm transformer blocks (16 heads × 64,
                MLP 2048, GELU, dropout 0.1) → LayerNorm → linear head
``hist2st``     112 px patch → conv 7×7 stride 7 (3 → 32 channels, 16×16 map) → dropout 0.2 →
                2 ConvMixer blocks (depthwise 5×5 twice with BN+GELU and a residual, then
                pointwise 1×1 + GELU + BN) → 1×1 conv 32 → 4 channels, flattened (4·16·16 =
                1024) → + row/column embeddings → 8 pre-norm transformer blocks (16 heads × 64,
                MLP 1024, dropout 0.2) → 4 GraphSAGE layers (mean over the neighbours only, no
                self term, no bias, ReLU, L2 normalisation) → LSTM jumping knowledge (2-layer
                LSTM of width 1024 over the 4 layer outputs, averaged) → LayerNorm → linear head
==============  ==============================================================================

Sources
-------
* HisToGene: Pang, Su & Li, "Leveraging information in spatial transcriptomics to predict
  super-resolution gene expression from histology images in tumors", bioRxiv 2021
  (doi:10.1101/2021.11.28.470212); official code github.com/maxpmx/HisToGene (``vis_model.py``
  ``HisToGene``, ``transformer.py``; the tutorial trains ``n_layers=8``, the class default is 4).
* Hist2ST: Zeng et al., "Spatial transcriptomics prediction from histology jointly through
  Transformer and graph neural networks", Briefings in Bioinformatics 2022; official code
  github.com/biomed-AI/Hist2ST (``HIST2ST.py``, ``gcn.py``, ``graph_construction.py``,
  ``HIST2ST_train.py`` whose tag ``5-7-2-8-4-16-32`` = kernel 5, conv patch 7, 2 ConvMixer
  blocks, 8 transformer blocks, 4 GNN layers, 16 heads, 32 channels; dropout 0.2).

The spot graph of Hist2ST
-------------------------
``graph_construction.calcADJ(coord, k=4, pruneTag="Grid")`` links every spot to its ``k = 4``
nearest spots (Euclidean distance on the array coordinates, the spot itself excluded) and keeps
those at distance ≤ 2.0. The matrix is not symmetrised and has no self loops: row ``i`` lists
the spots whose features spot ``i`` averages. :func:`spot_graph` builds the same graph as a PyG
``edge_index`` (``edge_index[0]`` = the neighbour, the message's source; ``edge_index[1]`` =
the spot that averages it). Ties at the k-th distance are broken by spot order (stable sort);
the official ``argsort`` breaks them arbitrarily.

On the legacy ST grid Hist2ST was run on (spacing 1), this is the 4-neighbourhood. On Visium
array coordinates (row spacing 1, column spacing 2, ``row + col`` even) the four nearest spots
are the diagonal ones ``(r±1, c±1)`` at √2: the official recipe drops the two same-row
neighbours ``(r, c±2)``, and at the tissue's edge it fills up with spots at distance 2 (same
row, or two rows away). ``hist2st(..., n_neighbours=6, row_scale=3 ** 0.5)`` measures
distances in spot spacings instead (rows are √3 apart on a hexagonal grid), which gives exactly
the six-spot hexagonal ring of :func:`spared_utils.graphs.adjacency`.

Deviations from the official code, and why
------------------------------------------
* Position tables: the official ``nn.Embedding(n_pos=64, dim)`` tables are too small for Visium
  (array rows 0–77, columns 0–127). Here they are ``max_rows`` × ``dim`` and ``max_cols`` ×
  ``dim`` (defaults 78 and 128), and a coordinate outside raises a ValueError naming the
  option to raise (the official code fails inside ``nn.Embedding`` with an index error).
* Input: patches are ``uint8`` 0–255 (or float 0–1) and normalised with the ImageNet channel
  mean/std inside the model (the package's convention); the official models read raw 0–255
  float pixels. Patches larger than ``patch_size`` are resized down (bilinear, antialiased) to
  ``patch_size``: the dataset's patch keeps its field of view at a coarser resolution, whereas
  the official code crops a 112 px window around the spot centre at full resolution. Patches
  smaller than ``patch_size`` are refused (upsampling would invent detail).
* HisToGene flattens channel-first (C, H, W) rather than the official (H, W, C) order; with a
  linear layer learned from scratch this is only a permutation of its input weights.
* Attention is computed with :func:`torch.nn.functional.scaled_dot_product_attention` (same
  maths, scale ``dim_head ** -0.5``, no attention dropout as in the official code) so that a
  slide of ~4,000 spots fits in GPU memory.
* Hist2ST's GNN layers are :class:`torch_geometric.nn.SAGEConv` (``aggr="mean"``,
  ``root_weight=False``, ``bias=False``) followed by ReLU and L2 normalisation, the official
  ``gs_block(gcn=True, policy="mean")``. The official mean divides by the neighbour count, so
  a spot with no neighbour within ``max_distance`` becomes NaN. Here such a spot gets a self
  loop (it averages itself): its output is finite and still depends on its own patch.
* Jumping knowledge: the default ``jk="lstm_mean"`` is the official one (``nn.LSTM(dim, dim,
  2)`` over the sequence of GNN outputs, its outputs averaged over the sequence).
  ``jk="pyg_lstm"`` uses :class:`torch_geometric.nn.JumpingKnowledge` ``("lstm")`` instead
  (bidirectional LSTM attention over the layers, the JK-Net paper's variant; more parameters).
* Head bias: :meth:`HisToGene.set_target_mean` / :meth:`Hist2ST.set_target_mean` (called by
  the harness) start the output layer's bias at the training mean of each gene; the official
  bias starts near 0, so the first hundreds of steps only learn the gene means (log2(TPM+1) ≈
  2–8), which the CPU budget cannot afford. The weights keep PyTorch's initialisation.
* Loss: the model is trained with MSE on the benchmark's target layer (log2(TPM+1)). The
  official Hist2ST adds (i) a ZINB term, weight 0.25, whose mean/dispersion/dropout heads model
  raw counts with size factors — the benchmark's targets are log-normalised values, with no raw
  counts and no count-scale dispersion model to fit, so it is left out; and (ii) a
  self-distillation term, weight 0.5, over 5 augmented views of the whole slide. (ii) is
  available: ``hist2st(..., distill_views=5)`` adds the view-weighting head and
  :func:`hist2st_loss` returns MSE + 0.5 × distillation; with ``distill_views=0`` (default, as
  the official class default ``bake=0``) it is plain MSE. HisToGene's official loss is MSE.

Input convention: ``forward(patches, rows, cols)`` with ``patches`` the (N, 3, H, W) patches
(``uint8`` or float 0–1; a leading batch axis of 1, (1, N, 3, H, W), is accepted) of the N spots
of ONE slide and ``rows``/``cols`` their (N,) integer array coordinates (``obs["array_row"]``,
``obs["array_col"]``). Output: (N, n_genes) on the scale of the target layer.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

import torch
import torch.nn.functional as F
from torch import nn

from .encoders import ImageNormalize, PretrainedWeightsUnavailable
from ..training import autocast
from .data import random_symmetry
from .pyg import torch_geometric
from .task import SlideContext, load_patches, masked_mse_loss

#: Visium capture area: array rows 0–77, columns 0–127.
VISIUM_ROWS = 78
VISIUM_COLS = 128


# ---------------------------------------------------------------------------------------------
# Shared building blocks
# ---------------------------------------------------------------------------------------------


def _no_pretrained(name: str, pretrained: bool) -> None:
    if pretrained:
        raise PretrainedWeightsUnavailable(
            f"{name} has no pretrained weights: the official model is trained from scratch. "
            f"Pass pretrained=False."
        )


def _slide_inputs(patches: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Drop a leading batch axis of 1 and check that patches, rows and cols describe N spots."""
    if patches.dim() == 5:
        if patches.shape[0] != 1:
            raise ValueError(
                f"slide models take the spots of ONE slide per forward pass; got a batch of "
                f"{patches.shape[0]} slides (patches of shape {tuple(patches.shape)})"
            )
        patches = patches[0]
    if patches.dim() != 4 or patches.shape[1] != 3:
        raise ValueError(f"patches must be (N, 3, H, W) or (1, N, 3, H, W), got {tuple(patches.shape)}")
    rows = torch.as_tensor(rows, device=patches.device).reshape(-1).long()
    cols = torch.as_tensor(cols, device=patches.device).reshape(-1).long()
    n = patches.shape[0]
    if rows.numel() != n or cols.numel() != n:
        raise ValueError(f"{n} patches but {rows.numel()} rows and {cols.numel()} cols: one of each per spot")
    if n == 0:
        raise ValueError("a slide needs at least one spot")
    return patches, rows, cols


def _start_at_mean(head: nn.Linear, mean, zero_weights: bool = False) -> None:
    """Set a head's bias to the training mean of each gene; its weights stay random unless
    ``zero_weights`` (then the untrained model predicts exactly the mean)."""
    mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
    if mean.shape != head.bias.shape:
        raise ValueError(f"the training mean has {mean.numel()} genes, the head {head.out_features}")
    with torch.no_grad():
        head.bias.copy_(mean.to(head.bias.device))
        if zero_weights:
            head.weight.zero_()


class SlidePatches(nn.Module):
    """``uint8``/float patches → ImageNet-normalised float patches of ``patch_size`` px.

    Larger patches are resized down (bilinear with antialiasing); smaller ones raise.
    """

    def __init__(self, patch_size: int):
        super().__init__()
        if patch_size < 1:
            raise ValueError(f"patch_size must be positive, got {patch_size}")
        self.patch_size = patch_size
        self.normalize = ImageNormalize()

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        h, w = patches.shape[-2:]
        p = self.patch_size
        if h < p or w < p:
            raise ValueError(
                f"patches are {h}×{w} px but the model reads {p} px: pass patches of at least "
                f"{p} px or build the model with patch_size={min(h, w)}"
            )
        x = self.normalize(patches)
        if (h, w) != (p, p):
            x = F.interpolate(x, size=(p, p), mode="bilinear", align_corners=False, antialias=True)
        return x


class GridEmbedding(nn.Module):
    """Learned embedding of a spot's array row plus one of its array column.

    Parameters
    ----------
    dim
        Embedding width.
    max_rows, max_cols
        Table sizes: rows must lie in ``0 .. max_rows - 1``, columns in ``0 .. max_cols - 1``.
    owner
        Builder name quoted in the out-of-range error.
    """

    def __init__(self, dim: int, max_rows: int = VISIUM_ROWS, max_cols: int = VISIUM_COLS, owner: str = "the model"):
        super().__init__()
        if max_rows < 1 or max_cols < 1:
            raise ValueError(f"max_rows and max_cols must be positive, got {max_rows} and {max_cols}")
        self.owner = owner
        self.row_embed = nn.Embedding(max_rows, dim)
        self.col_embed = nn.Embedding(max_cols, dim)

    def _check(self, values: torch.Tensor, size: int, what: str, option: str) -> None:
        lo, hi = int(values.min()), int(values.max())
        if lo < 0 or hi >= size:
            bad = lo if lo < 0 else hi
            hint = (f"coordinates must be non-negative (shift the slide's {what}s)" if bad < 0
                    else f"raise the {option} option, e.g. {self.owner}(..., {option}={bad + 1})")
            raise ValueError(
                f"array {what} {bad} is outside the {what} embedding table "
                f"({what}s 0..{size - 1}, {option}={size}); {hint}"
            )

    def forward(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        self._check(rows, self.row_embed.num_embeddings, "row", "max_rows")
        self._check(cols, self.col_embed.num_embeddings, "column", "max_cols")
        return self.row_embed(rows) + self.col_embed(cols)


class Attention(nn.Module):
    """Multi-head self-attention over a (B, N, dim) sequence (``heads`` × ``dim_head`` wide)."""

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float = 0.0):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        # As the official code: no output projection when a single head already has width dim.
        self.to_out = (nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))
                       if not (heads == 1 and dim_head == dim) else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in self.to_qkv(x).chunk(3, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v)  # scale dim_head ** -0.5
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + Attention(LN(x)), then x + MLP(LN(x)) with GELU and dropout."""

    def __init__(self, dim: int, heads: int, dim_head: int, mlp_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dim_head, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(mlp_dim, dim), nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _transformer(dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int, dropout: float) -> nn.Sequential:
    for name, v in (("dim", dim), ("depth", depth), ("heads", heads), ("dim_head", dim_head), ("mlp_dim", mlp_dim)):
        if v < 1:
            raise ValueError(f"{name} must be positive, got {v}")
    return nn.Sequential(*[TransformerBlock(dim, heads, dim_head, mlp_dim, dropout) for _ in range(depth)])


def _check_genes(n_genes: int) -> None:
    if n_genes < 1:
        raise ValueError(f"n_genes must be at least 1, got {n_genes}")


# ---------------------------------------------------------------------------------------------
# HisToGene
# ---------------------------------------------------------------------------------------------


class _SlideRegressor(nn.Module):
    """What both slide models share: a ``head`` (``nn.Sequential`` ending in the genes' linear
    layer) that the harness starts at the training mean."""

    #: zero the head's weights when :meth:`set_target_mean` starts it at the mean
    mean_init_head: bool = False
    head: nn.Sequential

    @property
    def n_genes(self) -> int:
        return self.head[-1].out_features

    def set_target_mean(self, mean) -> None:
        """Start the head's bias at the training mean of each gene (the harness calls it; see the
        module docstring: the official head starts at 0)."""
        _start_at_mean(self.head[-1], mean, zero_weights=self.mean_init_head)


class HisToGene(_SlideRegressor):
    """HisToGene: flattened patches + row/column embeddings → transformer over a slide's spots.

    See the module docstring for the architecture and :func:`histogene` for the options.
    """

    def __init__(self, n_genes: int, patch_size: int = 112, dim: int = 1024, depth: int = 8, heads: int = 16,
                 dim_head: int = 64, mlp_dim: int = 2048, dropout: float = 0.1,
                 max_rows: int = VISIUM_ROWS, max_cols: int = VISIUM_COLS):
        super().__init__()
        _check_genes(n_genes)
        self.name = "histogene"
        self.patches = SlidePatches(patch_size)
        self.patch_embedding = nn.Linear(3 * patch_size * patch_size, dim)
        self.position = GridEmbedding(dim, max_rows, max_cols, owner="histogene")
        self.dropout = nn.Dropout(dropout)
        self.transformer = _transformer(dim, depth, heads, dim_head, mlp_dim, dropout)
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, n_genes))

    def forward(self, patches: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Predict every spot of one slide.

        Parameters
        ----------
        patches
            (N, 3, H, W) or (1, N, 3, H, W) patches of the N spots of ONE slide, ``uint8`` 0–255
            or float 0–1, H and W ≥ ``patch_size`` (larger ones are resized down).
        rows, cols
            (N,) integer array row and column of each spot (``obs["array_row"]``,
            ``obs["array_col"]``), inside the embedding tables (``max_rows``, ``max_cols``).

        Returns
        -------
        torch.Tensor
            (N, n_genes) predicted expression.
        """
        patches, rows, cols = _slide_inputs(patches, rows, cols)
        x = self.patches(patches).flatten(1)
        x = self.dropout(self.patch_embedding(x) + self.position(rows, cols))
        h = self.transformer(x.unsqueeze(0)).squeeze(0)
        return self.head(h)


def histogene(n_genes: int, pretrained: bool = False, patch_size: int = 112, dim: int = 1024, depth: int = 8,
              heads: int = 16, mlp_dim: int = 2048, dropout: float = 0.1, max_rows: int = VISIUM_ROWS,
              max_cols: int = VISIUM_COLS, dim_head: int = 64, mean_init_head: bool = False) -> HisToGene:
    """HisToGene (Pang et al. 2021) with the official sizes; one forward pass = one slide.

    Parameters
    ----------
    n_genes
        Number of genes predicted.
    pretrained
        Must be False: HisToGene is trained from scratch (True raises
        :class:`~spared_utils.models.encoders.PretrainedWeightsUnavailable`).
    patch_size
        Side in pixels of the patch that is flattened (112); larger inputs are resized to it.
    dim, depth, heads, mlp_dim, dim_head
        Transformer width (1024), blocks (8, as the authors trained), heads (16) of width
        ``dim_head`` (64), and MLP width (2048 = 2 × dim).
    dropout
        Dropout on the summed embeddings and inside the blocks (0.1).
    max_rows, max_cols
        Sizes of the row and column embedding tables (Visium: 78 × 128; the official 64 is too
        small). A coordinate outside raises a ValueError naming the option.
    mean_init_head
        Also zero the head's weights when the harness starts its bias at the training mean, so
        the untrained model predicts exactly the mean (the CPU default; official: PyTorch's init).

    Returns
    -------
    HisToGene
        ``model(patches, rows, cols)`` → (N, n_genes).
    """
    _no_pretrained("histogene", pretrained)
    model = HisToGene(n_genes, patch_size=patch_size, dim=dim, depth=depth, heads=heads, dim_head=dim_head,
                      mlp_dim=mlp_dim, dropout=dropout, max_rows=max_rows, max_cols=max_cols)
    model.mean_init_head = bool(mean_init_head)
    return model


# ---------------------------------------------------------------------------------------------
# Hist2ST
# ---------------------------------------------------------------------------------------------


def spot_graph(rows: torch.Tensor, cols: torch.Tensor, k: int = 4, max_distance: float = 2.0,
               row_scale: float = 1.0, chunk_size: int = 2048) -> torch.Tensor:
    """Hist2ST's spot graph: each spot ← its ``k`` nearest spots within ``max_distance``.

    Distances are Euclidean on the array coordinates ``(row_scale · row, col)``; the spot itself
    is excluded and ties at the k-th distance are broken by spot order. Neighbours farther than
    ``max_distance`` are dropped, so a spot can have fewer than ``k`` (or no) neighbours. The
    graph is directed, as the official adjacency: spot ``i`` reads from its own nearest spots.

    Parameters
    ----------
    rows, cols
        (N,) array coordinates of the spots of ONE slide.
    k
        Neighbours per spot (official: 4). Visium with ``row_scale=3 ** 0.5``: 6 = the ring.
    max_distance
        Largest distance kept (official "Grid" pruning: 2.0).
    row_scale
        Factor applied to rows before measuring distances (1.0 as the official code; √3 makes
        Visium distances proportional to physical distances).
    chunk_size
        Spots whose distances are computed at once (memory ``chunk_size × N``).

    Returns
    -------
    torch.Tensor
        ``edge_index`` (2, E) long on the device of ``rows``: row 0 the neighbour (source),
        row 1 the spot that aggregates it (target), PyG's ``source_to_target`` convention.
    """
    rows = torch.as_tensor(rows).reshape(-1)
    cols = torch.as_tensor(cols, device=rows.device).reshape(-1)
    if rows.numel() != cols.numel():
        raise ValueError(f"{rows.numel()} rows but {cols.numel()} cols")
    if k < 0:
        raise ValueError(f"k must be non-negative, got {k}")
    if max_distance < 0:
        raise ValueError(f"max_distance must be non-negative, got {max_distance}")
    n = rows.numel()
    k = min(k, n - 1)
    if k <= 0:
        return torch.empty(2, 0, dtype=torch.long, device=rows.device)
    pos = torch.stack([rows.double() * row_scale, cols.double()], dim=1)
    limit = max_distance + 1e-9  # array distances such as √(3 + 1) are 2 only up to rounding
    targets, sources, dists = [], [], []
    for start in range(0, n, chunk_size):
        dist = torch.cdist(pos[start:start + chunk_size], pos, compute_mode="donot_use_mm_for_euclid_dist")
        t, s = (dist <= limit).nonzero(as_tuple=True)
        t = t + start
        keep = t != s
        targets.append(t[keep])
        sources.append(s[keep])
        dists.append(dist[t[keep] - start, s[keep]])
    t, s, d = torch.cat(targets), torch.cat(sources), torch.cat(dists)
    d = torch.round(d * 1e6)  # equal distances compare equal (ties then go by spot order)
    # Order the candidates by (target, distance, source) with stable sorts, keep the first k.
    order = torch.argsort(s, stable=True)
    order = order[torch.argsort(d[order], stable=True)]
    order = order[torch.argsort(t[order], stable=True)]
    t, s = t[order], s[order]
    first = torch.searchsorted(t, t)  # index of each target's first candidate (t is sorted)
    keep = torch.arange(t.numel(), device=t.device) - first < k
    return torch.stack([s[keep], t[keep]])


def _guard_isolated(edge_index: torch.Tensor, n: int) -> torch.Tensor:
    """Add a self loop to every spot that receives no message (it then averages itself)."""
    degree = torch_geometric().utils.degree

    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index must be (2, E), got {tuple(edge_index.shape)}")
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= n):
        raise ValueError(f"edge_index refers to spots outside 0..{n - 1}")
    isolated = (degree(edge_index[1], num_nodes=n) == 0).nonzero().reshape(-1)
    if isolated.numel() == 0:
        return edge_index
    return torch.cat([edge_index, isolated.unsqueeze(0).expand(2, -1)], dim=1)


class ConvMixerBlock(nn.Module):
    """Hist2ST's ConvMixer block: x + depthwise(x) (two k×k depthwise convs), then pointwise."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.depthwise = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size, groups=channels, padding="same"),
            nn.BatchNorm2d(channels), nn.GELU(),
            nn.Conv2d(channels, channels, kernel_size, groups=channels, padding="same"),
            nn.BatchNorm2d(channels), nn.GELU(),
        )
        self.pointwise = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.GELU(), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x) + x)


class LSTMMeanJK(nn.Module):
    """Official Hist2ST jumping knowledge: ``nn.LSTM(dim, dim, 2)`` over the layers, averaged."""

    def __init__(self, dim: int, num_layers: int = 2):
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, num_layers)

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        out, _ = self.lstm(torch.stack(xs, dim=0))  # (layers, N, dim), sequence first
        return out.mean(dim=0)


def default_distill_augment(patches: torch.Tensor) -> torch.Tensor:
    """One augmented view of a whole slide (the same draw for every spot), as Hist2ST's ``tf``:
    grayscale with probability 0.1, a rotation in [-90°, 90°] (black corners), horizontal flip
    with probability 0.2."""
    from torchvision.transforms import v2

    tf = v2.Compose([v2.RandomGrayscale(0.1), v2.RandomRotation(90), v2.RandomHorizontalFlip(0.2)])
    return tf(patches)


class Hist2ST(_SlideRegressor):
    """Hist2ST: ConvMixer patch features → transformer over the slide → GraphSAGE + LSTM JK.

    See the module docstring for the architecture and :func:`hist2st` for the options.
    """

    def __init__(self, n_genes: int, patch_size: int = 112, conv_patch: int = 7, kernel_size: int = 5,
                 channels: int = 32, mixer_depth: int = 2, depth: int = 8, gnn_depth: int = 4, heads: int = 16,
                 dim_head: int = 64, mlp_dim: int | None = None, dropout: float = 0.2,
                 max_rows: int = VISIUM_ROWS, max_cols: int = VISIUM_COLS, n_neighbours: int = 4,
                 max_distance: float = 2.0, row_scale: float = 1.0, jk: str = "lstm_mean",
                 distill_views: int = 0):
        super().__init__()
        _check_genes(n_genes)
        if channels < 8 or channels % 8:
            raise ValueError(f"channels must be a positive multiple of 8 (reduced 8× before flattening), got {channels}")
        side = patch_size // conv_patch
        if conv_patch < 1 or side < 1:
            raise ValueError(f"conv_patch must be in 1..patch_size ({patch_size}), got {conv_patch}")
        if gnn_depth < 1:
            raise ValueError(f"gnn_depth must be positive, got {gnn_depth}")
        if jk not in ("lstm_mean", "pyg_lstm"):
            raise ValueError(f"jk must be 'lstm_mean' (official) or 'pyg_lstm', got {jk!r}")
        if distill_views < 0:
            raise ValueError(f"distill_views must be non-negative, got {distill_views}")
        gnn = torch_geometric().nn
        JumpingKnowledge, SAGEConv = gnn.JumpingKnowledge, gnn.SAGEConv

        dim = side * side * (channels // 8)
        self.name = "hist2st"
        self.dim = dim
        self.n_neighbours, self.max_distance, self.row_scale = n_neighbours, max_distance, row_scale
        self.patches = SlidePatches(patch_size)
        self.patch_embedding = nn.Conv2d(3, channels, conv_patch, conv_patch)
        self.feature_dropout = nn.Dropout(dropout)
        self.mixer = nn.Sequential(*[ConvMixerBlock(channels, kernel_size) for _ in range(mixer_depth)])
        self.down = nn.Sequential(nn.Conv2d(channels, channels // 8, 1), nn.Flatten())
        self.position = GridEmbedding(dim, max_rows, max_cols, owner="hist2st")
        self.transformer = _transformer(dim, depth, heads, dim_head, mlp_dim or dim, dropout)
        self.gnn = nn.ModuleList(
            SAGEConv(dim, dim, aggr="mean", root_weight=False, bias=False) for _ in range(gnn_depth)
        )
        self.jk = LSTMMeanJK(dim) if jk == "lstm_mean" else JumpingKnowledge("lstm", dim, gnn_depth)
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, n_genes))
        self.distill_views = distill_views
        self.coef = (nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 1))
                     if distill_views > 0 else None)
        self.distill_augment: Callable[[torch.Tensor], torch.Tensor] = default_distill_augment

    def graph(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """The slide's spot graph with this model's options (:func:`spot_graph`)."""
        return spot_graph(rows, cols, k=self.n_neighbours, max_distance=self.max_distance, row_scale=self.row_scale)

    def features(self, patches: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                 edge_index: torch.Tensor | None = None) -> torch.Tensor:
        """(N, dim) spot features before the gene head (same arguments as :meth:`forward`)."""
        patches, rows, cols = _slide_inputs(patches, rows, cols)
        x = self.feature_dropout(self.patch_embedding(self.patches(patches)))
        x = self.down(self.mixer(x))
        g = self.transformer((x + self.position(rows, cols)).unsqueeze(0)).squeeze(0)
        if edge_index is None:
            edge_index = self.graph(rows, cols)
        edge_index = _guard_isolated(edge_index.to(g.device).long(), g.shape[0])
        layers = []
        for conv in self.gnn:
            g = F.normalize(F.relu(conv(g, edge_index)), p=2.0, dim=1)
            layers.append(g)
        return self.jk(layers)

    def forward(self, patches: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                edge_index: torch.Tensor | None = None) -> torch.Tensor:
        """Predict every spot of one slide.

        Parameters
        ----------
        patches
            (N, 3, H, W) or (1, N, 3, H, W) patches of the N spots of ONE slide, ``uint8`` 0–255
            or float 0–1, H and W ≥ ``patch_size`` (larger ones are resized down).
        rows, cols
            (N,) integer array row and column of each spot, inside the embedding tables.
        edge_index
            Optional (2, E) spot graph over these N spots (PyG convention, source → target);
            by default :meth:`graph` builds it from ``rows``/``cols``. Pass it to build it once
            per slide. Spots without incoming edges get a self loop.

        Returns
        -------
        torch.Tensor
            (N, n_genes) predicted expression.
        """
        return self.head(self.features(patches, rows, cols, edge_index))

    def distillation_loss(self, patches: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                          pred: torch.Tensor, edge_index: torch.Tensor | None = None) -> torch.Tensor:
        """Hist2ST's self-distillation term (needs ``distill_views > 0``).

        The slide is predicted under ``distill_views`` augmented views (:attr:`distill_augment`,
        one draw per view for the whole slide); the views' predictions are averaged per spot
        with softmax weights from the :attr:`coef` head, and the term is the MSE between that
        average and ``pred`` (the prediction on the original view; gradients reach both).
        """
        if self.coef is None:
            raise ValueError("distillation needs a model built with distill_views > 0, e.g. hist2st(..., distill_views=5)")
        patches, rows, cols = _slide_inputs(patches, rows, cols)
        if edge_index is None:
            edge_index = self.graph(rows, cols)
        preds, weights = [], []
        for _ in range(self.distill_views):
            h = self.features(self.distill_augment(patches), rows, cols, edge_index)
            preds.append(self.head(h))
            weights.append(self.coef(h))
        w = torch.softmax(torch.stack(weights), dim=0)  # (views, N, 1)
        mixed = (w * torch.stack(preds)).sum(dim=0)
        return F.mse_loss(mixed, pred)


def hist2st_loss(model: Hist2ST, patches: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                 target: torch.Tensor, mask: torch.Tensor | None = None, edge_index: torch.Tensor | None = None,
                 distill_weight: float = 0.5) -> torch.Tensor:
    """Hist2ST's training loss on one slide: MSE (+ ``distill_weight`` × self-distillation).

    Parameters
    ----------
    model
        A :class:`Hist2ST`; the distillation term is added only if it was built with
        ``distill_views > 0`` (official training: 5 views, weight 0.5).
    patches, rows, cols, edge_index
        As :meth:`Hist2ST.forward`.
    target
        (N, n_genes) target expression.
    mask
        Optional (N, n_genes) boolean, True where the target is measured; the MSE averages over
        those entries only.
    distill_weight
        Weight λ of the distillation term (official 0.5).

    Returns
    -------
    torch.Tensor
        Scalar loss. The ZINB term of the official code is not available (see the module docstring).
    """
    edge_index = model.graph(rows, cols) if edge_index is None else edge_index
    pred = model(patches, rows, cols, edge_index)
    target = target.reshape(pred.shape).to(pred.dtype)
    if mask is None:
        loss = F.mse_loss(pred, target)
    else:
        mask = mask.reshape(pred.shape).to(pred.dtype)
        loss = ((pred - target) ** 2 * mask).sum() / mask.sum().clamp_min(1.0)
    if model.coef is not None and distill_weight > 0:
        loss = loss + distill_weight * model.distillation_loss(patches, rows, cols, pred, edge_index)
    return loss


def hist2st(n_genes: int, pretrained: bool = False, patch_size: int = 112, conv_patch: int = 7,
            kernel_size: int = 5, channels: int = 32, mixer_depth: int = 2, depth: int = 8, gnn_depth: int = 4,
            heads: int = 16, dim_head: int = 64, mlp_dim: int | None = None, dropout: float = 0.2,
            max_rows: int = VISIUM_ROWS, max_cols: int = VISIUM_COLS, n_neighbours: int = 4,
            max_distance: float = 2.0, row_scale: float = 1.0, jk: str = "lstm_mean",
            distill_views: int = 0, mean_init_head: bool = False) -> Hist2ST:
    """Hist2ST (Zeng et al. 2022) with the official sizes; one forward pass = one slide.

    Parameters
    ----------
    n_genes
        Number of genes predicted.
    pretrained
        Must be False: Hist2ST is trained from scratch (True raises
        :class:`~spared_utils.models.encoders.PretrainedWeightsUnavailable`).
    patch_size
        Side in pixels of the patch read (official ``fig_size`` 112); larger inputs are resized.
    conv_patch
        Kernel and stride of the patch-embedding convolution (official ``patch_size`` 7). The
        feature width is ``(patch_size // conv_patch)² · channels / 8`` (1024 by default).
    kernel_size, channels, mixer_depth
        ConvMixer depthwise kernel (5), channels (32) and blocks (official ``depth1`` 2).
    depth, heads, dim_head, mlp_dim
        Transformer blocks (official ``depth2`` 8), heads (16) × ``dim_head`` (64), MLP width
        (``None`` = the feature width, as the official code).
    gnn_depth
        GraphSAGE layers (official ``depth3`` 4).
    dropout
        Dropout on the conv features and inside the transformer (0.2).
    max_rows, max_cols
        Sizes of the row/column embedding tables (Visium 78 × 128).
    n_neighbours, max_distance, row_scale
        Spot graph built when :meth:`Hist2ST.forward` gets no ``edge_index`` (:func:`spot_graph`;
        official 4, 2.0, 1.0; on Visium 6, 2.0, √3 give the hexagonal ring).
    jk
        ``"lstm_mean"`` (official) or ``"pyg_lstm"`` (:class:`torch_geometric.nn.JumpingKnowledge`).
    distill_views
        Augmented views of the self-distillation term (0 = off, official training 5); > 0 adds
        the view-weighting head used by :func:`hist2st_loss`.
    mean_init_head
        As in :func:`histogene`: zero the head's weights when its bias starts at the mean.

    Returns
    -------
    Hist2ST
        ``model(patches, rows, cols, edge_index=None)`` → (N, n_genes).
    """
    _no_pretrained("hist2st", pretrained)
    model = Hist2ST(n_genes, patch_size=patch_size, conv_patch=conv_patch, kernel_size=kernel_size,
                    channels=channels, mixer_depth=mixer_depth, depth=depth, gnn_depth=gnn_depth, heads=heads,
                    dim_head=dim_head, mlp_dim=mlp_dim, dropout=dropout, max_rows=max_rows, max_cols=max_cols,
                    n_neighbours=n_neighbours, max_distance=max_distance, row_scale=row_scale, jk=jk,
                    distill_views=distill_views)
    model.mean_init_head = bool(mean_init_head)
    return model


class SlideTask(SlideContext):
    """HisToGene and Hist2ST: a transformer (and Hist2ST's GNN) over the spots of one slide.

    A training step reads a window of ``batch_size`` neighbouring spots of one training slide
    (the official code reads the whole slide: set ``batch_size`` at least the largest slide's
    spot count, as the paper budget does). Prediction runs each slide whole.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.size = int(self.model.patches.patch_size)
        self.cache: dict[str, torch.Tensor] = {}

    def _patches(self, rows: np.ndarray) -> torch.Tensor:
        return load_patches(self.data, rows, self.size)

    def batches(self):
        for rows in self.windows():
            patches = self._patches(rows)
            if self.augment:
                patches = torch.stack([random_symmetry(p) for p in patches])
            r, c = self.data.coords[rows, 0], self.data.coords[rows, 1]
            yield (patches, torch.as_tensor(r), torch.as_tensor(c), torch.from_numpy(self.data.target[rows]),
                   torch.from_numpy(self.data.loss_mask[rows]))

    def loss(self, net, batch):
        patches, r, c, target, mask = batch
        if isinstance(net, Hist2ST):
            return hist2st_loss(net, patches, r, c, target, mask)
        return masked_mse_loss(net(patches, r, c), target, mask)

    def _predict(self, net, rows, progress):
        def run(full):
            key = str(self.data.slides[full[0]])
            if key not in self.cache:
                self.cache[key] = self._patches(full)
            r, c = self._coords(full)
            with autocast(self.device, self.amp):
                return net(self.cache[key].to(self.device), r, c)
        return self._per_slide(rows, run, progress)
