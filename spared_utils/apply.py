"""Bring your own slide: complete and predict a new Visium slide with checkpoints the book trained.

``spared_utils.apply(path, completion=..., predictor=...)`` (this module is callable) and the
command::

    python -m spared_utils.apply OUTS_DIR --completion spackle.pt --predictor CHECKPOINT_DIR -o slide.h5ad

read one Space Ranger output folder, bring it to the checkpoints' gene panel and scale, complete
its missing values with SpaCKLE and predict every spot's expression from its H&E patch. See
:func:`apply` for each step.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import types
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from tqdm.auto import tqdm

from . import datasets, metrics, paths, synthetic
from .completion import SpackleConfig, budget_options, spackle, train_spackle
from .patches import PatchStore, extract_patches
from .predict.bundle import BUNDLE_NAME, PredictorBundle, load_predictor, predict_patches
from .predict.harness import RunSpec, run_chapter
from .preprocess.genes import ANNOTATION_FILES, harmonise_gene_ids, load_gene_lengths, strip_version
from .preprocess.median import median_complete
from .preprocess.normalise import log1p, tpm
from .preprocess.panel import PanelMismatchError, package_versions
from .readers import ReaderError, discover_spaceranger, read_spaceranger
from .utils import atomic_path

log = logging.getLogger(__name__)

__all__ = ["BATCH_CORRECTIONS", "ApplyError", "agreement", "apply", "checkpoints_for", "example_slide", "find_checkpoints",
           "main", "map_panel", "slide_gene_lengths", "write_result"]

#: How a slide outside the training batches is brought to the training scale (see :func:`apply`).
BATCH_CORRECTIONS = ("none", "reference")
#: Layers of the written AnnData.
LAYERS = ("measured", "completed", "predicted", "mask")


class ApplyError(ValueError):
    """A slide cannot be brought to a checkpoint's panel (the message names the files and the fix)."""


def slide_gene_lengths(adata: ad.AnnData, folder: Path, panel: dict[str, Any]) -> pd.Series:
    """Gene length (bp) of every gene of a slide: the checkpoint's lengths for panel genes, then a
    ``gene_lengths.tsv`` (columns ``gene``, ``merged``) in the slide folder or its parent, then the
    organism's vendored GENCODE table. Genes with none get NaN (TPM drops them, as curation does)."""
    ids = pd.Index([strip_version(str(g)) for g in adata.var_names])
    lengths = pd.Series(np.nan, index=ids, dtype=np.float64)
    organism = panel.get("organism")
    if organism in ANNOTATION_FILES:
        lengths = lengths.fillna(load_gene_lengths(organism).reindex(ids))
    for candidate in (folder / "gene_lengths.tsv", folder.parent / "gene_lengths.tsv"):
        if candidate.is_file():
            table = pd.read_csv(candidate, sep="\t")
            table = table.assign(gene=table["gene"].astype(str).map(strip_version)).drop_duplicates("gene")
            lengths = lengths.fillna(table.set_index("gene")["merged"].astype(float).reindex(ids))
            break
    own = pd.Series(panel["gene_lengths"], index=[str(g) for g in panel["genes"]], dtype=np.float64)
    lengths = own.reindex(ids).fillna(lengths)
    return pd.Series(lengths.to_numpy(), index=adata.var_names)


def map_panel(adata: ad.AnnData, panel: dict[str, Any]) -> np.ndarray:
    """For each panel gene, the column of ``adata`` holding it (``-1``: absent from the slide).

    A panel gene is found by its Ensembl id (version suffix ignored) among ``var_names``, else by
    its symbol among ``var["gene_symbol"]`` (the vendored tables have mapped symbols to ids by
    then, see :func:`spared_utils.preprocess.harmonise_gene_ids`).
    """
    ids = {strip_version(str(g)): i for i, g in enumerate(adata.var_names)}
    symbols: dict[str, int] = {}
    if "gene_symbol" in adata.var:
        for i, s in enumerate(adata.var["gene_symbol"].astype(str)):
            symbols.setdefault(s, i)
    out = []
    for gene, symbol in zip(panel["genes"], panel["symbols"]):
        col = ids.get(strip_version(str(gene)), symbols.get(str(symbol), -1))
        out.append(col)
    return np.asarray(out, dtype=np.int64)


