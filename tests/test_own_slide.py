"""Completion of a slide that never went through the registry (su.tl.complete_slide, su.pp.curate_slide)."""

from __future__ import annotations

import json
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from tests.conftest import TINY
from spared_utils import synthetic
from spared_utils.completion.own_slide import complete_slide
from spared_utils.preprocess import SlideFieldError, run_pipeline
from spared_utils.readers import read_spaceranger

#: A training budget that keeps each call to seconds on a CPU.
SMALL = {"iterations": 6, "batch_size": 32, "d_model": 16, "dim_feedforward": 32, "progress": False}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A generated one-slide Visium folder (Space Ranger layout, gene_lengths.tsv beside it)."""
    return synthetic.write_new_slide(tmp_path_factory.mktemp("own") / "slides", seed=0, **TINY)


def _read(folder, reader: str) -> ad.AnnData:
    if reader == "spared":
        return read_spaceranger(folder)
    if reader == "squidpy":
        import squidpy as sq

        return sq.read.visium(folder)
    import scanpy as sc

    with warnings.catch_warnings():  # scanpy 1.11 points to squidpy.read.visium
        warnings.simplefilter("ignore", FutureWarning)
        return sc.read_visium(folder)


def _counts(adata: ad.AnnData) -> np.ndarray:
    x = adata.layers["counts"] if "counts" in adata.layers else adata.X
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def _check_completed(out: ad.AnnData, raw: ad.AnnData, key: str = "c_t_log1p") -> None:
    """The completed layer, the mask and the record, against the reader's counts."""
    assert out.layers[key].shape == (out.n_obs, out.n_vars)
    mask = out.layers["mask"]
    counts = _counts(raw)[raw.obs_names.get_indexer(out.obs_names)]
    columns = raw.var_names.get_indexer(out.var_names)
    if (columns < 0).any():  # Ensembl ids from scanpy's var["gene_ids"] became the names
        columns = pd.Index(raw.var["gene_ids"].astype(str)).get_indexer(out.var_names)
    assert (columns >= 0).all()
    np.testing.assert_array_equal(mask, counts[:, columns] != 0)
    assert (~mask).any() and mask.any()
    completed, given = out.layers[key], out.layers[out.uns["completion"]["layer"]]
    np.testing.assert_array_equal(completed[mask], given[mask])
    assert np.isfinite(completed).all()
    assert not np.allclose(completed[~mask], given[~mask])  # the missing entries were filled anew
    info = out.uns["completion"]
    assert info["method"] == "spackle_plus"
    assert json.loads(info["config"])["train"]["iterations"] == SMALL["iterations"]
    assert list(info["genes"]) == list(out.var_names)
    assert np.isfinite(info["validation_mse"]) and info["validation_mse"] > 0
    held = (out.obs["completion_split"] == "val").to_numpy()
    assert info["n_held_out"] == held.sum() > 0 and not held.all()


@pytest.mark.parametrize("reader", ["spared", "scanpy", "squidpy"])
def test_one_call_completes_a_generated_slide_from_any_reader(folder, reader, tmp_path):
    raw = _read(folder, reader)
    before = _counts(raw).copy()
    obs_before, layers_before = list(raw.obs.columns), list(raw.layers)
    out = complete_slide(raw, n_genes=16, gene_lengths=folder.parent / "gene_lengths.tsv", **SMALL)
    assert out.n_vars == 16 and out.uns["completion"]["source"] == "curated from counts"
    assert out.obs["slide_id"].astype(str).unique().tolist() == [folder.name]  # from uns["spatial"]
    assert out.uns["slide_fields"]["normalisation"] == "tpm"
    _check_completed(out, raw)
    # the caller's AnnData is left as it was
    np.testing.assert_array_equal(_counts(raw), before)
    assert list(raw.obs.columns) == obs_before and list(raw.layers) == layers_before
    out.write_h5ad(tmp_path / "done.h5ad")  # the record is writable
    back = ad.read_h5ad(tmp_path / "done.h5ad")
    assert list(back.uns["completion"]["genes"]) == list(out.var_names)


def test_a_layer_the_user_names_is_the_one_completed(folder):
    raw = read_spaceranger(folder)
    x = raw.layers["counts"].toarray()
    raw.layers["lognorm"] = np.log1p(x / np.maximum(x.sum(1, keepdims=True), 1) * 1e4).astype(np.float32)
    genes = list(raw.var_names[np.argsort(-(x > 0).mean(0))[:12]])
    x_before = raw.X.copy()
    out = complete_slide(raw, layer="lognorm", genes=genes, **SMALL)
    info = out.uns["completion"]
    assert info["source"] == "layers['lognorm']" and "lognorm_completed" in out.layers
    assert list(out.var_names) == genes
    given = raw.layers["lognorm"][:, raw.var_names.get_indexer(genes)]
    np.testing.assert_array_equal(out.layers["mask"], given != 0)
    done = out.layers["lognorm_completed"]
    np.testing.assert_allclose(done[out.layers["mask"]], given[given != 0], rtol=1e-6)
    assert "counts" not in out.layers and "c_d_log1p" not in out.layers  # no curation from counts
    assert (raw.X != x_before).nnz == 0


