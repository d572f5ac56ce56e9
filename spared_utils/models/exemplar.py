"""Exemplar-guided predictors: EGN and EGGN, and the exemplar bank they retrieve from.

Both predictors look up, for every spot, the ``k`` training spots whose *frozen* image features
are nearest to its own (its "exemplars") and read those exemplars' measured expression next to
the spot's own image:

==========  =========================================  ============================================
name        what it reads                              what it is
==========  =========================================  ============================================
``egn``     the spot's patch, its frozen ResNet-50      ViT (from scratch) whose patch tokens are
            feature, its k exemplars' features and      revised by Exemplar-Bridging (EB) blocks;
            expression                                  attention-pooled tokens + bridged spot
                                                        token → genes (EGN, WACV 2023)
``eggn``    one slide: every spot's frozen ResNet-18   heterogeneous graph (spots + exemplars),
            feature, its array position, its k          SAGEConv layers + an exemplar-bridging
            exemplars' features and expression          message passing step → genes (EGGN,
                                                        Pattern Recognition 2024)
==========  =========================================  ============================================

References
----------
Yang, Hossain, Stone, Rahman. *Exemplar Guided Deep Neural Network for Spatial Transcriptomics
Analysis of Gene Expression Prediction.* WACV 2023, 5028–5037 (EGN).
Yang, Hossain, Stone, Rahman. *Spatial transcriptomics analysis of gene expression prediction
using exemplar guided graph neural network.* Pattern Recognition 145, 109966 (2024) (EGGN).
Official code of both: https://github.com/Yan98/EGN (``v1/`` is EGN, ``v2/`` is EGGN; the
repository ``Yan98/EGGN`` named in the papers redirects there). Facts below were read from that
code and from the EGN paper; the implementation here is our own.

Exemplar bank (:class:`ExemplarBank`)
-------------------------------------
Built from **training spots only** (it refuses any other split): their frozen, global-pooled
ImageNet ResNet features (ResNet-50, 2,048-d, for EGN; ResNet-18, 512-d, for EGGN; input
normalised as ``(x − 0.5) / 0.5`` as in the official ``build_exemplar.py``), their expression and
their slide. :meth:`ExemplarBank.query` returns the ``k`` nearest entries by exact, chunked
``torch.cdist``: Euclidean (L2) for EGN, L1 for EGGN (the official scripts use ``p=2`` and ``p=1``).

Leakage rule. The official index skips every spot of the query's **own slide** and every slide
outside the training fold (the EGN paper: "candidate image pairs are from different patients").
:meth:`~ExemplarBank.query` therefore takes ``exclude_slides`` (one slide label per query: all
bank entries of that slide are skipped) and ``exclude_ids`` (one spot id per query: that entry is
skipped). Pass both for every query, as the official rule does; for validation/test spots they
remove nothing, since the bank holds no spot of their slides. A training spot is thus never its
own exemplar, nor is any spot of its slide. Pass patient labels as the bank's ``slides`` to get
the paper's stricter different-patient rule.

Deviations from the official code, and why
------------------------------------------
* **Genes.** The official models hard-code 250 outputs (and 250-wide exemplar inputs); here
  ``n_genes``.
* **Expression scale.** The official code feeds and predicts expression min–max normalised per
  gene with the training range (``log10(count + 1)``). Here the target is the package's layer
  (log2(TPM + 1)); ``set_expression_range(min, max)`` (training per-gene range) reproduces the
  official normalisation of exemplar expression inside the model and maps the output back; by
  default (range 0–1) expression passes unchanged.
* **EGN's own-spot feature.** The official model reads the spot's own frozen feature (the
  "global view" ``e_i`` of the paper) besides its exemplars, so :meth:`EGN.forward` takes it as a
  fourth argument ``query_features`` (what :meth:`ExemplarBank.encode` returns for the spot).
* **EGN input.** Patches are resized to ``image_size`` (256 px officially) if they differ (the
  package's patches are 224 px); the patch grid of the EB blocks (8 × 8 officially) is
  ``image_size // patch_size``. The normalisation defaults to the official channel statistics and
  is re-estimated on training patches by the harness (``input_stats = "training"``). The official
  positional embedding has one unused extra row (a class-token slot that is never used), not
  allocated here (``dim`` fewer parameters). The last EB block's update of the exemplar tokens is
  never read by anything in the official model; it is not built here (so that every parameter gets
  a gradient).
* **Head start.** ``set_target_mean`` (the harness calls it after ``set_expression_range``)
  zeroes the output layer's weights and sets its bias to the training mean of each gene, so the
  untrained model predicts exactly the mean (as this book's ViT-B+Δ) instead of random values
  spread over each gene's min–max range (the official initialisation): the CPU budget's few
  dozen steps then learn deviations from the mean, not the mean itself.
* **EGGN graph.** Spot–spot edges: the official code quantises pixel coordinates to 256-px cells
  and links spots within √2 cells (``radius_graph``, at most 5 neighbours). Here positions come
  from the array grid in units of the centre-to-centre spot distance (Visium: ``x = col / 2``,
  ``y = row·√3 / 2``), so ``radius = √2`` links exactly the six first-ring neighbours (the eight
  surrounding spots on a square ST grid), with no neighbour cap. Exemplar nodes (the unique
  exemplars retrieved by a slide's spots, each linked to the spots that retrieved it) and the
  exemplar–exemplar kNN graph (k = 3 over [feature, expression], Euclidean, no self loops) follow
  the official ``generate_graph.py``; nodes are merged by bank index when given, by identical
  values otherwise. torch_cluster/pyg-lib are not required: graphs are built with chunked
  ``torch.cdist``.
* **EGGN exemplar-expression projection.** The official ``HeteroGNN.forward`` projects
  ``x["example"][:, -250:]`` *after* overwriting ``x["example"]`` with the hidden features, i.e.
  the last 250 hidden channels instead of the exemplar expression (an evident statement-order
  slip). Here the exemplar expression itself is projected.
* **EGGN layers.** The official ``HeteroConv`` subclass is replaced by an explicit layer
  (:class:`EGGNLayer`): ``SAGEConv`` on spot–spot and on exemplar–exemplar edges, the
  exemplar-bridging message passing (:class:`ExemplarBridgeConv`) on exemplar→spot edges, outputs
  of a node type averaged (the official ``aggr="mean"``). The in-place LeakyReLU of the official
  EGB block (applied to the projected exemplar and spot features before they are used) is written
  out explicitly.

Training in the official code (for the harness, not enforced here): AdamW, lr 5e-4, weight decay
1e-4; EGN 50 epochs × batch 32 (cosine schedule with 100 warm-up steps), EGGN 300 epochs × one
slide per step; both minimise ``MSE + 0.5 · (1 − PCC)`` (:func:`egn_loss`; the EGN paper writes
``L2 + L_pcc`` without the 0.5).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .encoders import ImageNormalize, load_torchvision
from .pyg import torch_geometric

#: Frozen retrieval backbones (torchvision name → feature width).
BANK_BACKBONES = {"resnet50": 2048, "resnet18": 512}
#: Distance of each retrieval metric as the ``p`` of ``torch.cdist``.
METRICS = {"l2": 2.0, "l1": 1.0}
#: Normalisation of the official ``build_exemplar.py``: ``(x − 0.5) / 0.5``.
BANK_MEAN = (0.5, 0.5, 0.5)
BANK_STD = (0.5, 0.5, 0.5)
#: Channel statistics the official EGN normalises its patches with (its training data).
EGN_PATCH_MEAN = (0.5476, 0.5218, 0.6881)
EGN_PATCH_STD = (0.2461, 0.2101, 0.1649)


# ---------------------------------------------------------------------------------------------
# Exact nearest neighbours, chunked over queries
# ---------------------------------------------------------------------------------------------


def chunked_knn(
    queries: Tensor,
    reference: Tensor,
    k: int,
    p: float = 2.0,
    chunk_size: int = 1024,
    forbidden=None,
) -> tuple[Tensor, Tensor]:
    """Exact ``k`` nearest ``reference`` rows of every query row, ``chunk_size`` queries at a time.

    Parameters
    ----------
    queries, reference
        (Q, F) and (R, F) float tensors on the same device.
    k
        Neighbours per query.
    p
        Minkowski exponent of ``torch.cdist`` (2: Euclidean, 1: L1).
    chunk_size
        Queries per ``cdist`` call: memory is ``chunk_size × R`` distances, so e.g. 43,804 training
        spots query a 43,804-spot bank in ~180 MB chunks instead of a 7.7 GB matrix.
    forbidden
        Optional ``forbidden(start, stop) -> (stop − start, R) bool`` mask of pairs that must not
        be returned (e.g. a spot and itself).

    Returns
    -------
    distances, indices
        (Q, k) each, nearest first. Raises ``ValueError`` if a query has fewer than ``k`` allowed
        reference rows.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    n_ref = reference.shape[0]
    if k > n_ref:
        raise ValueError(f"asked for k={k} neighbours but the reference has only {n_ref} rows")
    dists, idxs = [], []
    for start in range(0, queries.shape[0], chunk_size):
        stop = min(start + chunk_size, queries.shape[0])
        d = torch.cdist(queries[start:stop], reference, p=p)
        if forbidden is not None:
            d = d.masked_fill(forbidden(start, stop), float("inf"))
        val, idx = torch.topk(d, k, dim=1, largest=False, sorted=True)
        if torch.isinf(val).any():
            row = start + int(torch.isinf(val).any(dim=1).nonzero()[0])
            raise ValueError(
                f"query {row} has fewer than k={k} allowed neighbours (after exclusions): "
                "lower k or give the bank more slides"
            )
        dists.append(val)
        idxs.append(idx)
    if not dists:
        return queries.new_zeros((0, k)), torch.zeros((0, k), dtype=torch.long, device=queries.device)
    return torch.cat(dists), torch.cat(idxs)


