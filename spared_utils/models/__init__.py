"""The predictor registry: one record per predictor, and ``build(name, n_genes)`` → a torch module.

Each predictor of the benchmark has one :class:`PredictorRecord` in :data:`RECORDS` (after
timm's ``@register_model``): its name, the paper's display name, the builder, what it reads
(``kind``), its trainable parameters at 32 and 128 genes, and two budgets — the CPU default
every chapter, benchmark and table reads, and the paper's. Nothing else in the book writes a
budget down.

Every patch predictor maps a batch of spot patches (``uint8`` (B, 3, 224, 224)) to (B, n_genes)
expression values on the scale of the target layer. One file per family:
:mod:`~spared_utils.models.encoders` holds the four patch encoders (ShuffleNet, ViT-B, ViT-B+Δ,
STNet). Adding a predictor = one builder function + one record in :data:`RECORDS`.

``pretrained=True`` loads ImageNet weights (cached by torch.hub, else downloaded); without a
network it raises :class:`PretrainedWeightsUnavailable`, whose message suggests ``pretrained=False``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from torch import nn

from ..training import count_parameters
from . import encoders
from .encoders import PatchRegressor, PretrainedWeightsUnavailable, dihedral_views

#: What a predictor reads: one spot's patch, a whole slide, a spot graph, or a retrieval bank.
KINDS = ("patch", "slide", "graph", "retrieval")


@dataclass(frozen=True)
class Budget:
    """What one training run costs: ``iterations`` × ``batch_size`` patches at ``learning_rate``.

    ``val_spots`` validation spots are predicted every ``eval_every`` iterations (checkpoint
    selection) and ``eval_spots`` per split at the end (``None``: every spot, as the paper).
    """

    iterations: int
    batch_size: int
    learning_rate: float
    eval_every: int
    val_spots: int | None = None
    eval_spots: int | None = None


#: The paper's protocol for every predictor: 1,000 iterations × batch 256, every spot scored
#: (its learning rate is searched per dataset; 1e-3 is the grid's middle).
PAPER_BUDGET = Budget(iterations=1000, batch_size=256, learning_rate=1e-3, eval_every=10)


@dataclass(frozen=True)
class PredictorRecord:
    """Everything the book knows about one predictor."""

    name: str
    display_name: str
    builder: Callable[..., nn.Module]
    kind: str
    #: trainable parameters at 32 and 128 genes (checked against the built model by the tests)
    n_params_32: int
    n_params_128: int
    #: the chapter's default on a CPU (minutes, from random weights, on the embedded dataset)
    cpu: Budget
    paper: Budget = PAPER_BUDGET
    #: builder options the chapter exposes as parameters, with their defaults
    options: tuple[str, ...] = ()

    def budget(self, which: str = "cpu", **overrides) -> Budget:
        """The ``"cpu"`` or ``"paper"`` budget, with fields whose override is not ``None`` changed."""
        if which not in ("cpu", "paper"):
            raise ValueError(f"budget must be 'cpu' or 'paper', got {which!r}")
        base = self.cpu if which == "cpu" else self.paper
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})


RECORDS: dict[str, PredictorRecord] = {
    r.name: r
    for r in (
        PredictorRecord("shufflenet", "ShuffleNet", encoders.shufflenet, "patch", 374_592, 472_992,
                        cpu=Budget(200, 32, 1e-3, eval_every=25, val_spots=200), options=("width",)),
        PredictorRecord("vit_b", "ViT-B", encoders.vit_b, "patch", 85_823_264, 85_897_088,
                        cpu=Budget(16, 8, 1e-3, eval_every=4, val_spots=16, eval_spots=60)),
        PredictorRecord("vit_b_delta", "ViT-B+Δ", encoders.vit_b_delta, "patch", 85_823_264, 85_897_088,
                        cpu=Budget(24, 8, 1e-4, eval_every=6, val_spots=24, eval_spots=60)),
        PredictorRecord("stnet", "STNet", encoders.stnet, "patch", 6_986_656, 7_085_056,
                        cpu=Budget(60, 16, 1e-3, eval_every=20, val_spots=24, eval_spots=80),
                        options=("dihedral_average",)),
    )
}

#: Every predictor name (the order chapters and figures use).
NAMES: tuple[str, ...] = tuple(RECORDS)


def record(name: str) -> PredictorRecord:
    """The record of predictor ``name`` (an unknown name raises with the known ones)."""
    if name not in RECORDS:
        raise ValueError(f"unknown predictor {name!r}; known: {', '.join(NAMES)}")
    return RECORDS[name]


def build(name: str, n_genes: int, pretrained: bool = False, **options) -> nn.Module:
    """Build predictor ``name`` with ``n_genes`` outputs.

    Parameters
    ----------
    name
        One of :data:`NAMES`.
    n_genes
        Number of genes predicted (outputs of the head).
    pretrained
        Start the backbone from ImageNet weights (needs the torch.hub cache or internet).
    **options
        Builder-specific options, e.g. ``width=1.0`` for ``shufflenet`` or
        ``dihedral_average=False`` for ``stnet``.
    """
    builder = record(name).builder
    if int(n_genes) < 1:
        raise ValueError(f"n_genes must be a positive number of genes, got {n_genes}")
    try:
        return builder(int(n_genes), pretrained=bool(pretrained), **options)
    except TypeError as err:
        if options:
            raise TypeError(f"predictor {name!r} does not accept option(s) {sorted(options)}: {err}") from err
        raise


def display_name(name: str) -> str:
    """The paper's name for predictor ``name`` (``vit_b_delta`` → ``ViT-B+Δ``)."""
    return RECORDS[name].display_name if name in RECORDS else name


__all__ = [
    "KINDS", "NAMES", "PAPER_BUDGET", "RECORDS", "Budget", "PatchRegressor", "PredictorRecord",
    "PretrainedWeightsUnavailable", "build", "count_parameters", "dihedral_views", "display_name", "record",
]
