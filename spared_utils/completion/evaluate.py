"""The paper's completion protocol: hide real values, complete them, score only what was hidden.

On the evaluation slides (test, and val; train only for a dataset that has neither), a
synthetic mask hides a fraction of the *real* entries (``layers["mask"]`` True); each method
completes the slides from what is left, and MSE / PCC are computed on the hidden entries only
(:mod:`spared_utils.metrics`), overall and per gene.

Masking levels follow the authors' rule (``scheme="per_gene"``): to hide ``p`` of a gene's
entries, each of its real entries is hidden with probability ``p / (fraction of real entries
of the gene)``, capped at 1 — so at high levels weakly measured genes lose every real value,
which is where the adaptive median degenerates to the slide median. The summary counts those
genes per level (``genes_lost``) and gives the MSE without them (``mse_kept_genes``).
``scheme="uniform"`` hides ``p`` of the real entries of every gene instead; ``scheme="lgdist"``
is the protocol of SpaCKLE's follow-up LGDiST (Cárdenas et al., arXiv 2509.01864): each real
entry of a gene is hidden with probability ``p_miss / (1 − p_miss)`` (capped at 1), ``p_miss``
the gene's fraction of missing entries, so a gene loses about as many real values as it already
misses — weakly measured genes lose the most. It has no level: :func:`evaluate_masking` runs it
once and reports the realised hidden fraction as ``masking``.

Beside the errors, each completion is scored by what it keeps of the tissue
(:func:`completion_structure`): the Moran's I of each completed gene map against the measured
map's, and the distance between the two gene–gene correlation matrices. A method that fills
every hidden entry with the gene's mean can win on MSE and still flatten the maps.

:func:`evaluate_missing` scores the other question — how well each method fills the entries
that were *originally* missing — where their truth is known: on the synthetic datasets, whose
generator keeps the counts before technical dropout (:func:`before_dropout_layer` maps them onto
the curated layer's scale).

What each method sees:

* ``median`` – the layer with hidden and originally missing entries set to 0, completed by
  :func:`spared_utils.preprocess.median_complete` (the SEPAL/SpaRED adaptive median);
* ``mean`` – nothing of the slide: each gene's mean over its real values on the training spots
  (the trivial completion, absent from the paper);
* ``neighbour_mean`` – the slide's values left visible, nothing else: each entry is the mean of
  the same gene's visible real values among the spot's neighbours on its slide, the ring widened
  (first, second, third) until one exists, else the gene's training mean (:func:`neighbour_fill`;
  the reference-free spatial baseline, absent from the paper);
* ``spackle`` – the layer with hidden entries set to 0 (originally missing entries keep their
  median values, exactly as in training); the centre token's output is the prediction;
* ``stlearn`` – the layer with hidden and missing entries set to 0, imputed by SME
  (:mod:`spared_utils.completion.sme`).
"""

from __future__ import annotations

import time
from typing import Literal, get_args
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import graphs, metrics
from ..preprocess import median_complete
from ..utils import dense
from . import sme
from . import spackle as S
from .spackle.zeros import CurationMap

#: The masking levels of Fig. 3 (fraction of a gene's entries hidden).
MASKING_LEVELS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
#: Every completion method of :func:`spared_utils.completion.complete`.
CompletionMethod = Literal["median", "mean", "neighbour_mean", "spackle", "stlearn", "spackle_plus",
                           "spackle_authors", "lgdist", "authors"]
METHODS: tuple[str, ...] = get_args(CompletionMethod)
#: Masking schemes of :func:`evaluate_masking` (see the module's docstring).
SCHEMES: tuple[str, ...] = ("per_gene", "uniform", "lgdist")


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


