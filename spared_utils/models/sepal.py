"""SEPAL: a graph network over each spot's local neighbourhood refines a ViT-B+Δ prediction.

SEPAL (Mejia, Cárdenas, Ruiz, Castillo, Arbeláez, "SEPAL: Spatial Gene Expression Prediction
from Local Graphs", ICCV 2023 workshop CVAMD, arXiv:2309.01036; official code
github.com/BCV-Uniandes/SEPAL, ``models.py`` / ``datasets.py`` / ``main.py``) trains in two stages:

1. **Stage 1** is ViT-B+Δ (:func:`spared_utils.models.encoders.vit_b_delta`): a ViT-B/16 that
   predicts Δ = expression − training mean from one patch. It is trained first and then frozen.
2. **Stage 2** (:class:`SEPAL`, this module) builds, for every spot, the graph of the spots
   within ``n_hops`` rings of it. Each node carries the frozen stage-1 embedding of its patch
   (the 768-d class token, i.e. the ViT with its head removed) and a 2-D sin-cos encoding of its
   offset from the centre spot. A small graph network reads that graph, pools it to one vector
   and predicts a residual that is *added to the stage-1 prediction of the centre spot*.

Stage-2 architecture (the official ``st_network`` with the best Visium configuration,
``configs/models/best_sepal_visium.json``: ``h_global = //0,512//512,256,128//128,256``,
``GCNConv``, ``ELU``, ``SAGPooling``, ``pos_emb_sum = false``):

==========================  ====================================================================
node features               [embedding (768) ‖ positional encoding (768)] = 1536 (concatenated);
                            ``positional="sum"`` adds them instead (the STNet-dataset config)
preprocessing MLP           Linear(1536 → 512) + ELU
graph layers                GCNConv(512 → 256) + ELU, GCNConv(256 → 128) + ELU
pooling                     ``SAGPooling(128, ratio=1)``: an integer ratio keeps the *one*
                            highest-scoring node of each graph, its features multiplied by
                            tanh(score) (score from a GraphConv(128 → 1))
head                        Linear(128 → n_genes), **no activation** (see deviations)
output                      centre's stage-1 prediction + head output
==========================  ====================================================================

(``SAGPooling``'s ``SelectTopK`` weight, one parameter, scores a 1-channel input by its sign only
and never receives a gradient; it is kept, as in the official model, so the counts agree.)

The local graph (official ``get_graphs_one_slide``): the nodes are the centre (node 0) and every
spot within ``n_hops`` rings; two nodes are joined when *they* are within ``n_hops`` rings of each
other (the ``n_hops``-reachability matrix restricted to the nodes), not only when adjacent.
The positional encoding is the ``positional_encodings`` package's ``PositionalEncoding2D`` of the
(row, column) offset: with ``c = 2·ceil(D/4)`` channels per axis and frequencies
``10000^(-2i/c)``, the first ``c`` channels hold interleaved sin/cos of the row offset, the next
``c`` those of the column offset, truncated to ``D``.

Training (official ``configs/training/best_sepal_visium.json``, ``main.py``): Adam, learning
rate 1e-5, batch 256 graphs, 300 epochs, ``torch.nn.MSELoss`` between (stage-2 output + stage-1
prediction) and the Δ targets. On this package's scale (the stage-1 model adds the training mean
back) the same MSE is taken on expression; this module provides no loss of its own — use
:func:`spared_utils.models.task.masked_mse_loss`, which also skips missing values.

Deviations from the official code, and why:

* **No activation after the head.** The official ``MLP`` applies its activation after every
  layer, the last one included, so its residual passes through an ELU and can never be below
  −1. Here the head is a plain linear layer.
* **Zero-initialised head** (``zero_init_head=True``, the default): the head starts at 0, so the
  untrained stage 2 returns exactly the stage-1 prediction (as ``vit_b_delta`` starts from the
  training mean). ``False`` keeps PyTorch's default initialisation, as the official code does.
* **Neighbours from the array grid.** The official code links spots with squidpy's
  6-nearest-neighbour graph on pixel coordinates (Visium) or the 8-neighbour grid (legacy ST);
  at the tissue edge a k-NN graph links spots that are not adjacent. Here neighbours come from
  :func:`spared_utils.graphs.neighbour_index` (exact array neighbours; 4 on a square grid), and an
  edge spot's graph simply has fewer nodes (``node_mask``).
* **Edges from grid distance.** Two nodes are joined when their array offsets are within
  ``n_hops`` rings on the full grid; the official reachability walks only through spots that
  exist, so around a hole in the tissue it can miss a pair this rule joins.
* **Layer widths as one list.** The official ``h_global`` string ``//pre//graph//head`` becomes
  ``hidden`` (preprocessing widths then graph widths) with ``n_preprocess`` saying how many are
  preprocessing; the head is always one linear layer to the genes, so the STNet-dataset best
  config (``//-1//0,256//-1``: the last graph layer *is* the output, with an ELU) is approximated
  by ``hidden=(256,), n_preprocess=0, graph_operator="GraphConv", positional="sum"`` plus a head.
* **Centred positional encoding.** The official code looks the encoding up in a table indexed
  by ``offset + m`` where ``m`` is the largest offset in the dataset, so the encoding of a given
  offset depends on the dataset. Here the offset itself is encoded. Shifting every position by
  ``m`` rotates each sin/cos pair by a fixed angle, a fixed linear map; with concatenated features
  the first linear layer absorbs it.
* **Default ``n_hops=3``.** SEPAL's best Visium run used 1 ring (``configs/datasets/visium_deltas.json``),
  but SpaRED's code (github.com/BCV-Uniandes/SpaRED, ``spared/datasets/datasets.py``), which built the
  SEPAL graphs of the MICCAI 2024 benchmark, uses ``n_hops=3``. The model's weights do not
  depend on it; it sets the neighbourhood size and the edge rule.
* Stage 2 runs on precomputed, frozen stage-1 embeddings (as the official ``freeze_img_encoder``),
  so :class:`SEPAL` holds only the stage-2 weights. :func:`stage1_outputs` computes embeddings
  and predictions with a stage-1 model; :func:`check_stage1` refuses a stage-1 checkpoint of
  another dataset, scenario or seed (the official code trusts a path in a config file).

Forward inputs (dense and padded; masked nodes never reach the network):

``centre_prediction`` (B, n_genes)
    the stage-1 prediction of each centre spot (expression scale, what ``vit_b_delta`` returns);
``node_embeddings`` (B, K+1, D)
    stage-1 embeddings; node 0 is the centre, the others its neighbours (any order);
``node_offsets`` (B, K+1, 2)
    integer array offsets (Δ array_row, Δ array_col) of each node from the centre; node 0 is (0, 0);
``node_mask`` (B, K+1) bool
    True where the node exists; node 0 must be True. Spots of different slides are never in one
    graph because :func:`spared_utils.graphs.neighbour_index` never links them.

:func:`gather_neighbourhoods` builds the three node tensors from a ``neighbour_index`` array.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from .. import graphs
from .encoders import vit_b_delta
from .features import FrozenCache
from .pyg import torch_geometric
from .task import SetupContext, Task, masked_mse_loss

gnn = torch_geometric().nn

#: Pooling operators of :class:`SEPAL`.
POOLINGS = ("sag", "mean", "max", "add")
#: How positional encodings are combined with the embeddings.
POSITIONAL = ("concat", "sum")
#: The keys a stage-1 checkpoint's metadata must carry for stage 2 to accept it.
STAGE1_KEYS = ("dataset", "scenario", "seed")


# ---------------------------------------------------------------------------------------------
# Positional encoding and the local-graph edge rule
# ---------------------------------------------------------------------------------------------


def sincos_encoding_2d(offsets: torch.Tensor, dim: int) -> torch.Tensor:
    """2-D sin-cos encoding of integer (row, column) offsets, ``dim`` channels.

    Parameters
    ----------
    offsets
        (..., 2) row and column offsets.
    dim
        Output channels (the embedding width, so that both can be concatenated or summed).

    Returns
    -------
    torch.Tensor
        (..., dim) float: interleaved sin/cos of the row offset over ``c = 2·ceil(dim/4)``
        channels, then those of the column offset, truncated to ``dim``.
    """
    if dim < 1:
        raise ValueError(f"the encoding needs at least one channel, got dim={dim}")
    c = 2 * math.ceil(dim / 4)
    freqs = 1.0 / (10000.0 ** (torch.arange(0, c, 2, device=offsets.device, dtype=torch.float32) / c))
    pos = offsets.to(torch.float32)

    def axis(p: torch.Tensor) -> torch.Tensor:
        angle = p[..., None] * freqs
        return torch.stack((angle.sin(), angle.cos()), dim=-1).flatten(-2)

    return torch.cat((axis(pos[..., 0]), axis(pos[..., 1])), dim=-1)[..., :dim]


def grid_distance(offsets: torch.Tensor, hex_geometry: bool = True) -> torch.Tensor:
    """Number of rings between two spots from their (Δ row, Δ column) array offset (..., 2).

    Visium (``hex_geometry=True``): neighbours differ by (0, ±2) or (±1, ±1), so the distance is
    ``|Δr| + max(0, (|Δc| − |Δr|) / 2)``. Square grid: ``|Δr| + |Δc|`` (4 neighbours, as
    :mod:`spared_utils.graphs`).
    """
    dr = offsets[..., 0].abs()
    dc = offsets[..., 1].abs()
    if hex_geometry:
        return dr + torch.clamp(dc - dr, min=0) // 2
    return dr + dc


# ---------------------------------------------------------------------------------------------
# The stage-2 model
# ---------------------------------------------------------------------------------------------


class SEPAL(nn.Module):
    """Stage 2 of SEPAL: local graph of frozen embeddings → residual added to the centre's prediction.

    Parameters
    ----------
    n_genes
        Genes predicted.
    embedding_dim
        Width ``D`` of the stage-1 embeddings (768 for ViT-B).
    hidden
        Widths of the layers before the head: the first ``n_preprocess`` are linear layers
        (each + activation), the rest graph layers (each + activation). Official Visium:
        (512, 256, 128) with one preprocessing layer.
    n_preprocess
        How many entries of ``hidden`` are linear preprocessing layers (0 or more); at least one
        graph layer must remain.
    n_hops
        Rings of the neighbourhood; nodes within ``n_hops`` of each other are joined.
    hex_geometry
        Visium hexagonal grid (True) or legacy ST square grid (False), for the edge rule.
    graph_operator
        Name of a ``torch_geometric.nn`` convolution built as ``Op(in, out)`` (``"GCNConv"``,
        ``"GraphConv"``, ``"SAGEConv"``, ...).
    pooling
        ``"sag"`` (``SAGPooling`` keeping the top node of each graph, official) or a global
        ``"mean"``, ``"max"`` or ``"add"`` pool.
    act
        Name of a ``torch.nn`` activation (official: ``"ELU"``).
    positional
        ``"concat"`` (official Visium) or ``"sum"`` (official STNet dataset).
    zero_init_head
        Start the head at 0, so that the untrained model returns ``centre_prediction``.
    """

    def __init__(
        self,
        n_genes: int,
        embedding_dim: int = 768,
        hidden: Sequence[int] = (512, 256, 128),
        n_preprocess: int = 1,
        n_hops: int = 3,
        hex_geometry: bool = True,
        graph_operator: str = "GCNConv",
        pooling: str = "sag",
        act: str = "ELU",
        positional: str = "concat",
        zero_init_head: bool = True,
    ):
        super().__init__()
        hidden = tuple(int(h) for h in hidden)
        if n_genes < 1:
            raise ValueError(f"n_genes must be at least 1, got {n_genes}")
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be positive, got {embedding_dim}")
        if not hidden or min(hidden) < 1:
            raise ValueError(f"hidden must hold positive layer widths, got {hidden}")
        if not 0 <= n_preprocess < len(hidden):
            raise ValueError(f"n_preprocess must be in [0, {len(hidden) - 1}] so that one graph layer "
                             f"remains (hidden={hidden}), got {n_preprocess}")
        if n_hops < 1:
            raise ValueError(f"n_hops must be >= 1, got {n_hops}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if positional not in POSITIONAL:
            raise ValueError(f"positional must be one of {POSITIONAL}, got {positional!r}")
        if not hasattr(gnn, graph_operator):
            raise ValueError(f"torch_geometric.nn has no graph operator {graph_operator!r}")
        if not hasattr(nn, act):
            raise ValueError(f"torch.nn has no activation {act!r}")

        self.n_genes = int(n_genes)
        self.embedding_dim = int(embedding_dim)
        self.n_hops = int(n_hops)
        self.hex_geometry = bool(hex_geometry)
        self.pooling = pooling
        self.positional = positional
        self.act = getattr(nn, act)()

        width = 2 * embedding_dim if positional == "concat" else embedding_dim
        pre = []
        for h in hidden[:n_preprocess]:
            pre += [nn.Linear(width, h), getattr(nn, act)()]
            width = h
        self.preprocess = nn.Sequential(*pre)
        op = getattr(gnn, graph_operator)
        self.convs = nn.ModuleList()
        for h in hidden[n_preprocess:]:
            self.convs.append(op(width, h))
            width = h
        self.pool = gnn.SAGPooling(width, ratio=1) if pooling == "sag" else None
        self.head = nn.Linear(width, n_genes)
        if zero_init_head:
            with torch.no_grad():
                self.head.weight.zero_()
                self.head.bias.zero_()

    # -- graph construction ----------------------------------------------------------------

    def local_adjacency(self, node_offsets: torch.Tensor, node_mask: torch.Tensor) -> torch.Tensor:
        """(B, N, N) bool: present nodes ``i ≠ j`` within :attr:`n_hops` rings of each other."""
        diff = node_offsets[:, :, None, :] - node_offsets[:, None, :, :]
        dist = grid_distance(diff, self.hex_geometry)
        both = node_mask[:, :, None] & node_mask[:, None, :]
        return both & (dist >= 1) & (dist <= self.n_hops)

    def _check_inputs(self, centre_prediction, node_embeddings, node_offsets, node_mask):
        if node_embeddings.dim() != 3:
            raise ValueError(f"node_embeddings must be (B, K+1, D), got shape {tuple(node_embeddings.shape)}")
        b, n, d = node_embeddings.shape
        if d != self.embedding_dim:
            raise ValueError(f"node embeddings have width {d}, the model expects embedding_dim={self.embedding_dim}")
        if tuple(centre_prediction.shape) != (b, self.n_genes):
            raise ValueError(f"centre_prediction has shape {tuple(centre_prediction.shape)}, expected ({b}, {self.n_genes})")
        if tuple(node_offsets.shape) != (b, n, 2):
            raise ValueError(f"node_offsets has shape {tuple(node_offsets.shape)}, expected ({b}, {n}, 2)")
        if tuple(node_mask.shape) != (b, n):
            raise ValueError(f"node_mask has shape {tuple(node_mask.shape)}, expected ({b}, {n})")
        if not bool(node_mask[:, 0].all()):
            raise ValueError("node 0 is the centre spot and must be present (node_mask[:, 0] all True)")
        if bool((node_offsets[:, 0] != 0).any()):
            raise ValueError("node 0 is the centre spot: its offset node_offsets[:, 0] must be (0, 0)")

    def forward(
        self,
        centre_prediction: torch.Tensor,
        node_embeddings: torch.Tensor,
        node_offsets: torch.Tensor,
        node_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Stage-1 prediction of the centre + the graph network's residual, (B, n_genes).

        See the module docstring for the inputs; ``node_mask=None`` means every node is present.
        """
        b, n, d = node_embeddings.shape
        if node_mask is None:
            node_mask = torch.ones(b, n, dtype=torch.bool, device=node_embeddings.device)
        node_mask = node_mask.to(torch.bool)
        node_offsets = node_offsets.to(torch.long)
        self._check_inputs(centre_prediction, node_embeddings, node_offsets, node_mask)

        pos = sincos_encoding_2d(node_offsets, d).to(node_embeddings.dtype)
        feats = torch.cat((node_embeddings, pos), dim=-1) if self.positional == "concat" else node_embeddings + pos

        keep = node_mask.reshape(-1)
        x = feats.reshape(b * n, -1)[keep]  # masked nodes are dropped here, before any layer
        new_id = torch.cumsum(keep.long(), 0) - 1
        gb, gi, gj = self.local_adjacency(node_offsets, node_mask).nonzero(as_tuple=True)
        edge_index = torch.stack((new_id[gb * n + gi], new_id[gb * n + gj]))
        batch = torch.arange(b, device=x.device).repeat_interleave(n)[keep]

        x = self.preprocess(x)
        for conv in self.convs:
            x = self.act(conv(x, edge_index))
        if self.pool is not None:
            x, _, _, pooled_batch, _, _ = self.pool(x, edge_index, batch=batch)
            pooled = x.new_zeros(b, x.shape[1]).index_copy(0, pooled_batch, x)
        else:
            pool_fn = {"mean": gnn.global_mean_pool, "max": gnn.global_max_pool, "add": gnn.global_add_pool}[self.pooling]
            pooled = pool_fn(x, batch, size=b)
        return centre_prediction + self.head(pooled).to(centre_prediction.dtype)


