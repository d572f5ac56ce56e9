"""Benchmark of the curation pipeline (prints figures; not a test).

(a) Adaptive median completion: our vectorised version against a re-implementation of the
    authors' loop over every (spot, gene) pair, on the same input (a 3,600-spot hexagonal slide,
    1,000 genes, 20% zeros): both times, the ratio, and whether the values are identical. If the
    authors' ``spared`` package is installed in ``benchmarks/.env-spared`` (see
    :func:`spared_env_python`), their ``median_cleaner`` is timed too.
(c) The authors' graph (``median_complete(..., graph="authors")``) against the authors'
    ``median_cleaner`` run in ``benchmarks/.env-spared``, on small Visium-like and legacy-ST inputs
    (synthetic blocks, plus the real sample slides of ``../shared/data/real`` when present: the
    stLearn Visium subset and her2st patient C's three ST sections): the fraction of completed
    entries with identical values, for our default lattice graph and for ``graph="authors"``, and
    whether the latter is identical on every entry.
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
    python benchmarks/bench_curation.py --skip-median --skip-pipeline          # (c) only (needs the side env)
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


def run_authors_median_cleaner(inputs: dict[str, tuple[AnnData, bool]]) -> dict[str, dict] | None:
    """Run the authors' ``median_cleaner`` (n_hops=4) in the spared venv on each input.

    ``inputs`` maps a name to ``(adata with layers["log1p"] and obs["slide_id"], hex_geometry)``.
    Returns, per name, ``{"seconds", "values"}`` with the completed layer in ``adata``'s spot
    order (their function concatenates the slides in sorted order), or ``None`` if unavailable.
    """
    py = spared_env_python()
    if py is None:
        print(f"  authors' package: skipped (no venv at {SPARED_ENV.relative_to(ROOT)}; "
              "create it with --setup-spared-env, which needs PyPI)")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        jobs = []
        for k, (name, (adata, hex_geometry)) in enumerate(inputs.items()):
            src, out = Path(tmp) / f"in{k}.h5ad", Path(tmp) / f"out{k}.npy"
            adata.write_h5ad(src)
            jobs.append((name, str(src), str(out), bool(hex_geometry)))
        code = (
            "import sys, time, warnings, numpy as np, anndata as ad\n"
            "warnings.filterwarnings('ignore')\n"
            "from spared.denoising import denoising\n"
            f"for name, src, out, hexg in {jobs!r}:\n"
            "    a = ad.read_h5ad(src)\n"
            "    t = time.perf_counter()\n"
            "    b = denoising.median_cleaner(a, 'log1p', 'd_log1p', n_hops=4, hex_geometry=hexg)\n"
            "    print('SECONDS', name, time.perf_counter() - t)\n"
            "    np.save(out, np.asarray(b[a.obs_names].layers['d_log1p']))\n"
        )
        res = subprocess.run([str(py), "-c", code], capture_output=True, text=True)
        if res.returncode != 0:
            print(f"  authors' package: failed to run ({res.stderr.strip().splitlines()[-1] if res.stderr else '?'})")
            return None
        seconds = {line.split()[1]: float(line.split()[2]) for line in res.stdout.splitlines()
                   if line.startswith("SECONDS")}
        return {name: {"seconds": seconds[name], "values": np.load(out)} for name, _, out, _ in jobs}


def time_authors_package(adata: AnnData, ours: np.ndarray) -> dict | None:
    """Run the authors' median_cleaner in the spared venv on the same slide (None if unavailable)."""
    theirs = run_authors_median_cleaner({"slide": (adata, True)})
    if theirs is None:
        return None
    same = theirs["slide"]["values"] == ours
    return {"seconds": theirs["slide"]["seconds"], "identical_fraction": float(same.mean())}


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


# ------------------------------------------------------------------------------------------- (c)


def st_section(n_rows: int, n_cols: int, n_genes: int, zero_fraction: float, seed: int = 0,
               slide: str = "ST1") -> AnnData:
    """A legacy-ST-like section: a blob of the square array (with holes), ST pixel positions.

    As in real ST spot tables (e.g. her2st): ``array_col`` = x, ``array_row`` = y, and pixel
    positions ~256 px per array step from the spots' *adjusted* array positions, which deviate
    from the integer ones by up to ~0.25 step.
    """
    rng = np.random.default_rng(seed)
    rows, cols = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()
    cy, cx = (n_rows - 1) / 2, (n_cols - 1) / 2
    inside = ((rows - cy) / (n_rows / 2)) ** 2 + ((cols - cx) / (n_cols / 2)) ** 2 <= 1.0
    inside &= rng.random(len(rows)) > 0.05  # a few spots missing inside the tissue
    rows, cols = rows[inside], cols[inside]
    values = rng.lognormal(1.0, 1.0, (len(rows), n_genes)).astype(np.float32)
    values[rng.random(values.shape) < zero_fraction] = 0.0
    adj_x = cols + 1 + rng.normal(0, 0.08, len(cols))
    adj_y = rows + 1 + rng.normal(0, 0.08, len(rows))
    obs = pd.DataFrame({"array_row": rows + 1, "array_col": cols + 1, "slide_id": slide},
                       index=[f"{slide}_{c + 1}x{r + 1}" for r, c in zip(rows, cols)])
    adata = AnnData(X=values, obs=obs)
    adata.var_names = [f"g{j}" for j in range(n_genes)]
    adata.layers["log1p"] = values
    adata.obsm["spatial"] = np.column_stack([adj_x * 256.0 + 700.0, adj_y * 258.0 + 300.0])
    return adata