def training_mean(values: np.ndarray, observed: np.ndarray, train_rows: np.ndarray | None = None) -> np.ndarray:
    """Each gene's mean over its observed entries of ``train_rows`` (all rows when ``None``).

    A gene with no observed training entry gets the mean of all its training values (the
    median-completed ones), so the result is always finite.
    """
    v = values if train_rows is None else values[train_rows]
    o = observed if train_rows is None else observed[train_rows]
    n = o.sum(axis=0)
    total = np.where(o, v, 0).sum(axis=0, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, total / np.maximum(n, 1), v.mean(axis=0, dtype=np.float64))
    return mean.astype(np.float32)


def train_rows_of(adata: AnnData, split_key: str = "split") -> np.ndarray:
    """Integer positions of the training spots (every spot when the dataset has no split)."""
    return S.split_spots(adata, split_key).get("train", np.arange(adata.n_obs))


def mean_fill(adata: AnnData, values: np.ndarray, observed: np.ndarray, rows: np.ndarray,
              split_key: str = "split") -> np.ndarray:
    """The trivial completion: each gene's mean over its observed training values, at every row.

    Training spots are never hidden by the masking protocol, so this baseline sees the same
    values whatever the masking level; it is the floor a completion method must beat to have
    learnt anything from a spot's neighbourhood.
    """
    mean = training_mean(values, observed, train_rows_of(adata, split_key))
    return np.broadcast_to(mean, (len(rows), values.shape[1])).copy()


#: How far :func:`neighbour_fill` widens a spot's neighbourhood by default (three rings: on
#: Visium the 36 nearest spots; the median of curation uses four).
NEIGHBOUR_RINGS = graphs.RING_MEAN_RINGS


def neighbour_fill(adata: AnnData, values: np.ndarray, observed: np.ndarray, rows: np.ndarray,
                   hex_geometry: bool = True, n_rings: int = NEIGHBOUR_RINGS, slide_key: str = "slide_id",
                   split_key: str = "split", rings: list | None = None) -> np.ndarray:
    """The spatial-mean completion (``method="neighbour_mean"``) of the rows ``rows``.

    Each entry is the mean of the same gene's observed values among the spot's neighbours on its
    slide (the array grid of :func:`spared_utils.graphs.adjacency`): the first ring if any of its
    spots has an observed value of the gene, else the second ring, and so on up to ``n_rings``
    (:func:`spared_utils.graphs.ring_mean`). Where no spot within ``n_rings`` rings has one — a
    gene with no observed value on the slide, or an isolated patch of missing values — the entry
    falls back to the gene's mean over its observed training values (:func:`training_mean`).

    The spot's own value is never used, so the function also "predicts" observed entries (the
    callers keep real values). Nothing is fitted and no reference is read: it is the spatial
    counterpart of the training mean, and of the adaptive median of curation, which takes a
    median over a window that counts missing values as zeros instead of widening past them.

    Parameters
    ----------
    rings
        Precomputed :func:`spared_utils.graphs.ring_neighbourhoods` of ``adata``'s adjacency with
        ``n_rings`` rings (the masking protocol reuses them across levels).
    """
    if rings is None:
        rings = graphs.ring_neighbourhoods(graphs.adjacency(adata, hex_geometry, slide_key), int(n_rings))
    means, _ = graphs.ring_mean(values, observed, rings, rows)
    fallback = training_mean(values, observed, train_rows_of(adata, split_key))
    return np.where(np.isnan(means), fallback[None, :], means).astype(np.float32)


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
                    n_rings: int = 4, slide_key: str = "slide_id", mean: bool = True,
                    models: Mapping[str, object] | None = None, neighbour_mean: bool = True,
                    neighbour_rings: int = NEIGHBOUR_RINGS) -> dict[str, Completer]:
    """Completion functions ``f(adata, values, real, hidden_full, rows) -> (len(rows), genes)``, by method name.

    ``median`` is always present (``n_rings`` its window); ``mean`` (each gene's training mean)
    unless ``mean=False``; ``neighbour_mean`` (:func:`neighbour_fill`, up to ``neighbour_rings``
    rings) unless ``neighbour_mean=False``; ``spackle`` when a trained result is given; ``stlearn`` when ``sme_config`` is given (an
    :class:`~spared_utils.completion.sme.SmeConfig`; morphology features are computed once per
    slide and reused across levels). ``models`` adds more trained completers by name: a
    :class:`~spared_utils.completion.spackle.SpackleResult` (e.g. ``{"spackle_plus":
    plus_result}``) or any object with a ``predict_hidden(adata, hidden, rows, hex_geometry=,
    slide_key=)`` method.
    """
    out: dict[str, Completer] = {
        "median": lambda a, v, r, h, rows: median_fill(a, v, r & ~h, rows, hex_geometry, n_rings, slide_key),
    }
    if mean:
        out["mean"] = lambda a, v, r, h, rows: mean_fill(a, v, r & ~h, rows)
    if neighbour_mean:
        out["neighbour_mean"] = _neighbour_completer(hex_geometry, neighbour_rings, slide_key)
    trained = dict(models or {})
    if spackle is not None:
        trained = {"spackle": spackle, **trained}
    for name, model in trained.items():
        out[name] = _model_completer(model, hex_geometry, slide_key)
    if sme_config is not None:
        feature_cache: dict = {}

        def sme_pred(a, v, r, h, rows):
            return sme.sme_fill(a, v, r & ~h, rows, sme_config, feature_cache=feature_cache,
                                hex_geometry=hex_geometry, slide_key=slide_key)

        out["stlearn"] = sme_pred
    return out