def _same_panel(completion: spackle.SpackleResult, predictor: PredictorBundle) -> None:
    if list(completion.genes) != predictor.genes:
        raise PanelMismatchError(
            f"the completion checkpoint {completion.checkpoint} ({len(completion.genes)} genes of dataset "
            f"{(completion.extra.get('panel') or {}).get('dataset_id', '?')!r}) and the predictor checkpoint "
            f"{predictor.path} ({len(predictor.genes)} genes of dataset {predictor.panel['dataset_id']!r}) have other "
            "gene panels; use two checkpoints trained on the same dataset")


def _reference_correction(values: np.ndarray, real: np.ndarray, panel: dict[str, Any]) -> np.ndarray:
    """Per gene, move the slide's real values to the training slides' mean and spread."""
    mean = np.asarray(panel["train_mean"], dtype=np.float64)
    sd = np.asarray(panel["train_sd"], dtype=np.float64)
    out = values.astype(np.float64).copy()
    for j in range(values.shape[1]):
        r = real[:, j]
        if r.sum() < 2 or not np.isfinite(mean[j]):
            continue
        m, s = values[r, j].mean(), values[r, j].std(ddof=1)
        scale = sd[j] / s if s > 1e-8 and np.isfinite(sd[j]) and sd[j] > 0 else 1.0
        out[:, j] = (values[:, j] - m) * scale + mean[j]
    return out.astype(np.float32)


