"""Make ``tests/data/authors_tiny``: a dataset processed by the authors' own ``spared`` 2.2.1 code.

The fixture of the ``authors_processed`` source kind (``data/datasets.yml``, dataset
``authors_tiny``) is not written by hand: this script generates a small raw collection with
:func:`spared_utils.synthetic.make_dataset`, writes it in the Space Ranger layout
(:func:`spared_utils.synthetic.write_spaceranger`, the layout the authors' ``VisiumReader``
reads) and, in the side environment the benchmarks already build (``benchmarks/.env-spared``:
this project's packages plus ``spared==2.2.1`` installed ``--no-deps``, see
``benchmarks/bench_completion.py``), runs the authors' pipeline on it exactly as their
``SpatialDataset.load_or_compute_adata`` does (github.com/BCV-Uniandes/SpaRED,
``spared/datasets/datasets.py``): ``VisiumReader.get_adata_collection`` (with their patches),
``filtering.filter_dataset``, ``layer_operations.process_dataset`` (TPM, log2, median, Moran's I,
ComBat, Δ layers, mask, SpaCKLE, noisy layers), then writes ``adata.h5ad`` and ``parameters.json``
as they do.

Three steps of theirs cannot run offline on a CPU; they are patched in the child process of the
side environment only (nothing in the installed package is changed):

1. **TPM's gene lengths.** ``tpm_normalization`` downloads the GENCODE GTF files and runs
   ``gtftools.py`` on them unless ``<package>/data/annotations/gene_length.txt`` exists. The
   child runs a temporary copy of the package whose ``data/annotations/`` holds the synthetic
   genes' lengths (the generator's ``gene_lengths.tsv``) as ``gene_length.txt`` and
   ``gene_length_mouse.txt`` and empty placeholders for the GTF files, so their TPM reads the
   same lengths our pipeline reads.
2. **SpaCKLE's trainer.** ``spackle/main.py`` builds ``Trainer(accelerator='gpu', ...)``; the
   child wraps ``Trainer`` to run on the CPU (no logger, no progress bar). Their
   ``spackle_cleaner`` reloads the best checkpoint with ``torch.load(path)``, which PyTorch ≥ 2.6
   refuses for Lightning checkpoints (``weights_only``); the child passes ``weights_only=False``.
   The training length is their default (``max_steps=1000``, ``spackle_cleaner``'s).
3. **SpaCKLE's neighbours.** ``ImputationDataset.get_adjacency`` reads column ``idx`` of
   squidpy's kNN matrix; squidpy 1.8 keeps each spot's k nearest spots in its *row*, so the
   columns hold a varying number of spots and the DataLoader cannot stack them. The child
   transposes it (the same patch ``bench_completion.py`` applies).

Their patches are cut at ``patch_size`` 32 (a parameter of their ``SpatialDataset``; SpaRED's
files hold 224), so that the committed fixture stays small. The child also records what their
pipeline computes but does not keep (the genes and spots after ``filter_dataset``, Moran's I of
every filtered gene) in ``intermediates.json``, for chapter 01's comparison
(:func:`spared_utils.preprocess.compare_with_authors`).

Usage::

    python benchmarks/make_authors_fixture.py                 # writes tests/data/authors_tiny
    python benchmarks/make_authors_fixture.py --out /tmp/x    # elsewhere (the test regenerates it)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

#: The raw collection the fixture is made from (arguments of synthetic.make_dataset).
GENERATOR = {"seed": 3, "n_slides": 3, "n_rows": 20, "n_cols": 40, "n_genes": 48}
#: The authors' parameters (their ``param_dict``), set to the book's curation of ``authors_tiny``.
PARAM_DICT = {
    "cell_min_counts": 10, "cell_max_counts": 1e6, "gene_min_counts": 10, "gene_max_counts": 1e6,
    "min_exp_frac": 0.8, "min_glob_exp_frac": 0.8, "real_data_percentage": 0.7, "top_moran_genes": 16,
    "wildcard_genes": "None", "combat_key": "slide_id", "random_samples": -1, "plotting_slides": "None",
    "plotting_genes": "None", "organism": "human", "hex_geometry": True,
}
DATASET = "authors_tiny"
PATCH_SCALE, PATCH_SIZE = 1.0, 32
DEFAULT_OUT = ROOT / "tests" / "data" / DATASET

CHILD = textwrap.dedent("""
    import functools, json, os, sys, time, types, warnings
    warnings.filterwarnings("ignore")
    args = json.load(open(sys.argv[1]))
    sys.path.insert(0, args["package_parent"])  # the patched copy of spared (step 1)
    os.chdir(args["work"])                     # their SpaCKLE writes imput_results/ here
    import numpy as np, torch
    torch.set_num_threads(args["threads"])
    import spared
    assert os.path.dirname(spared.__file__).startswith(args["package_parent"]), spared.__file__
    from spared.filtering import filtering
    from spared.gene_features import gene_features
    from spared.layer_operations import layer_operations
    from spared.readers.VisiumReader import VisiumReader
    import spared.spackle.main as M
    import spared.spackle.dataset as D1
    import spackle.dataset as D2

    _Trainer = M.Trainer
    def cpu_trainer(*a, **k):  # step 2: their Trainer hard-codes accelerator='gpu'
        k.update(accelerator="cpu", enable_progress_bar=False, enable_model_summary=False, logger=False)
        return _Trainer(*a, **k)
    M.Trainer = cpu_trainer
    torch.load = functools.partial(torch.load, weights_only=False)  # step 2: Lightning checkpoints

    import squidpy as sq
    def get_adjacency(self, num_neighs=6):  # step 3: squidpy 1.8 keeps the k nearest in rows
        sq.gr.spatial_neighbors(self.adata, coord_type="generic", n_neighs=num_neighs)
        self.adj_mat = torch.tensor(self.adata.obsp["spatial_connectivities"].T.todense())
    D1.ImputationDataset.get_adjacency = get_adjacency
    D2.ImputationDataset.get_adjacency = get_adjacency

    # capture what process_dataset computes but does not keep (no change of behaviour)
    captured = {}
    _moran = gene_features.compute_moran
    def compute_moran(adata, from_layer, hex_geometry):
        out = _moran(adata, from_layer=from_layer, hex_geometry=hex_geometry)
        captured["moran"] = {str(g): float(v) for g, v in out.var[f"{from_layer}_moran"].items()}
        return out
    gene_features.compute_moran = compute_moran

    # their reader, without its __init__ (which downloads): the attributes it reads
    reader = VisiumReader.__new__(VisiumReader)
    reader.dataset, reader.download_path = args["dataset"], args["raw"]
    reader.patch_scale, reader.patch_size = args["patch_scale"], args["patch_size"]
    reader.split_names = args["split_names"]
    t = time.perf_counter()
    raw = reader.get_adata_collection()
    filtered = filtering.filter_dataset(adata=raw, param_dict=args["param_dict"])
    captured["filtered_genes"] = [str(g) for g in filtered.var_names]
    captured["filtered_spots"] = [str(s) for s in filtered.obs_names]
    processed = layer_operations.process_dataset(adata=filtered, param_dict=args["param_dict"],
                                                 dataset=args["dataset"])
    seconds = time.perf_counter() - t
    out = args["out"]
    os.makedirs(out, exist_ok=True)
    processed.write(os.path.join(out, "adata.h5ad"), compression="gzip")
    # parameters.json as SpatialDataset.load_or_compute_adata writes it (its __dict__ less four keys)
    params = {"dataset": args["dataset"], "param_dict": args["param_dict"], "patch_scale": args["patch_scale"],
              "patch_size": args["patch_size"], "hex_geometry": args["param_dict"]["hex_geometry"],
              "split_names": args["split_names"],
              "dataset_path": os.path.join("processed_data", args["dataset"])}
    with open(os.path.join(out, "parameters.json"), "w") as f:
        json.dump(params, f, sort_keys=True, indent=4)
    json.dump({**captured, "seconds": seconds}, open(os.path.join(args["work"], "captured.json"), "w"))