def _neighbour_completer(hex_geometry: bool, n_rings: int, slide_key: str) -> Completer:
    """:func:`neighbour_fill` as a completer, its ring neighbourhoods built once per AnnData."""
    cache: dict = {}

    def fill(a, v, r, h, rows):
        key = (id(a), a.n_obs)
        if key not in cache:
            cache.clear()
            adj = graphs.adjacency(a, hex_geometry, slide_key)
            cache[key] = graphs.ring_neighbourhoods(adj, int(n_rings))
        return neighbour_fill(a, v, r & ~h, rows, hex_geometry, n_rings, slide_key, rings=cache[key])

    return fill


def _model_completer(model, hex_geometry: bool, slide_key: str) -> Completer:
    """A trained model as a completer (its neighbourhood index built once)."""
    if hasattr(model, "predict_hidden"):  # a completer object of its own
        return lambda a, v, r, h, rows: model.predict_hidden(a, h, rows, hex_geometry=hex_geometry,
                                                             slide_key=slide_key)
    cache: dict[str, np.ndarray] = {}

    def pred(a, v, r, h, rows):
        if "index" not in cache:
            cache["index"] = S.neighbourhoods(a, model.config, hex_geometry, slide_key)
        return S.predict_hidden(model, a, h, rows, index=cache["index"], slide_key=slide_key)

    return pred


#: The columns :func:`completion_structure` adds to a summary row.
STRUCTURE_COLUMNS: tuple[str, ...] = ("moran_completed", "moran_measured", "moran_gap", "corr_distance")


def completion_structure(completed: np.ndarray, measured: np.ndarray, mask: np.ndarray | None,
                         adjacency) -> dict[str, float]:
    """What a completed matrix keeps of the measured tissue (:func:`spared_utils.metrics.structure`).

    Parameters
    ----------
    completed, measured
        ``(spots, genes)``: the completed matrix (measured values where visible, the method's where
        hidden) and the measured one.
    mask
        The entries whose truth is known (the real ones; ``None``: all); each gene's maps are
        compared on its spots with a known value, on the graph restricted to them.
    adjacency
        The first-ring grid graph of the spots (:func:`spared_utils.graphs.adjacency`).

    Returns
    -------
    dict
        ``moran_completed`` / ``moran_measured``: Moran's I (Moran, *Biometrika* 1950) of the
        completed and of the measured maps, averaged over genes; ``moran_gap``: the mean over genes
        of ``|I_completed − I_measured|`` (0 for a perfect completion); ``corr_distance``: the mean
        absolute difference of the two gene–gene correlation matrices off the diagonal.
    """
    s = metrics.structure(completed, measured, mask, adjacency)
    return {"moran_completed": s["moran_pred"], "moran_measured": s["moran_true"],
            "moran_gap": s["moran_gap"], "corr_distance": s["corr_distance"]}


