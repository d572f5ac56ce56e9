"""The whole curation pipeline (SpaRED's preprocessing, Mejia et al. 2024, Sec. 2.1) as one call."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from tqdm.auto import tqdm

from ..registry import PipelineParams
from ..utils import dense
from .collection import collect
from .context import add_context
from .filters import filter_dataset
from .layers import add_mask, combat, deltas
from .median import median_complete
from .moran import select_top_moran
from .normalise import log1p, tpm
from .own_slide import check_positions, fill_slide_fields, infer_organism, prepare_slide

log = logging.getLogger(__name__)

#: Layer → Δ layer, in the order they are made.
DELTA_LAYERS = {"log1p": "deltas", "d_log1p": "d_deltas", "c_log1p": "c_deltas", "c_d_log1p": "c_d_deltas"}


class _Recorder:
    """Collects spot/gene counts and timings per step (the chapter's QC table)."""

    def __init__(self, slide_key: str):
        self.rows: list[dict] = []
        self.slides: dict[str, pd.Series] = {}
        self.slide_key = slide_key
        self._t = time.perf_counter()

    def __call__(self, step: str, adata: AnnData) -> None:
        now = time.perf_counter()
        self.rows.append({"step": step, "n_spots": adata.n_obs, "n_genes": adata.n_vars,
                          "seconds": round(now - self._t, 3)})
        self.slides[step] = adata.obs[self.slide_key].astype(str).value_counts()
        self._t = now

    def steps(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def spots_per_slide(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.slides).fillna(0).astype(int)
        frame.index.name = self.slide_key
        return frame


def run_pipeline(adata: AnnData, params: Any = None, *, progress: bool = True, fewer_genes_ok: bool = False,
                 **overrides) -> AnnData:
    """Curate a raw collection: SpaRED's curation steps 1–7 (everything before SpaCKLE and patches).

    Parameters
    ----------
    adata
        All slides of a dataset, raw counts in ``layers["counts"]`` (or ``X``), obs with
        ``array_row``, ``array_col`` and ``slide_id``, ``split``, ``patient``. A slide read by
        :func:`scanpy.read_visium`, :func:`squidpy.read.visium` or the project's readers lacks
        the last three: they are filled as for one slide (the slide from ``obs["library_id"]`` or
        ``uns["spatial"]``, split ``"train"``, the patient = the slide;
        :func:`~spared_utils.preprocess.own_slide.fill_slide_fields`), and ``adata`` is not
        modified. Without ``organism`` and ``var["gene_length"]``, the organism is told from
        the genes (:func:`~spared_utils.preprocess.own_slide.infer_organism`).
    params
        The curation parameters: a :class:`~spared_utils.registry.PipelineParams`, or a dataset's
        :class:`~spared_utils.registry.DatasetSpec` (its ``curation``); ``None`` takes SpaRED's
        defaults.
    progress
        Show tqdm progress bars.
    fewer_genes_ok
        Keep every gene that passes the filters when fewer than ``n_genes`` do (the parameters
        recorded then say how many were kept) instead of raising.
    **overrides
        Any :class:`PipelineParams` field, overriding ``params``.

    Returns
    -------
    AnnData
        ``spec.n_genes`` genes ranked by Moran's I, dense layers ``counts``, ``tpm``, ``log1p``,
        ``d_log1p``, ``c_log1p``, ``c_d_log1p``, ``deltas``, ``d_deltas``, ``c_deltas``,
        ``c_d_deltas`` (float32) and ``mask`` (bool, True = real measurement); ``X`` is
        ``c_d_log1p``. ``uns["preprocessing"]`` holds the parameters (``params``), spots and genes
        after each step with timings (``steps``), spots per slide after each step
        (``spots_per_slide``), Moran's I of every candidate gene per slide (``moran``), what the
        filters saw for every in-tissue spot (``spot_qc``) and gene (``gene_qc``), and the
        fraction of missing values (``missing_fraction``). With ``n_context`` > 0, also the
        context genes (:func:`~spared_utils.preprocess.context.add_context`: ``obsm["context_log1p"]``,
        its ``_mask`` and ``uns["context_genes"]``).

    Raises
    ------
    ValueError
        Bad counts (NaN, negative), a slide left without spots, fewer genes than ``n_genes``
        (unless ``fewer_genes_ok``), several libraries in ``uns["spatial"]`` without
        ``obs["library_id"]``, no grid positions; the message names the slide, field or value
        and the fix.
    """
    p = getattr(params, "curation", params) or PipelineParams()
    if not isinstance(p, PipelineParams):
        raise TypeError(f"params must be a PipelineParams or a DatasetSpec, got {type(params).__name__}")
    p = p.with_overrides(**overrides)
    check_positions(adata)
    adata = fill_slide_fields(adata, p.slide_key)
    if p.organism is None and "gene_length" not in adata.var:
        # a reader's AnnData names no organism: TPM's gene lengths follow the genes' own ids
        p = p.with_overrides(organism=infer_organism(adata))
        if p.organism is None:
            raise ValueError(
                f"var['gene_length'] is missing and the genes ({list(adata.var_names[:2])}, ...) are not "
                "human or mouse Ensembl ids or symbols; pass organism= or set var['gene_length'] "
                "(su.pp.curate_slide(adata, gene_lengths=...) reads a gene/merged table)")
    record = _Recorder(p.slide_key)
    steps = tqdm(total=7, desc="curation", disable=not progress)

    def advance(name: str, data: AnnData) -> None:
        record(name, data)
        steps.set_postfix_str(f"{name}: {data.n_obs} spots × {data.n_vars} genes")
        steps.update()

    record("raw", adata)
    data = collect(adata, organism=p.organism, slide_key=p.slide_key)
    advance("1 in-tissue collection", data)
    data, spot_qc, gene_qc = filter_dataset(data, p.cell_min_counts, p.cell_max_counts, p.gene_min_counts,
                                            p.gene_max_counts, p.real_data_percentage, p.slide_key,
                                            return_qc=True)
    advance("2 spot and gene filters", data)
    data = log1p(tpm(data, organism=p.organism))
    advance("3 TPM, log2(TPM+1)", data)
    median_complete(data, "log1p", "d_log1p", n_rings=p.n_rings, hex_geometry=p.hex_geometry,
                    slide_key=p.slide_key, progress=progress)
    advance("4 adaptive median completion", data)
    if fewer_genes_ok and data.n_vars < p.n_genes:
        p = p.with_overrides(n_genes=data.n_vars)
    selected = select_top_moran(data, p.n_genes, "d_log1p", p.hex_geometry, p.slide_key, progress)
    if p.n_context > 0:  # the next genes by Moran's I, before ComBat (they get their own)
        add_context(data, selected, p.n_context, "d_log1p", p.combat_key, p.hex_geometry, p.slide_key)
    data = selected
    for key in ("counts", "tpm", "log1p"):
        data.layers[key] = np.asarray(dense(data.layers[key]), dtype=np.float32)
    advance("5 top Moran's I genes", data)
    combat(data, p.combat_key, "log1p", "c_log1p")
    combat(data, p.combat_key, "d_log1p", "c_d_log1p")
    advance("6 ComBat", data)
    for layer, key in DELTA_LAYERS.items():
        deltas(data, layer, key)
    add_mask(data, "tpm", "mask")
    data.X = data.layers["c_d_log1p"].copy()
    advance("7 Δ layers and mask", data)
    steps.close()

    data.uns["preprocessing"] = {
        "params": p.as_uns(),
        "steps": record.steps(),
        "spots_per_slide": record.spots_per_slide(),
        "moran": data.uns.pop("moran_per_slide"),
        "spot_qc": spot_qc,
        "gene_qc": gene_qc,
        "missing_fraction": float(1 - data.layers["mask"].mean()),
    }
    return data


def curate_slide(adata: AnnData, n_genes: int = 128, *, counts_layer: str | None = None,
                 gene_lengths: pd.Series | str | Path | None = None, progress: bool = True,
                 **overrides) -> AnnData:
    """SpaRED's curation (:func:`~spared_utils.preprocess.run_pipeline`) of a slide read outside the registry.

    :func:`prepare_slide`, then the pipeline with the book's defaults
    (:class:`~spared_utils.registry.PipelineParams`) and the inferred organism, keeping at most
    ``n_genes`` genes (all that pass the filters when fewer do: a shallow slide can leave few
    genes with 70% real values). Without an organism or ``gene_lengths``, every gene gets length
    1 (TPM becomes counts per million), recorded in ``uns["slide_fields"]["normalisation"]``.

    Parameters
    ----------
    adata
        One or more slides with raw counts and grid positions (see :func:`prepare_slide`).
    n_genes
        Largest gene panel (SpaRED's 128 by default; genes ranked by Moran's I).
    counts_layer, gene_lengths
        Where the raw counts are (default ``layers["counts"]``, else ``X``); gene lengths by id
        (a Series or a ``gene``/``merged`` ``.tsv``) when ``var["gene_length"]`` is absent and
        the genes are not human or mouse Ensembl ids or symbols.
    **overrides
        Any :class:`PipelineParams` field (``real_data_percentage``, ``hex_geometry``, ...).

    Returns
    -------
    AnnData
        :func:`run_pipeline`'s curated AnnData (layers ``counts`` … ``c_d_log1p``, ``mask``).
    """
    prepared = prepare_slide(adata, overrides.get("slide_key", "slide_id"), counts_layer, gene_lengths)
    organism = overrides.pop("organism", None)
    if organism is None and prepared.uns["slide_fields"]["organism"] != "None":
        organism = prepared.uns["slide_fields"]["organism"]
    normalisation = "tpm"
    if "gene_length" not in prepared.var and organism is None:
        prepared.var["gene_length"] = 1.0
        normalisation = "cpm (no gene lengths: organism unknown and no gene_lengths given)"
        log.warning("no gene lengths for %s…: normalising to counts per million", list(prepared.var_names[:2]))
    params = PipelineParams().with_overrides(n_genes=int(n_genes), organism=organism, **overrides)
    curated = run_pipeline(prepared, params, progress=progress, fewer_genes_ok=True)
    curated.uns["slide_fields"] = {**prepared.uns["slide_fields"], "normalisation": normalisation}
    return curated