""")


def split_names() -> dict[str, list[str]]:
    """Their reader's ``split_names`` for the generated slides (the book's default splits)."""
    from spared_utils import synthetic

    ids = synthetic.slide_ids(GENERATOR["n_slides"])
    splits = synthetic.default_splits(ids)
    return {name: [s for s in ids if splits[s] == name] for name in ("train", "val", "test")}


def side_env_python() -> Path | None:
    """``benchmarks/.env-spared``'s Python with ``spared`` 2.2.1 (built by ``bench_completion.ensure_env``)."""
    import bench_completion as B

    return B.ensure_env(B.SPARED_ENV, [["--no-deps", "spared==2.2.1"], list(B.SPARED_EXTRA_PACKAGES)],
                        "from spared.denoising import denoising", share_project=True)


def patched_package(py: Path, folder: Path, gene_lengths: Path) -> Path:
    """A copy of the side environment's ``spared`` whose TPM finds the generator's gene lengths (step 1)."""
    src = subprocess.run([str(py), "-c", "import spared, os; print(os.path.dirname(spared.__file__))"],
                         check=True, capture_output=True, text=True).stdout.strip()
    dest = folder / "spared"
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__"))
    notes = dest / "data" / "annotations"
    notes.mkdir(parents=True, exist_ok=True)
    for name in ("gencode.v43.basic.annotation.gtf.gz", "gencode.v43.basic.annotation.gtf",
                 "gencode.vM33.basic.annotation.gtf.gz", "gencode.vM33.basic.annotation.gtf"):
        (notes / name).write_bytes(b"")
    for name in ("gene_length.txt", "gene_length_mouse.txt"):
        shutil.copy(gene_lengths, notes / name)
    return folder