def apply(
    path: str | os.PathLike,
    completion: str | os.PathLike,
    predictor: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    slide_id: str | None = None,
    batch_correction: str = "none",
    device: str = "auto",
    progress: bool = True,
    min_genes: float = 0.5,
    **reader_options: Any,
) -> ad.AnnData:
    """Complete and predict one new slide with a SpaCKLE and a predictor checkpoint.

    Steps (each with a progress bar):

    1. **Read** the Space Ranger folder with :func:`spared_utils.readers.read_spaceranger`
       (1.x, 2.x and 3.x layouts; ``.h5`` or ``mtx`` matrices; hires, lowres and full-resolution
       images; in-tissue spots only; bad counts and inconsistent files are refused).
    2. **Map genes** to the checkpoints' panel: symbols become Ensembl ids through the vendored
       tables (:func:`~spared_utils.preprocess.harmonise_gene_ids`), then each panel gene is
       found by id or symbol (:func:`map_panel`). Panel genes absent from the slide are kept as
       columns marked unmeasured: ``NaN`` in ``measured``, ``False`` in ``mask``,
       ``var["in_slide"]`` False; they are completed and predicted like the others.
    3. **Curation transforms of the training dataset**: TPM with the same gene lengths (the
       checkpoint's for panel genes; the organism's GENCODE table or ``gene_lengths.tsv`` for the
       others), log2(TPM + 1), the adaptive median completion with the same ``n_rings``, and the
       real-value mask (TPM ≠ 0). The slide is not filtered (every in-tissue spot is kept), so its
       TPM totals run over every gene with a length, not only those the training data's filters kept.
    4. **Batch correction.** Curation corrects the training slides with ComBat across their
       batches (``combat_key``); ComBat cannot place a slide that was not among those batches
       without refitting on the training data, which the checkpoint does not hold. With
       ``batch_correction="none"`` (the default) the slide's log2(TPM + 1) values are used as they
       are — right when the slide comes from the same protocol and the training data's batch
       effects were small; ``"reference"`` moves each measured gene's real values to the
       training slides' mean and standard deviation (recorded in the checkpoint), ComBat's
       location and scale step with the training data as the reference batch — right when the
       slide's depth or chemistry differs, wrong when its tissue truly differs. Which one ran is
       recorded in ``uns["apply"]``.
    5. **Complete** the missing values (mask False) with the SpaCKLE checkpoint
       (:func:`spared_utils.completion.spackle.complete_with`).
    6. **Predict**: patches of ``patch_scale`` spot diameters, resized to the predictor's
       ``patch_size``, cut from the full-resolution image (else hires) into a temporary store;
       the predictor checkpoint maps each patch to expression.

    Parameters
    ----------
    path
        A Space Ranger output folder (``outs/`` or the folder holding ``spatial/``).
    completion
        A SpaCKLE checkpoint (``.pt`` by :func:`spared_utils.completion.save_checkpoint`; chapter 02
        writes ``results/<dataset>/completion/spackle_seed<seed>/spackle_<tag>.pt``).
    predictor
        A predictor checkpoint folder (``predictor.json`` + ``best.pt``, written by every patch
        predictor's run under ``results/checkpoints/<dataset>/<model>/<scenario>/…``).
    out
        Write the result there as ``.h5ad`` (atomically: the file appears whole or not at all).
    slide_id
        Name of the slide (default: the folder's name).
    batch_correction
        ``"none"`` or ``"reference"`` (step 4).
    device
        ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
    min_genes
        Refuse a slide on which fewer than this fraction of the panel's genes are found.
    **reader_options
        Passed to :func:`~spared_utils.readers.read_spaceranger` (``counts=``, ``fullres=``, ...).

    Returns
    -------
    AnnData
        The slide's in-tissue spots × the panel's genes: ``layers["measured"]`` (log2(TPM + 1),
        after the reference correction when asked; 0 where a gene of the slide read no count; NaN
        for genes absent from the slide), ``layers["completed"]`` (measured values kept,
        missing ones from SpaCKLE), ``layers["predicted"]`` (from the image), ``layers["mask"]``
        (True = real measurement), ``X`` = ``completed``; ``var`` with ``gene_symbol``,
        ``gene_length``, ``in_slide``; ``obsm["spatial"]`` and ``uns["spatial"]`` as squidpy
        expects (``squidpy.pl.spatial_scatter(adata, color=gene, layer="predicted")``);
        ``uns["apply"]``: the checkpoints, their training dataset, genes found, the batch
        correction and package versions.

    Raises
    ------
    spared_utils.readers.ReaderError
        Missing, corrupt or inconsistent slide files.
    ApplyError
        Too few panel genes on the slide, a single spot, unknown ``batch_correction``.
    spared_utils.preprocess.PanelMismatchError
        The two checkpoints have other panels.
    """
    if batch_correction not in BATCH_CORRECTIONS:
        raise ApplyError(f"batch_correction must be one of {BATCH_CORRECTIONS}, got {batch_correction!r}")
    folder = Path(path)
    out_path = Path(out) if out is not None else None
    if out_path is not None and out_path.suffix != ".h5ad":
        raise ApplyError(f"output {out_path}: the result is an AnnData file; give a name ending in .h5ad")
    steps = tqdm(total=6, desc="apply", unit="step", disable=not progress)

    def step(name: str) -> None:
        steps.set_postfix_str(name)
        steps.update()

    try:
        model = spackle.load_checkpoint(completion, device=device)
        bundle = load_predictor(predictor, device=device)
        _same_panel(model, bundle)
        panel = {**bundle.panel, "genes": list(model.genes)}
        raw = read_spaceranger(folder, slide_id=slide_id, load_fullres=True, **reader_options)
        source = raw.uns["spatial"][next(iter(raw.uns["spatial"]))]["metadata"]["counts_file"]
        if raw.n_obs < 2:
            positions = reader_options.get("positions") or discover_spaceranger(folder).get("positions")
            raise ApplyError(f"{source}: the slide has {raw.n_obs} in-tissue spot; completion needs neighbouring spots: "
                             f"check in_tissue in {positions} (1 = under tissue)")
        step("read")

        organism = panel.get("organism")
        mapped = harmonise_gene_ids(raw, organism) if organism in ANNOTATION_FILES else raw
        columns = map_panel(mapped, panel)
        found = columns >= 0
        if found.mean() < min_genes:
            raise ApplyError(
                f"{source}: only {int(found.sum())} of the {len(columns)} genes of checkpoint {model.checkpoint} "
                f"(dataset {panel.get('dataset_id')!r}, e.g. {panel['genes'][:3]}) were found on the slide by Ensembl id "
                f"or symbol (the slide's genes look like {list(raw.var_names[:3])}); use checkpoints trained on the "
                f"slide's organism, or lower min_genes (now {min_genes}) to predict the missing genes from the image")
        step("genes")

        lengths = slide_gene_lengths(mapped, folder, panel)
        with_length = int(np.isfinite(lengths.to_numpy()).sum())
        if with_length < 0.5 * mapped.n_vars:
            log.warning("%s: only %d of the slide's %d genes have a known length, so TPM sums over those only and its "
                        "scale may differ from the training data's; put a gene_lengths.tsv (gene, merged) beside the slide",
                        source, with_length, mapped.n_vars)
        normalised = log1p(tpm(mapped, lengths=lengths))
        n_obs, n_genes = mapped.n_obs, len(columns)
        kept = {g: i for i, g in enumerate(normalised.var_names)}
        values = np.zeros((n_obs, n_genes), dtype=np.float32)
        dense_log = normalised.layers["log1p"].tocsc() if sp.issparse(normalised.layers["log1p"]) else normalised.layers["log1p"]
        in_slide = np.zeros(n_genes, dtype=bool)
        for j, col in enumerate(columns):
            name = mapped.var_names[col] if col >= 0 else None
            if name is not None and name in kept:
                column = dense_log[:, kept[name]]
                values[:, j] = column.toarray().ravel() if sp.issparse(column) else np.asarray(column).ravel()
                in_slide[j] = True
        absent = [g for g, ok in zip(panel["genes"], in_slide) if not ok]
        if absent:
            log.warning("%s: %d panel gene(s) are not on the slide (e.g. %s): marked unmeasured, predicted from the image",
                        source, len(absent), absent[:3])
        real = values != 0
        sid = next(iter(raw.uns["spatial"]))
        var = pd.DataFrame({"gene_symbol": panel["symbols"], "gene_length": panel["gene_lengths"], "in_slide": in_slide},
                           index=pd.Index([str(g) for g in panel["genes"]]))
        obs = raw.obs.copy()
        obs["slide_id"] = pd.Categorical([sid] * n_obs)
        obs["split"] = "test"
        work = ad.AnnData(X=None, obs=obs, var=var, obsm={"spatial": raw.obsm["spatial"].copy()},
                          layers={"log1p": values}, uns={"spatial": raw.uns["spatial"]})
        work.X = sp.csr_matrix(work.shape, dtype=np.float32)
        median_complete(work, "log1p", "d_log1p", n_rings=int(panel.get("n_rings", 4)),
                        hex_geometry=bool(panel.get("hex_geometry", True)), progress=False)
        d_log = np.asarray(work.layers["d_log1p"], dtype=np.float32)
        train_mean = np.asarray(panel["train_mean"], dtype=np.float32)
        d_log[:, ~in_slide] = np.nan_to_num(train_mean[~in_slide])  # no measurement: the training mean as input
        step("curation transforms")

        corrected = _reference_correction(d_log, real, panel) if batch_correction == "reference" else d_log
        work.layers["c_d_log1p"] = corrected
        work.layers["mask"] = real
        completed = spackle.complete_with(model, work, "c_d_log1p", hex_geometry=bool(panel.get("hex_geometry", True)))
        step("completion")

        with tempfile.TemporaryDirectory(prefix="spared-apply-") as tmp:
            store_path = extract_patches(work, Path(tmp) / "patches", patch_scale=bundle.patch_scale,
                                         patch_size=bundle.patch_size, progress=progress)
            predicted = predict_patches(bundle, PatchStore(store_path), progress=progress,
                                        source=f"the patches of {folder}")
        step("prediction")

        measured_c = np.where(real, corrected, values) if batch_correction == "reference" else values.copy()
        measured_c[:, ~in_slide] = np.nan
        result = ad.AnnData(X=completed.copy(), obs=raw.obs.copy(), var=var.copy(),
                            obsm={"spatial": raw.obsm["spatial"].copy()},
                            layers={"measured": measured_c.astype(np.float32), "completed": completed.astype(np.float32),
                                    "predicted": predicted.astype(np.float32), "mask": real})
        result.obs["slide_id"] = pd.Categorical([sid] * n_obs)
        result.uns["spatial"] = {sid: _library_without_fullres(raw.uns["spatial"][sid])}
        result.uns["apply"] = {
            "slide": str(folder.resolve()), "counts_file": str(source),
            "completion_checkpoint": str(model.checkpoint), "predictor_checkpoint": str(bundle.path),
            "predictor": bundle.name, "scenario": bundle.meta["scenario"],
            "training_dataset": str(panel.get("dataset_id")), "training_fingerprint": str(panel.get("dataset_fingerprint")),
            "n_panel_genes": int(n_genes), "n_genes_found": int(in_slide.sum()), "absent_genes": [str(g) for g in absent],
            "batch_correction": batch_correction, "missing_fraction": float(1 - real[:, in_slide].mean()) if in_slide.any() else 1.0,
            "versions": package_versions(),
        }
        if out_path is not None:
            write_result(result, out_path)
        step("written" if out_path is not None else "done")
    finally:
        steps.close()
    return result