# ---------------------------------------------------------------------------------------------
# The exemplar bank
# ---------------------------------------------------------------------------------------------


class FrozenEncoder(nn.Module):
    """A frozen, global-pooled torchvision ResNet: patches → (B, n_features) retrieval features.

    Always in eval mode (``train()`` keeps it there) and without trainable parameters.
    """

    def __init__(self, backbone: str = "resnet50", pretrained: bool = False,
                 mean: Sequence[float] = BANK_MEAN, std: Sequence[float] = BANK_STD):
        super().__init__()
        from torchvision import models

        if backbone not in BANK_BACKBONES:
            raise ValueError(f"backbone must be one of {sorted(BANK_BACKBONES)}, got {backbone!r}")
        weights = {"resnet50": models.ResNet50_Weights, "resnet18": models.ResNet18_Weights}[backbone].IMAGENET1K_V1
        net = load_torchvision(getattr(models, backbone), weights, pretrained)
        net.fc = nn.Identity()
        self.backbone_name = backbone
        self.n_features = BANK_BACKBONES[backbone]
        self.normalize = ImageNormalize(mean, std)
        self.net = net
        for param in self.parameters():
            param.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenEncoder":  # noqa: ARG002 - frozen: always eval
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.normalize(x)).flatten(1)

    @torch.no_grad()
    def encode(self, patches, batch_size: int = 64, device: str | torch.device | None = None) -> Tensor:
        """Features of many patches, ``batch_size`` at a time, returned as float32 on the CPU.

        ``patches``: (N, 3, H, W) or channel-last (N, H, W, 3) ``uint8`` (0–255) or float (0–1),
        a tensor or anything numpy can index (e.g. a memory-mapped patch array).
        """
        device = torch.device(device) if device is not None else next(self.net.parameters()).device
        self.to(device)
        n = len(patches)
        out = torch.empty((n, self.n_features), dtype=torch.float32)
        for start in range(0, n, batch_size):
            batch = torch.as_tensor(np.asarray(patches[start:start + batch_size]))
            if batch.ndim != 4:
                raise ValueError(f"patches must be (N, 3, H, W) or (N, H, W, 3), got a batch of shape {tuple(batch.shape)}")
            if batch.shape[1] != 3 and batch.shape[-1] == 3:
                batch = batch.permute(0, 3, 1, 2)
            out[start:start + len(batch)] = self(batch.to(device)).float().cpu()
        return out


