"""Benchmark of the curation pipeline (prints figures; not a test).

(a) Adaptive median completion: our vectorised version against a re-implementation of the
    authors' loop over every (spot, gene) pair, on the same input (a 3,600-spot hexagonal slide,
    1,000 genes, 20% zeros): both times, the ratio, and whether the values are identical. If the
    authors' ``spared`` package is installed in ``benchmarks/.env-spared`` (see
    :func:`spared_env_python`), their ``median_cleaner`` is timed too.
(b) The whole pipeline (steps 1–7) on a synthetic collection the size of SpaRED's largest dataset
    (vicari_mouse_brain: 43,804 spots on 14 slides; ~20,000 genes): wall time per step and peak
    resident memory (goal: ≤ 5 min, ≤ 8 GiB), then patch extraction in patches per second.

The large collection is built from :func:`spared_utils.synthetic.make_dataset` with 2,000 genes,
widened to 20,000 by binomial thinning (each copy of a gene keeps each count with a per-gene
probability drawn log-uniformly in [10^-2.5, 1]), which gives the wide range of detection rates
of real Visium genes (most genes are rarely detected) without generating 20,000 genes of images.
The pipeline runs in a child process so that its peak memory is measured alone.

Usage::

    python benchmarks/bench_curation.py            # full size (minutes, several GiB)
    python benchmarks/bench_curation.py --quick    # small sizes, < 60 s
    python benchmarks/bench_curation.py --setup-spared-env --skip-pipeline   # also time the authors' package
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")

from anndata import AnnData  # noqa: E402

from spared_utils.preprocess import median as med  # noqa: E402

SPARED_ENV = ROOT / "benchmarks" / ".env-spared"


# ------------------------------------------------------------------------------------------- (a)


def hex_slide(n_rows: int, n_cols: int, n_genes: int, zero_fraction: float, seed: int = 0) -> AnnData:
    """A rectangular block of the Visium grid with log-normal values and random zeros."""
    rows, cols = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    keep = (rows + cols) % 2 == 0
    rows, cols = rows[keep], cols[keep]
    rng = np.random.default_rng(seed)
    values = rng.lognormal(1.0, 1.0, (len(rows), n_genes))
    values[rng.random(values.shape) < zero_fraction] = 0.0
    obs = pd.DataFrame({"array_row": rows, "array_col": cols, "slide_id": "S1"},
                       index=[f"spot{i}" for i in range(len(rows))])
    adata = AnnData(X=values, obs=obs)
    adata.var_names = [f"g{j}" for j in range(n_genes)]
    adata.layers["log1p"] = values
    # pixel coordinates (100 µm apart = 2 columns) for the authors' kNN neighbour graph
    adata.obsm["spatial"] = np.column_stack([cols * 50.0, rows * 50.0 * np.sqrt(3)])
    return adata


#: What ``spared.denoising`` imports beyond this project's environment (found by trial on 2.2.1).
SPARED_EXTRA_PACKAGES = ("lightning", "wget", "combat", "torch_geometric", "positional_encodings", "plotly",
                         "opencv-python-headless")


def spared_env_python() -> Path | None:
    """Python of the venv with the authors' package (``spared==2.2.1``), if it was set up."""
    py = SPARED_ENV / "bin" / "python"
    return py if py.is_file() else None