def sepal(n_genes: int, pretrained: bool = False, **options) -> SEPAL:
    """SEPAL's stage 2 with the official best Visium configuration: ``options`` are those of
    :class:`SEPAL`, whose defaults are that configuration.

    ``pretrained`` is accepted for the registry's uniform signature: stage 2 has no ImageNet
    weights; its pretrained part is the stage-1 ViT-B+Δ, whose checkpoint the caller loads with
    :func:`load_stage1` (which checks dataset, scenario and seed).
    """
    del pretrained
    return SEPAL(n_genes, **options)


# ---------------------------------------------------------------------------------------------
# Inputs: neighbourhoods and stage-1 outputs
# ---------------------------------------------------------------------------------------------


def gather_neighbourhoods(
    index: np.ndarray,
    rows: np.ndarray | Sequence[int],
    embeddings: np.ndarray | torch.Tensor,
    n_hops: int,
    hex_geometry: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Padded node tensors of the spots ``rows`` for :meth:`SEPAL.forward`.

    Parameters
    ----------
    index
        ``graphs.neighbour_index(adata, n_hops, hex_geometry)``: (n_spots, K), ``-1`` = absent.
    rows
        Integer positions of the centre spots (B,).
    embeddings
        Stage-1 embeddings of every spot, (n_spots, D).
    n_hops, hex_geometry
        Those ``index`` was built with (they fix the offset of each column).

    Returns
    -------
    node_embeddings, node_offsets, node_mask
        (B, K+1, D) float32 (zeros where absent), (B, K+1, 2) long, (B, K+1) bool; node 0 is the centre.
    """
    index = np.asarray(index)
    offsets = [(0, 0)] + list(graphs.hop_offsets(n_hops, hex_geometry))
    if index.ndim != 2 or index.shape[1] != len(offsets) - 1:
        raise ValueError(f"index has shape {index.shape}, but {n_hops} hop(s) on a "
                         f"{'hexagonal' if hex_geometry else 'square'} grid give {len(offsets) - 1} columns: "
                         "build it with graphs.neighbour_index(adata, n_hops, hex_geometry) and the same options")
    rows = np.asarray(rows, dtype=np.int64)
    emb = torch.as_tensor(embeddings, dtype=torch.float32)
    if emb.shape[0] != index.shape[0]:
        raise ValueError(f"embeddings cover {emb.shape[0]} spots but the neighbour index {index.shape[0]}")
    nodes = np.concatenate([rows[:, None], index[rows]], axis=1)
    mask = torch.from_numpy(nodes >= 0)
    idx = torch.from_numpy(np.where(nodes >= 0, nodes, 0))
    node_embeddings = emb[idx] * mask[..., None]
    node_offsets = torch.tensor(offsets, dtype=torch.long).expand(len(rows), -1, -1).clone()
    return node_embeddings, node_offsets, mask


@torch.no_grad()
def stage1_outputs(model: nn.Module, patches: torch.Tensor, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings and predictions of a stage-1 :class:`~spared_utils.models.encoders.PatchRegressor`.

    The embedding is the backbone output before the head (768-d class token for ViT-B, as the
    official code with ``heads.head = Identity``); the prediction is the model's output
    (expression: Δ + training mean). Computed in eval mode without gradients, on the model's device.

    Returns
    -------
    embeddings, predictions
        (n, n_features) and (n, n_genes) float32 on the CPU.
    """
    for attr in ("normalize", "backbone", "head", "offset"):
        if not hasattr(model, attr):
            raise TypeError(f"stage1_outputs needs a PatchRegressor (vit_b_delta); {type(model).__name__} has no {attr!r}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    embs, preds = [], []
    for start in range(0, len(patches), batch_size):
        x = patches[start:start + batch_size].to(device)
        e = model.embed(x)
        embs.append(e.float().cpu())
        preds.append((model.head(e) + model.offset).float().cpu())
    model.train(was_training)
    return torch.cat(embs), torch.cat(preds)


# ---------------------------------------------------------------------------------------------
# Stage-1 checkpoints: stage 2 starts from the one of its own dataset, scenario and seed
# ---------------------------------------------------------------------------------------------


def stage1_meta(dataset: str, scenario: str, seed: int) -> dict:
    """The metadata a stage-1 checkpoint carries: ``{"stage": "sepal_stage1", dataset, scenario, seed}``."""
    return {"stage": "sepal_stage1", "dataset": str(dataset), "scenario": str(scenario), "seed": int(seed)}


def check_stage1(checkpoint_meta: Mapping, dataset: str, scenario: str, seed: int) -> None:
    """Raise ``ValueError`` unless the stage-1 checkpoint is of this dataset, scenario and seed.

    Parameters
    ----------
    checkpoint_meta
        The checkpoint's metadata (:func:`stage1_meta`, or :func:`read_stage1_meta` of a file).
    dataset, scenario, seed
        What stage 2 is trained for.
    """
    wanted = stage1_meta(dataset, scenario, seed)
    missing = [k for k in STAGE1_KEYS if k not in checkpoint_meta]
    if missing:
        raise ValueError(f"the stage-1 checkpoint's metadata lacks {missing} (it has {dict(checkpoint_meta)}), so it "
                         f"cannot be matched to stage 2 for dataset={wanted['dataset']!r}, "
                         f"scenario={wanted['scenario']!r}, seed={wanted['seed']}; save it with save_stage1_checkpoint")
    have = {"dataset": str(checkpoint_meta["dataset"]), "scenario": str(checkpoint_meta["scenario"]),
            "seed": int(checkpoint_meta["seed"])}
    differ = [k for k in STAGE1_KEYS if have[k] != wanted[k]]
    if differ:
        def fmt(d):
            return f"dataset={d['dataset']!r}, scenario={d['scenario']!r}, seed={d['seed']}"

        raise ValueError(f"SEPAL stage 2 must start from the stage-1 (ViT-B+Δ) checkpoint of the same dataset, "
                         f"scenario and seed: the checkpoint is for {fmt(have)} but stage 2 is for {fmt(wanted)} "
                         f"(differs in {', '.join(differ)})")


def save_stage1_checkpoint(model: nn.Module, path: str | Path, dataset: str, scenario: str, seed: int) -> Path:
    """Save a stage-1 model's weights with its dataset, scenario and seed (``{"model", "meta"}``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"model": state, "meta": stage1_meta(dataset, scenario, seed)}, path)
    return path


def read_stage1_meta(checkpoint: str | Path | Mapping) -> dict:
    """The metadata of a stage-1 checkpoint (a path, or the loaded dict); ``{}`` if it has none."""
    if not isinstance(checkpoint, Mapping):
        checkpoint = torch.load(Path(checkpoint), map_location="cpu", weights_only=True)
    return dict(checkpoint.get("meta", {}))


def load_stage1(
    path: str | Path,
    dataset: str,
    scenario: str,
    seed: int,
    model: nn.Module | None = None,
) -> nn.Module:
    """Load a stage-1 checkpoint after :func:`check_stage1`; build ``vit_b_delta`` if no ``model``.

    The returned model is in eval mode with every parameter frozen (stage 1 is not trained again).
    """
    ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
    check_stage1(read_stage1_meta(ckpt), dataset, scenario, seed)
    state = ckpt["model"]
    if model is None:  # the input size follows from the number of position embeddings (16-px tiles)
        side = 16 * math.isqrt(int(state["backbone.encoder.pos_embedding"].shape[1]) - 1)
        model = vit_b_delta(int(state["head.weight"].shape[0]), pretrained=False,
                            input_size=None if side == 224 else side)
    model.load_state_dict(state)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


__all__ = [
    "POOLINGS", "POSITIONAL", "SEPAL", "STAGE1_KEYS", "check_stage1", "gather_neighbourhoods", "grid_distance",
    "load_stage1", "read_stage1_meta", "save_stage1_checkpoint", "sepal", "sincos_encoding_2d", "stage1_meta",
    "stage1_outputs", "SepalTask", "setup_stage1", "stage1_options",
]


#: The predictor SEPAL's stage 1 is (its record's name).
STAGE1_MODEL = "vit_b_delta"


def stage1_options(costs) -> dict:
    """SEPAL's setup options for a chapter run: stage 1 at the budget and overrides of the run itself.

    ``costs(name)`` gives predictor ``name``'s flat cost options at the chapter's budget and cost
    overrides; stage 1 is then the run chapter 12 makes with the same parameters, so its
    checkpoint is reused when that chapter ran first.
    """
    return {"stage1": costs(STAGE1_MODEL)}


def setup_stage1(ctx: SetupContext) -> dict:
    """SEPAL's setup hook: its frozen stage 1, the ViT-B+Δ of the same dataset, scenario and seed.

    From the setup option ``stage1_checkpoint`` when given (refused unless its metadata match),
    else trained with the setup option ``stage1`` (flat options; default: the ViT-B+Δ record's
    CPU budget) and saved as ``stage1.pt`` beside that run's checkpoints, then loaded back
    through the same check. Returns the task's keyword ``stage1``.
    """
    checkpoint = ctx.options.get("stage1_checkpoint")
    if not checkpoint:
        run = ctx.train(STAGE1_MODEL, **ctx.options.get("stage1", {}))
        checkpoint = save_stage1_checkpoint(run.model, run.checkpoint_dir / "stage1.pt", ctx.dataset, ctx.scenario,
                                            ctx.seed)
    return {"stage1": load_stage1(checkpoint, ctx.dataset, ctx.scenario, ctx.seed)}


class SepalTask(Task):
    """SEPAL stage 2 over frozen stage-1 (ViT-B+Δ) embeddings of each spot's neighbourhood.

    ``stage1``: the frozen ViT-B+Δ of the same dataset, scenario and seed (the engine loads it
    with :func:`spared_utils.models.sepal.load_stage1`, which refuses another one).
    """

    def __init__(self, *args, stage1: nn.Module | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if stage1 is None:
            raise ValueError("SEPAL's stage 2 needs its stage-1 ViT-B+Δ model (stage1=...)")
        if self.data.adata is None:
            raise ValueError("SEPAL needs the AnnData (spot neighbourhoods); build the data with prediction_data")
        self.stage1 = stage1.to(self.device).eval()

        def encode(x):
            e = self.stage1.embed(x)
            return e, self.stage1.head(e) + self.stage1.offset

        self.cache = FrozenCache(self.data, encode, self.device, name="stage-1 ViT embeddings", progress=self.progress,
                                 module=self.stage1)
        self.index = graphs.neighbour_index(self.data.adata, self.model.n_hops, self.model.hex_geometry)
        self.nodes(self.train_rows)  # encode every node the training graphs read, once

    def nodes(self, rows: np.ndarray) -> np.ndarray:
        """The spots of ``rows``' neighbourhoods (encoded in the cache when missing)."""
        nodes = np.concatenate([rows, self.index[rows].ravel()])
        nodes = np.unique(nodes[nodes >= 0])
        self.cache.get(nodes)
        return nodes

    def _inputs(self, rows: np.ndarray):
        self.nodes(rows)
        emb, pred = self.cache.all()
        node_emb, offsets, node_mask = gather_neighbourhoods(self.index, rows, emb, self.model.n_hops,
                                                             self.model.hex_geometry)
        return (pred[torch.from_numpy(rows)].to(self.device), node_emb.to(self.device), offsets.to(self.device),
                node_mask.to(self.device))

    def batches(self):
        rows = self.train_rows
        ds = TensorDataset(torch.from_numpy(rows), torch.from_numpy(self.data.target[rows]),
                                            torch.from_numpy(self.data.loss_mask[rows]))
        size = max(1, min(self.batch_size, len(ds)))
        return DataLoader(ds, batch_size=size, shuffle=True, drop_last=True,
                          generator=torch.Generator().manual_seed(self.seed))

    def loss(self, net, batch):
        rows, target, mask = batch
        return masked_mse_loss(net(*self._inputs(rows.cpu().numpy())), target, mask)

    def _predict(self, net, rows, progress):
        return self._in_batches(rows, lambda sl: net(*self._inputs(rows[sl])), progress)
