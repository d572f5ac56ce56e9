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

import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from ..graphs import chunked_knn
from .encoders import ImageNormalize, load_torchvision
from .features import FrozenCache, shared_cache
from .task import Task

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


class ExpressionRange(nn.Module):
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
# What EGN's and EGGN's tasks share: the frozen features of the run's spots, the bank, the query
# ---------------------------------------------------------------------------------------------


def frozen_features(task: Task) -> FrozenCache:
    """The frozen ResNet features of the model's exemplar bank (shared by the runs of a process).

    Without ImageNet weights the frozen ResNet is a random one: its weights are drawn from the
    run's seed on a generator of their own, so a run gets the same bank whether it is the first
    of its process or follows others (which share the features of their seed), and the run's
    own random stream does not depend on whether the features were already there.
    """
    backbone, pretrained = task.model.exemplar_backbone, bool(task.model.exemplar_pretrained)

    def make() -> FrozenCache:
        with torch.random.fork_rng(devices=[]):
            if not pretrained:
                torch.manual_seed(int(task.seed))
            frozen = FrozenEncoder(backbone, pretrained).to(task.device)
        return FrozenCache(task.data, frozen, task.device, name=f"frozen {backbone} features", progress=task.progress,
                           module=frozen)

    return shared_cache(task.data, (backbone, pretrained, str(task.device), None if pretrained else int(task.seed)),
                        make)


def training_bank(task: Task, features: FrozenCache, metric: str) -> ExemplarBank:
    """The bank of the run's training spots (their frozen features and scenario targets)."""
    rows = task.train_rows
    (feats,) = features.get(rows)
    bank = ExemplarBank(feats, task.data.target[rows], task.data.slides[rows], task.ids[rows],
                                 np.asarray(["train"] * len(rows)), metric=metric)
    return bank.to(task.device)


def query_exemplars(task: Task, bank: ExemplarBank, features: torch.Tensor, rows: np.ndarray, k: int) -> Exemplars:
    """Exemplars of ``rows``: never the spot itself, nor a spot of its own slide (the official rule).

    With a single training slide the slide rule would leave a training spot no exemplar at all;
    then only the spot itself is excluded (with a warning).
    """
    slides = task.data.slides[rows]
    if len(np.unique(bank.slides)) < 2:
        warnings.warn("the exemplar bank holds one slide only: training spots retrieve exemplars from their own "
                      "slide (never themselves); the official rule needs two or more training slides", stacklevel=2)
        slides = None
    return bank.query(features.to(bank.device), k, exclude_slides=slides, exclude_ids=task.ids[rows])
