"""The paper's completion protocol: hide real values, complete them, score only what was hidden.

On the evaluation slides (test, and val; train only for a dataset that has neither), a
synthetic mask hides a fraction of the *real* entries (``layers["mask"]`` True); each method
completes the slides from what is left, and MSE / PCC are computed on the hidden entries only
(:mod:`spared_utils.metrics`), overall and per gene.

Masking levels follow the authors' rule (``scheme="per_gene"``): to hide ``p`` of a gene's
entries, each of its real entries is hidden with probability ``p / (fraction of real entries
of the gene)``, capped at 1 — so at high levels weakly measured genes lose every real value,
which is where the adaptive median degenerates to the slide median. ``scheme="uniform"`` hides
``p`` of the real entries of every gene instead.

What each method sees:

* ``median`` – the layer with hidden and originally missing entries set to 0, completed by
  :func:`spared_utils.preprocess.median_complete` (the SEPAL/SpaRED adaptive median);
* ``spackle`` – the layer with hidden entries set to 0 (originally missing entries keep their
  median values, exactly as in training); the centre token's output is the prediction;
* ``stlearn`` – the layer with hidden and missing entries set to 0, imputed by SME
  (:mod:`spared_utils.completion.sme`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import graphs, metrics
from ..preprocess import median_complete
from . import sme
from . import spackle as S

#: The masking levels of Fig. 3 (fraction of a gene's entries hidden).
MASKING_LEVELS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
METHODS: tuple[str, ...] = ("median", "spackle", "stlearn")


def evaluation_spots(adata: AnnData, splits: Sequence[str] = ("val", "test"),
                     split_key: str = "split") -> dict[str, np.ndarray]:
    """Spots of each requested split that exists.

    When none exists, the first present of test, val, train is used (a dataset with a single
    training slide is then evaluated in-sample, on masks it never saw; the split is named in
    every result).
    """
    spots = S.split_spots(adata, split_key)
    chosen = {s: spots[s] for s in splits if s in spots}
    if chosen:
        return chosen
    for name in ("test", "val", "train"):
        if name in spots:
            return {name: spots[name]}
    return {"train": np.arange(adata.n_obs)}


def median_fill(adata: AnnData, values: np.ndarray, observed: np.ndarray, rows: np.ndarray,
                hex_geometry: bool = True, n_rings: int = 4, slide_key: str = "slide_id") -> np.ndarray:
    """Adaptive-median completion of the unobserved entries; returns the rows ``rows``.

    Each slide holding one of ``rows`` is completed on its own by
    :func:`spared_utils.preprocess.median_complete` from ``values`` where ``observed`` (zeros
    elsewhere, which the adaptive median treats as missing).
    """
    out = np.zeros((adata.n_obs, adata.n_vars), dtype=np.float32)
    for idx in graphs.slides_containing(adata, rows, slide_key).values():
        obs = adata.obs.iloc[idx][[c for c in (slide_key, "array_row", "array_col") if c in adata.obs]].copy()
        sub = AnnData(obs=obs, var=pd.DataFrame(index=adata.var_names))
        sub.layers["input"] = np.where(observed[idx], values[idx], 0).astype(np.float32)
        median_complete(sub, "input", "completed", n_rings=n_rings, hex_geometry=hex_geometry,
                        slide_key=slide_key, progress=False)
        out[idx] = sub.layers["completed"]
    return out[rows]


@dataclass
class MaskingRun:
    """One masking level on one evaluation split: what was hidden and each method's predictions."""

    level: float
    split: str
    rows: np.ndarray  #: spots evaluated (integer positions)
    hidden: np.ndarray  #: (len(rows), genes) bool, the hidden real entries
    truth: np.ndarray  #: (len(rows), genes) ground truth
    predictions: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def completed(self, method: str) -> np.ndarray:
        """The completed matrix of the rows: truth where visible, predictions where hidden."""
        return np.where(self.hidden, self.predictions[method], self.truth)


