"""Figures shared by the chapters (``su.pl``).

One rule for every function: a single-panel figure takes ``ax=`` (a new one is made when it is
``None``) and returns that Axes; a figure of several panels makes its own Figure and returns it.
Conventions: seaborn's colour-blind-safe palette, one colour per method everywhere
(:data:`METHOD_COLOURS`), titles and axis labels with units.
"""

from . import style
from .benchmark import (
    best_pcc_arrows,
    bias_vs_shift,
    mse_vs_parameters,
    normalised_mse_models,
    predictor_comparison,
    scenario_differences,
    structure_vs_error,
    training_mean_ratio,
    wins_pie,
)
from .completion import completion_mse_violin, mse_vs_masking, structure_vs_mse
from .curation import (
    dropout_vs_expression,
    embeddings_by_slide,
    moran_ranking,
    patch_grid,
    patch_symmetries,
    real_data_curve,
    spot_counts_qc,
)
from .maps import completion_maps, gene_maps, hex_neighbourhood, predicted_vs_true_maps, slide_layers, slides_overview
from .overview import PIPELINE_STAGES, pipeline_overview
from .prediction import learning_curves, per_gene_pcc, sorted_counts
from .style import COMPLETION_LABELS, METHOD_COLOURS, PALETTE, SPLIT_COLOURS, spot_size

__all__ = [
    "COMPLETION_LABELS",
    "METHOD_COLOURS",
    "PALETTE",
    "SPLIT_COLOURS",
    "spot_size",
    "slides_overview",
    "gene_maps",
    "hex_neighbourhood",
    "dropout_vs_expression",
    "spot_counts_qc",
    "real_data_curve",
    "moran_ranking",
    "embeddings_by_slide",
    "patch_grid",
    "learning_curves",
    "per_gene_pcc",
    "sorted_counts",
    "scenario_differences",
    "best_pcc_arrows",
    "normalised_mse_models",
    "mse_vs_parameters",
    "wins_pie",
    "predictor_comparison",
    "bias_vs_shift",
    "training_mean_ratio",
    "structure_vs_error",
    "predicted_vs_true_maps",
    "completion_mse_violin",
    "mse_vs_masking",
    "structure_vs_mse",
    "completion_maps",
    "patch_symmetries",
    "slide_layers",
    "PIPELINE_STAGES",
    "pipeline_overview",
]


def _check_figures() -> None:
    """Wrap every figure function with :func:`.style.checked` when :data:`FIGURE_CHECK_ENV` is set."""
    import inspect
    import os

    log = os.environ.get(style.FIGURE_CHECK_ENV)
    if not log:
        return
    for name in __all__:
        value = globals()[name]
        if inspect.isfunction(value) and name != "spot_size":
            globals()[name] = style.checked(value, log)


_check_figures()
