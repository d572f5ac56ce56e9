"""The reliability matrix: every public entry point fed the inputs users actually produce.

Each row gives an entry point (the readers, ``datasets.load``, ``preprocess.run_pipeline``,
``completion``, the prediction harness and its checkpoints, ``apply``, ``python -m
spared_utils.run``, the batch driver, the downloader, the results store) a broken input and
asserts a message that names the file (or the slide, dataset, chapter) and the fix, **and** that
nothing half-written is left in the folders the call writes to. Kill-and-resume rows kill a
training subprocess half-way and resume it to the numbers of an uninterrupted run; the store row
has two processes append 500 rows each at once.

With ``SPARED_RELIABILITY_REPORT=<file.json>`` the module writes every row's outcome there
(chapter 99 runs it so, and renders the table: the appendix cannot drift from the code).
"""

from __future__ import annotations

import errno
import gzip
import json
import logging
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp
import yaml

import spared_utils
from spared_utils import apply as apply_module
from spared_utils import batch, completion, datasets, download, patches, preprocess, readers, results, run
from spared_utils.predict import PredictorConfig, RunSpec, load_predictor, prediction_data, run_chapter, train_predictor
from tests.fixtures_apply import trained  # noqa: F401  (pytest fixture)
from tests.fixtures_http import http_server  # noqa: F401  (pytest fixture)

ROOT = Path(__file__).resolve().parents[1]
REPORT_ENV = "SPARED_RELIABILITY_REPORT"
#: Words that say what to do (a message without one only describes the failure).
FIX = re.compile(r"\b(use|check|download|replace|delete|put|pass|give|choose|free|make|train|drop|point|copy|move|"
                 r"place|run|set|add|known|valid|declares|lower|re-read|bring|cut|one of)\b", re.IGNORECASE)
ROWS: list[dict] = []


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    target = os.environ.get(REPORT_ENV)
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text(json.dumps(ROWS, indent=1))


def _files(folders) -> set[str]:
    return {str(p) for f in folders if Path(f).exists() for p in Path(f).rglob("*") if p.is_file()}


def refused(group: str, entry: str, case: str, call, names: list[str], watch=(), exc=Exception, before=None) -> str:
    """Run ``call``; record and assert that it raises ``exc`` naming ``names`` and a fix, leaving
    no new file under the ``watch`` folders."""
    before = _files(watch) if before is None else before
    with pytest.raises(exc) as err:
        call()
    message = str(err.value)
    left = sorted(_files(watch) - before)
    row = {"group": group, "entry": entry, "case": case, "outcome": f"{type(err.value).__name__}",
           "names_file": all(n in message for n in names), "names_fix": bool(FIX.search(message)),
           "partial_outputs": len(left), "message": message[:400]}
    row["passed"] = row["names_file"] and row["names_fix"] and not left
    ROWS.append(row)
    assert row["names_file"], f"the message does not name {names}: {message}"
    assert row["names_fix"], f"the message names no fix: {message}"
    assert not left, f"half-written files were left: {left}"
    return message


def record(group: str, entry: str, case: str, outcome: str, passed: bool, **extra) -> None:
    ROWS.append({"group": group, "entry": entry, "case": case, "outcome": outcome, "names_file": None,
                 "names_fix": None, "partial_outputs": extra.pop("partial_outputs", 0), "passed": bool(passed), **extra})


@pytest.fixture
def slide(trained, tmp_path) -> Path:
    return trained.slide_copy(tmp_path / "slide")


def _apply(trained, folder, out):
    return spared_utils.apply(folder, trained.spackle, trained.predictor, out=out, progress=False, device="cpu")


def _edit_h5(path: Path, **datasets_) -> None:
    with h5py.File(path, "r+") as f:
        for name, value in datasets_.items():
            del f[f"matrix/{name}"]
            f.create_dataset(f"matrix/{name}", data=value)


