"""Benchmark of completion (prints figures; not a test).

(a) Every completion method at synthetic masking 10–70% (the paper's per-gene rule) on the embedded
    dataset, the embedded suite (``synsuite_*``) and every real dataset of ``../shared/data/real``
    that the registry can curate: the median, each gene's training mean, the mean of each spot's
    measured neighbours (``neighbour_mean``), SpaCKLE as published and ours (``spackle_plus``) at
    the same budget, LGDiST (two rounds, its CPU budget; unless ``--no-lgdist``) (and stLearn's SME
    unless ``--no-stlearn``). MSE on hidden real values per
    dataset and level, genes that lost every real value, ours vs SpaCKLE / the mean / the
    neighbour mean / the median; what each completion keeps of the tissue (Moran's I gap and
    gene–gene correlation distance per method and level, ours against SpaCKLE); on the synthetic
    datasets also the originally missing entries (MSE, mean signed error and structure of every
    method) against the expression before dropout and the expected expression.
(b) Our SME against the real stLearn 1.2.2 on stLearn's own test slide (316 spots), same features,
    in ``benchmarks/.env-stlearn`` (created here from PyPI; skipped with a message if that fails).
(c) Side by side with the authors' ``spared`` 2.2.1 SpaCKLE (``benchmarks/.env-spared``: the
    project's packages through a ``.pth`` file plus ``spared`` installed ``--no-deps`` and what it
    imports): same data, same masks, same iteration budget; MSE and wall time of both.
(d) Memory: peak RSS of training and completing on a synthetic 43,804-spot dataset (the size of
    SpaRED's largest), in a child process, for SpaCKLE and ours (a few iterations) and LGDiST (its
    whole CPU budget, unless ``--no-lgdist``); the dense adjacency the authors' dataset class builds is
    computed for comparison.
(e) CPU: the chapter's default budget on the embedded dataset (papermill run, wall time).

Usage::

    python benchmarks/bench_completion.py --quick          # (a) on the embedded dataset only, < 60 s
    python benchmarks/bench_completion.py                  # everything
    python benchmarks/bench_completion.py --only a,c --iterations 1000

    python benchmarks/bench_completion.py --only a,d --cpu-budget --no-stlearn --jobs 2 --threads 1

(the last, on a 2-core machine, with ``--csv data/completion/completion_vs_lgdist_<date>_<commit>.csv``
writes the per-dataset file; the measured runs are in ``data/completion/``).

Both modes print ``spackle_vs_median_mse_reduction: <percent>`` (SpaCKLE's MSE reduction over the
median on the embedded dataset's test slides, averaged over the masking levels) and end with
``ours_vs_spackle_mse_reduction: <mean %> min <smallest per-level %>`` (ours vs SpaCKLE, averaged
over datasets and levels, and the smallest reduction at any dataset and level) and, unless
``--no-lgdist``, ``ours_vs_lgdist_mse_reduction: <mean %> min <smallest per-level %>`` (ours vs
LGDiST at its CPU budget, :class:`~spared_utils.completion.lgdist.LgdistConfig`, same masks).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MPLBACKEND", "agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

STLEARN_ENV = ROOT / "benchmarks" / ".env-stlearn"
SPARED_ENV = ROOT / "benchmarks" / ".env-spared"
STLEARN_DATA = ROOT.parent / "shared" / "data" / "real" / "stlearn_breast_subset"
#: What ``spared.denoising`` imports beyond this project's environment (2.2.1).
SPARED_EXTRA_PACKAGES = ("lightning", "wget", "combat", "torch_geometric", "positional_encodings", "plotly",
                         "opencv-python-headless")
LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def section(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


# ------------------------------------------------------------------------------------------- (a)


def available_datasets() -> list[str]:
    """The embedded dataset, then every curatable registry dataset stored in ../shared/data/real."""
    from spared_utils import datasets

    ids = ["synthetic"]
    for ds_id, spec in datasets.registry().items():
        if spec.source.kind == "synthetic" and ds_id.startswith("synsuite_"):
            ids.append(ds_id)
    for ds_id, spec in datasets.registry().items():
        if spec.source.kind == "local" and spec.pipeline_ready:
            ids.append(ds_id)
    return ids


def spackle_config(quick: bool, iterations: int | None, lr_grid, seed: int, device: str):
    from spared_utils.completion import SpackleConfig

    if quick:
        return SpackleConfig.make(iterations=iterations or 80, learning_rate=3e-3, dim_feedforward=512, eval_every=20,
                             val_max_spots=512, seed=seed, device=device, progress=False)
    grid = tuple(lr_grid) if lr_grid and len(lr_grid) > 1 else None
    return SpackleConfig.make(iterations=iterations or 500, learning_rate=lr_grid[0] if lr_grid else 1e-3,
                         lr_grid=grid, seed=seed, device=device, progress=False)


def bench_masking(dataset: str, config, levels, with_stlearn: bool, splits=("test",), ours: bool = True,
                  lgdist: bool = True) -> dict:
    """Train SpaCKLE (and ours, same budget; LGDiST at its CPU budget) on one dataset and score every
    method at every masking level, on the same masks."""
    from spared_utils import completion, datasets
    from spared_utils.completion import SmeConfig

    t0 = time.perf_counter()
    adata = datasets.load(dataset, progress=False)
    load_s = time.perf_counter() - t0
    hexg = completion.hex_geometry_of(adata)
    result = completion.train_spackle(adata, config=config, hex_geometry=hexg)
    models = {}
    if ours:
        plus_cfg = config.updated(**completion.PLUS_OPTIONS)
        models["spackle_plus"] = completion.train_spackle(adata, config=plus_cfg, hex_geometry=hexg)
    lgdist_s = ""
    if lgdist:
        from spared_utils.completion.lgdist import LgdistConfig, train_lgdist

        t1 = time.perf_counter()
        models["lgdist"] = train_lgdist(adata, config=LgdistConfig.cpu(seed=config.train.seed),
                                        hex_geometry=hexg)
        lgdist_s = f"; LGDiST (CPU budget, 2 rounds) trained in {time.perf_counter() - t1:.1f} s"
    sme = SmeConfig(backbone="resnet18", pretrained=False, tile_size=64) if with_stlearn else None
    methods = completion.masking_methods(result, sme, hex_geometry=hexg, models=models)
    summary, per_gene, _ = completion.evaluate_masking(adata, methods, levels=levels, splits=splits, progress=False)
    red = completion.relative_reduction(summary)
    plus_s = f"; ours trained in {models['spackle_plus'].wall_time_s:.1f} s" if ours else ""
    print(f"{dataset}: {adata.n_obs} spots × {adata.n_vars} genes, {100 * (1 - adata.layers['mask'].mean()):.1f}% "
          f"missing; loaded in {load_s:.1f} s; SpaCKLE lr {result.learning_rate:g}, {config.train.iterations} iterations, "
          f"trained in {result.wall_time_s:.1f} s (best val MSE {result.best_val:.4f} at {result.best_iteration})"
          f"{plus_s}{lgdist_s}")
    table = summary.pivot_table(index=["split", "masking"], columns="method", values="mse")
    lost = summary.drop_duplicates(["split", "masking"]).set_index(["split", "masking"])["genes_lost"]
    table["genes_lost"] = lost
    table["spackle_vs_median_%"] = 100 * (1 - table["spackle"] / table["median"])
    table["spackle_vs_neighbour_mean_%"] = 100 * (1 - table["spackle"] / table["neighbour_mean"])
    if ours:
        table["ours_vs_spackle_%"] = 100 * (1 - table["spackle_plus"] / table["spackle"])
        table["ours_vs_mean_%"] = 100 * (1 - table["spackle_plus"] / table["mean"])
        table["ours_vs_neighbour_mean_%"] = 100 * (1 - table["spackle_plus"] / table["neighbour_mean"])
        table["ours_vs_median_%"] = 100 * (1 - table["spackle_plus"] / table["median"])
    if ours and lgdist:
        table["ours_vs_lgdist_%"] = 100 * (1 - table["spackle_plus"] / table["lgdist"])
    if lgdist:
        table["lgdist_vs_spackle_%"] = 100 * (1 - table["lgdist"] / table["spackle"])
    if "stlearn" in table:
        table["stlearn/spackle"] = table["stlearn"] / table["spackle"]
    print(table.round(3).to_string())
    below = int((red["reduction_pct"] > 0).sum())
    print(f"  SpaCKLE below the median at {below}/{len(red)} levels; mean reduction "
          f"{red['reduction_pct'].mean():.1f}% (paper: 82.5% over SpaRED); below the training mean at "
          f"{int((table['spackle'] < table['mean']).sum())}/{len(table)} levels")
    out = {"dataset": dataset, "summary": summary, "reduction": red, "result": result, "table": table,
           "mean_reduction": float(red["reduction_pct"].mean()), "below_all": below == len(red)}
    out.update(bench_structure(summary, ours))
    if ours:
        vs = table["ours_vs_spackle_%"]
        print(f"  ours vs SpaCKLE: {vs.mean():.1f}% lower MSE on average (min {vs.min():.1f}%); below the training "
              f"mean at {int((table['spackle_plus'] < table['mean']).sum())}/{len(table)} levels; vs the median "
              f"{table['ours_vs_median_%'].mean():.1f}% lower")
        out.update(ours_vs_spackle=float(vs.mean()), ours_vs_spackle_min=float(vs.min()),
                   ours_below_mean=bool((table["spackle_plus"] < table["mean"]).all()),
                   ours_below_neighbour_mean=bool((table["spackle_plus"] < table["neighbour_mean"]).all()),
                   ours_vs_median=float(table["ours_vs_median_%"].mean()))
    if ours and lgdist:
        vs = table["ours_vs_lgdist_%"]
        print(f"  ours vs LGDiST: {vs.mean():.1f}% lower MSE on average (min {vs.min():.1f}%); LGDiST vs SpaCKLE "
              f"{table['lgdist_vs_spackle_%'].mean():.1f}% lower (its paper: 18% over SpaRED)")
        out.update(ours_vs_lgdist=float(vs.mean()), ours_vs_lgdist_min=float(vs.min()),
                   lgdist_vs_spackle=float(table["lgdist_vs_spackle_%"].mean()))
        spec = datasets.get_spec(dataset)
        if spec.source.kind == "synthetic":
            out["missing"] = bench_missing(adata, spec, methods)
    return out


def bench_structure(summary: pd.DataFrame, ours: bool) -> dict:
    """Print what each completion keeps of the tissue per level (Moran's I gap, gene–gene
    correlation distance) and, with ours, where it keeps less than SpaCKLE."""
    from spared_utils.completion import structure_table

    cols = ["moran_gap", "corr_distance"]
    per_level = summary.pivot_table(index="masking", columns="method", values=cols)
    print("  structure kept (Moran's I gap | gene-gene correlation distance; 0 = as measured):")
    print(textwrap.indent(per_level.round(3).to_string(), "    "))
    print(textwrap.indent(structure_table(summary).round(3).to_string(), "    "))
    if not ours:
        return {}
    worse = {c: [f"{100 * lv:.0f}%" for lv, row in per_level[c].iterrows() if row["spackle_plus"] > row["spackle"]]
             for c in cols}
    for c in cols:
        where = ", ".join(worse[c]) or "none"
        print(f"  ours vs SpaCKLE, {c}: at least as small at {len(per_level) - len(worse[c])}/{len(per_level)} "
              f"levels; larger at: {where}")
    return {"ours_structure_ok": not any(worse.values())}


def _masking_job(job, capture: bool = True):
    """One dataset of (a): ``(printed text, result or None)``; a dataset that fails is reported, not fatal."""
    import contextlib
    import io

    import torch

    ds, config, levels, with_stlearn, threads, lgdist = job
    torch.set_num_threads(threads)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf) if capture else contextlib.nullcontext():
        try:
            out = bench_masking(ds, config, levels, with_stlearn=with_stlearn, lgdist=lgdist)
            for key in ("result",):  # the trained model stays in the worker
                out.pop(key, None)
        except Exception as err:  # a real dataset that cannot be read here is reported, not fatal
            print(f"{ds}: skipped ({type(err).__name__}: {err})")
            out = None
    return buf.getvalue(), out


def bench_missing(adata, spec, methods) -> pd.DataFrame:
    """Score every method on the originally missing entries against the expression before dropout
    and the expected expression: MSE, mean signed error, Moran's I gap, correlation distance."""
    from spared_utils import completion, synthetic

    generated = synthetic.make_dataset(**spec.generator, images=False)
    table = completion.score_missing(adata, methods, generated, splits=("test",))
    print("  originally missing entries of the test slide vs the truth before dropout and the expected "
          "expression (MSE, mean signed error, Moran's I gap, correlation distance):")
    print(textwrap.indent(table.round(3).to_string(), "    "))
    for line in missing_verdicts(table):
        print(f"  {line}")
    return table