def setup_spared_env() -> Path:
    """Create ``benchmarks/.env-spared``: a venv that sees this project's packages (a ``.pth``
    file) plus ``spared==2.2.1`` (``--no-deps``) and the few packages it imports on top (PyPI)."""
    import site

    subprocess.run([sys.executable, "-m", "venv", str(SPARED_ENV)], check=True)
    py = SPARED_ENV / "bin" / "python"
    target = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            check=True, capture_output=True, text=True).stdout.strip()
    Path(target, "project.pth").write_text(site.getsitepackages()[0] + "\n")
    pip = [str(py), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--no-deps", "spared==2.2.1"], check=True)
    subprocess.run([*pip, *SPARED_EXTRA_PACKAGES], check=True)
    return py


def time_authors_package(adata: AnnData, ours: np.ndarray) -> dict | None:
    """Run the authors' median_cleaner in the spared venv on the same slide (None if unavailable)."""
    py = spared_env_python()
    if py is None:
        print(f"  authors' package: skipped (no venv at {SPARED_ENV.relative_to(ROOT)}; "
              "create it with --setup-spared-env, which needs PyPI)")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "slide.h5ad"
        out = Path(tmp) / "out.npy"
        adata.write_h5ad(src)
        code = (
            "import sys, time, numpy as np, anndata as ad\n"
            "from spared.denoising import denoising\n"
            f"a = ad.read_h5ad({str(src)!r})\n"
            "t = time.perf_counter()\n"
            "b = denoising.median_cleaner(a, 'log1p', 'd_log1p', n_hops=4, hex_geometry=True)\n"
            "print('SECONDS', time.perf_counter() - t)\n"
            f"np.save({str(out)!r}, np.asarray(b[a.obs_names].layers['d_log1p']))\n"
        )
        res = subprocess.run([str(py), "-c", code], capture_output=True, text=True)
        if res.returncode != 0:
            print(f"  authors' package: failed to run ({res.stderr.strip().splitlines()[-1] if res.stderr else '?'})")
            return None
        seconds = float(next(line.split()[1] for line in res.stdout.splitlines() if line.startswith("SECONDS")))
        theirs = np.load(out)
    same = theirs == ours
    return {"seconds": seconds, "identical_fraction": float(same.mean())}


def bench_median(n_rows: int, n_cols: int, n_genes: int, zero_fraction: float = 0.2, repeats: int = 3) -> dict:
    adata = hex_slide(n_rows, n_cols, n_genes, zero_fraction)
    values = np.asarray(adata.layers["log1p"])
    print(f"(a) adaptive median completion: {adata.n_obs} spots × {n_genes} genes, "
          f"{(values == 0).mean():.1%} zeros, windows of 1-4 rings")
    t = time.perf_counter()
    tables = med.window_tables(adata, n_rings=4)
    t_tables = time.perf_counter() - t
    fast_times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fast = med.median_complete_array(values, tables)
        fast_times.append(time.perf_counter() - t)
    t_fast = min(fast_times) + t_tables
    t = time.perf_counter()
    slow = med.median_complete_loop(values, tables)
    t_slow = time.perf_counter() - t
    identical = bool(np.array_equal(fast, slow))
    print(f"  per-entry loop (authors' algorithm):  {t_slow:8.2f} s")
    print(f"  vectorised (incl. {t_tables:.3f} s tables): {t_fast:8.3f} s  -> {t_slow / t_fast:.0f}x faster, "
          f"values identical: {identical}")
    result = {"spots": adata.n_obs, "genes": n_genes, "loop_s": t_slow, "vectorised_s": t_fast,
              "speedup": t_slow / t_fast, "identical": identical}
    theirs = time_authors_package(adata, fast)
    if theirs:
        print(f"  authors' spared 2.2.1 median_cleaner:  {theirs['seconds']:8.2f} s  -> "
              f"{theirs['seconds'] / t_fast:.0f}x slower than ours; same values on "
              f"{theirs['identical_fraction']:.1%} of entries (their graph is squidpy's 6-NN, which "
              "differs from the hexagonal lattice at the tissue edge)")
        result["authors_package"] = theirs
    return result


# ------------------------------------------------------------------------------------------- (b)


def widen_genes(adata: AnnData, n_genes: int, seed: int = 0, min_log10_keep: float = -2.5) -> AnnData:
    """Copies of every gene with binomially thinned counts, up to ``n_genes`` genes."""
    rng = np.random.default_rng(seed)
    base = sp.csc_matrix(adata.layers["counts"]).astype(np.float32)
    n_base = base.shape[1]
    n_copies = int(np.ceil(n_genes / n_base))
    blocks, names, lengths = [], [], []
    for copy in range(n_copies):
        keep_p = 10.0 ** rng.uniform(min_log10_keep, 0.0, size=n_base)
        block = base.copy()
        per_entry_p = np.repeat(keep_p, np.diff(block.indptr))
        block.data = rng.binomial(block.data.astype(np.int64), per_entry_p).astype(np.float32)
        block.eliminate_zeros()
        blocks.append(block)
        names.extend(f"SYNG{copy:02d}{j:05d}" for j in range(n_base))
        lengths.append(np.asarray(adata.var["gene_length"]) * rng.uniform(0.5, 2.0, size=n_base))
    counts = sp.hstack(blocks, format="csc")[:, :n_genes].tocsr()
    out = AnnData(X=None, obs=adata.obs.copy(), var=pd.DataFrame(index=names[:n_genes]),
                  obsm={"spatial": adata.obsm["spatial"]}, uns=dict(adata.uns))
    out.var["gene_length"] = np.concatenate(lengths)[:n_genes].round()
    out.layers["counts"] = counts
    return out


def make_large(n_slides: int, n_rows: int, n_cols: int, n_base_genes: int, n_genes: int) -> AnnData:
    from spared_utils.synthetic import make_dataset

    base = make_dataset(seed=0, n_slides=n_slides, n_rows=n_rows, n_cols=n_cols, n_genes=n_base_genes)
    base.X = None
    return widen_genes(base, n_genes)


def _status_kib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1])
    return float("nan")


def _rss_gib() -> float:
    return _status_kib("VmRSS") / 2**20


