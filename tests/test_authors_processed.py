"""The ``authors_processed`` source kind: a dataset processed by the authors' own ``spared`` code.

The fixture ``tests/data/authors_tiny`` was made by their code (``benchmarks/make_authors_fixture.py``,
see its README); these tests read it through the registry (``authors_tiny`` in
``data/datasets.yml``) and compare what the book holds with what their file holds.
"""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from spared_utils import completion, datasets, download, patches, readers, sources
from spared_utils.predict.harness import parse_scenarios
from spared_utils.preprocess import authors as compare
from spared_utils.registry import RegistryError, parse_registry
from tests.fixtures_http import http_server  # noqa: F401  (pytest fixture)

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "data" / "authors_tiny"
SIDE_ENV = ROOT / "benchmarks" / ".env-spared" / "bin" / "python"


@pytest.fixture(scope="module")
def theirs() -> ad.AnnData:
    return ad.read_h5ad(FIXTURE / "adata.h5ad")


def _registry(source: str) -> str:
    return f"""
schema_version: 1
publications: {{synthetic: {{citation: x}}}}
datasets:
  tiny:
    publication: synthetic
    organism: synthetic
    tissue: t
    n_genes: 16
    combat_key: slide_id
    splits: {{train: [SYN_A1], val: [SYN_B1], test: [SYN_C1]}}
    patients: {{unique: [SYN_A1, SYN_B1, SYN_C1]}}
    source:
{source}
"""


def test_the_fixture_was_made_by_their_code():
    made = json.loads((FIXTURE / "made_with.json").read_text())
    assert made["versions"]["spared"] == "2.2.1"
    params = json.loads((FIXTURE / "parameters.json").read_text())
    assert params["patch_size"] == made["patch_size"] and params["param_dict"]["top_moran_genes"] == 16


def test_registry_accepts_the_kind_and_refuses_what_it_cannot_read():
    spec = parse_registry(_registry("      kind: authors_processed\n      format: h5ad\n      root: x"))["tiny"]
    assert spec.source.kind == "authors_processed" and spec.source.root == "x"
    with pytest.raises(RegistryError, match="set format: h5ad"):
        parse_registry(_registry("      kind: authors_processed\n      format: spaceranger\n      root: x"))
    with pytest.raises(RegistryError, match="needs 'root'"):
        parse_registry(_registry("      kind: authors_processed\n      format: h5ad"))


def test_load_maps_their_layers_obs_and_obsm(theirs):
    adata = datasets.load("authors_tiny", progress=False)
    assert adata.n_obs == theirs.n_obs and list(adata.var_names) == list(theirs.var_names)
    for layer in readers.authors.CURATED_LAYERS:
        np.testing.assert_array_equal(adata.layers[layer], np.asarray(theirs.layers[layer], dtype=np.float32))
    np.testing.assert_array_equal(adata.layers["mask"], np.asarray(theirs.layers["mask"], dtype=bool))
    np.testing.assert_array_equal(adata.X, adata.layers["c_d_log1p"])
    assert "c_t_log1p" not in adata.layers  # the curated stage carries no completion, as ours
    np.testing.assert_array_equal(adata.layers["authors_c_t_log1p"], np.asarray(theirs.layers["c_t_log1p"], np.float32))
    assert (adata.obs["slide_id"].astype(str).to_numpy() == theirs.obs["slide_id"].astype(str).to_numpy()).all()
    assert (adata.obs["split"].astype(str).to_numpy() == theirs.obs["split"].astype(str).to_numpy()).all()
    assert set(adata.obs["patient"]) == {"unique"}
    assert all(f"{s}_{b}" == n for s, b, n in zip(adata.obs["slide_id"], adata.obs["barcode"], adata.obs_names))
    np.testing.assert_array_equal(adata.obsm["spatial"], np.asarray(theirs.obsm["spatial"], dtype=np.float64))
    assert not any(k.startswith("patches_") for k in adata.obsm)
    assert {"noisy_c_d_log1p", "noisy_c_t_log1p"} <= set(adata.uns["authors_processed"]["left_out_layers"])
    for lib in adata.uns["spatial"].values():  # their machine's image paths never reach the patch cutter
        assert "source_image_path" not in lib["metadata"]
    # the second load reads the cached copy, stamped with their file
    again = datasets.load("authors_tiny", progress=False)
    assert again.uns["dataset_spec"] == adata.uns["dataset_spec"] and "authors_processed" in again.uns["dataset_spec"]