def _rows_adjacency(adata: AnnData, rows: np.ndarray, hex_geometry: bool | None, slide_key: str):
    """The first-ring grid graph among ``rows`` (``None`` without array coordinates)."""
    if not {"array_row", "array_col"} <= set(adata.obs):
        return None
    adj = graphs.adjacency(adata, S.resolve_hex_geometry(adata, hex_geometry), slide_key)
    return adj[rows][:, rows]


def lost_genes(real: np.ndarray, hidden: np.ndarray) -> np.ndarray:
    """Genes with real values among ``real``'s rows that ``hidden`` hides entirely (bool per gene)."""
    return real.any(axis=0) & ~(real & ~hidden).any(axis=0)


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
    structure: bool = True,
    hex_geometry: bool | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, list[MaskingRun]]:
    """Score every method at every masking level on the evaluation slides.

    The same hidden entries are used for every method at a given level and split (drawn from
    ``seed`` and the level), so methods are compared on identical masks.

    Parameters
    ----------
    scheme
        ``"per_gene"`` (the paper's authors), ``"uniform"`` or ``"lgdist"`` (LGDiST's
        dropout-proportional rule, which has no level: ``levels`` is ignored and one masking is
        scored per split, its ``masking`` the realised hidden fraction of all entries).
    structure
        Also score what each completion keeps of the tissue (:func:`completion_structure` on the
        split's real entries; needs ``obs["array_row"]``/``obs["array_col"]``).
    hex_geometry
        The grid of that graph (default: the curation's).

    Returns
    -------
    summary
        One row per (split, level, method): ``mse``, ``mae``, ``pcc_gene``, ``pcc_global``,
        ``n_values``, ``seconds``, ``masked_fraction`` (hidden / all entries), ``scheme``,
        ``genes_lost`` (genes whose every real value on the split is hidden),
        ``mse_kept_genes`` (the MSE over the other genes' hidden values); with ``structure``
        also ``moran_completed``, ``moran_measured``, ``moran_gap`` and ``corr_distance``
        (:data:`STRUCTURE_COLUMNS`), the completed map being the measured values where visible
        and the method's where hidden.
    per_gene
        One row per (split, level, method, gene): ``mse``, ``pcc``, ``n_values``.
    runs
        The :class:`MaskingRun` of each level and split (for expression maps).
    """
    from tqdm.auto import tqdm

    if scheme not in SCHEMES:
        raise ValueError(f"masking scheme must be one of {SCHEMES}, got {scheme!r}")
    values, real = S.check_input(adata, layer, slide_key=slide_key)
    eval_sets = evaluation_spots(adata, splits)
    rows_out, genes_out, runs = [], [], []
    if scheme == "lgdist":
        levels = (0.0,)
    jobs = [(s, lv) for s in eval_sets for lv in levels]
    for split, level in tqdm(jobs, desc="masking levels", disable=not progress, leave=False):
        rows = eval_sets[split]
        hidden_full = S.synthetic_hidden(real[rows], level, seed=_level_seed(seed, level, split), scheme=scheme)
        full = np.zeros_like(real)
        full[rows] = hidden_full
        if not hidden_full.any():
            continue
        if scheme == "lgdist":
            level = round(float(hidden_full.mean()), 4)
        lost = lost_genes(real[rows], hidden_full)
        run = MaskingRun(level, split, rows, hidden_full, values[rows])
        adj = _rows_adjacency(adata, rows, hex_geometry, slide_key) if structure else None
        for name, fn in methods.items():
            t0 = time.perf_counter()
            pred = np.asarray(fn(adata, values, real, full, rows), dtype=np.float32)
            run.seconds[name] = time.perf_counter() - t0
            run.predictions[name] = pred
            m = metrics.evaluate(pred, run.truth, hidden_full)
            kept = hidden_full & ~lost[None]
            rows_out.append({"split": split, "masking": level, "method": name, **m,
                             "seconds": run.seconds[name],
                             "masked_fraction": float(hidden_full.mean()), "scheme": scheme,
                             "genes_lost": int(lost.sum()),
                             "mse_kept_genes": metrics.masked_mse(pred, run.truth, kept) if kept.any() else float("nan"),
                             **(completion_structure(run.completed(name), run.truth, real[rows], adj)
                                if adj is not None else {})})
            table = metrics.per_gene_table(pred, run.truth, hidden_full, adata.var_names)
            table.insert(0, "method", name)
            table.insert(0, "masking", level)
            table.insert(0, "split", split)
            genes_out.append(table)
        runs.append(run)
    summary = pd.DataFrame(rows_out)
    per_gene = pd.concat(genes_out, ignore_index=True) if genes_out else pd.DataFrame()
    return summary, per_gene, runs