def missing_checks(table: pd.DataFrame) -> dict[str, tuple[bool, bool, str]]:
    """Per truth: whether ours has the lowest MSE and the smallest |mean signed error| of ours,
    SpaCKLE and LGDiST on the originally missing entries (the issue's target), and the figures."""
    rivals = [m for m in ("spackle", "lgdist") if m in table.index]
    if "spackle_plus" not in table.index or not rivals:
        return {}
    out = {}
    for truth in table.columns.get_level_values(1).unique():
        mse, bias = table[("mse", truth)], table[("mean_signed_error", truth)]
        figs = ", ".join(f"{m} {mse[m]:.3f} / {bias[m]:+.3f}" for m in ["spackle_plus", *rivals])
        out[truth] = (all(mse["spackle_plus"] < mse[r] for r in rivals),
                      all(abs(bias["spackle_plus"]) < abs(bias[r]) for r in rivals), figs)
    return out


def dataset_rows(summ: pd.DataFrame, outs: list[dict], run: str) -> pd.DataFrame:
    """Section (a)'s data file: ``summ`` (one row per dataset) with its kind, the originally missing
    entries against the expected expression (MSE and mean signed error of ours, SpaCKLE and LGDiST;
    whether ours has the lowest MSE and the smallest |bias|), the date, machine and command."""
    from spared_utils import datasets

    rows = []
    for (_, row), out in zip(summ.round(2).iterrows(), outs):
        extra = {"kind": "generated" if datasets.get_spec(row["dataset"]).source.kind == "synthetic" else "real"}
        table = out.get("missing")
        truth = "expected expression"
        if table is not None and ("mse", truth) in table:
            lowest, smallest, _ = missing_checks(table)[truth]
            extra.update(missing_ours_lowest_mse=lowest, missing_ours_smallest_bias=smallest)
            for m, name in (("spackle_plus", "ours"), ("spackle", "spackle"), ("lgdist", "lgdist")):
                if m in table.index:
                    extra[f"missing_mse_{name}"] = f"{table.loc[m, ('mse', truth)]:.3f}"
                    extra[f"missing_bias_{name}"] = f"{table.loc[m, ('mean_signed_error', truth)]:+.3f}"
        rows.append({"dataset": row["dataset"], **extra, **row.drop("dataset").to_dict()})
    frame = pd.DataFrame(rows)
    frame["date"] = time.strftime("%Y-%m-%d")
    frame["machine"] = f"{os.cpu_count()} cores, no GPU" if not _has_cuda() else f"{os.cpu_count()} cores, CUDA"
    frame["run"] = run + "; test slides, masking 10-70%, seed 0; missing entries vs the expected expression"
    return frame


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def missing_verdicts(table: pd.DataFrame) -> list[str]:
    """:func:`missing_checks` as printed lines."""
    return [f"missing entries vs {truth}: ours lowest MSE {'yes' if a else 'NO'}, smallest |bias| "
            f"{'yes' if b else 'NO'} (MSE / mean signed error: {figs})"
            for truth, (a, b, figs) in missing_checks(table).items()]