def test_patch_store_is_their_patches_never_recut(theirs, monkeypatch):
    def no_cutting(*args, **kwargs):
        raise AssertionError("the authors' patches must not be cut again")

    monkeypatch.setattr(datasets, "extract_patches", no_cutting)
    adata = datasets.load("authors_tiny", progress=False)
    store = datasets.patch_store("authors_tiny", adata, progress=False)
    flat = np.asarray(theirs.obsm["patches_scale_1.0"])
    side = store.patch_size
    assert side * side * 3 == flat.shape[1] and list(store.obs_names) == list(adata.obs_names)
    for i in (0, len(store) // 2, len(store) - 1):
        np.testing.assert_array_equal(store[i], flat[i].reshape(side, side, 3))
    # removed: written again from their file, in the curated spots' order
    import shutil

    shutil.rmtree(store.path)
    store = datasets.patch_store("authors_tiny", adata, progress=False)
    np.testing.assert_array_equal(store[3], flat[3].reshape(side, side, 3))


def test_completed_authors_is_their_completion(theirs, tmp_path):
    assert parse_scenarios("completed:authors") == ["completed:authors"]
    adata = datasets.load("authors_tiny", progress=False)
    with pytest.raises(FileNotFoundError, match="authors"):
        datasets.load("authors_tiny", stage="completed", method="authors")
    done = completion.ensure(adata, "authors_tiny", "authors")
    np.testing.assert_array_equal(done.layers["c_t_log1p"], np.asarray(theirs.layers["c_t_log1p"], np.float32))
    np.testing.assert_array_equal(done.layers["c_t_deltas"], np.asarray(theirs.layers["c_t_deltas"], np.float32))
    found = datasets.load("authors_tiny", stage="completed", method="authors")
    np.testing.assert_array_equal(found.layers["c_t_log1p"], done.layers["c_t_log1p"])


def test_the_authors_completion_needs_their_file():
    adata = datasets.load("authors_tiny", progress=False)
    del adata.layers["authors_c_t_log1p"]  # a curated dataset of ours has no such layer
    with pytest.raises(ValueError, match="authors_processed"):
        completion.complete(adata, method="authors")


def test_raw_stage_is_their_counts(theirs):
    raw = datasets.load("authors_tiny", stage="raw", progress=False)
    np.testing.assert_array_equal(raw.X.toarray(), np.asarray(theirs.layers["counts"], np.float32))
    np.testing.assert_array_equal(raw.var["gene_length"], theirs.var["gene_length"])


def test_reader_refuses_a_file_that_is_not_theirs_and_a_split_the_registry_contradicts(tmp_path, theirs):
    other = ad.AnnData(np.ones((3, 2), np.float32))
    other.write_h5ad(tmp_path / "adata.h5ad")
    with pytest.raises(readers.ReaderError, match="not a dataset processed by the authors"):
        readers.read_authors_processed(tmp_path)
    with pytest.raises(readers.ReaderError, match="SYN_B1.*splits.val"):
        readers.read_authors_processed(FIXTURE, splits={"train": ["SYN_A1", "SYN_B1"], "test": ["SYN_C1"]})
    with pytest.raises(readers.ReaderError, match="does not exist"):
        readers.authors_file(tmp_path / "nowhere")


def _download_spec(url: str):
    text = _registry(f"      kind: authors_processed\n      format: h5ad\n      root: '{{authors_data}}/tiny'\n"
                     f"      files:\n        - path: authors/tiny/adata.h5ad\n          urls: ['{url}']")
    return parse_registry(text)["tiny"]


def test_download_from_a_link_with_progress_and_a_clear_offline_message(http_server, tmp_path, theirs):
    data = (FIXTURE / "adata.h5ad").read_bytes()
    url = http_server.add("/adata.h5ad", data, behaviour="drop", drop_after=len(data) // 3)
    adata, patches_, info = sources.load_authors(_download_spec(url), tmp_path / "cache", progress=False)
    assert adata.n_obs == theirs.n_obs and patches_.shape[0] == theirs.n_obs
    assert any(r["range"] for r in http_server.requests_for("/adata.h5ad"))  # the broken transfer was resumed
    gone = http_server.add("/gone.h5ad", b"", behaviour="status", status=404)
    with pytest.raises(download.DownloadError, match="place it at .*adata.h5ad"):
        sources.load_authors(_download_spec(gone), tmp_path / "cache2", progress=False)


def test_a_drive_link_goes_through_gdown_and_says_when_offline(tmp_path, monkeypatch, theirs):
    calls = []

    def fake_download(url, output, quiet, fuzzy, resume):
        calls.append((url, resume))
        Path(output).write_bytes((FIXTURE / "adata.h5ad").read_bytes())
        return output

    monkeypatch.setitem(sys.modules, "gdown", types.SimpleNamespace(download=fake_download))
    link = "https://drive.google.com/file/d/abc/view?usp=sharing"
    adata, _, _ = sources.load_authors(_download_spec(link), tmp_path / "cache", progress=False)
    assert calls == [(link, True)] and adata.n_obs == theirs.n_obs

    def offline(*args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setitem(sys.modules, "gdown", types.SimpleNamespace(download=offline))
    with pytest.raises(download.DownloadError, match="offline.*place it at"):
        sources.load_authors(_download_spec(link), tmp_path / "cache3", progress=False)


def test_a_missing_local_file_says_where_to_put_it():
    spec = parse_registry(_registry("      kind: authors_processed\n      format: h5ad\n      root: /nowhere/tiny"))["tiny"]
    with pytest.raises(FileNotFoundError, match="SPARED_AUTHORS_DATA_DIR"):
        sources.load_authors(spec, progress=False)


def test_write_patch_store_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (5, 8, 8, 3), dtype=np.uint8)
    patches.write_patch_store(arr, [f"s{i}" for i in range(5)], tmp_path / "p", source_id="x")
    store = patches.PatchStore(tmp_path / "p")
    np.testing.assert_array_equal(store.take([4, 1]), arr[[4, 1]])
    assert store.meta["source_id"] == "x" and store.patch_size == 8
    with pytest.raises(ValueError, match="uint8"):
        patches.write_patch_store(arr.astype(np.float32), list("abcde"), tmp_path / "q")


# ------------------------------------------------------------------------------------------------
# Our curation against theirs
# ------------------------------------------------------------------------------------------------


def _pair() -> tuple[ad.AnnData, ad.AnnData]:
    rng = np.random.default_rng(1)
    values = rng.random((4, 3)).astype(np.float32)
    obs = pd.DataFrame({"slide_id": ["S_1"] * 4}, index=[f"B{i}_S_1" for i in range(4)])
    ours = ad.AnnData(values.copy(), obs=obs, layers={"log1p": values.copy()})
    ours.var_names = ["g0", "g1", "g2"]
    theirs_obs = pd.DataFrame({"slide_id": ["S_1"] * 4}, index=[f"S_1_B{i}" for i in (3, 2, 1, 0)])
    theirs = ad.AnnData(values[::-1].copy(), obs=theirs_obs, layers={"log1p": values[::-1].astype(np.float64)})
    theirs.var_names = ["g0", "g1", "g2"]
    return ours, theirs


def test_compare_matches_spots_across_their_naming_and_finds_one_changed_entry():
    ours, theirs = _pair()
    assert compare.compare_with_authors(ours, theirs).loc["layer log1p", "share_identical"] == 1.0
    theirs.layers["log1p"][0, 2] += 0.25  # their spot B3, gene g2
    row = compare.compare_with_authors(ours, theirs).loc["layer log1p"]
    assert row["share_identical"] == pytest.approx(11 / 12) and row["max_abs_diff"] == pytest.approx(0.25)
    assert row["n_compared"] == 12


def test_compare_sets_and_moran_ranking():
    ours, theirs = _pair()
    gene_qc = pd.DataFrame({"kept": [True, True, False, True]}, index=["g0", "g1", "g2", "g3"])
    ours.uns["preprocessing"] = {"gene_qc": gene_qc,
                                 "moran": pd.DataFrame({"mean": [0.5, 0.4, 0.1]}, index=["g0", "g1", "g3"])}
    inter = {"filtered_genes": ["g0", "g1", "g3", "g4"], "filtered_spots": [f"S_1_B{i}" for i in range(3)],
             "moran": {"g0": 0.5, "g1": 0.3, "g3": 0.35, "g4": 0.0}}
    table = compare.compare_with_authors(ours, theirs, inter, n_genes=2)
    assert table.loc["genes kept by the filters", "share_identical"] == pytest.approx(3 / 4)
    assert table.loc["spots kept by the filters", "share_identical"] == pytest.approx(3 / 4)
    assert table.loc["Moran's I (mean over slides)", "max_abs_diff"] == pytest.approx(0.25)
    assert table.loc["genes selected by Moran's I", "share_identical"] == pytest.approx(1 / 3)  # {g0,g1} vs {g0,g3}
    with pytest.raises(KeyError, match="curation_vs_authors.yml"):
        compare.with_reasons(table, reasons={})


def test_every_difference_on_the_fixture_has_a_reason():
    table, ours, _ = compare.fixture_comparison(FIXTURE)
    assert {"layer tpm", "layer log1p", "layer d_log1p", "layer c_d_log1p", "layer mask",
            "genes selected by Moran's I"} <= set(table.index)
    shown = compare.with_reasons(table)  # raises if a difference has no reason
    assert (shown.loc[shown["share_identical"] < 1, "reason"].str.len() > 20).all()
    assert ours.n_vars == 16


@pytest.mark.slow
@pytest.mark.skipif(not SIDE_ENV.is_file(),
                    reason="the side environment benchmarks/.env-spared (spared 2.2.1, built by "
                           "benchmarks/bench_completion.py's ensure_env, needs PyPI) is missing")
@pytest.mark.skipif(not os.environ.get("SPARED_AUTHORS_REGENERATE"),
                    reason="their SpaCKLE trains 1,000 CPU steps (tens of minutes): set SPARED_AUTHORS_REGENERATE=1")
def test_their_code_makes_the_same_fixture_again(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import make_authors_fixture

    make_authors_fixture.make_fixture(tmp_path / "again")
    again = ad.read_h5ad(tmp_path / "again" / "adata.h5ad")
    ref = ad.read_h5ad(FIXTURE / "adata.h5ad")
    assert list(again.var_names) == list(ref.var_names) and list(again.obs_names) == list(ref.obs_names)
    for layer in ("counts", "tpm", "log1p", "d_log1p", "c_d_log1p", "mask"):
        np.testing.assert_array_equal(np.asarray(again.layers[layer]), np.asarray(ref.layers[layer]))
    np.testing.assert_array_equal(again.obsm["patches_scale_1.0"], ref.obsm["patches_scale_1.0"])


@pytest.mark.slow
@pytest.mark.parametrize("chapter", ["01_curation", "02_completion", "10_shufflenet", "15_hist2st"])
def test_chapters_run_on_the_authors_fixture(chapter, tmp_path):
    """A chapter on exactly their data: ``--dataset authors_tiny`` (plus ``completion="authors"``
    for a predictor, and their 32 px patch size for a slide model), with the tiny parameters of
    tests/chapter_params.yml, as benchmarks/authors_chapters.py runs every chapter."""
    import nbformat

    from spared_utils import run

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import authors_chapters

    params = authors_chapters.tiny_parameters(chapter)
    assert params.get("patch_size", 32) == 32
    out = run.execute(chapter, "authors_tiny", params, output=tmp_path / f"{chapter}.ipynb", progress=False)
    nb = nbformat.read(out, as_version=4)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    text = "".join(str(o.get("text", "")) for c in nb.cells for o in c.get("outputs", []))
    if "completion" in params:
        assert "found completion authors-" in text or "completing with authors" in text


def test_every_dataset_of_the_paper_is_known_as_the_authors_processed_it(theirs, tmp_path, monkeypatch):
    """``<id>_authors`` needs no entry of its own: it reads ``{authors_data}/<id>/adata.h5ad`` with
    the registry's splits and patients, and the run, the book and the batch driver accept it."""
    from spared_utils import registry, run

    spec = registry.get_spec("villacampa_lung_organoid_authors")
    base = registry.get_spec("villacampa_lung_organoid")
    assert spec.source.kind == "authors_processed" and spec.source.root == "{authors_data}/villacampa_lung_organoid"
    assert spec.splits == base.splits and spec.patients == base.patients and not spec.in_paper
    assert registry.is_known(spec.id) and "villacampa_lung_organoid_authors" not in registry.registry()
    assert sum(s.in_paper for s in registry.registry().values()) == 26, "derived ids are not counted twice"
    for unknown in ("authors_tiny_authors", "no_such_dataset_authors", "synthetic_authors"):
        assert not registry.is_known(unknown)  # only datasets of the paper have one
        with pytest.raises(registry.UnknownDatasetError):
            registry.get_spec(unknown)
    with pytest.raises(run.ChapterError, match="<id>_authors"):
        run.execute("00_tour", "no_such_dataset_authors", {})

    # their file with the dataset's four slides (the fixture's train slide twice), in the folder
    # SPARED_AUTHORS_DATA_DIR names
    names = {"SYN_A1": "V19D02-088_A1", "SYN_B1": "V19D02-088_C1", "SYN_C1": "V19D02-088_D1"}
    renamed = theirs.copy()
    renamed.obs["slide_id"] = renamed.obs["slide_id"].astype(str).map(names)
    renamed.obs_names = [f"{names[s]}_{n[len(s) + 1:]}" for s, n in zip(theirs.obs["slide_id"].astype(str),
                                                                        theirs.obs_names)]
    twin = renamed[renamed.obs["slide_id"] == "V19D02-088_A1"].copy()
    twin.obs["slide_id"] = "V19D02-088_B1"
    twin.obs_names = [n.replace("_A1_", "_B1_") for n in twin.obs_names]
    mine = ad.concat([renamed, twin], merge="same")
    mine.uns["spatial"] = {**{names[k]: v for k, v in theirs.uns["spatial"].items()},
                           "V19D02-088_B1": theirs.uns["spatial"]["SYN_A1"]}
    folder = tmp_path / "authors" / "villacampa_lung_organoid"
    folder.mkdir(parents=True)
    mine.write_h5ad(folder / "adata.h5ad")
    monkeypatch.setenv(sources.AUTHORS_DATA_ENV, str(tmp_path / "authors"))
    adata = datasets.load(spec.id, progress=False)
    assert dict(zip(adata.obs["slide_id"].astype(str), adata.obs["split"].astype(str))) == {
        "V19D02-088_A1": "train", "V19D02-088_B1": "train", "V19D02-088_C1": "val", "V19D02-088_D1": "test"}
    np.testing.assert_array_equal(adata.layers["c_d_log1p"], np.asarray(mine.layers["c_d_log1p"], np.float32))

    # a file whose split contradicts the registry is refused, naming the slide
    mine.obs["split"] = mine.obs["split"].astype(str).replace({"train": "val", "val": "train"})
    mine.write_h5ad(folder / "adata.h5ad")
    monkeypatch.setenv("SPARED_PROCESSED_DIR", str(tmp_path / "processed-again"))
    with pytest.raises(readers.ReaderError, match="V19D02-088_A1"):
        datasets.load(spec.id, progress=False)