def _library_without_fullres(library: dict) -> dict:
    images = {k: v for k, v in library.get("images", {}).items() if k != "fullres"}
    return {"images": images, "scalefactors": dict(library.get("scalefactors", {})),
            "metadata": {k: str(v) for k, v in (library.get("metadata") or {}).items()}}


def write_result(adata: ad.AnnData, out: str | os.PathLike) -> Path:
    """Write ``adata`` to ``out`` (``.h5ad``) atomically; a failure names the file and the fix."""
    out = Path(out)
    with atomic_path(out) as tmp:  # a full disk or a read-only folder: an OSError naming ``out`` and the fix
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adata.write_h5ad(tmp)
    return out


# -------------------------------------------------------------------------------------------------
# What chapter 95 needs: a slide and checkpoints when the reader brings none
# -------------------------------------------------------------------------------------------------


def example_slide(dataset: str, root: str | os.PathLike) -> Path:
    """A new slide of an embedded (generated) dataset, written in the Space Ranger layout under ``root``.

    It comes from the dataset's generator (``generator:`` in ``data/datasets.yml``) and is a
    section the dataset does not contain (:func:`spared_utils.synthetic.write_new_slide`); the
    folder is reused when it exists.
    """
    spec = datasets.get_spec(dataset)
    if spec.generator is None:
        raise ApplyError(f"dataset {dataset!r} is not generated, so there is no example slide of it: pass the path "
                         "of a Space Ranger output folder (slide=...) instead")
    root = Path(root)
    generator = dict(spec.generator)
    seed = int(generator.pop("seed", 0))
    existing = sorted(p for p in root.glob("SYN_*") if (p / "filtered_feature_bc_matrix.h5").is_file())
    if existing:
        return existing[-1]
    return synthetic.write_new_slide(root, seed=seed, **generator)