# ---------------------------------------------------------------------------------------------
# Scoring the originally missing entries (synthetic data: the truth before technical dropout)
# ---------------------------------------------------------------------------------------------

#: Layer :func:`before_dropout_layer` adds by default: the expression before technical dropout on
#: the scale of the curated layer. No completion method reads it.
TRUTH_LAYER = "before_dropout_log1p"
#: Generator layer → the truth layer made from it.
TRUTH_SOURCES: dict[str, str] = {"counts_before_dropout": TRUTH_LAYER, "expected_counts": "expected_log1p"}


def before_dropout_layer(adata: AnnData, generated: AnnData, source: str = "counts_before_dropout",
                         layer: str = S.DEFAULT_LAYER, key_added: str | None = None,
                         batch_key: str | None = None) -> AnnData:
    """Add the expression before technical dropout, on the scale of ``layers[layer]``.

    ``generated`` is the synthetic dataset as :func:`spared_utils.synthetic.make_dataset` returns
    it; ``source`` its layer to map: ``"counts_before_dropout"`` (→ ``before_dropout_log1p``, what
    the slide would have measured without technical dropout) or ``"expected_counts"`` (→
    ``expected_log1p``, the expected expression before sampling); ``adata`` the curated dataset.
    The counts go through the curation's own transformations, recovered from the
    curated layers: each spot's TPM factor (``tpm / (counts / gene_length)`` on its real
    entries), log2(x + 1), and the ComBat correction, which is affine per batch and gene (fitted
    by least squares of ``layers[layer]`` on ``layers["d_log1p"]``, its input). Where a value
    was measured, the counts before dropout equal the counts, so the new layer reproduces
    ``layers[layer]`` there (a check of the mapping); where it is missing, it holds what the slide
    would have measured without technical dropout (0 counts when the sampling itself gave none).

    Raises
    ------
    KeyError
        ``generated`` has no ``counts_before_dropout`` layer, spots or genes of ``adata`` are
        absent from it, or a curated layer the mapping needs is missing.
    """
    if source not in generated.layers:
        raise KeyError(f"the generated dataset has no layers[{source!r}]; make it with "
                       "spared_utils.synthetic.make_dataset from the dataset's generator arguments")
    key_added = key_added or TRUTH_SOURCES.get(source, f"{source}_log1p")
    cmap = CurationMap.of(adata, layer, batch_key)
    spots = generated.obs_names.get_indexer(adata.obs_names)
    genes = generated.var_names.get_indexer(adata.var_names)
    if (spots < 0).any() or (genes < 0).any():
        raise KeyError(f"{int((spots < 0).sum())} spots and {int((genes < 0).sum())} genes of the curated dataset are "
                       "not in the generated one: generate it with the dataset's own generator arguments")
    before = dense(generated.layers[source][spots][:, genes]).astype(np.float64)
    out = cmap.from_counts(before, np.arange(adata.n_obs))
    adata.layers[key_added] = out.astype(np.float32)
    return adata