class Exemplars(NamedTuple):
    """What :meth:`ExemplarBank.query` returns for Q queries (nearest exemplar first)."""

    #: (Q, k) positions in the bank
    indices: Tensor
    #: (Q, k) distances (L2 or L1)
    distances: Tensor
    #: (Q, k, n_genes) the exemplars' expression
    expression: Tensor
    #: (Q, k, n_features) the exemplars' frozen features
    features: Tensor


def _labels(values, n: int, what: str) -> np.ndarray:
    arr = np.asarray(values).astype(str)
    if arr.shape != (n,):
        raise ValueError(f"{what} must have one entry per spot ({n}), got shape {arr.shape}")
    return arr


def _check_training_only(splits, n: int) -> None:
    split_arr = _labels(splits, n, "splits")
    wrong = split_arr != "train"
    if wrong.any():
        found = {s: int((split_arr == s).sum()) for s in np.unique(split_arr[wrong])}
        raise ValueError(
            f"the exemplar bank may hold training spots only, but {int(wrong.sum())} of {n} spots have "
            f"split {found}: validation/test expression must never be retrieved as an exemplar"
        )


class ExemplarBank:
    """Frozen features, expression and slides of training spots, searchable by exact kNN.

    Parameters
    ----------
    features
        (N, F) frozen image features of the spots (see :meth:`from_patches`).
    expression
        (N, n_genes) their expression (the target layer).
    slides
        (N,) slide label of each spot (any hashable; compared as strings).
    ids
        (N,) unique spot id of each spot (e.g. ``obs_names``).
    splits
        (N,) split of each spot: every one must be ``"train"``, else ``ValueError`` — validation
        and test spots must never serve as exemplars.
    metric
        ``"l2"`` (EGN) or ``"l1"`` (EGGN).
    encoder
        The :class:`FrozenEncoder` the features came from (kept to encode queries the same way).
    """

    def __init__(self, features, expression, slides, ids, splits, metric: str = "l2",
                 encoder: FrozenEncoder | None = None):
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
        features = torch.as_tensor(np.asarray(features) if not isinstance(features, Tensor) else features).float()
        expression = torch.as_tensor(np.asarray(expression) if not isinstance(expression, Tensor) else expression).float()
        if features.ndim != 2 or expression.ndim != 2 or len(features) != len(expression):
            raise ValueError(f"features (N, F) and expression (N, n_genes) must have the same N, got "
                             f"{tuple(features.shape)} and {tuple(expression.shape)}")
        n = len(features)
        if n == 0:
            raise ValueError("an exemplar bank needs at least one training spot")
        _check_training_only(splits, n)
        self.slides = _labels(slides, n, "slides")
        self.ids = _labels(ids, n, "ids")
        self._position = {sid: i for i, sid in enumerate(self.ids)}
        if len(self._position) != n:
            raise ValueError("spot ids must be unique within the bank")
        slide_names, slide_codes = np.unique(self.slides, return_inverse=True)
        self._slide_code = {s: i for i, s in enumerate(slide_names)}
        self.features = features
        self.expression = expression.to(features.device)
        self.slide_codes = torch.as_tensor(slide_codes, dtype=torch.long, device=features.device)
        self.metric = metric
        self.encoder = encoder

    @classmethod
    def from_patches(cls, patches, expression, slides, ids, splits, backbone: str = "resnet50",
                     pretrained: bool = False, metric: str | None = None, batch_size: int = 64,
                     device: str | torch.device | None = None) -> "ExemplarBank":
        """Encode training patches with a frozen ImageNet ResNet and build the bank.

        ``backbone="resnet50"`` with ``metric="l2"`` is EGN's bank, ``"resnet18"`` with ``"l1"``
        EGGN's (the metric defaults accordingly). The split check runs before any encoding.
        """
        _check_training_only(splits, len(patches))
        encoder = FrozenEncoder(backbone, pretrained)
        features = encoder.encode(patches, batch_size=batch_size, device=device)
        metric = metric or ("l2" if backbone == "resnet50" else "l1")
        return cls(features, expression, slides, ids, splits, metric=metric, encoder=encoder)

    def __len__(self) -> int:
        return len(self.features)

    @property
    def n_features(self) -> int:
        return int(self.features.shape[1])

    @property
    def device(self) -> torch.device:
        return self.features.device

    def to(self, device: str | torch.device) -> "ExemplarBank":
        """Move the bank's tensors (queries then run there); returns ``self``."""
        self.features = self.features.to(device)
        self.expression = self.expression.to(device)
        self.slide_codes = self.slide_codes.to(device)
        return self

    def encode(self, patches, batch_size: int = 64, device: str | torch.device | None = None) -> Tensor:
        """Query features of patches with the bank's own frozen encoder (same as its entries)."""
        if self.encoder is None:
            raise ValueError("this bank was built from features, not patches: it has no encoder")
        return self.encoder.encode(patches, batch_size=batch_size, device=device)

    def query(self, features, k: int, exclude_slides: Sequence | None = None,
              exclude_ids: Sequence | None = None, chunk_size: int = 1024) -> Exemplars:
        """The ``k`` nearest bank entries of each query feature (exact, nearest first).

        Parameters
        ----------
        features
            (Q, F) query features (from :meth:`encode`).
        k
            Exemplars per query (6 in both official models).
        exclude_slides
            Optional (Q,) slide label per query: no entry of that slide is returned (the official
            rule; labels absent from the bank exclude nothing).
        exclude_ids
            Optional (Q,) spot id per query: that entry is never returned (a training spot is not
            its own exemplar; ids absent from the bank exclude nothing).
        chunk_size
            Queries per ``torch.cdist`` call (see :func:`chunked_knn`).
        """
        q = torch.as_tensor(np.asarray(features) if not isinstance(features, Tensor) else features)
        q = q.float().to(self.device)
        if q.ndim != 2 or q.shape[1] != self.n_features:
            raise ValueError(f"query features must be (Q, {self.n_features}), got {tuple(q.shape)}")
        n_q = len(q)
        slide_of_query = own_position = None
        if exclude_slides is not None:
            labels = _labels(exclude_slides, n_q, "exclude_slides")
            slide_of_query = torch.as_tensor([self._slide_code.get(s, -1) for s in labels],
                                             dtype=torch.long, device=self.device)
        if exclude_ids is not None:
            labels = _labels(exclude_ids, n_q, "exclude_ids")
            own_position = torch.as_tensor([self._position.get(s, -1) for s in labels],
                                           dtype=torch.long, device=self.device)
        positions = torch.arange(len(self), device=self.device)

        def forbidden(start: int, stop: int) -> Tensor:
            mask = torch.zeros((stop - start, len(self)), dtype=torch.bool, device=self.device)
            if slide_of_query is not None:
                mask |= self.slide_codes[None, :] == slide_of_query[start:stop, None]
            if own_position is not None:
                mask |= positions[None, :] == own_position[start:stop, None]
            return mask

        use_mask = slide_of_query is not None or own_position is not None
        dist, idx = chunked_knn(q, self.features, k, p=METRICS[self.metric], chunk_size=chunk_size,
                                forbidden=forbidden if use_mask else None)
        return Exemplars(idx, dist, self.expression[idx], self.features[idx])