# ------------------------------------------------------------------------------------------- (b)

STLEARN_CHILD = textwrap.dedent("""
    import json, sys, time, numpy as np, anndata as ad
    import stlearn as st
    args = json.load(open(sys.argv[1]))
    a = ad.read_h5ad(args["h5ad"])
    t = time.perf_counter()
    st.spatial.SME.SME_impute0(a, use_data="raw", weights="weights_matrix_all", platform="Visium")
    seconds = time.perf_counter() - t
    np.save(args["out"], np.asarray(a.obsm["raw_SME_imputed"], dtype=np.float64))
    import importlib.metadata as md
    json.dump({"seconds": seconds, "version": md.version("stlearn")}, open(args["info"], "w"))
""")


def ensure_env(env: Path, install: list[list[str]], probe: str, share_project: bool) -> Path | None:
    """A venv at ``env`` in which ``probe`` imports; created with ``install`` (pip args) if needed."""
    py = env / "bin" / "python"
    if py.is_file() and subprocess.run([str(py), "-c", probe], capture_output=True).returncode == 0:
        return py
    try:
        if not py.is_file():
            subprocess.run([sys.executable if share_project else "python3", "-m", "venv", str(env)], check=True)
        if share_project:
            import site

            purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                     check=True, capture_output=True, text=True).stdout.strip()
            Path(purelib, "project.pth").write_text(site.getsitepackages()[0] + "\n")
        for args in install:
            subprocess.run([str(py), "-m", "pip", "install", "-q", *args], check=True, timeout=3600)
        res = subprocess.run([str(py), "-c", probe], capture_output=True, text=True)
        if res.returncode != 0:
            print(f"  {env.name}: installed, but `{probe}` fails: {res.stderr.strip().splitlines()[-1:]}")
            return None
        return py
    except (subprocess.SubprocessError, OSError) as err:
        print(f"  {env.name}: could not be created ({err}); skipping")
        return None