def evaluate_missing(adata: AnnData, methods: Mapping[str, Completer], truth_layer: str = TRUTH_LAYER,
                     layer: str = S.DEFAULT_LAYER, splits: Sequence[str] = ("val", "test"),
                     slide_key: str = "slide_id", structure: bool = True,
                     hex_geometry: bool | None = None) -> tuple[pd.DataFrame, dict[str, dict[str, np.ndarray]]]:
    """Score every method on the originally missing entries against ``layers[truth_layer]``.

    Each method completes the evaluation slides from their real values only (nothing extra is
    hidden), as :func:`spared_utils.completion.complete` does, and is scored where
    ``layers["mask"]`` is False.

    Returns
    -------
    summary
        One row per (split, method): ``mse``, ``mae``, ``mean_signed_error`` (prediction − truth:
        negative = the method fills too low), ``pcc_gene``, ``n_values``, ``seconds``; with
        ``structure`` also :data:`STRUCTURE_COLUMNS` (:func:`completion_structure`), comparing the
        completed slide (real values, the method's where missing) with the truth at every spot.
    predictions
        ``{split: {method: (len(rows), genes) array}}``.
    """
    if truth_layer not in adata.layers:
        raise KeyError(f"layer {truth_layer!r} not found: it exists for the synthetic datasets only; add it with "
                       "spared_utils.completion.before_dropout_layer(adata, synthetic.make_dataset(**generator))")
    values, real = S.check_input(adata, layer, slide_key=slide_key)
    truth = dense(adata.layers[truth_layer]).astype(np.float32)
    unseen = ~real
    out, preds = [], {}
    for split, rows in evaluation_spots(adata, splits).items():
        missing = unseen[rows]
        if not missing.any():
            continue
        adj = _rows_adjacency(adata, rows, hex_geometry, slide_key) if structure else None
        preds[split] = {}
        for name, fn in methods.items():
            t0 = time.perf_counter()
            pred = np.asarray(fn(adata, values, real, unseen, rows), dtype=np.float32)
            seconds = time.perf_counter() - t0
            preds[split][name] = pred
            m = metrics.evaluate(pred, truth[rows], missing)
            err = (pred - truth[rows])[missing]
            out.append({"split": split, "method": name, "mse": m["mse"], "mae": m["mae"],
                        "mean_signed_error": float(err.mean()), "pcc_gene": m["pcc_gene"],
                        "n_values": m["n_values"], "seconds": seconds,
                        **(completion_structure(np.where(missing, pred, values[rows]), truth[rows], None, adj)
                           if adj is not None else {})})
    return pd.DataFrame(out), preds


