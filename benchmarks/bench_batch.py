"""What the benchmark costs: papermill's overhead per notebook, and the full benchmark projected.

Prints these tables:

1. **Papermill overhead**: wall time of a papermill run of a two-cell notebook (parameters +
   ``import spared_utils``) against the same import in a fresh Python process, averaged over
   ``--repeats`` runs. This is what every notebook of a batch plan pays on top of its work.
   Beside it, **import times**: the median wall time of a fresh Python process that imports the
   faces (``su.tl``, ``su.pl``), then that first uses one verb of each, then every name of every
   face (the faces load a name's module on first use).
2. **Projection of the full benchmark** from the training rows of a results store (stage
   ``predict``: wall time, iterations, batch size, device): seconds per training sample of each
   predictor on each device (the training loop's wall time, its validations included), times
   the paper's budget of its record (1,000 iterations × 256 patches; slide-level models: 1,000
   whole-slide steps of ``--slide-spots`` spots; the probe: one fit), times the runs of two protocols —
   the paper's (26 datasets × 2 scenarios × 1 seed, + a 3-rate learning-rate search per dataset)
   and the book's (26 × 4 scenarios × 3 seeds, + the same search). Training only: evaluation,
   completion and curation are not in it. Where the store has no row of a model on a device, the
   cell stays empty: run its chapter there first (``benchmarks/gpu_check.sh`` on a GPU).

3. **Frozen features on disk**: the frozen encoder's features of a dataset's spots (the
   EGN/EGGN bank; the linear probe and SEPAL's stage 1 use the same cache), encoded against read
   back by a later notebook (:class:`spared_utils.models.features.FrozenCache`).

Usage::

    python benchmarks/bench_batch.py [--results results/results.csv] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spared_utils import models, paths, results  # noqa: E402

#: The paper's protocol and the book's: (datasets, scenarios, seeds) and the learning-rate grid size.
PROTOCOLS = {"paper (26 × 2 scenarios × 1 seed)": (26, 2, 1), "book (26 × 4 scenarios × 3 seeds)": (26, 4, 3)}
LR_GRID = 3


def papermill_overhead(repeats: int) -> dict:
    """Seconds of a papermill run of a minimal notebook vs a bare ``import spared_utils``."""
    import nbformat
    import papermill as pm

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    params = nbformat.v4.new_code_cell("dataset = 'synthetic'")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("import spared_utils as su\nsu.tl")]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "minimal.ipynb"
        nbformat.write(nb, src)
        pm_times, py_times = [], []
        for i in range(repeats):
            t0 = time.perf_counter()
            pm.execute_notebook(str(src), str(Path(tmp) / f"out{i}.ipynb"), parameters={"dataset": "x"},
                                kernel_name="python3", progress_bar=False, cwd=str(ROOT))
            pm_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import spared_utils as su; su.tl"], check=True, cwd=ROOT)
            py_times.append(time.perf_counter() - t0)
    pm_s, py_s = sum(pm_times) / repeats, sum(py_times) / repeats
    return {"papermill_s": round(pm_s, 2), "python_import_s": round(py_s, 2), "overhead_s": round(pm_s - py_s, 2)}


#: What a fresh process imports, timed by :func:`import_times` (label → code after ``import spared_utils as su``).
IMPORTS = {
    "faces (su.tl, su.pl)": "su.tl; su.pl",
    "su.tl.complete": "su.tl.complete",
    "su.pl.gene_maps": "su.pl.gene_maps",
    "every name of every face": "[getattr(f, n) for f in (su.pp, su.tl, su.pl, su.io, su.models) for n in f.__all__]",
}


def import_times(repeats: int) -> dict:
    """Median seconds of a fresh Python process running each of :data:`IMPORTS` (``python -c``)."""
    out = {}
    for label, code in IMPORTS.items():
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", f"import spared_utils as su; {code}"], check=True, cwd=ROOT)
            times.append(time.perf_counter() - t0)
        out[label] = round(statistics.median(times), 2)
    return out


def seconds_per_sample(store: pd.DataFrame, slide_spots: int) -> pd.DataFrame:
    """Median training seconds per sample of each (model, device), from ``predict`` rows."""
    rows = store[(store["stage"] == "predict") & store["wall_time_s"].notna() & (store["iterations"] > 0)].copy()
    if rows.empty:
        return pd.DataFrame(columns=["model", "device", "s_per_sample", "runs"])
    # a slide model's step reads `batch_size` spots (a window) of one slide
    rows["samples"] = rows["iterations"] * rows["batch_size"].clip(upper=slide_spots)
    rows["s_per_sample"] = rows["wall_time_s"] / rows["samples"]
    rows["device"] = rows["device"].astype(str).str.split(":").str[0]
    return (rows.groupby(["model", "device"])
            .agg(s_per_sample=("s_per_sample", "median"), runs=("s_per_sample", "size")).reset_index())


def projection(rates: pd.DataFrame, slide_spots: int) -> pd.DataFrame:
    """Training hours of each protocol for every (model, device) with a measured rate."""
    out = []
    for row in rates.itertuples():
        if row.model not in models.NAMES:
            continue
        paper = models.record(row.model).paper  # 1,000 × 256; slide-level models: whole slides; probe: one fit
        per_run = row.s_per_sample * paper.iterations * min(paper.batch_size, slide_spots)
        item = {"model": row.model, "device": row.device, "s_per_sample": row.s_per_sample,
                "paper_run_h": per_run / 3600}
        for name, (n_data, n_scen, n_seeds) in PROTOCOLS.items():
            runs = n_data * (n_scen * n_seeds + LR_GRID)
            item[f"{name} h"] = runs * per_run / 3600
        out.append(item)
    return pd.DataFrame(out)


def plan_projection(plan_path: str | Path, rates: pd.DataFrame, slide_spots: int) -> pd.DataFrame:
    """Training hours of a batch plan (e.g. ``workflow/spared26.yml``) per predictor and device:
    its runs (:func:`spared_utils.batch.runs_of` over the plan's notebooks), plus the
    learning-rate search's runs where the plan searches (one per rate of the grid, per dataset and
    predictor), each at the paper's budget (:func:`projection`'s ``paper_run_h``); ``hours`` sums them."""
    from spared_utils import batch

    plan = batch.load_plan(plan_path)
    per_run = projection(rates, slide_spots)
    if per_run.empty:
        return pd.DataFrame(columns=["model", "device", "runs", "paper_run_h", "hours"])
    by_chapter = {models.record(m).chapter: m for m in models.NAMES}
    counts: dict[str, int] = {}
    for job in batch.jobs(plan, "/nonexistent"):
        model = by_chapter.get(job.chapter)
        if model is None:
            continue
        search = job.parameters.get("learning_rate") == "search"
        grid = len(job.parameters.get("lr_grid", predict_lr_grid())) if search else 0
        counts[model] = counts.get(model, 0) + batch.runs_of(job) + grid
    table = per_run[per_run["model"].isin(list(counts))][["model", "device", "paper_run_h"]].copy()
    table["runs"] = table["model"].map(counts)
    table["hours"] = table["runs"] * table["paper_run_h"]
    return table[["model", "device", "runs", "paper_run_h", "hours"]].reset_index(drop=True)


def predict_lr_grid() -> tuple[float, ...]:
    """The learning rates a chapter searches when its plan does not give ``lr_grid``."""
    from spared_utils.template import COMMON

    return tuple(next(v for name, v, *_ in COMMON if name == "lr_grid"))


def feature_cache(dataset: str, n_spots: int, backbone: str = "resnet50") -> dict:
    """Frozen features of ``n_spots`` spots of ``dataset`` (the EGN/EGGN bank encoder, random
    weights): encoding them against reading them back from the disk cache that a later notebook
    of the same dataset finds (:class:`spared_utils.models.features.FrozenCache` with a module)."""
    import numpy as np
    import torch

    from spared_utils import datasets
    from spared_utils.models import exemplar
    from spared_utils.predict import prediction_data
    from spared_utils.models.features import FrozenCache

    adata = datasets.load(dataset, stage="curated", progress=False)
    data = prediction_data(adata, datasets.patch_store(dataset, adata, progress=False), "masked")
    torch.manual_seed(0)
    encoder = exemplar.FrozenEncoder(backbone, pretrained=False)
    rows = np.arange(min(n_spots, adata.n_obs))
    cold = FrozenCache(data, encoder, torch.device("cpu"), module=encoder)
    if cold.file is not None and cold.file.exists():
        cold.file.unlink()
        cold = FrozenCache(data, encoder, torch.device("cpu"), module=encoder)
    t0 = time.perf_counter()
    (first,) = cold.get(rows)
    encode_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    warm = FrozenCache(data, encoder, torch.device("cpu"), module=encoder)
    (again,) = warm.get(rows)
    read_s = time.perf_counter() - t0
    size = cold.file.stat().st_size / 2**20 if cold.file is not None else float("nan")
    if cold.file is not None:
        cold.file.unlink()
    return {"dataset": dataset, "spots": len(rows), "backbone": backbone, "encode_s": round(encode_s, 2),
            "read_s": round(read_s, 3), "speed_up": round(encode_s / max(read_s, 1e-9), 1), "file_mib": round(size, 1),
            "identical": bool(torch.equal(first, again)), "encoded_again": warm.n_encoded}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default=None, help="results store (default: results/results.csv)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--slide-spots", type=int, default=2_000,
                        help="spots of a typical SpaRED slide, for the slide models' whole-slide steps")
    parser.add_argument("--features-dataset", default="synthetic",
                        help="dataset of table 3 (frozen features: encode vs read from the disk cache)")
    parser.add_argument("--features-spots", type=int, default=512)
    parser.add_argument("--plan", default=None,
                        help="also project this batch plan's hours (e.g. workflow/spared26.yml)")
    parser.add_argument("--skip-overhead", action="store_true", help="skip table 1 (papermill and import times)")
    parser.add_argument("--skip-features", action="store_true", help="skip table 3 (frozen features)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    pd.set_option("display.width", 160)

    over, imports = {}, {}
    if not args.skip_overhead:
        print(f"== 1. Papermill overhead per notebook ({args.repeats} runs)")
        over = papermill_overhead(args.repeats)
        print(pd.DataFrame([over]).to_string(index=False))
        print(f"   each notebook of a plan pays ≈ {over['papermill_s']:.1f} s before its work "
              f"({over['overhead_s']:.1f} s of it papermill and the kernel; the rest importing the package)")
        imports = import_times(args.repeats)
        print(f"   import time, median of {args.repeats} fresh processes (s):")
        print(pd.DataFrame([imports]).to_string(index=False))

    store_path = Path(args.results) if args.results else paths.results_dir() / results.STORE_NAME
    print(f"\n== 2. The full benchmark projected from {store_path} (training only)")
    store = results.read(store_path) if store_path.is_file() else pd.DataFrame()
    rates = seconds_per_sample(store, args.slide_spots) if not store.empty else pd.DataFrame()
    report = {"overhead": over, "import_s": imports}
    if rates.empty:
        print("   no training rows in the store yet: run the predictor chapters (or a plan) first")
    else:
        table = projection(rates, args.slide_spots)
        print(table.round(4).to_string(index=False))
        for device, part in table.groupby("device"):
            cols = [c for c in table if c.endswith(" h")]
            sums = ", ".join(f"{c[:-2]}: {part[c].sum():,.0f} h" for c in cols)
            print(f"   {device}, the {len(part)} predictors measured: {sums}")
        if not (table["device"] == "cuda").any():
            print("   no GPU rows: the GPU-hours (goal ≤ 24 H100-hours for the paper's protocol) are unmeasured")
        report["projection"] = table.to_dict("records")
        if args.plan:
            plan_table = plan_projection(args.plan, rates, args.slide_spots)
            print(f"\n   the plan {args.plan}, at the paper's budget (training only, one notebook after another):")
            print(plan_table.round(3).to_string(index=False))
            for device, part in plan_table.groupby("device"):
                unit = "GPU-hours (measured on a GPU)" if device == "cuda" else (
                    "CPU-hours, projected from CPU times: a GPU is much faster; run benchmarks/gpu_check.sh "
                    "on one to measure its rates")
                print(f"   {device}: {part['hours'].sum():,.0f} {unit}; {len(part)} of "
                      f"{plan_table['model'].nunique()} predictors measured")
            if not (plan_table["device"] == "cuda").any():
                print("   GPU-hours of the plan: unmeasured (no GPU rows in the store)")
            report["plan_projection"] = plan_table.to_dict("records")
    prov = results.benchmark_provenance()
    if prov and over:
        n_nb, sec = prov["notebooks"]["finished"], prov.get("notebook_seconds") or float("nan")
        share = n_nb * over["papermill_s"] / sec if sec else float("nan")
        print(f"\n== The published benchmark ({prov['plan']}): {n_nb} notebooks, {prov['runs']['finished']} runs, "
              f"{sec / 3600:.2f} h of notebooks; papermill and the import take ≈ {share:.1%} of it "
              f"({over['papermill_s']:.1f} s a notebook, {sec / max(prov['runs']['finished'], 1):.0f} s a run)")
        report["published_overhead"] = {"notebooks": n_nb, "notebook_seconds": sec, "share": share}
    if not args.skip_features:
        print(f"\n== 3. Frozen features, encoded vs read back from disk ({args.features_spots} spots)")
        feats = feature_cache(args.features_dataset, args.features_spots)
        print(pd.DataFrame([feats]).to_string(index=False))
        print(f"   a notebook that finds the file reads the features {feats['speed_up']:.0f}x faster than it encodes them")
        report["features"] = feats
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