def bank_for(model: nn.Module, patches, expression, slides, ids, splits, batch_size: int = 64,
             device: str | torch.device | None = None) -> ExemplarBank:
    """The exemplar bank ``model`` (built by :func:`egn` or :func:`eggn`) expects."""
    return ExemplarBank.from_patches(
        patches, expression, slides, ids, splits, backbone=model.exemplar_backbone,
        pretrained=model.exemplar_pretrained, metric=model.exemplar_metric, batch_size=batch_size,
        device=device,
    )


# ---------------------------------------------------------------------------------------------
# Loss of both official models
# ---------------------------------------------------------------------------------------------


def egn_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None, pcc_weight: float = 0.5) -> Tensor:
    """``MSE + pcc_weight · (1 − mean per-gene PCC)`` over the entries where ``mask`` is True.

    The official EGN and EGGN training steps minimise ``MSE + 0.5 · (1 − PCC)``, the PCC of each
    gene taken over the spots of the batch (EGGN: of the slide) and averaged over genes, with a
    ``1e-8`` guard in its denominator. Here MSE averages the masked entries and each gene's PCC
    uses its masked spots only; genes with fewer than two such spots are left out of the mean.

    Parameters
    ----------
    pred, target
        (B, n_genes).
    mask
        (B, n_genes) bool, True where the target is real; ``None``: every entry.
    pcc_weight
        Weight of the correlation term (0.5 in the official code; the EGN paper writes 1).
    """
    if pred.shape != target.shape or pred.ndim != 2:
        raise ValueError(f"pred and target must both be (B, n_genes), got {tuple(pred.shape)} and {tuple(target.shape)}")
    m = torch.ones_like(target, dtype=torch.bool) if mask is None else mask.to(torch.bool)
    w = m.to(pred.dtype)
    n_entries = w.sum()
    if n_entries == 0:
        raise ValueError("the mask selects no entry")
    mse = ((pred - target) ** 2 * w).sum() / n_entries
    n_spots = w.sum(0)
    keep = n_spots >= 2
    if not keep.any():
        return mse
    safe = n_spots.clamp_min(1)
    pm = pred - (pred * w).sum(0) / safe
    tm = target - (target * w).sum(0) / safe
    num = (pm * tm * w).sum(0)
    # one sqrt of the product, kept away from 0: sqrt's gradient at 0 is infinite (a gene whose
    # targets in the batch are all equal would turn the whole gradient into NaN)
    den = torch.sqrt((pm ** 2 * w).sum(0) * (tm ** 2 * w).sum(0) + 1e-12)
    pcc = num / den
    return mse + pcc_weight * (1.0 - pcc[keep].mean())


