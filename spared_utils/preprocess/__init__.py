"""SpaRED curation: from raw counts of all slides to the layers every model trains on.

One function per step of SpaRED's preprocessing (Mejia et al., MICCAI 2024; chapter 01), each a
verb on AnnData, and
:func:`run_pipeline` chaining them:

1. :func:`collect` – in-tissue spots, harmonised gene ids, clean counts;
2. :func:`filter_dataset` – spot/gene count filters and the ``real_data_percentage`` rule;
3. :func:`tpm`, :func:`log1p` – TPM with GENCODE merged-exon lengths, log2(TPM + 1);
4. :func:`median_complete` – adaptive median completion (vectorised);
5. :func:`select_top_moran` – the genes with the highest mean Moran's I;
6. :func:`combat` – ComBat batch correction;
7. :func:`deltas`, :func:`add_mask` – Δ layers and the real-value mask.

A slide read outside the registry (``sc.read_visium``, ``sq.read.visium``, the project's readers)
is made ready by :func:`prepare_slide` and curated with the book's defaults by :func:`curate_slide`
(:mod:`.own_slide`). Patches (the last curation step) are in :mod:`spared_utils.patches`; gene annotation (symbols →
Ensembl ids, gene lengths) in :mod:`spared_utils.preprocess.genes`.
"""

from .collection import check_counts, collect
from .diagnostics import embed, missing_by_slide, slide_silhouette, table_totals
from .filters import expression_fractions, filter_dataset, filter_spots, real_data_genes
from .layers import add_mask, combat, deltas
from .median import (
    authors_adjacency,
    median_complete,
    median_complete_array,
    median_complete_loop,
    nonzero_medians,
    window_tables,
)
from .moran import moran_i, select_top_moran
from .normalise import gene_lengths_for, log1p, tpm
from ..registry import PipelineParams
from .genes import harmonise_gene_ids, load_gene_lengths, strip_version, symbol_to_ensembl
from .panel import PanelMismatchError, check_panel, package_versions, panel_info
from .own_slide import SlideFieldError, fill_slide_fields, infer_organism, prepare_slide
from .pipeline import DELTA_LAYERS, curate_slide, run_pipeline
from .store import curation_fingerprint, processed_path, read_processed, write_processed
from .authors import COMPARED_LAYERS, compare_with_authors, difference_reasons, fixture_comparison, with_reasons

__all__ = [
    "COMPARED_LAYERS",
    "DELTA_LAYERS",
    "PanelMismatchError",
    "PipelineParams",
    "SlideFieldError",
    "add_mask",
    "authors_adjacency",
    "check_counts",
    "check_panel",
    "collect",
    "combat",
    "compare_with_authors",
    "curate_slide",
    "curation_fingerprint",
    "deltas",
    "difference_reasons",
    "embed",
    "expression_fractions",
    "fill_slide_fields",
    "filter_dataset",
    "filter_spots",
    "fixture_comparison",
    "gene_lengths_for",
    "harmonise_gene_ids",
    "infer_organism",
    "load_gene_lengths",
    "log1p",
    "median_complete",
    "missing_by_slide",
    "median_complete_array",
    "median_complete_loop",
    "moran_i",
    "nonzero_medians",
    "package_versions",
    "panel_info",
    "prepare_slide",
    "processed_path",
    "read_processed",
    "real_data_genes",
    "run_pipeline",
    "select_top_moran",
    "slide_silhouette",
    "strip_version",
    "symbol_to_ensembl",
    "table_totals",
    "tpm",
    "window_tables",
    "with_reasons",
    "write_processed",
]