def score_missing(adata: AnnData, methods: Mapping[str, Completer], generated: AnnData,
                  splits: Sequence[str] = ("val", "test"), layer: str = S.DEFAULT_LAYER) -> pd.DataFrame:
    """Every method on the originally missing entries, against both truths of the synthetic data.

    Adds the truth layers of ``generated`` (:data:`TRUTH_SOURCES`) to ``adata``, scores with
    :func:`evaluate_missing` and removes them again (they are for evaluation only). Returns one
    row per method, columns ``(metric, truth)`` with metrics ``mse`` and ``mean_signed_error``
    (and, where the slides have array coordinates, ``moran_gap`` and ``corr_distance`` of the
    completed slide against the truth, :func:`completion_structure`) and truths ``counts before
    dropout`` and ``expected expression``; several evaluation splits are averaged.
    """
    labels = {"before_dropout_log1p": "counts before dropout", "expected_log1p": "expected expression"}
    parts = []
    try:
        for source, key in TRUTH_SOURCES.items():
            before_dropout_layer(adata, generated, source=source, layer=layer, key_added=key)
            table, _ = evaluate_missing(adata, methods, truth_layer=key, layer=layer, splits=splits)
            parts.append(table.assign(truth=labels.get(key, key)))
    finally:
        for key in TRUTH_SOURCES.values():
            adata.layers.pop(key, None)
    both = pd.concat(parts)
    shown = ["mse", "mean_signed_error", *(c for c in ("moran_gap", "corr_distance") if c in both)]
    table = both.pivot_table(index="method", columns="truth", values=shown)[shown]
    return table.reindex([m for m in methods if m in table.index])


def ablation_table(adata: AnnData, base: S.SpackleConfig, candidates: Mapping[str, Mapping],
                   levels: Sequence[float] = MASKING_LEVELS, splits: Sequence[str] = ("test",), seed: int = 0,
                   hex_geometry: bool = True) -> pd.DataFrame:
    """Train one model per candidate (``base`` with the candidate's options) and score it.

    Returns one row per candidate: ``mean_mse`` (over ``levels``), the MSE at the lowest and the
    highest level, ``best_val`` and ``train_s``; the masks are those of :func:`evaluate_masking`.
    """
    rows = []
    for name, options in candidates.items():
        result = S.train_spackle(adata, config=base.updated(**dict(options), checkpoint_dir=None),
                                 hex_geometry=hex_geometry)
        fn = masking_methods(None, None, hex_geometry, mean=False, models={name: result}, neighbour_mean=False)
        fn.pop("median")
        summary, _, _ = evaluate_masking(adata, fn, levels=levels, splits=splits, seed=seed, progress=False)
        mse = summary.groupby("masking")["mse"].mean()
        rows.append({"candidate": name, "mean_mse": float(mse.mean()), f"mse_{int(100 * min(levels))}":
                     float(mse.iloc[0]), f"mse_{int(100 * max(levels))}": float(mse.iloc[-1]),
                     "best_val": result.best_val, "train_s": result.wall_time_s})
    return pd.DataFrame(rows).set_index("candidate")


def comparison_table(summary: pd.DataFrame, methods: Sequence[str] | None = None) -> pd.DataFrame:
    """MSE per masking level (rows) and method (columns), with the comparisons chapter 02 shows.

    Added where both methods are present: SpaCKLE vs the median, the training mean and the
    neighbour mean, ours (``spackle_plus``) vs SpaCKLE, the mean, the neighbour mean and the median,
    LGDiST vs SpaCKLE and ours vs LGDiST (``% lower MSE``: ``100 · (1 − a / b)``), and stLearn /
    SpaCKLE (MSE ratio). Several splits are
    averaged.
    """
    table = summary.pivot_table(index="masking", columns="method", values="mse").rename_axis(columns=None)
    if methods is not None:
        table = table[[m for m in methods if m in table]]
    pairs = [("SpaCKLE vs median", "spackle", "median"), ("SpaCKLE vs mean", "spackle", "mean"),
             ("SpaCKLE vs neighbour mean", "spackle", "neighbour_mean"),
             ("ours vs authors' SpaCKLE", "spackle_plus", "spackle_authors"),
             ("ours vs SpaCKLE", "spackle_plus", "spackle"), ("ours vs mean", "spackle_plus", "mean"),
             ("ours vs neighbour mean", "spackle_plus", "neighbour_mean"),
             ("ours vs median", "spackle_plus", "median"), ("LGDiST vs SpaCKLE", "lgdist", "spackle"),
             ("ours vs LGDiST", "spackle_plus", "lgdist")]
    for label, a, b in pairs:
        if a in table and b in table:
            table[f"{label} (% lower MSE)"] = 100 * (1 - table[a] / table[b])
    if "stlearn" in table and "spackle" in table:
        table["stLearn / SpaCKLE (MSE ratio)"] = table["stlearn"] / table["spackle"]
    return table