# ---------------------------------------------------------------------------------------------
# Shared: exemplar-expression normalisation
# ---------------------------------------------------------------------------------------------


class _ExpressionRange(nn.Module):
    """Per-gene min–max normalisation of exemplar expression and its inverse on the output."""

    def __init__(self, n_genes: int):
        super().__init__()
        self.register_buffer("minimum", torch.zeros(n_genes))
        self.register_buffer("scale", torch.ones(n_genes))

    def set(self, minimum, maximum) -> None:
        lo = torch.as_tensor(np.asarray(minimum, dtype=np.float32))
        hi = torch.as_tensor(np.asarray(maximum, dtype=np.float32))
        if lo.shape != self.minimum.shape or hi.shape != self.minimum.shape:
            raise ValueError(f"minimum and maximum must have shape {tuple(self.minimum.shape)}, got "
                             f"{tuple(lo.shape)} and {tuple(hi.shape)}")
        if (hi < lo).any():
            raise ValueError("maximum must not be below minimum")
        self.minimum.copy_(lo)
        self.scale.copy_(hi - lo + 1e-8)  # the official epsilon

    def normalize(self, y: Tensor) -> Tensor:
        return (y - self.minimum) / self.scale

    def denormalize(self, y: Tensor) -> Tensor:
        return y * self.scale + self.minimum

    def start_at(self, head: nn.Linear, mean) -> None:
        """Zero ``head``'s weights and set its bias so that, before training, the output is exactly the
        training mean (call after :meth:`set`); as ViT-B+Δ's zeroed head in this book."""
        mean = torch.as_tensor(np.asarray(mean, dtype=np.float32)).to(self.minimum.device)
        if mean.shape != self.minimum.shape:
            raise ValueError(f"the training mean has shape {tuple(mean.shape)}, expected {tuple(self.minimum.shape)}")
        with torch.no_grad():
            head.weight.zero_()
            head.bias.copy_(self.normalize(mean))


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
        self.expression_range = _ExpressionRange(n_genes)
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