def _peak_rss_gib() -> float:
    """Peak resident memory since start or the last :func:`_reset_peak_rss` (Linux VmHWM)."""
    peak = _status_kib("VmHWM")
    return (peak if peak == peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 2**20


def _reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # not Linux, or not permitted: the peak then includes reading the input
        pass


def run_child(h5ad: Path, n_genes: int, n_patches: int, patch_dir: Path) -> dict:
    """Child process: pipeline on the collection, then patch extraction (timings and peak RSS)."""
    import anndata as ad

    from spared_utils.patches import extract_patches
    from spared_utils.preprocess import run_pipeline

    t = time.perf_counter()
    raw = ad.read_h5ad(h5ad)
    t_read = time.perf_counter() - t
    rss_read_peak = _peak_rss_gib()
    _reset_peak_rss()  # from here on, the peak of the pipeline alone (the input stays resident)
    rss_input = _rss_gib()
    t = time.perf_counter()
    curated = run_pipeline(raw, None, n_genes=n_genes, combat_key="patient", progress=False)
    t_pipe = time.perf_counter() - t
    rss_pipe = _peak_rss_gib()
    steps = curated.uns["preprocessing"]["steps"]
    subset = raw[: min(n_patches, raw.n_obs)]
    t = time.perf_counter()
    extract_patches(subset, patch_dir, progress=False)
    t_patch = time.perf_counter() - t
    return {"read_s": t_read, "pipeline_s": t_pipe, "peak_rss_gib": rss_pipe, "input_rss_gib": rss_input,
            "read_peak_rss_gib": rss_read_peak,
            "steps": steps[["step", "n_spots", "n_genes", "seconds"]].to_dict("records"),
            "patches": subset.n_obs, "patch_s": t_patch, "patches_per_s": subset.n_obs / t_patch,
            "missing_fraction": curated.uns["preprocessing"]["missing_fraction"]}


def bench_pipeline(n_slides: int, n_rows: int, n_cols: int, n_base_genes: int, n_genes: int, n_keep: int,
                   n_patches: int) -> dict:
    t = time.perf_counter()
    adata = make_large(n_slides, n_rows, n_cols, n_base_genes, n_genes)
    counts = adata.layers["counts"]
    print(f"(b) whole pipeline: {adata.n_obs} spots on {n_slides} slides × {adata.n_vars} genes, "
          f"{1 - counts.nnz / np.prod(counts.shape):.1%} zero counts (built in {time.perf_counter() - t:.0f} s)")
    with tempfile.TemporaryDirectory(dir=os.environ.get("SPARED_BENCH_TMP")) as tmp:
        h5ad = Path(tmp) / "large.h5ad"
        adata.write_h5ad(h5ad)
        del adata, counts
        code = (f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'benchmarks')!r})\n"
                "import warnings; warnings.filterwarnings('ignore')\n"
                "from bench_curation import run_child\n"
                f"print('RESULT', json.dumps(run_child(__import__('pathlib').Path({str(h5ad)!r}), {n_keep}, "
                f"{n_patches}, __import__('pathlib').Path({str(Path(tmp) / 'patches')!r}))))\n")
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"pipeline child failed:\n{res.stderr[-3000:]}")
        out = json.loads(next(line[7:] for line in res.stdout.splitlines() if line.startswith("RESULT ")))
    for row in out["steps"]:
        print(f"  {row['step']:<32s} {row['n_spots']:>7d} spots {row['n_genes']:>7d} genes {row['seconds']:8.2f} s")
    verdict_t = "within" if out["pipeline_s"] <= 300 else "OVER"
    verdict_m = "within" if out["peak_rss_gib"] <= 8 else "OVER"
    print(f"  pipeline total {out['pipeline_s']:.1f} s ({verdict_t} the 5-min goal); reading the input "
          f"{out['read_s']:.1f} s")
    print(f"  peak RSS during the pipeline {out['peak_rss_gib']:.2f} GiB ({verdict_m} the 8-GiB goal), of which "
          f"{out['input_rss_gib']:.2f} GiB is the input collection held by the caller (reading it peaked at "
          f"{out['read_peak_rss_gib']:.2f} GiB)")
    print(f"  missing values after curation: {out['missing_fraction']:.1%}")
    print(f"  patch extraction: {out['patches']} patches in {out['patch_s']:.1f} s = "
          f"{out['patches_per_s']:.0f} patches/s (224×224, memory-mapped .npy)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (< 60 s)")
    parser.add_argument("--skip-median", action="store_true")
    parser.add_argument("--skip-pipeline", action="store_true")
    parser.add_argument("--json", help="also write the numbers to this JSON file")
    parser.add_argument("--setup-spared-env", action="store_true",
                        help="first install the authors' spared==2.2.1 into benchmarks/.env-spared (PyPI)")
    args = parser.parse_args(argv)
    if args.setup_spared_env and spared_env_python() is None:
        setup_spared_env()
    results = {}
    if not args.skip_median:
        size = (20, 40, 200) if args.quick else (60, 120, 1000)  # 400 / 3,600 spots
        results["median"] = bench_median(*size)
    if not args.skip_pipeline:
        if args.quick:
            size = dict(n_slides=4, n_rows=24, n_cols=48, n_base_genes=300, n_genes=3000, n_keep=32, n_patches=500)
        else:  # 14 slides of ~3,130 spots (vicari_mouse_brain: 43,804 spots on 14 slides)
            size = dict(n_slides=14, n_rows=70, n_cols=152, n_base_genes=2000, n_genes=20000, n_keep=128,
                        n_patches=8000)
        results["pipeline"] = bench_pipeline(**size)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
