"""SpaCKLE: transformer completion of missing expression values (Mejia et al., MICCAI 2024).

The method of Mejia et al. (MICCAI 2024), as the paper describes it:

* **Neighbourhood tensor.** For spot ``s`` with ``g`` genes, ``x`` is its expression and ``V_x``
  the expression of its ``n ≤ 18`` neighbours within two rings of the Visium hexagonal grid;
  ``E_x = [x; V_x]`` has one token of width ``g`` per spot (the centre first). Neighbourhoods
  are kept as a ``(n_spots, 18)`` index array (:func:`spared_utils.graphs.neighbour_index`,
  ``-1`` = no neighbour) and gathered on the fly, batch by batch; no ``spots × spots`` matrix is
  ever built. **Edge spots** (fewer than 18 neighbours) get padding tokens: their values are 0,
  a key-padding mask hides them from attention, and they never enter the loss or a metric.
* **Training mask.** A random binary mask hides each *real* entry (``layers["mask"]`` True) of
  every token with probability ``ρ = 0.3``; median-completed entries are never hidden. Hidden
  entries are set to 0 (``E_m = E_x ⊙ M``).
* **Model.** ``Ê_x = L_out(T(L_in(E_m)))``: linear adapters ``g → d_model = 128 → g`` around an
  ``nn.TransformerEncoder`` (2 layers, 1 head, PyTorch's default feed-forward width 2048 and
  dropout 0.1) with ``batch_first=True``, so attention runs among the tokens of one
  neighbourhood.
* **Loss.** MSE between ``E_x`` and ``Ê_x`` on the whole matrix (every entry of every present
  token). Validation, metrics and completed values use only hidden entries of the centre token.
* **Inference.** ``M`` is the dataset's real missing-value mask: missing entries are set to 0 in
  every token and the centre token's output replaces them.

Documented alternatives (:class:`SpackleConfig` fields), where the authors' code (the ``spared``
package, github.com/BCV-Uniandes/SpaRED) differs from the paper: ``d_model=None`` (width =
number of genes), ``neighbourhood="knn"`` (18 nearest spots by Euclidean distance), ``masking="per_gene"`` (probability ``ρ / fraction of real values of
the gene``, capped at 1), ``attention="batch"`` (the authors' ``batch_first=False`` encoder fed
``(batch, tokens, genes)``, which attends across the batch's spots), plus ablations of ours:
``positional_encoding`` (a learned embedding per neighbourhood slot), ``loss_on="hidden"``,
``missing_in_training="zero"`` (median-completed entries hidden from the input and the loss),
``gene_scaling`` (per-gene input/output scales around the adapters, the same function class), and
the options of our ``spackle_plus``: ``mask_prob_range`` / ``mask_range_share`` (training over a
range of masking rates), ``mask_indicator``, ``loss_on="real"``, ``centre_input`` (given
entries read as deviations from their gene's training mean), ``neighbour_skip``,
``neighbour_blend`` and ``zero_posterior``.

One choice of ours is on by default: ``init_output_bias="mean"`` starts the output adapter's bias
at each gene's training mean (PyTorch initialises it near 0). Values of log2(TPM + 1) are about
10–20, and from a zero start the first hundreds of steps only learn that offset.

Training goes through :func:`spared_utils.training.fit` (budget, Adam, validation every
``eval_every`` iterations, best-validation checkpoint, mixed precision on CUDA, progress bar).

One module per job: :mod:`.config` (:class:`SpackleConfig`, :func:`config_tag`), :mod:`.model`
(:class:`Spackle`), :mod:`.neighbourhoods` (input checks, neighbourhoods, batches),
:mod:`.masking` (what is hidden), :mod:`.train` (:func:`train_spackle`), :mod:`.checkpoints`
(:func:`save_checkpoint`, :func:`load_checkpoint`), :mod:`.inference` (:func:`complete_with`,
:func:`predict_hidden`, :func:`predict_centres`), and two steps of ours after training:
:mod:`.blend` (the blend with the neighbour mean) and :mod:`.zeros` (zero counts completed with
their expected expression given the count).
"""

from __future__ import annotations

from .checkpoints import check_genes, load_checkpoint, save_checkpoint
from .config import DEFAULT_LAYER, LATER_DEFAULTS, MASK_LAYER, SpackleConfig, config_tag
from .inference import complete_with, predict_centres, predict_hidden
from .masking import mask_probabilities, spackle_input, synthetic_hidden, training_mask
from .model import Spackle, SpackleResult, gene_scales
from .neighbourhoods import (CentreSampler, Neighbourhoods, check_input, gather, hex_geometry_of, knn_index,
                             neighbourhoods, resolve_hex_geometry, split_spots, validation_spots)
from .train import train_spackle

__all__ = [
    "DEFAULT_LAYER", "LATER_DEFAULTS", "MASK_LAYER", "CentreSampler", "Neighbourhoods", "Spackle", "SpackleConfig",
    "SpackleResult", "check_genes", "check_input", "complete_with", "config_tag", "gather", "gene_scales",
    "hex_geometry_of", "knn_index", "load_checkpoint", "mask_probabilities", "neighbourhoods", "predict_centres",
    "predict_hidden", "resolve_hex_geometry", "save_checkpoint", "spackle_input", "split_spots", "synthetic_hidden",
    "train_spackle", "training_mask", "validation_spots",
]