def _informative_genes(counts: pd.DataFrame, n_genes: int) -> list[str]:
    """The ``n_genes`` most expressed genes among those detected in 30–90% of the spots."""
    detected = (counts > 0).mean(axis=0)
    pool = counts.loc[:, (detected >= 0.3) & (detected <= 0.9)]
    return pool.sum(axis=0).sort_values(ascending=False, kind="stable").index[:n_genes].tolist()


def her2st_sections(n_genes: int) -> AnnData | None:
    """her2st patient C (sections C2, C3, C4; real ST) as one collection, log2(counts + 1)."""
    from spared_utils.sources import real_data_dir

    folder = real_data_dir() / "her2st_patient_c"
    if not folder.is_dir():
        return None
    tables, positions = [], []
    for section in ("C2", "C3", "C4"):
        counts = pd.read_csv(folder / section / "counts.tsv.gz", sep="\t", index_col=0)
        spots = pd.read_csv(folder / section / "spots.tsv", sep="\t")
        spots.index = spots["x"].astype(int).astype(str) + "x" + spots["y"].astype(int).astype(str)
        spots = spots.loc[counts.index]
        counts.index = [f"{section}_{i}" for i in counts.index]
        spots.index = counts.index
        spots["slide_id"] = section
        tables.append(counts)
        positions.append(spots)
    counts = pd.concat(tables).fillna(0)
    spots = pd.concat(positions)
    counts = counts[_informative_genes(counts, n_genes)]
    values = np.log2(counts.to_numpy(dtype=np.float32) + 1)
    obs = pd.DataFrame({"array_row": spots["y"].astype(int), "array_col": spots["x"].astype(int),
                        "slide_id": spots["slide_id"]}, index=counts.index)
    adata = AnnData(X=values, obs=obs)
    adata.var_names = counts.columns.astype(str)
    adata.layers["log1p"] = values
    adata.obsm["spatial"] = spots[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
    return adata


def stlearn_visium(n_genes: int) -> AnnData | None:
    """stLearn's 316-spot Visium subset (real tissue outline); values shifted so unexpressed = 0."""
    from spared_utils.sources import real_data_dir

    path = real_data_dir() / "stlearn_breast_subset" / "test_data.h5"
    if not path.is_file():
        return None
    import anndata as ad

    src = ad.read_h5ad(path)
    x = np.asarray(src.X, dtype=np.float32)[:, :n_genes]
    values = x - x.min(axis=0)  # the stored matrix is scaled; its column minimum is "not detected"
    obs = src.obs[["array_row", "array_col"]].copy()
    obs["slide_id"] = "V1_Breast_Cancer_Block_A_Section_1"
    adata = AnnData(X=values, obs=obs)
    adata.var_names = src.var_names[:n_genes].astype(str)
    adata.layers["log1p"] = values
    adata.obsm["spatial"] = np.asarray(src.obsm["spatial"], dtype=np.float64)
    return adata


def authors_graph_inputs(n_genes: int = 50, real: bool = True) -> dict[str, tuple[AnnData, bool]]:
    """Small inputs for (c): name -> (collection, hex_geometry); ``real``: add the real slides found."""
    inputs: dict[str, tuple[AnnData, bool]] = {
        "visium_block_400": (hex_slide(20, 40, n_genes, 0.3, seed=1), True),
        "st_section_synthetic": (st_section(20, 18, n_genes, 0.4, seed=2), False),
    }
    if not real:
        return inputs
    real_visium = stlearn_visium(n_genes)
    if real_visium is not None:
        inputs["visium_stlearn_316"] = (real_visium, True)
    real_st = her2st_sections(n_genes)
    if real_st is not None:
        inputs["st_her2st_C2_C3_C4"] = (real_st, False)
    return inputs


def bench_authors_graph(n_genes: int = 50) -> dict | None:
    """Our median with graph="authors" (and the lattice) against the authors' median_cleaner."""
    inputs = authors_graph_inputs(n_genes)
    print(f"(c) graph='authors' against the authors' median_cleaner ({n_genes} genes, 1-4 rings): "
          + ", ".join(f"{k} ({a.n_obs} spots, {a.obs['slide_id'].nunique()} slide(s))" for k, (a, _) in inputs.items()))
    theirs = run_authors_median_cleaner(inputs)
    if theirs is None:
        return None
    results = {}
    for name, (adata, hex_geometry) in inputs.items():
        values = np.asarray(adata.layers["log1p"])
        missing = values == 0
        ref = theirs[name]["values"]
        row = {"spots": adata.n_obs, "genes": adata.n_vars, "hex_geometry": hex_geometry,
               "missing_entries": int(missing.sum()), "authors_seconds": theirs[name]["seconds"]}
        for graph in ("lattice", "authors"):
            med.median_complete(adata, "log1p", f"d_{graph}", hex_geometry=hex_geometry, graph=graph,
                                progress=False)
            ours = adata.layers[f"d_{graph}"]
            same = ours == ref
            row[graph] = {"identical_completed_fraction": float(same[missing].mean()),
                          "identical_on_every_entry": bool(same.all()),
                          "dtype_matches": bool(ours.dtype == ref.dtype)}
        print(f"  {name:<22s} {'hex' if hex_geometry else 'grid':<4s} {adata.n_obs:>4d} spots, "
              f"{row['missing_entries']:>5d} completed entries: lattice identical on "
              f"{row['lattice']['identical_completed_fraction']:6.1%}; graph='authors' identical on "
              f"{row['authors']['identical_completed_fraction']:6.1%}, "
              f"identical_on_every_entry: {row['authors']['identical_on_every_entry']}")
        results[name] = row
    return results


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
    parser.add_argument("--skip-authors-graph", action="store_true",
                        help="skip (c), graph='authors' against the authors' package (needs the side env)")
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
    if not args.skip_authors_graph:
        results["authors_graph"] = bench_authors_graph()
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
