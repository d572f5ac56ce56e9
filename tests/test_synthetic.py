"""The embedded dataset: shape, determinism, dropout, spatial structure, AnnData conventions."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np
import pytest
import scanpy as sc
import squidpy as sq

from spared_utils import synthetic
from tests.conftest import TINY


def test_shape_and_obs_columns(tiny_adata):
    a = tiny_adata
    assert a.n_vars == TINY["n_genes"]
    assert set(a.obs["split"]) == {"train", "val", "test"}
    assert list(a.obs["slide_id"].cat.categories) == ["SYN_A1", "SYN_B1", "SYN_C1", "SYN_D1"]
    per_slide = a.obs["slide_id"].value_counts()
    # the tissue blob covers roughly half of the capture area's n_rows * n_cols / 2 positions
    assert (per_slide > 0.3 * TINY["n_rows"] * TINY["n_cols"] / 2).all()
    assert (per_slide < TINY["n_rows"] * TINY["n_cols"] / 2).all()
    rows, cols = a.obs["array_row"].to_numpy(), a.obs["array_col"].to_numpy()
    assert ((rows + cols) % 2 == 0).all(), "Visium positions have array_row + array_col even"
    assert a.obs_names.is_unique


def test_default_size_matches_visium_scale():
    cfg = synthetic.SyntheticConfig()
    positions = synthetic.grid_positions(cfg)
    assert len(positions) == cfg.n_rows * cfg.n_cols // 2
    assert 500 <= 0.5 * len(positions) and 0.7 * len(positions) <= 2000


def test_same_seed_same_data_other_seed_other_data(tiny_adata):
    again = synthetic.make_dataset(seed=0, **TINY)
    other = synthetic.make_dataset(seed=1, **TINY)
    assert (again.layers["counts"] != tiny_adata.layers["counts"]).nnz == 0
    assert np.array_equal(again.uns["spatial"]["SYN_A1"]["images"]["hires"], tiny_adata.uns["spatial"]["SYN_A1"]["images"]["hires"])
    assert other.n_obs != tiny_adata.n_obs or (other.layers["counts"] != tiny_adata.layers["counts"]).nnz > 0


def test_counts_are_integers_with_realistic_dropout(tiny_adata):
    x = tiny_adata.layers["counts"].toarray()
    assert np.array_equal(x, np.round(x)) and (x >= 0).all()
    zero = (x == 0).mean()
    assert 0.2 < zero < 0.8, f"zero fraction {zero:.2f}"
    # zeros concentrate where expression is low: weakly expressed genes drop out more
    mean, gene_zero = x.mean(0), (x == 0).mean(0)
    low, high = mean < np.quantile(mean, 0.25), mean > np.quantile(mean, 0.75)
    assert gene_zero[low].mean() > gene_zero[high].mean() + 0.3


def test_spatial_genes_more_autocorrelated_than_noise(tiny_adata):
    a = tiny_adata[tiny_adata.obs["slide_id"] == "SYN_A1"].copy()
    a.X = a.layers["counts"].copy()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    sq.gr.spatial_neighbors_grid(a, n_neighs=6)  # squidpy 1.8+ (spatial_neighbors is deprecated)
    sq.gr.spatial_autocorr(a, mode="moran", n_perms=None, n_jobs=1, show_progress_bar=False)
    moran = a.uns["moranI"]["I"]
    spatial = a.var["spatial_gene"]
    i_spatial = moran[spatial[spatial].index].median()
    i_noise = moran[spatial[~spatial].index].median()
    assert i_spatial > 0.25
    assert abs(i_noise) < 0.1
    assert i_spatial > i_noise + 0.2


def _slide_r2(a) -> float:
    """Median over the non-spatial genes of the share of log1p(count) variance that the slide explains.

    Those genes have no spatial programme or domain effect, so only the slide's depth and batch
    effect (and chance, (n_slides - 1) / (n_spots - 1) on average) make their slide means differ.
    """
    flat = ~a.var["spatial_gene"].to_numpy()
    y = np.log1p(a.layers["counts"].toarray()[:, flat])
    slide = a.obs["slide_id"].to_numpy()
    fitted = np.zeros_like(y)
    for s in np.unique(slide):
        fitted[slide == s] = y[slide == s].mean(0)
    return float(np.median(1 - ((y - fitted) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)))


def test_slide_batch_effect_exists(tiny_adata):
    x = tiny_adata.layers["counts"].toarray()
    depth = [np.median(x[(tiny_adata.obs["slide_id"] == s).to_numpy()].sum(1)) for s in tiny_adata.obs["slide_id"].cat.categories]
    assert max(depth) / min(depth) > 1.05
    # The total-count ratio above also differs without a slide effect (tissue composition); the
    # non-spatial genes tell: the slide explains far more of them than chance, and, in a control
    # without the slide effect (depth_sd=0, batch_sd=0, same seed), no more than chance.
    chance = (tiny_adata.obs["slide_id"].nunique() - 1) / (tiny_adata.n_obs - 1)
    assert _slide_r2(tiny_adata) > 5 * chance
    no_effect = synthetic.make_dataset(seed=0, images=False, depth_sd=0.0, batch_sd=0.0, **TINY)
    assert _slide_r2(no_effect) < 2 * chance
    for only in ({"depth_sd": 0.0}, {"batch_sd": 0.0}):  # either half alone is still seen
        assert _slide_r2(synthetic.make_dataset(seed=0, images=False, **only, **TINY)) > 5 * chance


def test_image_texture_follows_domains(tiny_adata):
    """Mean colour in a patch around each spot differs between tissue domains."""
    a = tiny_adata[tiny_adata.obs["slide_id"] == "SYN_A1"]
    img = a.uns["spatial"]["SYN_A1"]["images"]["fullres"].astype(float)
    r = int(a.uns["spatial"]["SYN_A1"]["scalefactors"]["spot_diameter_fullres"] / 2)
    feats = np.array([img[int(y) - r : int(y) + r, int(x) - r : int(x) + r].mean((0, 1)) for x, y in a.obsm["spatial"]])
    dom = a.obs["domain"].to_numpy()
    means = np.array([feats[dom == d].mean(0) for d in np.unique(dom)])
    within = np.mean([feats[dom == d].std(0).mean() for d in np.unique(dom)])
    assert means.std(0).mean() > 0.5 * within  # between-domain spread comparable to within


def test_anndata_conventions(tiny_adata):
    a = tiny_adata
    assert a.obsm["spatial"].shape == (a.n_obs, 2)
    assert "counts" in a.layers and a.var["gene_length"].min() > 0
    for sid in a.obs["slide_id"].cat.categories:
        lib = a.uns["spatial"][sid]
        assert {"hires", "fullres"} <= set(lib["images"])
        sf = lib["scalefactors"]
        assert {"tissue_hires_scalef", "spot_diameter_fullres"} <= set(sf)
        h, w = lib["images"]["hires"].shape[:2]
        xy = a.obsm["spatial"][(a.obs["slide_id"] == sid).to_numpy()] * sf["tissue_hires_scalef"]
        assert (xy[:, 0] < w).all() and (xy[:, 1] < h).all(), "spots must fall inside the hires image"


def test_squidpy_and_scanpy_plot_it_unchanged(tiny_adata):
    a = tiny_adata.copy()
    a.obs["total"] = np.asarray(a.layers["counts"].sum(1)).ravel()
    sq.pl.spatial_scatter(a, color="total", library_key="slide_id", library_id=["SYN_A1", "SYN_B1"], shape="hex")
    assert len(plt.gcf().axes) >= 2
    plt.close("all")
    one = a[a.obs["slide_id"] == "SYN_C1"].copy()
    one.uns["spatial"] = {"SYN_C1": one.uns["spatial"]["SYN_C1"]}
    axes = sc.pl.spatial(one, color="total", library_id="SYN_C1", show=False)
    assert axes[0].images, "scanpy drew no image"
    plt.close("all")


def test_write_spaceranger_layout_reads_back(tiny_adata, tmp_path):
    root = synthetic.write_spaceranger(tiny_adata, tmp_path / "raw")
    folder = root / "SYN_B1"
    for rel in ("filtered_feature_bc_matrix.h5", "spatial/tissue_positions.csv", "spatial/scalefactors_json.json",
                "spatial/tissue_hires_image.png", "spatial/tissue_lowres_image.png", "image.tif"):
        assert (folder / rel).is_file(), rel
    back = sc.read_10x_h5(folder / "filtered_feature_bc_matrix.h5")
    mine = tiny_adata[tiny_adata.obs["slide_id"] == "SYN_B1"]
    assert back.shape == mine.shape
    assert np.array_equal(back.X.toarray(), mine.layers["counts"].toarray())
    assert list(back.var["gene_ids"]) == list(mine.var_names)
    sf = json.loads((folder / "spatial/scalefactors_json.json").read_text())
    assert sf["spot_diameter_fullres"] == pytest.approx(mine.uns["spatial"]["SYN_B1"]["scalefactors"]["spot_diameter_fullres"])
    lengths = (root / "gene_lengths.tsv").read_text().splitlines()
    assert lengths[0] == "gene\tmerged" and len(lengths) == tiny_adata.n_vars + 1
    assert not list(tmp_path.glob(".raw.*")), "temporary folder left behind"


def test_unknown_size_argument_is_refused():
    with pytest.raises(TypeError, match="n_genez"):
        synthetic.make_dataset(n_genez=10)