# ------------------------------------------------------------------------------------------------
# Files: corrupt, truncated, missing, inconsistent
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["corrupt", "truncated"])
def test_damaged_h5_matrix(trained, slide, tmp_path, damage):
    h5 = slide / "filtered_feature_bc_matrix.h5"
    data = h5.read_bytes()
    h5.write_bytes(os.urandom(4096) if damage == "corrupt" else data[: len(data) // 2])
    out = tmp_path / "out"
    refused("files", "apply (readers.read_spaceranger)", f"{damage} .h5 count matrix",
            lambda: _apply(trained, slide, out / "s.h5ad"), [str(h5), "download it again"], watch=[out],
            exc=readers.ReaderError)


def test_truncated_h5ad(trained, tmp_path, monkeypatch):
    path = tmp_path / "slide.h5ad"
    trained.adata[:20].copy().write_h5ad(path)
    path.write_bytes(path.read_bytes()[:3000])
    refused("files", "readers.read_h5ad_spatial", "truncated .h5ad", lambda: readers.read_h5ad_spatial(path),
            [str(path), "replace it"], exc=readers.ReaderError)
    processed = preprocess.processed_path("synthetic_tiny")
    processed.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, processed)
    refused("files", "su.io.read_processed", "truncated curated .h5ad",
            lambda: spared_utils.io.read_processed("synthetic_tiny"), [str(processed), "curat"], exc=ValueError)


def test_truncated_mtx_gz(trained, slide, tmp_path):
    raw = readers.read_spaceranger(slide)
    (slide / "filtered_feature_bc_matrix.h5").unlink()
    folder = slide / "filtered_feature_bc_matrix"
    folder.mkdir()
    buffer = folder / "matrix.mtx"
    scipy.io.mmwrite(buffer, sp.csr_matrix(raw.layers["counts"]).T.astype(np.int64).tocoo())
    with open(buffer, "rb") as src, gzip.open(folder / "matrix.mtx.gz", "wb") as dst:
        dst.write(src.read())
    buffer.unlink()
    with gzip.open(folder / "features.tsv.gz", "wt") as f:
        f.writelines(f"{g}\t{s}\tGene Expression\n" for g, s in zip(raw.var_names, raw.var["gene_symbol"]))
    with gzip.open(folder / "barcodes.tsv.gz", "wt") as f:
        f.writelines(f"{b}\n" for b in raw.obs_names)
    assert readers.read_spaceranger(slide).n_obs == raw.n_obs  # the intact mtx folder reads
    matrix = folder / "matrix.mtx.gz"
    matrix.write_bytes(matrix.read_bytes()[: matrix.stat().st_size // 2])
    refused("files", "readers.read_spaceranger", "truncated .mtx.gz", lambda: readers.read_spaceranger(slide),
            [str(folder), "download it again"], exc=readers.ReaderError)


@pytest.mark.parametrize("image", ["spatial/tissue_hires_image.png", "image.tif"])
def test_truncated_image(trained, slide, tmp_path, image):
    path = slide / image
    path.write_bytes(path.read_bytes()[:600])
    out = tmp_path / "out"
    refused("files", "apply (readers.read_image)", f"truncated {Path(image).suffix} image",
            lambda: _apply(trained, slide, out / "s.h5ad"), [str(path), "replace it"], watch=[out],
            exc=readers.ReaderError)


def test_missing_images(slide):
    for name in ("spatial/tissue_hires_image.png", "spatial/tissue_lowres_image.png", "image.tif"):
        (slide / name).unlink()
    refused("files", "readers.read_spaceranger", "no image at all", lambda: readers.read_spaceranger(slide),
            [str(slide), "put the H&E"], exc=readers.ReaderError)


def _positions(slide: Path) -> tuple[Path, pd.DataFrame]:
    path = slide / "spatial" / "tissue_positions.csv"
    return path, pd.read_csv(path)


def test_positions_and_matrix_with_other_barcodes(slide):
    path, table = _positions(slide)
    inside = np.flatnonzero(table["in_tissue"].to_numpy() == 1)[:5]
    table.loc[inside, "barcode"] = [f"GGGGGGGGGGGGGGG{i}-1" for i in range(len(inside))]
    table.to_csv(path, index=False)
    refused("files", "readers.read_spaceranger", "positions and matrix with other barcodes",
            lambda: readers.read_spaceranger(slide), [str(path), "same Space Ranger run"], exc=readers.ReaderError)


def test_duplicate_barcodes(slide):
    h5 = slide / "filtered_feature_bc_matrix.h5"
    with h5py.File(h5, "r") as f:
        barcodes = f["matrix/barcodes"][:]
    barcodes[1] = barcodes[0]
    _edit_h5(h5, barcodes=barcodes)
    refused("files", "readers.read_spaceranger", "duplicate barcodes", lambda: readers.read_spaceranger(slide),
            [str(h5), "one Space Ranger run"], exc=readers.ReaderError)


@pytest.mark.parametrize("n_spots", [0, 1])
def test_empty_slide_and_one_spot(trained, slide, tmp_path, n_spots):
    path, table = _positions(slide)
    inside = np.flatnonzero(table["in_tissue"].to_numpy() == 1)
    table.loc[inside[n_spots:], "in_tissue"] = 0
    table.to_csv(path, index=False)
    out = tmp_path / "out"
    names = [str(path), "in_tissue"]
    refused("slides", "apply", "empty slide (no spot in tissue)" if n_spots == 0 else "a slide with one spot",
            lambda: _apply(trained, slide, out / "s.h5ad"), names, watch=[out], exc=ValueError)


# ------------------------------------------------------------------------------------------------
# Values: NaN, negative, non-integer counts; genes
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["NaN", "negative"])
def test_bad_counts_in_the_matrix(trained, slide, tmp_path, bad):
    h5 = slide / "filtered_feature_bc_matrix.h5"
    with h5py.File(h5, "r") as f:
        data = f["matrix/data"][:].astype(np.float32)
    data[0] = np.nan if bad == "NaN" else -3
    _edit_h5(h5, data=data)
    out = tmp_path / "out"
    refused("values", "apply (readers.check_counts)", f"{bad} counts", lambda: _apply(trained, slide, out / "s.h5ad"),
            [str(h5), "raw"], watch=[out], exc=readers.ReaderError)


def test_bad_counts_in_a_collection(trained):
    raw = spared_utils.synthetic.make_dataset(seed=0, n_rows=8, n_cols=16, n_genes=8, n_slides=3)
    counts = raw.layers["counts"].toarray()
    counts[0, 0] = np.nan
    raw.layers["counts"] = counts
    refused("values", "preprocess.run_pipeline", "NaN counts in a collection",
            lambda: preprocess.run_pipeline(raw, progress=False), [str(raw.obs["slide_id"].iloc[0]), raw.obs_names[0]],
            exc=ValueError)


def test_non_integer_counts_are_named(trained, slide, caplog):
    h5 = slide / "filtered_feature_bc_matrix.h5"
    with h5py.File(h5, "r") as f:
        data = f["matrix/data"][:].astype(np.float32)
    data[0] += 0.5
    _edit_h5(h5, data=data)
    with caplog.at_level(logging.WARNING, logger="spared_utils.readers"):
        readers.read_spaceranger(slide)
    message = " ".join(r.getMessage() for r in caplog.records)
    ok = str(h5) in message and "not whole numbers" in message and bool(FIX.search(message))
    record("values", "readers.read_spaceranger", "non-integer counts", "warning (the values are kept)", ok,
           names_file=str(h5) in message, names_fix=bool(FIX.search(message)), message=message[:400])
    assert ok, message


def test_genes_without_identifier_match(trained, slide, tmp_path):
    h5 = slide / "filtered_feature_bc_matrix.h5"
    with h5py.File(h5, "r+") as f:
        n = len(f["matrix/features/id"])
        del f["matrix/features/id"], f["matrix/features/name"]
        f.create_dataset("matrix/features/id", data=np.array([f"UNKNOWN{i}" for i in range(n)], dtype="S"))
        f.create_dataset("matrix/features/name", data=np.array([f"Nope{i}" for i in range(n)], dtype="S"))
    out = tmp_path / "out"
    refused("values", "apply (gene mapping)", "genes with no identifier match",
            lambda: _apply(trained, slide, out / "s.h5ad"), [str(h5), str(trained.spackle), "organism"], watch=[out],
            exc=apply_module.ApplyError)


def test_a_panel_gene_missing(trained, tmp_path):
    missing = trained.adata[:, 1:].copy()
    refused("values", "completion.complete (checkpoint)", "a panel gene missing from the data",
            lambda: completion.complete(missing, checkpoint=trained.spackle, device="cpu"),
            [str(trained.spackle), "synthetic_tiny"], exc=preprocess.PanelMismatchError)
    # apply keeps the gene, unmeasured (tests/test_apply.py checks the layers)
    slide = trained.slide_copy(tmp_path / "s")
    h5 = slide / "filtered_feature_bc_matrix.h5"
    raw = readers.read_spaceranger(slide)
    keep = np.flatnonzero(raw.var_names != trained.adata.var_names[0])
    h5.unlink()
    spared_utils.synthetic.write_10x_h5(h5, sp.csr_matrix(raw.layers["counts"])[:, keep], raw.obs_names,
                                        raw.var_names[keep], raw.var["gene_symbol"].to_numpy()[keep])
    result = _apply(trained, slide, None)
    ok = bool(np.isnan(result.layers["measured"][:, 0]).all() and not result.var["in_slide"].iloc[0])
    record("values", "apply", "a panel gene missing from the slide", "kept, marked unmeasured (NaN, mask False)", ok)
    assert ok


# ------------------------------------------------------------------------------------------------
# Names: datasets, chapters, parameters, plans, checkpoints
# ------------------------------------------------------------------------------------------------


def test_unknown_dataset_id():
    refused("names", "datasets.load", "unknown dataset id", lambda: datasets.load("synthetc"),
            ["datasets.yml", "'synthetic'"], watch=[os.environ["SPARED_PROCESSED_DIR"]], exc=KeyError)


@pytest.mark.parametrize("case,argv,names", [
    ("unknown chapter", ["99_nothing", "--dataset", "synthetic_tiny"], ["99_nothing.py", "00_tour"]),
    ("unknown parameter", ["00_tour", "--dataset", "synthetic_tiny", "-p", "iteration", "3"], ["00_tour.py", "'iteration'"]),
    ("parameter of the wrong type", ["02_completion", "--dataset", "synthetic_tiny", "-p", "iterations", "many"],
     ["02_completion.py", "'iterations'", "'many'"]),
    ("unknown dataset", ["00_tour", "--dataset", "nope"], ["'nope'", "datasets.yml"]),
    ("value that does not fit the parameter's declared type",
     ["10_shufflenet", "--dataset", "synthetic_tiny", "-p", "iterations", "abc"],
     ["10_shufflenet.py", "'iterations'", "'abc'", "whole number", "-p iterations"]),
])
def test_run_refuses_before_running(capsys, case, argv, names):
    out = Path(os.environ["SPARED_RESULTS_DIR"])

    def call():
        status = run.main(argv)
        raise SystemExit(f"exit status {status}: {capsys.readouterr().err}")

    message = refused("names", "python -m spared_utils.run", case, call, names, watch=[out], exc=SystemExit)
    assert "exit status 2" in message


def test_a_chapter_that_fails_is_kept_beside_never_at_its_result(tmp_path):
    out = tmp_path / "10_shufflenet.ipynb"
    with pytest.raises(Exception, match="unknown completion method"):
        run.execute("10_shufflenet", "synthetic_tiny", {"completion": "knn"}, output=out, progress=False)
    kept = run.failed_path(out)
    record("interrupted runs", "python -m spared_utils.run", "a chapter whose cell fails",
           f"kept as {kept.name}, nothing at {out.name}", kept.is_file() and not out.exists())
    assert kept.is_file() and not out.exists()


def test_batch_plan_with_unknown_chapter_and_bad_parameter(tmp_path):
    plan = tmp_path / "plan.yml"
    plan.write_text(yaml.safe_dump({"datasets": ["synthetic_tiny"], "chapters": ["10_shufflenet", "77_missing"]}))
    refused("names", "batch driver (load_plan)", "plan naming an unknown chapter", lambda: batch.load_plan(plan),
            [str(plan), "77_missing", "known chapters"], watch=[os.environ["SPARED_RESULTS_DIR"]], exc=ValueError)
    plan.write_text(yaml.safe_dump({"datasets": ["synthetic_tiny"], "chapters": ["02_completion"],
                                    "chapter_parameters": {"02_completion": {"iterations": "lots"}}}))
    refused("names", "batch driver (load_plan)", "plan with a parameter of the wrong type", lambda: batch.load_plan(plan),
            [str(plan), "'iterations'", "'lots'"], exc=ValueError)


def test_truncated_checkpoints(trained, tmp_path):
    spk = tmp_path / "spackle.pt"
    spk.write_bytes(trained.spackle.read_bytes()[:2000])
    refused("checkpoints", "completion.load_checkpoint", "truncated SpaCKLE checkpoint",
            lambda: completion.load_checkpoint(spk, device="cpu"), [str(spk), "train again"], exc=ValueError)
    folder = tmp_path / "predictor"
    shutil.copytree(trained.predictor, folder)
    (folder / "best.pt").write_bytes((folder / "best.pt").read_bytes()[:5000])
    refused("checkpoints", "predict.load_predictor", "truncated predictor checkpoint",
            lambda: load_predictor(folder, device="cpu"), [str(folder), "copy them again"], exc=ValueError)
    (folder / "predictor.json").unlink()
    refused("checkpoints", "predict.load_predictor", "predictor checkpoint without predictor.json",
            lambda: load_predictor(folder, device="cpu"), [str(folder / "predictor.json"), "copy the whole folder"],
            exc=FileNotFoundError)


def test_completion_and_the_prediction_harness_refuse_what_they_cannot_use(trained):
    lonely = trained.adata.copy()
    lonely.obs["slide_id"] = lonely.obs["slide_id"].astype(str)
    lonely.obs.iloc[0, lonely.obs.columns.get_loc("slide_id")] = "LONELY"
    refused("values", "completion.complete", "a slide with one spot", lambda: completion.complete(lonely, method="median"),
            ["'LONELY'", "single spot"], exc=ValueError)
    refused("names", "predict.run_chapter (harness)", "unknown scenario",
            lambda: run_chapter(RunSpec("shufflenet", "synthetic_tiny", scenario="bogus"), adata=trained.adata,
                                store=trained.run.task.data.store), ["'bogus'", "raw"], exc=ValueError)
    refused("names", "predict.train_predictor (harness)", "unknown predictor",
            lambda: PredictorConfig.make(model="resnet_9000"), ["'resnet_9000'", "shufflenet"], exc=ValueError)


@pytest.fixture(scope="module")
def own_slide(tmp_path_factory):
    """A generated one-slide Space Ranger folder read as a user would (no registry fields)."""
    from spared_utils import synthetic
    from tests.conftest import TINY

    return readers.read_spaceranger(synthetic.write_new_slide(tmp_path_factory.mktemp("own") / "s", **TINY))


def test_completion_of_ones_own_slide_names_the_missing_field(own_slide):
    from spared_utils.completion.own_slide import complete_slide

    no_counts = ad.AnnData(obs=own_slide.obs, var=own_slide.var, uns=own_slide.uns, obsm=dict(own_slide.obsm))
    no_grid = own_slide.copy()
    del no_grid.obs["array_row"]
    two = own_slide.copy()
    two.uns["spatial"] = {"A1": {}, "B1": {}}
    logged = own_slide.copy()
    del logged.layers["counts"]
    logged.X = np.log1p(logged.X.toarray())
    for case, data, names, options in (
            ("no counts anywhere", no_counts, ["layers['counts']"], {}),
            ("normalised X, no counts layer", logged, ["X is not raw counts"], {}),
            ("no grid positions", no_grid, ["obs['array_row']"], {}),
            ("two libraries, no library_id", two, ["library_id", "'A1'"], {}),
            ("a named layer that is absent", own_slide, ["layers['lognorm']"], {"layer": "lognorm"})):
        refused("values", "tl.complete_slide", case, lambda: complete_slide(data, progress=False, **options),
                names, exc=preprocess.SlideFieldError)


# ------------------------------------------------------------------------------------------------
# Downloads (local HTTP server on 127.0.0.1)
# ------------------------------------------------------------------------------------------------

PAYLOAD = bytes(range(256)) * 400
FAST = {"retries": 1, "backoff": 0.0, "timeout": (1.0, 0.3), "progressbar": False}


@pytest.mark.parametrize("case", ["checksum mismatch", "interrupted download", "server that stalls"])
def test_downloads(http_server, tmp_path, case):
    import hashlib

    sha = hashlib.sha256(PAYLOAD).hexdigest()
    behaviour = {"checksum mismatch": {}, "interrupted download": {"behaviour": "drop", "drop_after": 1000, "drops": 10},
                 "server that stalls": {"behaviour": "slow", "delay": 1.0}}[case]
    url = http_server.add(f"/{case.replace(' ', '_')}.bin", PAYLOAD, **behaviour)
    expected = "0" * 64 if case == "checksum mismatch" else sha
    refused("downloads", "download.fetch (datasets.load)", case,
            lambda: download.fetch(url, "f.bin", expected, cache_dir=tmp_path / "cache", **FAST),
            [str(tmp_path / "cache" / "f.bin")], watch=[tmp_path / "cache"], exc=download.DownloadError)


# ------------------------------------------------------------------------------------------------
# Disks: read-only folders, a full disk
# ------------------------------------------------------------------------------------------------


def _enospc(*_, **__):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_read_only_output_folder(trained, tmp_path, monkeypatch):
    out = tmp_path / "readonly"
    out.mkdir()
    out.chmod(0o555)
    if os.access(out, os.W_OK):  # root ignores permissions: the folder refuses as a read-only mount would
        monkeypatch.setattr("spared_utils.utils.tempfile.mkstemp",
                            lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EROFS, "Read-only file system")))
    try:
        refused("disks", "apply (write)", "read-only output folder", lambda: _apply(trained, trained.slide, out / "s.h5ad"),
                [str(out / "s.h5ad"), "writable"], watch=[out], exc=OSError)
    finally:
        out.chmod(0o755)