def bench_stlearn_check() -> dict | None:
    """Our SME imputation against stlearn 1.2.2's ``SME_impute0`` on the same inputs."""
    import anndata as ad
    from PIL import Image

    from spared_utils.completion import sme

    h5 = STLEARN_DATA / "test_data.h5"
    if not h5.is_file():
        print(f"  skipped: {h5} not found")
        return None
    py = ensure_env(STLEARN_ENV, [["stlearn==1.2.2"]], "import stlearn", share_project=False)
    if py is None:
        print("  skipped: stLearn 1.2.2 is not installable here (it needs TensorFlow and numpy<2)")
        return None
    a = ad.read_h5ad(h5)
    x = np.asarray(a.X.toarray() if hasattr(a.X, "toarray") else a.X, dtype=np.float64)
    x = x - x.min() + 0.1  # stLearn's test values are z-scores; shift so only our zeros are missing
    rng = np.random.default_rng(0)
    observed = rng.random(x.shape) >= 0.3
    x_in = np.where(observed, x, 0.0)
    image = np.asarray(Image.open(STLEARN_DATA / "test_image.jpg").convert("RGB"))
    xy = a.obs[["imagecol", "imagerow"]].to_numpy(dtype=np.float64)
    cfg = sme.SmeConfig(backbone="resnet18", pretrained=False, tile_size=64, unit_rule="stlearn_1.2")
    morph = sme.morphology_pcs(sme.tile_features(image, xy, cfg), 50)
    pcs = sme.expression_pcs(x_in, 50)
    t = time.perf_counter()
    ours = sme.sme_impute_slide(x_in, observed, xy, a.obs["array_row"].to_numpy(), a.obs["array_col"].to_numpy(),
                                cfg, morphology=morph, expression=pcs).astype(np.float64)
    ours_s = time.perf_counter() - t
    published = sme.sme_impute_slide(x_in, observed, xy, a.obs["array_row"].to_numpy(),
                                     a.obs["array_col"].to_numpy(), replace(cfg, unit_rule="published"),
                                     morphology=morph, expression=pcs).astype(np.float64)
    with tempfile.TemporaryDirectory() as tmp:
        b = ad.AnnData(X=x_in.astype(np.float32), obs=a.obs[["imagecol", "imagerow", "array_row", "array_col"]].copy())
        b.obsm["X_morphology"], b.obsm["X_pca"] = morph, pcs
        b.write_h5ad(Path(tmp, "in.h5ad"))
        args = {"h5ad": str(Path(tmp, "in.h5ad")), "out": str(Path(tmp, "out.npy")), "info": str(Path(tmp, "info.json"))}
        Path(tmp, "args.json").write_text(json.dumps(args))
        Path(tmp, "child.py").write_text(STLEARN_CHILD)
        res = subprocess.run([str(py), str(Path(tmp, "child.py")), str(Path(tmp, "args.json"))],
                             capture_output=True, text=True, timeout=1800)
        if res.returncode != 0:
            print(f"  stLearn run failed: {res.stderr.strip()[-1500:]}")
            return None
        theirs = np.load(args["out"])
        info = json.loads(Path(args["info"]).read_text())
    missing = ~observed
    diff = np.abs(ours - theirs)[missing]
    same = np.isclose(ours, theirs, rtol=1e-5, atol=1e-5)[missing].mean()
    moved = (~np.isclose(published, ours, rtol=1e-5, atol=1e-5))[missing].mean()
    print(f"  stLearn {info['version']}: {a.n_obs} spots × {a.n_vars} genes, {missing.sum()} zeros imputed")
    print(f"  ours (unit_rule='stlearn_1.2') vs stLearn: max |diff| {diff.max():.2e}, "
          f"{100 * same:.2f}% of imputed entries equal; time ours {ours_s:.2f} s, stLearn {info['seconds']:.2f} s")
    print(f"  the published radius (unit_rule='published', 3 spacings instead of ≈2.1) changes "
          f"{100 * moved:.1f}% of the imputed entries")
    return {"max_abs_diff": float(diff.max()), "equal_fraction": float(same), "ours_s": ours_s,
            "stlearn_s": info["seconds"], "version": info["version"]}


