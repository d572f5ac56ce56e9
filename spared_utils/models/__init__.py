"""The predictor registry: ``build(name, n_genes, pretrained=False)`` → a torch module.

Every predictor maps a batch of spot patches (``uint8`` (B, 3, 224, 224)) to (B, n_genes)
expression values on the scale of the target layer. One file per family:
:mod:`~spared_utils.models.encoders` holds the four patch encoders (ShuffleNet, ViT-B, ViT-B+Δ,
STNet). Adding a predictor = one builder function + one entry in :data:`BUILDERS`.

``pretrained=True`` loads ImageNet weights (cached by torch.hub, else downloaded); without a
network it raises :class:`PretrainedWeightsUnavailable`, whose message suggests ``pretrained=False``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from . import encoders
from .encoders import PatchRegressor, PretrainedWeightsUnavailable, dihedral_views

#: name → builder(n_genes, pretrained=False, **options)
BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "shufflenet": encoders.shufflenet,
    "vit_b": encoders.vit_b,
    "vit_b_delta": encoders.vit_b_delta,
    "stnet": encoders.stnet,
}

#: Every predictor name known so far (the order chapters and figures use).
NAMES: tuple[str, ...] = tuple(BUILDERS)

#: How the paper's figures name each predictor.
DISPLAY_NAMES: dict[str, str] = {
    "shufflenet": "ShuffleNet",
    "vit_b": "ViT-B",
    "vit_b_delta": "ViT-B+Δ",
    "stnet": "STNet",
}


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
    if name not in BUILDERS:
        raise ValueError(f"unknown predictor {name!r}; known: {', '.join(NAMES)}")
    if int(n_genes) < 1:
        raise ValueError(f"n_genes must be a positive number of genes, got {n_genes}")
    try:
        return BUILDERS[name](int(n_genes), pretrained=bool(pretrained), **options)
    except TypeError as err:
        if options:
            raise TypeError(f"predictor {name!r} does not accept option(s) {sorted(options)}: {err}") from err
        raise


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters (``requires_grad``) of ``module``."""
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad))


def display_name(name: str) -> str:
    """The paper's name for predictor ``name`` (``vit_b_delta`` → ``ViT-B+Δ``)."""
    return DISPLAY_NAMES.get(name, name)


__all__ = [
    "BUILDERS", "DISPLAY_NAMES", "NAMES", "PatchRegressor", "PretrainedWeightsUnavailable",
    "build", "count_parameters", "dihedral_views", "display_name",
]