def test_full_disk_everywhere_leaves_nothing_half_written(trained, tmp_path, monkeypatch):
    def half_then_full(self, path, *a, **k):
        Path(path).write_bytes(b"\x89HDF\r\n" + b"0" * 1000)
        _enospc()

    out = tmp_path / "out"
    with monkeypatch.context() as m:
        m.setattr(ad.AnnData, "write_h5ad", half_then_full)
        refused("disks", "apply (write)", "full disk while writing the .h5ad",
                lambda: _apply(trained, trained.slide, out / "s.h5ad"), [str(out / "s.h5ad"), "free disk space"],
                watch=[out], exc=OSError)
    store = tmp_path / "results.csv"
    results.append({"stage": "x", "mse": 1.0}, path=store)
    before = store.read_text()
    with monkeypatch.context() as m:
        m.setattr(pd.DataFrame, "to_csv", lambda self, path, *a, **k: (Path(path).write_text("stage,ms"), _enospc()))
        refused("disks", "results.append", "full disk while appending a row",
                lambda: results.append({"stage": "y", "mse": 2.0}, path=store), [str(store), "free disk space"],
                watch=[tmp_path], exc=OSError, before=_files([tmp_path]))
    assert store.read_text() == before
    import torch

    with monkeypatch.context() as m:
        m.setattr(torch, "save", lambda obj, f, *a, **k: (Path(f).write_bytes(b"PK" * 100), _enospc()))
        model = completion.load_checkpoint(trained.spackle, device="cpu")
        target = tmp_path / "ckpt" / "spackle.pt"
        refused("disks", "completion.save_checkpoint", "full disk while saving a checkpoint",
                lambda: completion.save_checkpoint(model, target), [str(target), "free disk space"],
                watch=[tmp_path / "ckpt"], exc=OSError)
    with monkeypatch.context() as m:
        m.setattr(Path, "write_text", lambda self, *a, **k: _enospc())
        store_dir = tmp_path / "patches"
        refused("disks", "patches.extract_patches", "full disk while writing a patch store",
                lambda: patches.extract_patches(trained.adata[:8].copy(), store_dir, patch_size=16, progress=False,
                                                image_key="hires"),
                [str(store_dir), "free disk space"], watch=[tmp_path / "patches"], exc=OSError)