Completer = Callable[[AnnData, np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def masking_methods(spackle: S.SpackleResult | None = None, sme_config=None, hex_geometry: bool = True,
               n_rings: int = 4, slide_key: str = "slide_id") -> dict[str, Completer]:
    """Completion functions ``f(adata, values, real, hidden_full, rows) -> (len(rows), genes)``, by method name.

    ``median`` is always present; ``spackle`` when a trained result is given; ``stlearn`` when
    ``sme_config`` is given (an :class:`~spared_utils.completion.sme.SmeConfig`; morphology
    features are computed once per slide and reused across levels).
    """
    out: dict[str, Completer] = {
        "median": lambda a, v, r, h, rows: median_fill(a, v, r & ~h, rows, hex_geometry, n_rings, slide_key),
    }
    if spackle is not None:
        index_cache: dict[str, np.ndarray] = {}

        def spackle_pred(a, v, r, h, rows):
            if "index" not in index_cache:
                index_cache["index"] = S.neighbourhoods(a, spackle.config, hex_geometry, slide_key)
            return S.predict_hidden(spackle, a, h, rows, index=index_cache["index"], slide_key=slide_key)

        out["spackle"] = spackle_pred
    if sme_config is not None:
        feature_cache: dict = {}

        def sme_pred(a, v, r, h, rows):
            return sme.sme_fill(a, v, r & ~h, rows, sme_config, feature_cache=feature_cache,
                                hex_geometry=hex_geometry, slide_key=slide_key)

        out["stlearn"] = sme_pred
    return out


def evaluate_masking(
    adata: AnnData,
    methods: Mapping[str, Completer],
    levels: Sequence[float] = MASKING_LEVELS,
    layer: str = S.DEFAULT_LAYER,
    splits: Sequence[str] = ("val", "test"),
    seed: int = 0,
    scheme: str = "per_gene",
    slide_key: str = "slide_id",
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame, list[MaskingRun]]:
    """Score every method at every masking level on the evaluation slides.

    The same hidden entries are used for every method at a given level and split (drawn from
    ``seed`` and the level), so methods are compared on identical masks.

    Returns
    -------
    summary
        One row per (split, level, method): ``mse``, ``mae``, ``pcc_gene``, ``pcc_global``,
        ``n_values``, ``seconds``, ``masked_fraction`` (hidden / all entries).
    per_gene
        One row per (split, level, method, gene): ``mse``, ``pcc``, ``n_values``.
    runs
        The :class:`MaskingRun` of each level and split (for expression maps).
    """
    from tqdm.auto import tqdm

    values, real = S.check_input(adata, layer, slide_key=slide_key)
    eval_sets = evaluation_spots(adata, splits)
    rows_out, genes_out, runs = [], [], []
    jobs = [(s, lv) for s in eval_sets for lv in levels]
    for split, level in tqdm(jobs, desc="masking levels", disable=not progress, leave=False):
        rows = eval_sets[split]
        hidden_full = S.synthetic_hidden(real[rows], level, seed=_level_seed(seed, level, split), scheme=scheme)
        full = np.zeros_like(real)
        full[rows] = hidden_full
        if not hidden_full.any():
            continue
        run = MaskingRun(level, split, rows, hidden_full, values[rows])
        for name, fn in methods.items():
            t0 = time.perf_counter()
            pred = np.asarray(fn(adata, values, real, full, rows), dtype=np.float32)
            run.seconds[name] = time.perf_counter() - t0
            run.predictions[name] = pred
            m = metrics.evaluate(pred, run.truth, hidden_full)
            rows_out.append({"split": split, "masking": level, "method": name, **m,
                             "seconds": run.seconds[name],
                             "masked_fraction": float(hidden_full.mean())})
            table = metrics.per_gene_table(pred, run.truth, hidden_full, adata.var_names)
            table.insert(0, "method", name)
            table.insert(0, "masking", level)
            table.insert(0, "split", split)
            genes_out.append(table)
        runs.append(run)
    summary = pd.DataFrame(rows_out)
    per_gene = pd.concat(genes_out, ignore_index=True) if genes_out else pd.DataFrame()
    return summary, per_gene, runs


def _level_seed(seed: int, level: float, split: str) -> int:
    return int(seed) * 1_000_003 + int(round(level * 1000)) * 101 + sum(map(ord, split))


def relative_reduction(summary: pd.DataFrame, method: str = "spackle", baseline: str = "median") -> pd.DataFrame:
    """Per (split, level): ``100 · (1 − MSE_method / MSE_baseline)``, with both MSEs."""
    pivot = summary.pivot_table(index=["split", "masking"], columns="method", values="mse")
    if method not in pivot or baseline not in pivot:
        return pd.DataFrame(columns=["split", "masking", "reduction_pct"])
    out = pd.DataFrame({f"mse_{baseline}": pivot[baseline], f"mse_{method}": pivot[method]})
    out["reduction_pct"] = 100 * (1 - out[f"mse_{method}"] / out[f"mse_{baseline}"])
    return out.reset_index()


__all__ = ["MASKING_LEVELS", "METHODS", "MaskingRun", "evaluate_masking", "evaluation_spots", "median_fill",
           "masking_methods", "relative_reduction"]
