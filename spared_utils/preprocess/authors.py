"""Our curation against the authors' ``spared`` 2.2.1 on the same raw input, step by step.

The authors' pipeline (github.com/BCV-Uniandes/SpaRED, ``spared/filtering/filtering.py``
``filter_dataset`` and ``spared/layer_operations/layer_operations.py`` ``process_dataset``) and
ours (:func:`spared_utils.preprocess.run_pipeline`) run the same steps in the same order.
:func:`compare_with_authors` puts their output beside ours: for the spots and genes each keeps,
the share both keep; for every layer, on the spots and genes both keep, the share of identical
entries (compared at float32, the precision our layers are stored in) and the largest absolute
difference; for Moran's I, the same on every gene both rank, and for the selected panel the share
of genes both select. Why each difference exists is written down, one sentence per row, in
``data/curation_vs_authors.yml`` (:func:`difference_reasons`), never generated here.

:func:`fixture_comparison` runs the comparison on the fixture that ``benchmarks/make_authors_fixture.py``
made with the authors' own code (``tests/data/authors_tiny``): it generates the same raw collection
again from the generator's arguments recorded there and curates it with the same parameters.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from anndata import AnnData

from .. import paths, synthetic
from ..registry import PipelineParams
from ..utils import dense
from .layers import combat
from .median import median_complete
from .pipeline import run_pipeline

#: Layers compared entry by entry, in the pipeline's order.
COMPARED_LAYERS = ("counts", "tpm", "log1p", "d_log1p", "c_log1p", "c_d_log1p", "deltas", "d_deltas", "c_deltas",
                   "c_d_deltas", "mask")
REASONS_FILE = "curation_vs_authors.yml"
#: The fixture made by the authors' code (``benchmarks/make_authors_fixture.py``), under the project root.
FIXTURE = "tests/data/authors_tiny"
#: The row of :func:`fixture_comparison` that runs our median with ``graph="authors"`` on their log2 values.
MEDIAN_ON_THEIRS = "d_log1p: our median (graph='authors') on their log1p"
#: The row of :func:`fixture_comparison` that runs our ComBat on their log2 values.
COMBAT_ON_THEIRS = "c_log1p: our ComBat on their log1p"


def spot_key(obs: pd.DataFrame, names: pd.Index, slide_key: str = "slide_id") -> pd.Index:
    """``<slide>/<barcode>`` for every spot, whichever way round the slide was joined to the barcode."""
    slides = obs[slide_key].astype(str).to_numpy()
    keys = []
    for name, slide in zip(names.astype(str), slides):
        barcode = name[len(slide) + 1:] if name.startswith(f"{slide}_") else name.removesuffix(f"_{slide}")
        keys.append(f"{slide}/{barcode}")
    return pd.Index(keys)


def _overlap(ours: pd.Index, theirs: pd.Index) -> dict:
    both = ours.intersection(theirs)
    union = ours.union(theirs)
    return {"n_ours": len(ours), "n_theirs": len(theirs), "n_compared": len(both),
            "share_identical": len(both) / len(union) if len(union) else 1.0, "max_abs_diff": np.nan}


def _entries(ours: np.ndarray, theirs: np.ndarray) -> dict:
    a, b = np.asarray(ours), np.asarray(theirs)
    if a.dtype == bool or b.dtype == bool:
        same = a.astype(bool) == b.astype(bool)
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    else:
        same = a.astype(np.float32) == b.astype(np.float32)
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return {"n_compared": int(a.size), "share_identical": float(same.mean()) if a.size else 1.0,
            "max_abs_diff": float(diff.max()) if a.size else 0.0}


def compare_with_authors(ours: AnnData, theirs: AnnData, intermediates: Mapping | None = None,
                         n_genes: int | None = None) -> pd.DataFrame:
    """Our curated collection beside the authors' processed one, step by step and layer by layer.

    Parameters
    ----------
    ours
        :func:`run_pipeline`'s output (``uns["preprocessing"]`` with ``gene_qc`` and ``moran``).
    theirs
        The authors' ``adata.h5ad`` as their ``process_dataset`` wrote it (their layer names).
    intermediates
        What their pipeline computes but does not keep: ``filtered_genes`` and ``filtered_spots``
        (after ``filter_dataset``) and ``moran`` (gene → mean Moran's I of every filtered gene),
        as ``benchmarks/make_authors_fixture.py`` records them; without it, the rows that need
        it are left out.
    n_genes
        Genes selected by Moran's I (default: as many as ``ours`` has).

    Returns
    -------
    DataFrame
        One row per step (index ``step``): ``what`` (spots, genes or entries), ``n_ours``,
        ``n_theirs``, ``n_compared`` (spots/genes both keep, or entries compared),
        ``share_identical`` (both keep ÷ either keeps, for sets; identical entries at float32,
        for layers) and ``max_abs_diff`` (NaN for sets).
    """
    rows: dict[str, dict] = {}
    pre = ours.uns.get("preprocessing", {})
    inter = dict(intermediates or {})
    our_spots = spot_key(ours.obs, ours.obs_names)
    their_spots = spot_key(theirs.obs, theirs.obs_names)
    if "filtered_spots" in inter:
        keys = pd.Index([_their_spot(name, theirs) for name in inter["filtered_spots"]])
        rows["spots kept by the filters"] = {"what": "spots", **_overlap(our_spots, keys)}
    if "filtered_genes" in inter and "gene_qc" in pre:
        gene_qc = pre["gene_qc"]
        ours_kept = pd.Index(gene_qc.index[gene_qc["kept"].to_numpy(dtype=bool)].astype(str))
        rows["genes kept by the filters"] = {"what": "genes", **_overlap(ours_kept, pd.Index(inter["filtered_genes"]))}
    if "moran" in inter and "moran" in pre:
        table = pre["moran"]
        our_moran = table["mean"] if "mean" in table else table.mean(axis=1)
        their_moran = pd.Series(inter["moran"], dtype=np.float64)
        common = our_moran.index.astype(str).intersection(their_moran.index)
        rows["Moran's I (mean over slides)"] = {
            "what": "genes", "n_ours": len(our_moran), "n_theirs": len(their_moran),
            **_entries(our_moran.loc[common].to_numpy(dtype=np.float64), their_moran.loc[common].to_numpy())}
        k = n_genes or ours.n_vars
        top_ours = pd.Index(our_moran.sort_values(ascending=False, kind="stable").index[:k].astype(str))
        top_theirs = pd.Index(their_moran.sort_values(ascending=False, kind="stable").index[:k])
        rows["genes selected by Moran's I"] = {"what": "genes", **_overlap(top_ours, top_theirs)}
    spots = our_spots.intersection(their_spots)
    genes = ours.var_names.astype(str).intersection(theirs.var_names.astype(str))
    oi, ti = our_spots.get_indexer(spots), their_spots.get_indexer(spots)
    og, tg = ours.var_names.get_indexer(genes), theirs.var_names.get_indexer(genes)
    for layer in COMPARED_LAYERS:
        if layer in ours.layers and layer in theirs.layers:
            a = dense(ours.layers[layer])[np.ix_(oi, og)]
            b = dense(theirs.layers[layer])[np.ix_(ti, tg)]
            rows[f"layer {layer}"] = {"what": "entries", "n_ours": int(np.prod(ours.shape)),
                                      "n_theirs": int(np.prod(theirs.shape)), **_entries(a, b)}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "step"
    return table[["what", "n_ours", "n_theirs", "n_compared", "share_identical", "max_abs_diff"]]


def _their_spot(name: str, theirs: AnnData) -> str:
    """``<slide>_<barcode>`` (their obs names) → ``<slide>/<barcode>``, the slide known from their file."""
    for slide in theirs.obs["slide_id"].astype(str).unique():
        if name.startswith(f"{slide}_"):
            return f"{slide}/{name[len(slide) + 1:]}"
    return name


def difference_reasons(path: str | Path | None = None) -> dict[str, str]:
    """Step → why ours differs from theirs there (``data/curation_vs_authors.yml``)."""
    path = Path(path) if path is not None else paths.data_dir() / REASONS_FILE
    return dict(yaml.safe_load(path.read_text(encoding="utf-8"))["reasons"])


def with_reasons(table: pd.DataFrame, reasons: Mapping[str, str] | None = None) -> pd.DataFrame:
    """``table`` with a ``reason`` column for every step that is not identical everywhere.

    Raises ``KeyError`` naming the steps without a reason in ``data/curation_vs_authors.yml``.
    """
    reasons = difference_reasons() if reasons is None else dict(reasons)
    differs = table.index[table["share_identical"] < 1]
    missing = [s for s in differs if s not in reasons]
    if missing:
        raise KeyError(f"no reason in data/{REASONS_FILE} for the difference(s) at {missing}; write one sentence "
                       "each saying why ours differs (a documented choice, or a defect of theirs)")
    out = table.copy()
    out["reason"] = [reasons[s] if s in differs else "" for s in table.index]
    return out


def fixture_comparison(folder: str | Path | None = None,
                       progress: bool = False) -> tuple[pd.DataFrame, AnnData, AnnData]:
    """Our curation beside the authors' on the raw input of a fixture made by their code.

    ``folder`` holds their ``adata.h5ad`` and ``intermediates.json`` and ``made_with.json``
    (the generator's arguments and their ``param_dict``), as written by
    ``benchmarks/make_authors_fixture.py``. The raw collection is generated again
    (:func:`spared_utils.synthetic.make_dataset`, deterministic) and curated with the same
    parameters. Besides :func:`compare_with_authors`'s rows, one runs our median alone
    (``graph="authors"``) on their log2 values (:data:`MEDIAN_ON_THEIRS`) and one our ComBat
    alone on them (:data:`COMBAT_ON_THEIRS`). ``folder`` defaults
    to the committed fixture (:data:`FIXTURE`). Returns ``(table, ours, theirs)``.
    """
    import anndata as ad

    folder = Path(folder) if folder is not None else paths.project_root() / FIXTURE
    made = json.loads((folder / "made_with.json").read_text())
    inter = json.loads((folder / "intermediates.json").read_text())
    theirs = ad.read_h5ad(folder / "adata.h5ad")
    raw = synthetic.make_dataset(images=False, **made["generator"])
    p = made["param_dict"]
    params = PipelineParams(n_genes=int(p["top_moran_genes"]), combat_key=p["combat_key"],
                            hex_geometry=bool(p["hex_geometry"]), cell_min_counts=p["cell_min_counts"],
                            cell_max_counts=p["cell_max_counts"], gene_min_counts=p["gene_min_counts"],
                            gene_max_counts=p["gene_max_counts"], real_data_percentage=p["real_data_percentage"])
    ours = run_pipeline(raw, params, progress=progress)
    table = compare_with_authors(ours, theirs, inter, params.n_genes)
    # the median alone, from their own log2 values: our graph="authors" against their median_cleaner
    again = AnnData(X=np.asarray(dense(theirs.layers["log1p"]), dtype=np.float64), obs=theirs.obs[["slide_id"]].copy(),
                    obsm={"spatial": np.asarray(theirs.obsm["spatial"])})
    again.layers["log1p"] = again.X
    median_complete(again, "log1p", "d_log1p", hex_geometry=params.hex_geometry, graph="authors", progress=False)
    table.loc[MEDIAN_ON_THEIRS] = {"what": "entries", "n_ours": again.X.size, "n_theirs": again.X.size,
                                   **_entries(again.layers["d_log1p"], dense(theirs.layers["d_log1p"]))}
    # ComBat alone, from their own log2 values: scanpy's ComBat (ours) against their pyComBat
    combat(again, params.combat_key, "log1p", "c_log1p")
    table.loc[COMBAT_ON_THEIRS] = {"what": "entries", "n_ours": again.X.size, "n_theirs": again.X.size,
                                   **_entries(again.layers["c_log1p"], dense(theirs.layers["c_log1p"]))}
    return table, ours, theirs