# ---------------------------------------------------------------------------------------------
# EGGN: graph
# ---------------------------------------------------------------------------------------------


def grid_positions(rows: Tensor, cols: Tensor, hex_geometry: bool = True) -> Tensor:
    """Array coordinates → (N, 2) positions in units of the centre-to-centre spot distance.

    Visium (``hex_geometry=True``, ``row + col`` even): ``x = col / 2``, ``y = row · √3 / 2``, so
    all six first-ring neighbours are at distance 1 and the second ring at √3 and 2. Square ST grid:
    ``(col, row)``.
    """
    rows, cols = torch.as_tensor(rows).double(), torch.as_tensor(cols).double()
    if hex_geometry:
        return torch.stack((cols / 2.0, rows * math.sqrt(3.0) / 2.0), 1)
    return torch.stack((cols, rows), 1)


def radius_edges(pos: Tensor, radius: float, batch: Tensor | None = None, chunk_size: int = 4096) -> Tensor:
    """(2, E) edges between distinct nodes of the same ``batch`` within ``radius`` (both directions).

    Distances ≤ ``radius`` (1e-6 tolerance) count; computed slide by slide with chunked ``cdist``.
    """
    n = len(pos)
    batch = torch.zeros(n, dtype=torch.long, device=pos.device) if batch is None else batch
    edges = []
    for b in torch.unique(batch):
        members = torch.nonzero(batch == b).flatten()
        p = pos[members]
        for start in range(0, len(p), chunk_size):
            d = torch.cdist(p[start:start + chunk_size], p)
            near = d <= radius + 1e-6
            rows = torch.arange(len(d), device=pos.device)
            near[rows, rows + start] = False
            dst, src = torch.nonzero(near, as_tuple=True)
            edges.append(torch.stack((members[src], members[dst + start])))
    return torch.cat(edges, 1) if edges else torch.zeros((2, 0), dtype=torch.long, device=pos.device)