# ------------------------------------------------------------------------------------------- (c)

SPARED_CHILD = textwrap.dedent("""
    import glob, json, os, sys, time, warnings
    warnings.filterwarnings("ignore")
    import numpy as np, anndata as ad, torch
    from torch.utils.data import DataLoader
    args = json.load(open(sys.argv[1]))
    torch.set_num_threads(args["threads"])
    from spared.denoising import denoising  # noqa: F401 (sets up the package's import paths)
    import spared.spackle.main as M
    from spared.spackle.utils import get_args_dict
    from spared.spackle.model import GeneImputationModel

    _Trainer = M.Trainer
    def cpu_trainer(*a, **k):  # the package hard-codes accelerator='gpu'
        k.update(accelerator=args["accelerator"], enable_progress_bar=False, enable_model_summary=False,
                 logger=False)
        return _Trainer(*a, **k)
    M.Trainer = cpu_trainer

    import squidpy as sq
    Dataset = M.ImputationDataset
    def get_adjacency(self, num_neighs=6):
        # The package reads column idx of squidpy's kNN matrix; squidpy 1.8 keeps each spot's k
        # nearest spots in its *row* (columns hold a varying number of in-neighbours, which the
        # DataLoader cannot stack). Transposed, column idx is idx's 18 nearest spots, as the
        # package's docstring intends. Still the dense spots x spots matrix of the original.
        sq.gr.spatial_neighbors(self.adata, coord_type="generic", n_neighs=num_neighs)
        self.adj_mat = torch.tensor(self.adata.obsp["spatial_connectivities"].T.todense())
    Dataset.get_adjacency = get_adjacency

    adata = ad.read_h5ad(args["h5ad"])
    cfg = get_args_dict(None)
    t = time.perf_counter()
    M.train_spackle(adata=adata, device=args["accelerator"], save_path=args["save"], prediction_layer="c_d_log1p",
                    lr=args["lr"], train=True, get_performance=False, load_ckpt_path="", args_dict=cfg,
                    optimizer="Adam", max_steps=args["iterations"])
    train_s = time.perf_counter() - t
    ckpt = sorted(glob.glob(os.path.join(args["save"], "*.ckpt")))[0]
    model = GeneImputationModel(args=cfg, data_input_size=adata.n_vars, lr=args["lr"], optimizer="Adam")
    model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"])
    model.eval()
    masks = np.load(args["masks"])
    rows = masks["rows"]
    sub = adata[rows].copy()
    out = {"train_s": train_s, "checkpoint": os.path.basename(ckpt), "mse": {}}
    values = np.asarray(sub.layers["c_d_log1p"], dtype=np.float32)
    for key in [k for k in masks.files if k.startswith("level_")]:
        hidden = masks[key]
        sub.layers["masked_expression_matrix"] = np.where(hidden, 0, values).astype(np.float32)
        sub.layers["random_mask"] = hidden
        data = Dataset(sub, cfg, "test", "c_d_log1p", pre_masked=True)
        loader = DataLoader(data, batch_size=cfg["batch_size"], shuffle=False, drop_last=False)
        preds = []
        with torch.no_grad():
            for batch in loader:
                pred, _, _ = model.pred_outputs_from_batch(batch, pre_masked_batch=True)
                preds.append(pred[:, 0].float().numpy())
        pred = np.concatenate(preds)
        out["mse"][key] = float(np.mean((pred[hidden] - values[hidden]) ** 2))
    json.dump(out, open(args["out"], "w"))
""")