def test_an_untrained_method_is_scored_on_held_out_spots_too_with_a_progress_bar(folder, capsys):
    out = complete_slide(read_spaceranger(folder), "mean", n_genes=8, progress=True,
                         gene_lengths=folder.parent / "gene_lengths.tsv")
    assert "complete_slide: 100%" in capsys.readouterr().err  # tqdm's bar over the steps
    info = out.uns["completion"]
    assert info["method"] == "mean" and np.isfinite(info["validation_mse"])
    real = out.layers["mask"]
    np.testing.assert_array_equal(out.layers["c_t_log1p"][real], out.layers["c_d_log1p"][real])


def test_several_slides_named_by_library_id_are_completed_together():
    data = synthetic.make_dataset(seed=1, images=False, n_slides=2, **TINY)
    data.obs["library_id"] = data.obs.pop("slide_id").astype(str)
    del data.obs["split"], data.obs["patient"]
    out = complete_slide(data, n_genes=8, held_out=0.2, **SMALL)
    slides = out.obs["slide_id"].astype(str)
    assert sorted(slides.unique()) == sorted(data.obs["library_id"].unique())
    held = out.obs["completion_split"] == "val"
    share = held.groupby(slides).mean()
    assert ((share > 0.15) & (share < 0.25)).all()  # held out on every slide, none whole
    assert "slide_id" not in data.obs and out.uns["slide_fields"]["slide_id"] == "obs['library_id']"


def test_without_gene_lengths_counts_per_million_are_used_and_said(folder):
    out = complete_slide(read_spaceranger(folder), "median", n_genes=8, progress=False)
    assert out.uns["slide_fields"]["normalisation"].startswith("cpm")
    assert out.uns["slide_fields"]["organism"] == "None"


@pytest.mark.parametrize("breakage, field", [
    ("no_counts", "layers['counts']"),
    ("normalised_X", "X is not raw counts"),
    ("no_grid", "array_row"),
    ("named_layer", "layers['nowhere']"),
    ("two_libraries", "library_id"),
])
def test_a_missing_field_is_named_with_its_fix(folder, breakage, field):
    raw = read_spaceranger(folder)
    kwargs = {}
    if breakage == "no_counts":
        raw = ad.AnnData(obs=raw.obs, var=raw.var, uns=raw.uns, obsm=dict(raw.obsm))
    elif breakage == "normalised_X":
        del raw.layers["counts"]
        raw.X = np.log1p(raw.X.toarray())
    elif breakage == "no_grid":
        del raw.obs["array_row"]
    elif breakage == "named_layer":
        kwargs["layer"] = "nowhere"
    else:
        raw.uns["spatial"] = {"A": {}, "B": {}}
    with pytest.raises(SlideFieldError) as err:
        complete_slide(raw, progress=False, **kwargs)
    message = str(err.value)
    assert field in message and "\n" not in message
    assert any(fix in message for fix in ("put ", "name ", "set ", "read the slide", "pass "))


def test_run_pipeline_fills_a_readers_slide_fields_instead_of_a_bare_keyerror(folder):
    raw = read_spaceranger(folder)
    raw.var["gene_length"] = 1000.0
    curated = run_pipeline(raw, n_genes=8, progress=False)
    assert curated.obs["slide_id"].astype(str).unique().tolist() == [folder.name]
    assert set(curated.obs["split"].astype(str)) == {"train"}
    assert "slide_id" not in raw.obs  # the reader's AnnData is not modified
    del raw.obs["array_col"]
    with pytest.raises(ValueError, match="array_col"):
        run_pipeline(raw, n_genes=8, progress=False)


def test_real_cytassist_sample_is_completed_in_one_call(shared_real):
    """The Space Ranger 3 CytAssist sample (2,898 spots × 19,465 mouse genes, shallow)."""
    raw = read_spaceranger(shared_real / "coexpress_mouse_visium")
    with pytest.raises(ValueError, match=r"n_genes=\d+"):  # too few genes pass: says how many do
        run_pipeline(raw, progress=False)
    x_before = raw.X.copy()
    out = complete_slide(raw, n_genes=16, **SMALL)
    assert out.n_vars == 16 and 0.9 * raw.n_obs < out.n_obs <= raw.n_obs
    assert out.uns["slide_fields"]["organism"] == "mouse"  # from the ENSMUSG ids: TPM with GENCODE lengths
    assert out.uns["slide_fields"]["normalisation"] == "tpm"
    assert all(g.startswith("ENSMUSG") for g in out.var_names)
    _check_completed(out, raw)
    assert (raw.X != x_before).nnz == 0 and "c_t_log1p" not in raw.layers