# ------------------------------------------------------------------------------------------------
# Interrupted runs: killed half-way, resumed to the same numbers
# ------------------------------------------------------------------------------------------------

TRAIN_SCRIPT = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    import anndata as ad
    from spared_utils import completion, patches
    from spared_utils.predict import PredictorConfig, prediction_data, train_predictor
    kind, data_file, folder, store = sys.argv[1:5]
    adata = ad.read_h5ad(data_file)
    if kind == "spackle":
        cfg = completion.SpackleConfig.make(**{spackle})
        completion.train_spackle(adata, config=cfg)
    else:
        data = prediction_data(adata, patches.PatchStore(store), "completed")
        train_predictor(data, PredictorConfig.make(**{predictor}), dataset="synthetic_tiny", out_dir=folder)
""")
SPACKLE = dict(iterations=150, d_model=16, dim_feedforward=32, eval_every=10, checkpoint_every_s=0.0, progress=False,
               device="cpu")
PREDICTOR = dict(model="shufflenet", scenario="completed", iterations=24, batch_size=4, eval_every=2, val_spots=4,
                 eval_spots=8, checkpoint_every_s=0.0, progress=False, num_workers=0, device="cpu",
                 model_options={"width": 0.5})


def _last_iteration(folder: Path) -> int | None:
    import torch

    for last in folder.rglob("last.pt"):
        try:
            return int(torch.load(last, map_location="cpu", weights_only=False)["iteration"])
        except Exception:  # noqa: BLE001 - replaced while we read it: try again
            return None
    return None


def _kill_half_way(procs: dict[str, tuple[subprocess.Popen, Path, int]], timeout: float = 240.0) -> dict[str, int]:
    """SIGKILL each process once its checkpoint shows a step between 1 and its budget; the step killed at."""
    killed: dict[str, int] = {}
    start = time.monotonic()
    while len(killed) < len(procs) and time.monotonic() - start < timeout:
        for name, (proc, folder, budget) in procs.items():
            if name in killed:
                continue
            it = _last_iteration(folder)
            if it is not None and 0 < it < budget:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                killed[name] = _last_iteration(folder) or it
            elif proc.poll() is not None:
                killed[name] = -1  # finished (or failed) before it could be killed
        time.sleep(0.02)
    for proc, _, _ in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return killed


def test_killed_training_resumes_to_identical_numbers(trained, tmp_path):
    import torch

    data_file = tmp_path / "data.h5ad"
    trained.adata.write_h5ad(data_file)
    adata = ad.read_h5ad(data_file)
    store = trained.root / "patches"
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT.replace("{spackle}", repr({**SPACKLE, "checkpoint_dir": str(tmp_path / "spk_killed")}))
                      .replace("{predictor}", repr(PREDICTOR)))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = {
        "spackle": (subprocess.Popen([sys.executable, str(script), "spackle", str(data_file), "-", str(store)], env=env,
                                     stderr=subprocess.PIPE), tmp_path / "spk_killed", SPACKLE["iterations"]),
        "predictor": (subprocess.Popen([sys.executable, str(script), "predictor", str(data_file),
                                        str(tmp_path / "pred_killed"), str(store)], env=env, stderr=subprocess.PIPE),
                      tmp_path / "pred_killed", PREDICTOR["iterations"]),
    }
    killed = _kill_half_way(procs)

    # SpaCKLE: resumed from the killed run's checkpoint vs the same seed uninterrupted
    resumed = completion.train_spackle(adata, config=completion.SpackleConfig.make(
        **SPACKLE, checkpoint_dir=str(tmp_path / "spk_killed")))
    whole = completion.train_spackle(adata, config=completion.SpackleConfig.make(**SPACKLE))
    same_spk = (resumed.history["val_loss"].tolist() == whole.history["val_loss"].tolist()
                and all(torch.equal(a, b) for a, b in zip(resumed.model.state_dict().values(),
                                                          whole.model.state_dict().values())))
    record("interrupted runs", "completion.train_spackle", "subprocess killed during SpaCKLE training, resumed",
           f"killed at step {killed['spackle']} of {SPACKLE['iterations']}; resumed: best val MSE {resumed.best_val:.6f}, "
           f"uninterrupted {whole.best_val:.6f}", same_spk and 0 < killed["spackle"] < SPACKLE["iterations"],
           resumed_identical=same_spk)

    data = prediction_data(adata, patches.PatchStore(store), "completed")
    cfg = PredictorConfig.make(**PREDICTOR)
    again = train_predictor(data, cfg, dataset="synthetic_tiny", out_dir=tmp_path / "pred_killed", write_results=False)
    fresh = train_predictor(data, cfg, dataset="synthetic_tiny", out_dir=tmp_path / "pred_whole", write_results=False)
    same_pred = (again.history["val_loss"].tolist() == fresh.history["val_loss"].tolist()
                 and np.array_equal(again.predictions["test"], fresh.predictions["test"]))
    record("interrupted runs", "predict.train_predictor (harness)", "subprocess killed during a predictor's training, resumed",
           f"killed at step {killed['predictor']} of {PREDICTOR['iterations']}; test MSE resumed "
           f"{again.metrics.set_index('split').loc['test', 'mse']:.6f}, uninterrupted "
           f"{fresh.metrics.set_index('split').loc['test', 'mse']:.6f}",
           same_pred and 0 < killed["predictor"] < PREDICTOR["iterations"], resumed_identical=same_pred)
    assert 0 < killed["spackle"] < SPACKLE["iterations"], procs["spackle"][0].stderr.read().decode()[-2000:]
    assert 0 < killed["predictor"] < PREDICTOR["iterations"], procs["predictor"][0].stderr.read().decode()[-2000:]
    assert same_spk and same_pred


# ------------------------------------------------------------------------------------------------
# Two processes appending to the results store at once
# ------------------------------------------------------------------------------------------------


def _append_many(path: str, writer: int, n: int, per_append: int, barrier=None) -> None:
    if barrier is not None:
        barrier.wait(timeout=60)  # both writers start appending at the same moment
    for start in range(0, n, per_append):
        results.append([{"stage": "stress", "model": f"writer{writer}", "seed": i, "mse": writer + i / 1000}
                        for i in range(start, min(n, start + per_append))], path=path)


def test_concurrent_appends_lose_and_tear_nothing(tmp_path):
    store = tmp_path / "results.csv"
    n, per_append = 500, 5  # 100 appends of 5 rows per process: every append reads and rewrites the store
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    workers = [ctx.Process(target=_append_many, args=(str(store), w, n, per_append, barrier)) for w in (1, 2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=300)
    for w in workers:
        if w.is_alive():
            w.kill()
    assert [w.exitcode for w in workers] == [0, 0], f"each writer exits cleanly: {[w.exitcode for w in workers]}"
    table = results.read(store)
    counts = table.groupby("model")["seed"].apply(lambda s: sorted(s.astype(int))).to_dict()
    lost = sum(n - len(set(v)) for v in counts.values()) + (2 - len(counts)) * n
    torn = int(table[["stage", "model", "seed", "mse"]].isna().any(axis=1).sum())
    ok = all(w.exitcode == 0 for w in workers) and lost == 0 and torn == 0 and len(table) == 2 * n
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    # the two writers really ran at once: their rows alternate in the store
    switches = int((table["model"] != table["model"].shift()).sum() - 1)
    record("results store", "results.append", f"2 processes × {n} rows at once ({n // per_append} appends each)",
           f"{len(table)} rows stored, {lost} lost, {torn} torn; the writers alternated {switches} times",
           ok and not leftovers and switches > 0, partial_outputs=len(leftovers))
    assert ok and not leftovers, (len(table), lost, torn, leftovers)
    assert switches > 0, "one writer finished before the other started: nothing was concurrent"


def test_messages_name_the_test_folder_and_the_repository_not_this_machines_paths(tmp_path):
    from spared_utils.reliability import readable_paths

    places = {tmp_path / "base": "<test folder>", tmp_path: "<repository>"}
    message = f"cannot read {tmp_path}/base/test_truncated_h5ad0/slide.h5ad; see {tmp_path}/data/datasets.yml"
    assert readable_paths(message, places) == ("cannot read <test folder>/slide.h5ad; "
                                               "see <repository>/data/datasets.yml")
    assert readable_paths(None, places) is None