def bench_authors(iterations: int, seed: int, threads: int, levels=LEVELS) -> dict | None:
    """Authors' SpaCKLE (spared 2.2.1) and ours on the embedded dataset: same data, masks, budget."""
    import torch

    from spared_utils import completion, datasets
    from spared_utils.completion import evaluate as E
    from spared_utils.completion import spackle as S

    py = ensure_env(SPARED_ENV, [["--no-deps", "spared==2.2.1"], list(SPARED_EXTRA_PACKAGES)],
                    "from spared.denoising import denoising", share_project=True)
    if py is None:
        print("  skipped: the authors' spared 2.2.1 could not be installed")
        return None
    adata = datasets.load("synthetic", progress=False)
    spots = E.evaluation_spots(adata, ("test",))
    split, rows = next(iter(spots.items()))
    values, real = S.check_input(adata)
    hidden = {lv: S.synthetic_hidden(real[rows], lv, seed=E._level_seed(seed, lv, split), scheme="per_gene")
              for lv in levels}
    torch.set_num_threads(threads)
    out = {"levels": list(levels), "iterations": iterations}
    with tempfile.TemporaryDirectory() as tmp:
        h5 = Path(tmp, "data.h5ad")
        keep = adata.copy()
        for k in list(keep.uns):
            if k not in ("spatial",):
                del keep.uns[k]
        keep.write_h5ad(h5)
        np.savez(Path(tmp, "masks.npz"), rows=rows, **{f"level_{lv}": h for lv, h in hidden.items()})
        args = {"h5ad": str(h5), "masks": str(Path(tmp, "masks.npz")), "save": str(Path(tmp, "ckpt")),
                "out": str(Path(tmp, "out.json")), "iterations": iterations, "lr": 1e-3, "threads": threads,
                "accelerator": "cpu"}
        Path(tmp, "args.json").write_text(json.dumps(args))
        Path(tmp, "child.py").write_text(SPARED_CHILD)
        t = time.perf_counter()
        res = subprocess.run([str(py), str(Path(tmp, "child.py")), str(Path(tmp, "args.json"))],
                             capture_output=True, text=True, timeout=6 * 3600)
        total = time.perf_counter() - t
        if res.returncode != 0:
            print(f"  the authors' run failed: {res.stderr.strip()[-2000:]}")
            return None
        theirs = json.loads(Path(args["out"]).read_text())
    print(f"  authors' spared 2.2.1: {iterations} steps, lr 1e-3, width = genes, attention across the batch; "
          f"train {theirs['train_s']:.1f} s (process {total:.1f} s incl. imports)")
    rows_out = [{"masking": lv, "authors": theirs["mse"][f"level_{lv}"]} for lv in levels]
    runs = {"ours (paper config, lr 1e-3)": S.SpackleConfig.make(iterations=iterations, learning_rate=1e-3, seed=seed,
                                                            device="cpu", progress=False),
            "ours (d_model 128, FF 512, lr 3e-3)": S.SpackleConfig.make(iterations=iterations, learning_rate=3e-3,
                                                                  dim_feedforward=512, seed=seed, device="cpu",
                                                                  progress=False)}
    times = {"authors": theirs["train_s"]}
    for name, cfg in runs.items():
        result = completion.train_spackle(adata, config=cfg)
        times[name] = result.wall_time_s
        full = np.zeros_like(real)
        for r in rows_out:
            full[:] = False
            full[rows] = hidden[r["masking"]]
            pred = S.predict_hidden(result, adata, full, rows)
            r[name] = float(np.mean((pred[hidden[r["masking"]]] - values[rows][hidden[r["masking"]]]) ** 2))
    table = pd.DataFrame(rows_out).set_index("masking")
    print(table.round(4).to_string())
    for name in runs:
        ratio = times[name] / times["authors"]
        wins = int((table[name] <= table["authors"]).sum())
        print(f"  {name}: train {times[name]:.1f} s = {ratio:.2f}× the authors' time; MSE ≤ theirs at "
              f"{wins}/{len(table)} levels (mean MSE {table[name].mean():.4f} vs {table['authors'].mean():.4f})")
    out.update(table=table, times=times)
    return out


# ------------------------------------------------------------------------------------------- (d)

MEMORY_CHILD = textwrap.dedent("""
    import json, resource, sys, time
    import numpy as np, pandas as pd, anndata as ad, torch
    sys.path.insert(0, sys.argv[2])
    from spared_utils.completion import PLUS_OPTIONS, SpackleConfig, train_spackle, complete
    n_target, n_genes, its, method = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
    torch.set_num_threads(2)
    n_slides = 4
    per = -(-n_target // n_slides)
    side = int(np.ceil(np.sqrt(2 * per)))
    r, c = np.meshgrid(np.arange(side), np.arange(2 * side), indexing="ij")
    keep = (r + c) % 2 == 0
    r, c = r[keep][:per], c[keep][:per]
    obs = []
    for s in range(n_slides):
        obs.append(pd.DataFrame({"slide_id": f"S{s}", "split": ["train", "train", "val", "test"][s],
                                 "array_row": r, "array_col": c}))
    obs = pd.concat(obs, ignore_index=True).iloc[:n_target]
    obs.index = obs.index.astype(str)
    rng = np.random.default_rng(0)
    field = np.sin(obs["array_row"].to_numpy()[:, None] / 7 + np.arange(n_genes) / 5) + np.cos(obs["array_col"].to_numpy()[:, None] / 11)
    values = (10 + 2 * field + rng.normal(0, 0.5, (len(obs), n_genes))).astype(np.float32)
    mask = rng.random(values.shape) > 0.3
    a = ad.AnnData(X=values, obs=obs)
    a.layers["c_d_log1p"] = values
    a.layers["mask"] = mask
    a.obsm["spatial"] = np.c_[obs["array_col"].to_numpy() * 50.0, obs["array_row"].to_numpy() * 86.6]  # Visium pitch
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    t = time.perf_counter()
    if method == "lgdist":  # its own unit of training is the epoch: its whole CPU budget
        from spared_utils.completion.lgdist import LgdistConfig, train_lgdist
        cfg = LgdistConfig.cpu()
        res = train_lgdist(a, config=cfg, hex_geometry=True)
        its = f"{cfg.ae_epochs} autoencoder + 2 x {cfg.dit_epochs} diffusion epochs"
    else:
        extra = PLUS_OPTIONS if method == "spackle_plus" else {}
        res = train_spackle(a, config=SpackleConfig.make(iterations=its, eval_every=max(its // 2, 1), progress=False,
                                                         device="cpu", **extra))
    complete(a, method=method, model=res)
    json.dump({"n_spots": a.n_obs, "n_genes": n_genes, "budget": str(its), "seconds": time.perf_counter() - t, "input_gib": base,
               "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}, open(sys.argv[1], "w"))
""")


