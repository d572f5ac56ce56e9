"""The book's overview figure (intro page): the paper's pipeline, stage by stage.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt

from .style import PALETTE

__all__ = ["PIPELINE_STAGES", "pipeline_overview"]


#: The paper's pipeline, stage by stage: (name, what it does, the book's chapters).
PIPELINE_STAGES: tuple[tuple[str, str, str], ...] = (
    ("Curation", "SpaRED: QC, TPM, log2,\nMoran's I genes, ComBat,\nslide splits, patches",
     "chapters 00, 01"),
    ("Completion", "SpaCKLE fills missing\nvalues from the 2-ring\nneighbourhood (vs median)",
     "chapter 02"),
    ("Prediction", "H&E patch → expression:\n11 predictors, trained on\nraw and completed data",
     "chapters 10–20"),
    ("Benchmark", "scored on real values only:\nMSE, PCC-Gene,\ncompleted − raw, ranking",
     "chapter 90"),
)


def pipeline_overview(stages: Sequence[tuple[str, str, str]] = PIPELINE_STAGES,
                      ax: plt.Axes | None = None) -> plt.Axes:
    """The pipeline as boxes joined by arrows: one box per stage with what it does and its chapters.

    Parameters
    ----------
    stages
        ``(name, description, chapters)`` per stage, left to right (default: the paper's four,
        curation → completion → prediction → benchmark, :data:`PIPELINE_STAGES`).
    ax
        Where to draw (a new 12 × 3.2 inch figure when None).

    Returns
    -------
    matplotlib.axes.Axes
        The Axes, its patches being the stage boxes in order.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(3 * len(stages), 3.2))
    width, gap = 1.15, 0.35
    for i, (name, what, chapters) in enumerate(stages):
        x = i * (width + gap)
        colour = PALETTE[i % len(PALETTE)]
        ax.add_patch(plt.Rectangle((x, 0), width, 1, facecolor=(*colour, 0.18), edgecolor=colour,
                                   linewidth=2, label=name))
        ax.text(x + width / 2, 0.86, name, ha="center", va="center", fontsize=13, fontweight="bold")
        ax.text(x + width / 2, 0.5, what, ha="center", va="center", fontsize=9, linespacing=1.4)
        ax.text(x + width / 2, 0.11, chapters, ha="center", va="center", fontsize=9, style="italic")
        if i:
            ax.annotate("", xy=(x - 0.03, 0.5), xytext=(x - gap + 0.03, 0.5),
                        arrowprops={"arrowstyle": "-|>", "color": "0.3", "linewidth": 1.8})
    ax.set_xlim(-0.05, len(stages) * (width + gap) - gap + 0.05)
    ax.set_ylim(-0.05, 1.05)
    ax.set_axis_off()
    ax.set_title("From raw Visium data to a benchmark of histology-to-expression predictors")
    return ax
