"""The whole curation pipeline (SpaRED's preprocessing, Mejia et al. 2024, Sec. 2.1) as one call."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from tqdm.auto import tqdm

from ..registry import PipelineParams
from ..utils import dense
from .collection import collect
from .filters import filter_dataset
from .layers import add_mask, combat, deltas
from .median import median_complete
from .moran import select_top_moran
from .normalise import log1p, tpm

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


def run_pipeline(adata: AnnData, params: Any = None, *, progress: bool = True, **overrides) -> AnnData:
    """Curate a raw collection: SpaRED's curation steps 1–7 (everything before SpaCKLE and patches).

    Parameters
    ----------
    adata
        All slides of a dataset, raw counts in ``layers["counts"]`` (or ``X``), obs with
        ``slide_id``, ``split``, ``patient``, ``array_row``, ``array_col``.
    params
        The curation parameters: a :class:`~spared_utils.registry.PipelineParams`, or a dataset's
        :class:`~spared_utils.registry.DatasetSpec` (its ``curation``); ``None`` takes SpaRED's
        defaults.
    progress
        Show tqdm progress bars.
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
        fraction of missing values (``missing_fraction``).

    Raises
    ------
    ValueError
        Bad counts (NaN, negative), a slide left without spots, fewer genes than ``n_genes``;
        the message names the slide or value and the fix.
    """
    p = getattr(params, "curation", params) or PipelineParams()
    if not isinstance(p, PipelineParams):
        raise TypeError(f"params must be a PipelineParams or a DatasetSpec, got {type(params).__name__}")
    p = p.with_overrides(**overrides)
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
    data = select_top_moran(data, p.n_genes, "d_log1p", p.hex_geometry, p.slide_key, progress)
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