def bench_memory(n_spots: int = 43_804, n_genes: int = 128, iterations: int = 20,
                 methods: tuple[str, ...] = ("spackle", "spackle_plus", "lgdist")) -> dict | None:
    infos = {}
    for method in methods:
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "child.py").write_text(MEMORY_CHILD)
            out = Path(tmp, "out.json")
            res = subprocess.run([sys.executable, str(Path(tmp, "child.py")), str(out), str(ROOT), str(n_spots),
                                  str(n_genes), str(iterations), method], capture_output=True, text=True, timeout=3600)
            if res.returncode != 0:
                print(f"  memory child ({method}) failed: {res.stderr[-2000:]}")
                continue
            infos[method] = json.loads(out.read_text())
    if methods[0] not in infos:
        return None
    if "spackle_plus" in infos and "spackle" in infos:
        a, b = infos["spackle"], infos["spackle_plus"]
        print(f"  ours vs SpaCKLE at {a['n_spots']:,} spots × {a['n_genes']} genes, {iterations} iterations + completion: "
              f"time {b['seconds']:.1f} s vs {a['seconds']:.1f} s ({b['seconds'] / a['seconds']:.2f}×), peak RSS "
              f"{b['peak_gib']:.2f} vs {a['peak_gib']:.2f} GiB ({b['peak_gib'] / a['peak_gib']:.2f}×; goal ≤ 2×)")
    if "lgdist" in infos and "spackle" in infos:
        a, g = infos["spackle"], infos["lgdist"]
        print(f"  LGDiST at its CPU budget ({g['budget']}) + completion: {g['seconds']:.1f} s, peak RSS "
              f"{g['peak_gib']:.2f} GiB ({g['peak_gib'] / a['peak_gib']:.2f}× SpaCKLE's; its time is not comparable "
              f"with SpaCKLE's {iterations} iterations above)")
    info = infos[methods[0]]
    dense_train = (info["n_spots"] // 2) ** 2 * 8 / 2**30
    verdict = "within" if info["peak_gib"] <= 4 else "OVER"
    print(f"  {info['n_spots']:,} spots × {info['n_genes']} genes: train {iterations} iterations + complete all "
          f"spots in {info['seconds']:.1f} s; peak RSS {info['peak_gib']:.2f} GiB ({verdict} the 4 GiB goal; "
          f"{info['input_gib']:.2f} GiB after building the data)")
    print(f"  neighbourhoods: ({info['n_spots']:,} × 18) int64 = {info['n_spots'] * 18 * 8 / 2**20:.1f} MiB; the "
          f"authors' dense float64 adjacency of the {info['n_spots'] // 2:,} training spots alone: {dense_train:.1f} GiB")
    return info


# ------------------------------------------------------------------------------------------- (e)


def bench_chapter() -> float | None:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "SPARED_RESULTS_DIR": str(Path(tmp, "results"))}
        t = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", "spared_utils.run", "02_completion", "--dataset", "synthetic"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
        seconds = time.perf_counter() - t
    if res.returncode != 0:
        print(f"  chapter failed: {res.stderr[-2000:]}")
        return None
    verdict = "within" if seconds < 180 else "OVER"
    print(f"  chapters/02_completion with its defaults on the embedded dataset: {seconds:.0f} s "
          f"({verdict} the 3-minute goal; includes papermill start-up)")
    return seconds


# ------------------------------------------------------------------------------------------- main