def _newest(paths_found: list[Path]) -> Path | None:
    return max(paths_found, key=lambda p: p.stat().st_mtime) if paths_found else None


def find_checkpoints(dataset: str, predictor: str = "shufflenet", out_dir: str | os.PathLike | None = "results",
                     scenario: str = "completed") -> dict[str, Path | None]:
    """The newest SpaCKLE checkpoint and predictor checkpoint folder the chapters saved for ``dataset``.

    SpaCKLE: ``<out_dir>/<dataset>/completion/**/spackle_*.pt`` (chapter 02); the predictor:
    ``<out_dir>/checkpoints/<dataset>/<predictor>/<scenario>/*/predictor.json`` (its chapter).
    ``None`` where there is none.
    """
    root = paths.output_dir(out_dir)
    spk = _newest(list((root / dataset / "completion").rglob("spackle_*.pt")))
    pred = _newest(list((root / "checkpoints" / dataset / predictor / scenario).glob(f"*/{BUNDLE_NAME}")))
    return {"completion": spk, "predictor": pred.parent if pred is not None else None}


def checkpoints_for(dataset: str, predictor: str = "shufflenet", out_dir: str | os.PathLike | None = "results",
                    iterations: int | None = None, seed: int = 0, device: str = "auto",
                    progress: bool = True) -> dict[str, Any]:
    """:func:`find_checkpoints`, training what is missing (so chapter 95 builds on its own).

    A missing SpaCKLE checkpoint is trained on the curated dataset at the book's CPU budget
    (:func:`spared_utils.completion.budget_options`; ``iterations`` overrides its length) into the folder
    chapter 02 uses; a missing predictor checkpoint is trained by its chapter's harness
    (:func:`spared_utils.predict.run_chapter`, scenario ``completed``, ``iterations`` overriding the
    record's CPU budget). Returns ``completion``, ``predictor`` and ``trained`` (what was trained here).
    """
    found = find_checkpoints(dataset, predictor, out_dir)
    trained = []
    if found["completion"] is None:
        adata = datasets.load(dataset, progress=progress)
        folder = paths.output_dir(out_dir, dataset) / "completion" / f"spackle_seed{seed}"
        config = SpackleConfig.make(**budget_options("spackle", seed, device, iterations, progress),
                                    checkpoint_dir=str(folder))
        found["completion"] = Path(train_spackle(adata, config=config).checkpoint)
        trained.append("completion")
    if found["predictor"] is None:
        run_chapter(RunSpec(predictor, dataset, scenario="completed", out_dir=out_dir, seed=seed, device=device,
                            costs={"iterations": iterations}, completion_iterations=iterations,
                            options={"progress": progress}))
        found["predictor"] = find_checkpoints(dataset, predictor, out_dir)["predictor"]
        trained.append("predictor")
    return {**found, "trained": trained}