def knn_edges(x: Tensor, k: int, batch: Tensor | None = None, chunk_size: int = 1024) -> Tensor:
    """(2, E) edges ``neighbour → node`` from each node's ``k`` nearest (L2) of the same batch.

    No self loops; a batch with ``m ≤ k`` nodes links each node to the other ``m − 1``.
    """
    n = len(x)
    batch = torch.zeros(n, dtype=torch.long, device=x.device) if batch is None else batch
    edges = []
    for b in torch.unique(batch):
        members = torch.nonzero(batch == b).flatten()
        kk = min(k, len(members) - 1)
        if kk < 1:
            continue
        local = torch.arange(len(members), device=x.device)
        _, idx = chunked_knn(x[members], x[members], kk, p=2.0, chunk_size=chunk_size,
                             forbidden=lambda s, e: local[s:e, None] == local[None, :])
        centre = members.repeat_interleave(kk)
        edges.append(torch.stack((members[idx.flatten()], centre)))
    return torch.cat(edges, 1) if edges else torch.zeros((2, 0), dtype=torch.long, device=x.device)


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
        self.expression_range = _ExpressionRange(n_genes)
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


__all__ = [
    "BANK_BACKBONES", "EGN", "EGGN", "EGGNGraph", "EGGNLayer", "ExemplarBank", "ExemplarBridge",
    "ExemplarBridgeConv", "Exemplars", "FrozenEncoder", "bank_for", "chunked_knn", "eggn", "egn",
    "egn_loss", "grid_positions", "knn_edges", "radius_edges",
]