def versions(py: Path) -> dict[str, str]:
    code = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
            "['spared', 'torch', 'lightning', 'squidpy', 'scanpy', 'anndata', 'combat']}))")
    return json.loads(subprocess.run([str(py), "-c", code], check=True, capture_output=True, text=True).stdout)


def make_fixture(out: Path, threads: int = 2) -> dict:
    """Run the authors' pipeline in the side environment; write ``adata.h5ad``, ``parameters.json``,
    ``intermediates.json`` and ``made_with.json`` under ``out``. Raises if the side env is missing."""
    from spared_utils import synthetic

    py = side_env_python()
    if py is None:
        raise RuntimeError("the side environment benchmarks/.env-spared (spared 2.2.1) could not be built")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        raw = synthetic.write_spaceranger(synthetic.make_dataset(**GENERATOR), tmp / "raw")
        package = patched_package(py, tmp / "pkg", raw / "gene_lengths.tsv")
        (tmp / "work").mkdir()
        job = {"package_parent": str(package), "work": str(tmp / "work"), "raw": str(raw), "dataset": DATASET,
               "patch_scale": PATCH_SCALE, "patch_size": PATCH_SIZE, "split_names": split_names(),
               "param_dict": PARAM_DICT, "out": str(tmp / "out"), "threads": threads}
        (tmp / "job.json").write_text(json.dumps(job))
        (tmp / "child.py").write_text(CHILD)
        t = time.perf_counter()
        res = subprocess.run([str(py), str(tmp / "child.py"), str(tmp / "job.json")], capture_output=True,
                             text=True, timeout=3600)
        if res.returncode != 0:
            raise RuntimeError(f"the authors' pipeline failed in {py}:\n{res.stderr[-4000:]}")
        captured = json.loads((tmp / "work" / "captured.json").read_text())
        out.mkdir(parents=True, exist_ok=True)
        for name in ("adata.h5ad", "parameters.json"):
            shutil.copy(tmp / "out" / name, out / name)
    (out / "intermediates.json").write_text(json.dumps(
        {k: captured[k] for k in ("filtered_genes", "filtered_spots", "moran")}, indent=1))
    made = {"generator": GENERATOR, "param_dict": PARAM_DICT, "patch_scale": PATCH_SCALE, "patch_size": PATCH_SIZE,
            "versions": versions(py), "seconds_in_their_pipeline": round(captured["seconds"], 1),
            "seconds_total": round(time.perf_counter() - t, 1),
            "patched_steps": ["tpm gene lengths from the generator", "SpaCKLE Trainer on the CPU, torch.load "
                              "weights_only=False", "ImputationDataset.get_adjacency transposed (squidpy 1.8)"]}
    (out / "made_with.json").write_text(json.dumps(made, indent=1))
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    made = make_fixture(args.out, args.threads)
    print(json.dumps(made, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