def structure_table(summary: pd.DataFrame, methods: Sequence[str] | None = None) -> pd.DataFrame:
    """Per method (rows, in ``methods`` order), averaged over masking levels and splits: ``mse``,
    ``moran_completed``, ``moran_measured``, ``moran_gap`` and ``corr_distance`` of
    :func:`evaluate_masking`'s summary (run with ``structure=True``), and ``mse_rank`` /
    ``moran_gap_rank`` (1 = lowest), so a method that wins on MSE but flattens the maps shows."""
    missing = [c for c in STRUCTURE_COLUMNS if c not in summary]
    if missing:
        raise KeyError(f"the summary has no {missing}: run evaluate_masking with structure=True on a dataset "
                       "with obs['array_row'] and obs['array_col']")
    table = summary.groupby("method")[["mse", *STRUCTURE_COLUMNS]].mean()
    if methods is not None:
        table = table.reindex([m for m in methods if m in table.index])
    table["mse_rank"] = table["mse"].rank(method="min").astype("Int64")
    table["moran_gap_rank"] = table["moran_gap"].rank(method="min").astype("Int64")
    return table


#: The layer :func:`add_best_completion` writes (the slide explorer's "best completion" panel).
BEST_LAYER = "c_best_log1p"


def best_method(summary: pd.DataFrame, methods: Sequence[str] | None = None) -> str:
    """The method of :func:`evaluate_masking`'s ``summary`` with the lowest MSE averaged over its
    masking levels and splits (among ``methods`` if given)."""
    mse = summary.groupby("method")["mse"].mean()
    if methods is not None:
        mse = mse[mse.index.isin(list(methods))]
    if mse.empty:
        raise ValueError(f"no method to choose from: the summary has {sorted(set(summary['method']))}, "
                         f"asked for {list(methods or [])}")
    return str(mse.idxmin())


def add_best_completion(adata: AnnData, methods: Mapping[str, Completer], summary: pd.DataFrame,
                        layer: str = "c_d_log1p", mask_layer: str = "mask", key_added: str = BEST_LAYER) -> str:
    """Complete every missing entry with the method that scored best under the masking protocol.

    The method is :func:`best_method` of ``summary`` among ``methods`` (the completers of
    :func:`masking_methods` that produced it); real values are kept. Writes
    ``layers[key_added]`` and ``uns["best_completion"]`` (method, layer, mean MSE) and returns
    the method's name.
    """
    name = best_method(summary, list(methods))
    values = np.asarray(dense(adata.layers[layer]), dtype=np.float32)
    real = np.asarray(dense(adata.layers[mask_layer]), dtype=bool)
    filled = methods[name](adata, values, real, np.zeros_like(real), np.arange(adata.n_obs))
    adata.layers[key_added] = np.where(real, values, np.asarray(filled, dtype=np.float32))
    adata.uns["best_completion"] = {"method": name, "layer": key_added,
                                    "mean_mse": float(summary.loc[summary["method"] == name, "mse"].mean())}
    return name


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


__all__ = ["BEST_LAYER", "ablation_table", "add_best_completion", "best_method", "comparison_table", "score_missing", "MASKING_LEVELS", "METHODS", "SCHEMES", "TRUTH_LAYER", "TRUTH_SOURCES", "MaskingRun", "STRUCTURE_COLUMNS", "before_dropout_layer", "completion_structure", "evaluate_masking",
           "evaluate_missing", "evaluation_spots", "lost_genes", "masking_methods", "mean_fill", "median_fill", "NEIGHBOUR_RINGS", "neighbour_fill",
           "relative_reduction", "structure_table", "train_rows_of", "training_mean"]
