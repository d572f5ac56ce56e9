"""The gene panel a model was trained on, and the check that data matches it.

A checkpoint (SpaCKLE's or a predictor's) is only meaningful for data curated the same way as
its training dataset: the same genes in the same order, on the same scale (log2(TPM + 1) with
the same gene lengths, ComBat-corrected). :func:`panel_info` collects, from a curated dataset,
everything a checkpoint needs to carry for that (the genes with their symbols and lengths, the
curation parameters, the training dataset's id and fingerprint, per-gene training statistics,
package versions); :func:`check_panel` refuses data with other genes, naming the checkpoint file
and the data.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from anndata import AnnData

from ..results import versions
from ..utils import dense

__all__ = ["PanelMismatchError", "check_panel", "package_versions", "panel_info"]


class PanelMismatchError(ValueError):
    """Data and a checkpoint disagree on the gene panel or the patch size (the message names both)."""


def package_versions() -> dict[str, str]:
    """Versions of Python and of the packages whose numbers a checkpoint depends on."""
    out = {"python": platform.python_version()}
    for item in versions().split(";"):
        if "=" in item:
            name, version = item.split("=", 1)
            out[name] = version
    return out


def _params(adata: AnnData) -> Mapping[str, Any]:
    pre = adata.uns.get("preprocessing")
    return pre.get("params", {}) if isinstance(pre, Mapping) else {}


def _train_rows(adata: AnnData) -> np.ndarray:
    if "split" in adata.obs and (adata.obs["split"].astype(str) == "train").any():
        return (adata.obs["split"].astype(str) == "train").to_numpy()
    return np.ones(adata.n_obs, dtype=bool)


def panel_info(adata: AnnData, layer: str = "c_d_log1p") -> dict[str, Any]:
    """What a checkpoint carries about the data it was trained on (plain, picklable values).

    Parameters
    ----------
    adata
        The curated dataset the model was trained on (``uns["preprocessing"]`` and
        ``uns["dataset_id"]``/``uns["dataset_spec"]`` when :func:`spared_utils.datasets.load` made it).
    layer
        The layer whose per-gene training mean and standard deviation are recorded (over the
        training slides' real values: the reference a new slide's scale is compared with).

    Returns
    -------
    dict
        ``genes`` (ids, in order), ``symbols``, ``gene_lengths`` (bp, NaN if unknown),
        ``organism``, ``hex_geometry``, ``combat_key``, ``n_rings``, ``dataset_id``,
        ``dataset_fingerprint``, ``train_mean``/``train_sd`` of ``layer``, ``layer``, ``versions``.
    """
    params = _params(adata)
    genes = [str(g) for g in adata.var_names]
    symbols = (adata.var["gene_symbol"].astype(str).tolist() if "gene_symbol" in adata.var else list(genes))
    lengths = (np.asarray(adata.var["gene_length"], dtype=np.float64).tolist() if "gene_length" in adata.var
               else [float("nan")] * len(genes))
    mean = sd = [float("nan")] * len(genes)
    if layer in adata.layers:
        rows = _train_rows(adata)
        values = dense(adata.layers[layer])[rows].astype(np.float64)
        real = (dense(adata.layers["mask"])[rows].astype(bool) if "mask" in adata.layers
                else np.ones_like(values, dtype=bool))
        n = real.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            m = np.where(n > 0, np.where(real, values, 0).sum(axis=0) / n, values.mean(axis=0))
            var = np.where(n > 1, (np.where(real, values - m, 0) ** 2).sum(axis=0) / np.maximum(n - 1, 1), 0.0)
        mean, sd = m.tolist(), np.sqrt(var).tolist()

    def flag(name: str, default: Any) -> Any:
        value = params.get(name, default)
        return None if value in ("None", None) else value

    hexg = flag("hex_geometry", True)
    return {
        "genes": genes, "symbols": symbols, "gene_lengths": lengths,
        "organism": flag("organism", None), "hex_geometry": hexg if isinstance(hexg, bool) else str(hexg).lower() == "true",
        "combat_key": flag("combat_key", None), "n_rings": int(flag("n_rings", 4)),
        "dataset_id": str(adata.uns.get("dataset_id", "unnamed")),
        "dataset_fingerprint": str(adata.uns.get("dataset_spec", "")),
        "layer": layer, "train_mean": list(map(float, mean)), "train_sd": list(map(float, sd)),
        "versions": package_versions(),
    }


def check_panel(panel: Mapping[str, Any], genes: Sequence[str], checkpoint: str, data: str) -> None:
    """Raise :class:`PanelMismatchError` unless ``genes`` are the panel's genes in the same order.

    ``checkpoint`` names the checkpoint file and ``data`` the data (a file, a dataset id), so the
    message says which two disagree.
    """
    want = [str(g) for g in panel["genes"]]
    have = [str(g) for g in genes]
    if have == want:
        return
    missing = [g for g in want if g not in set(have)]
    extra = [g for g in have if g not in set(want)]
    detail = (f"{len(missing)} of the model's genes are absent (e.g. {missing[:3]}), {len(extra)} genes are new "
              f"(e.g. {extra[:3]})") if (missing or extra) else \
        "the same genes in another order"
    raise PanelMismatchError(
        f"genes mismatch: checkpoint {checkpoint} was trained on {len(want)} genes of dataset {panel.get('dataset_id', '?')!r} but "
        f"{data} has {len(have)} genes: {detail}; use a checkpoint trained on this dataset, or bring a new slide "
        "to the checkpoint's panel with spared_utils.apply (which maps genes and marks absent ones unmeasured)")