def _over_levels(outs: list[dict], key: str) -> tuple[float, float] | None:
    """Mean and smallest ``<key>_%`` over every dataset and level; None unless every dataset has it."""
    if not all(key in o for o in outs):
        return None
    per_level = pd.concat([o["table"][f"{key}_%"] for o in outs])
    return float(per_level.mean()), float(per_level.min())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="(a) on the embedded dataset with a small budget")
    parser.add_argument("--only", default="a,b,c,d,e", help="sections to run, e.g. 'a,c'")
    parser.add_argument("--iterations", type=int, default=None, help="SpaCKLE budget (quick 80, full 500)")
    parser.add_argument("--lr-grid", type=float, nargs="+", default=[1e-3, 3e-3])
    parser.add_argument("--authors-iterations", type=int, default=None, help="budget of (c) (default: --iterations)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cpu-budget", action="store_true",
                        help="(a) at the book's CPU budget (chapter 02: 200 iterations, lr 3e-3, feed-forward 512)")
    parser.add_argument("--datasets", default=None, help="(a) on these datasets only, e.g. 'synthetic,synsuite_base'")
    parser.add_argument("--no-stlearn", action="store_true", help="(a) without stLearn's SME (faster)")
    parser.add_argument("--no-lgdist", action="store_true", help="(a) without LGDiST (much faster)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="(a) datasets in this many processes at once (each with --threads threads)")
    parser.add_argument("--csv", default=None,
                        help="(a) also write one row per dataset here (data/completion/completion_vs_lgdist_<date>_<commit>.csv)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    sections = set(args.only.split(",")) if not args.quick else {"a"}
    headline = ours_line = lgdist_line = None
    if "a" in sections:
        section("(a) median, training mean, neighbour mean, SpaCKLE, ours (and stLearn) under synthetic masking "
                "(test slides; val/train when absent)")
        if args.cpu_budget:
            from spared_utils.completion import SpackleConfig, budget_options

            config = SpackleConfig.make(**budget_options("spackle", args.seed, args.device, args.iterations))
        else:
            config = spackle_config(args.quick, args.iterations, args.lr_grid, args.seed, args.device)
        levels = (0.1, 0.3, 0.5, 0.7) if args.quick else LEVELS
        ids = ["synthetic"] if args.quick else available_datasets()
        if args.datasets:
            ids = args.datasets.split(",")
        jobs = [(ds, config, levels, not (args.quick or args.no_stlearn), args.threads, not args.no_lgdist)
                for ds in ids]
        if args.jobs > 1:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(args.jobs) as pool:
                done = pool.map(_masking_job, jobs, chunksize=1)
        else:
            done = [_masking_job(job, capture=False) for job in jobs]
        outs = []
        for text, out in done:
            print(text, end="", flush=True)
            if out is not None:
                outs.append(out)
        if outs:
            summ = pd.DataFrame([{"dataset": o["dataset"], "spackle_vs_median_%": o["mean_reduction"],
                                  "spackle_below_median_everywhere": o["below_all"],
                                  "ours_vs_spackle_%": o.get("ours_vs_spackle"),
                                  "ours_vs_spackle_min_%": o.get("ours_vs_spackle_min"),
                                  "ours_below_mean_everywhere": o.get("ours_below_mean"),
                                  "ours_below_neighbour_mean_everywhere": o.get("ours_below_neighbour_mean"),
                                  "ours_structure_as_spackle_everywhere": o.get("ours_structure_ok"),
                                  "ours_vs_median_%": o.get("ours_vs_median"),
                                  "ours_vs_lgdist_%": o.get("ours_vs_lgdist"),
                                  "ours_vs_lgdist_min_%": o.get("ours_vs_lgdist_min"),
                                  "lgdist_vs_spackle_%": o.get("lgdist_vs_spackle")} for o in outs])
            print(summ.round(2).to_string(index=False))
            checks = {o["dataset"]: missing_checks(o["missing"]) for o in outs if o.get("missing") is not None}
            if args.csv:
                run = f"python benchmarks/bench_completion.py {' '.join(sys.argv[1:])} (commit {_commit()})"
                dataset_rows(summ, outs, run).to_csv(args.csv, index=False)
                print(f"wrote {args.csv}")
            for truth in sorted({t for c in checks.values() for t in c}):
                n_mse = sum(c[truth][0] for c in checks.values() if truth in c)
                n_bias = sum(c[truth][1] for c in checks.values() if truth in c)
                print(f"originally missing entries vs {truth}: ours has the lowest MSE (vs SpaCKLE, LGDiST) on "
                      f"{n_mse}/{len(checks)} generated datasets, the smallest |mean signed error| on {n_bias}/{len(checks)}")
            headline = next((o["mean_reduction"] for o in outs if o["dataset"] == "synthetic"), None)
            ours_line = _over_levels(outs, "ours_vs_spackle")
            lgdist_line = _over_levels(outs, "ours_vs_lgdist")
    if "b" in sections:
        section("(b) our SME imputation vs the real stLearn")
        bench_stlearn_check()
    if "c" in sections:
        section("(c) side by side with the authors' spared 2.2.1 (embedded dataset, CPU)")
        bench_authors(args.authors_iterations or args.iterations or 500, args.seed, args.threads)
    if "d" in sections:
        section("(d) memory on a 43,804-spot synthetic dataset")
        bench_memory(methods=("spackle", "spackle_plus") if args.no_lgdist else ("spackle", "spackle_plus", "lgdist"))
    if "e" in sections:
        section("(e) the chapter's default budget on this CPU")
        bench_chapter()
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s; peak RSS of this process "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    if headline is not None:
        print(f"spackle_vs_median_mse_reduction: {headline:.1f}")
    if ours_line is not None:
        print(f"ours_vs_spackle_mse_reduction: {ours_line[0]:.1f} min {ours_line[1]:.1f}")
    if lgdist_line is not None:
        print(f"ours_vs_lgdist_mse_reduction: {lgdist_line[0]:.1f} min {lgdist_line[1]:.1f}")


if __name__ == "__main__":
    main()