def agreement(adata: ad.AnnData) -> pd.DataFrame:
    """Per gene of an applied slide: how the prediction from the image agrees with the measurement.

    MSE and Pearson correlation of ``predicted`` against ``measured`` over the real values
    (``mask`` True) only, with their number (genes absent from the slide have none: NaN).
    """
    real = np.asarray(adata.layers["mask"], dtype=bool)
    truth = np.nan_to_num(np.asarray(adata.layers["measured"], dtype=np.float32))
    table = metrics.per_gene_table(np.asarray(adata.layers["predicted"]), truth, real, list(adata.var_names))
    table.insert(1, "in_slide", adata.var["in_slide"].to_numpy())
    return table


# -------------------------------------------------------------------------------------------------
# The command
# -------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m spared_utils.apply",
        description="Complete and predict a new Visium slide (a Space Ranger output folder) with a SpaCKLE "
                    "checkpoint and a predictor checkpoint; writes an .h5ad with layers measured, completed, "
                    "predicted and mask.")
    parser.add_argument("outs_dir", help="Space Ranger output folder (outs/ or the folder holding spatial/)")
    parser.add_argument("--completion", required=True, help="SpaCKLE checkpoint (.pt, chapter 02)")
    parser.add_argument("--predictor", required=True, help="predictor checkpoint folder (predictor.json + best.pt)")
    parser.add_argument("-o", "--out", required=True, help="output .h5ad")
    parser.add_argument("--slide-id", default=None, help="slide name (default: the folder name)")
    parser.add_argument("--batch-correction", choices=BATCH_CORRECTIONS, default="none",
                        help="none (default) or reference (training mean and spread per gene)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (2 with a one-line message on a refused input)."""
    args = _parser().parse_args(argv)
    try:
        result = apply(args.outs_dir, args.completion, args.predictor, args.out, slide_id=args.slide_id,
                       batch_correction=args.batch_correction, device=args.device, progress=not args.no_progress)
    except (ReaderError, ApplyError, PanelMismatchError, FileNotFoundError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    info = result.uns["apply"]
    print(f"{args.out}: {result.n_obs} spots × {result.n_vars} genes ({info['n_genes_found']} measured on the slide), "
          f"completed with {Path(info['completion_checkpoint']).name}, predicted with {info['predictor']}")
    return 0


class _CallableModule(types.ModuleType):
    """``spared_utils.apply(...)`` calls :func:`apply`, and ``spared_utils.apply.main`` is the command."""

    def __call__(self, *args: Any, **kwargs: Any) -> ad.AnnData:
        return apply(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())
