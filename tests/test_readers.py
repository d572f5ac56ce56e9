"""Readers on the real sample slides (../shared/data/real) and on synthetic files in each format."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp
from PIL import Image

from spared_utils import readers, synthetic
from spared_utils.readers import ReaderError

SLIDE = "SYN_A1"


@pytest.fixture(scope="module")
def spaceranger_root(tiny_adata, tmp_path_factory) -> Path:
    """The tiny synthetic dataset written by synthetic.write_spaceranger (read-only: copy to mutate)."""
    return synthetic.write_spaceranger(tiny_adata, tmp_path_factory.mktemp("sr") / "raw")


@pytest.fixture
def slide_copy(spaceranger_root, tmp_path) -> Path:
    target = tmp_path / SLIDE
    shutil.copytree(spaceranger_root / SLIDE, target)
    return target


def truth(tiny_adata, slide: str = SLIDE) -> ad.AnnData:
    sub = tiny_adata[tiny_adata.obs["slide_id"] == slide].copy()
    sub.obs_names = sub.obs["barcode"].astype(str).to_numpy()
    return sub


def assert_conventions(adata: ad.AnnData, slide: str) -> None:
    assert {"in_tissue", "array_row", "array_col"} <= set(adata.obs)
    assert (adata.obs["in_tissue"] == 1).all()
    assert adata.obsm["spatial"].shape == (adata.n_obs, 2)
    assert sp.issparse(adata.X) and (adata.X != adata.layers["counts"]).nnz == 0
    assert "gene_symbol" in adata.var and adata.obs_names.is_unique
    library = adata.uns["spatial"][slide]
    assert {"images", "scalefactors", "metadata"} <= set(library)
    assert library["scalefactors"]["spot_diameter_fullres"] > 0


# ------------------------------------------------------------------------------------------------
# Synthetic files in each format
# ------------------------------------------------------------------------------------------------


def test_spaceranger_h5_layout_round_trip(spaceranger_root, tiny_adata):
    adata = readers.read_spaceranger(spaceranger_root / SLIDE)
    expected = truth(tiny_adata)
    assert_conventions(adata, SLIDE)
    assert list(adata.obs_names) == list(expected.obs_names)
    assert list(adata.var_names) == list(tiny_adata.var_names)
    assert list(adata.var["gene_symbol"]) == list(tiny_adata.var["gene_symbol"])
    assert (adata.layers["counts"] != expected.layers["counts"]).nnz == 0
    assert np.allclose(adata.obsm["spatial"], expected.obsm["spatial"])
    assert np.array_equal(adata.obs["array_row"], expected.obs["array_row"])
    library, lib_truth = adata.uns["spatial"][SLIDE], tiny_adata.uns["spatial"][SLIDE]
    assert np.array_equal(library["images"]["hires"], lib_truth["images"]["hires"])
    assert np.array_equal(library["images"]["fullres"], lib_truth["images"]["fullres"])  # image.tif
    assert library["images"]["lowres"].shape[0] == round(lib_truth["images"]["fullres"].shape[0] * 0.125)
    assert library["scalefactors"]["tissue_hires_scalef"] == lib_truth["scalefactors"]["tissue_hires_scalef"]
    assert library["metadata"]["source_image_path"] == str((spaceranger_root / SLIDE / "image.tif").resolve())


def test_full_resolution_image_can_stay_on_disk(spaceranger_root):
    adata = readers.read_spaceranger(spaceranger_root / SLIDE, load_fullres=False)
    library = adata.uns["spatial"][SLIDE]
    assert "fullres" not in library["images"] and library["metadata"]["source_image_path"].endswith("image.tif")


def _write_mtx(folder: Path, counts: sp.spmatrix, barcodes, ids, symbols) -> None:
    folder.mkdir(parents=True)
    with gzip.open(folder / "matrix.mtx.gz", "wb") as handle:
        scipy.io.mmwrite(handle, sp.coo_matrix(counts.T).astype(np.int64), field="integer")
    pd.DataFrame({"id": ids, "name": symbols, "type": "Gene Expression"}).to_csv(
        folder / "features.tsv.gz", sep="\t", header=False, index=False)
    pd.Series(barcodes).to_csv(folder / "barcodes.tsv.gz", header=False, index=False)


def test_spaceranger_mtx_folder_and_headerless_positions(slide_copy, tiny_adata):
    expected = truth(tiny_adata)
    (slide_copy / "filtered_feature_bc_matrix.h5").unlink()
    _write_mtx(slide_copy / "filtered_feature_bc_matrix", expected.layers["counts"], expected.obs_names,
               tiny_adata.var_names, tiny_adata.var["gene_symbol"])
    positions = pd.read_csv(slide_copy / "spatial" / "tissue_positions.csv")
    (slide_copy / "spatial" / "tissue_positions.csv").unlink()
    positions.to_csv(slide_copy / "spatial" / "tissue_positions_list.csv", header=False, index=False)  # SR 1.x
    adata = readers.read_spaceranger(slide_copy)
    assert_conventions(adata, SLIDE)
    assert list(adata.var_names) == list(tiny_adata.var_names)
    assert list(adata.obs_names) == list(expected.obs_names)
    assert (adata.layers["counts"] != expected.layers["counts"]).nnz == 0
    assert np.allclose(adata.obsm["spatial"], expected.obsm["spatial"])


def test_spots_outside_tissue_are_dropped(slide_copy, tiny_adata):
    expected = truth(tiny_adata)
    positions = pd.read_csv(slide_copy / "spatial" / "tissue_positions.csv")
    outside = list(expected.obs_names[:5])
    positions.loc[positions["barcode"].isin(outside), "in_tissue"] = 0
    positions.to_csv(slide_copy / "spatial" / "tissue_positions.csv", index=False)
    adata = readers.read_spaceranger(slide_copy)
    assert adata.n_obs == expected.n_obs - 5 and not set(outside) & set(adata.obs_names)


def test_legacy_st_synthetic(tmp_path):
    folder = tmp_path / "S1"
    folder.mkdir()
    xs, ys = np.meshgrid(np.arange(2, 6), np.arange(3, 6))
    ids = [f"{x}x{y}" for x, y in zip(xs.ravel(), ys.ravel())]  # 12 spots on a square grid
    counts = pd.DataFrame(np.arange(12 * 3).reshape(12, 3), index=ids, columns=["GENEA", "GENEB", "GENEC"])
    counts.to_csv(folder / "counts.tsv.gz", sep="\t")
    spacing = 100.0
    spots = pd.DataFrame({"x": xs.ravel(), "y": ys.ravel(), "new_x": xs.ravel() + 0.01, "new_y": ys.ravel(),
                          "pixel_x": 50 + xs.ravel() * spacing, "pixel_y": 40 + ys.ravel() * spacing,
                          "selected": [0] + [1] * 11})
    spots.to_csv(folder / "spots.tsv", sep="\t", index=False)
    Image.fromarray(np.full((800, 900, 3), 200, dtype=np.uint8)).save(folder / "he.jpg")
    adata = readers.read_legacy_st(folder, hires_max_side=450, lowres_max_side=90)
    assert_conventions(adata, "S1")
    assert list(adata.obs_names) == ids[1:]  # the unselected spot is gone
    assert adata.obs.loc["3x4", "array_row"] == 4 and adata.obs.loc["3x4", "array_col"] == 3
    assert np.allclose(adata.obsm["spatial"][0], [50 + 3 * spacing, 40 + 3 * spacing])
    assert adata.layers["counts"].toarray()[0].tolist() == [3, 4, 5]
    factors = adata.uns["spatial"]["S1"]["scalefactors"]
    assert factors["spot_diameter_fullres"] == pytest.approx(spacing / 2)  # 100 µm spots, 200 µm apart
    assert factors["tissue_hires_scalef"] == pytest.approx(0.5)
    assert adata.uns["spatial"]["S1"]["images"]["hires"].shape == (400, 450, 3)
    assert adata.uns["spatial"]["S1"]["images"]["lowres"].shape == (80, 90, 3)


def test_h5ad_with_uns_spatial_synthetic(tmp_path, tiny_adata):
    expected = truth(tiny_adata)
    store = ad.AnnData(X=expected.layers["counts"].copy(), obs=expected.obs[["array_row", "array_col"]].copy(),
                       var=pd.DataFrame({"gene_ids": tiny_adata.var_names}, index=tiny_adata.var["gene_symbol"]))
    store.obsm["spatial"] = expected.obsm["spatial"]
    library = tiny_adata.uns["spatial"][SLIDE]
    store.uns["spatial"] = {"lib1": {"images": {"hires": library["images"]["hires"]},
                                     "scalefactors": dict(library["scalefactors"])}}
    store.write_h5ad(tmp_path / "slide.h5ad")
    adata = readers.read_h5ad_spatial(tmp_path / "slide.h5ad", slide_id="S")
    assert_conventions(adata, "S")
    assert list(adata.var_names) == list(tiny_adata.var_names)
    assert (adata.layers["counts"] != expected.layers["counts"]).nnz == 0


def test_count_table_genes_by_spots_with_suffixed_barcodes(slide_copy, tiny_adata):
    """GEO-style deposits: a genes × spots text table whose spot names carry a suffix."""
    expected = truth(tiny_adata)
    table = pd.DataFrame(expected.layers["counts"].toarray().T, index=tiny_adata.var["gene_symbol"],
                         columns=[f"{b}_1" for b in expected.obs_names])
    table.to_csv(slide_copy / "counts.tsv.gz", sep="\t")
    adata = readers.read_spaceranger(slide_copy, counts=slide_copy / "counts.tsv.gz")
    assert list(adata.obs_names) == list(expected.obs_names)
    assert list(adata.var_names) == list(tiny_adata.var["gene_symbol"])
    assert (adata.layers["counts"] != expected.layers["counts"]).nnz == 0


# ------------------------------------------------------------------------------------------------
# Bad input: each error names the file and what to do
# ------------------------------------------------------------------------------------------------


def test_truncated_h5_is_reported(slide_copy):
    h5 = slide_copy / "filtered_feature_bc_matrix.h5"
    h5.write_bytes(h5.read_bytes()[: h5.stat().st_size // 2])
    with pytest.raises(ReaderError, match="corrupt or truncated") as err:
        readers.read_spaceranger(slide_copy)
    assert str(h5) in str(err.value) and "download it again" in str(err.value)


def test_not_an_h5_file_is_reported(slide_copy):
    h5 = slide_copy / "filtered_feature_bc_matrix.h5"
    h5.write_bytes(b"<html>rate limited</html>")
    with pytest.raises(ReaderError, match="cannot read the count matrix"):
        readers.read_spaceranger(slide_copy)


def test_missing_images_are_reported(slide_copy):
    for name in ("spatial/tissue_hires_image.png", "spatial/tissue_lowres_image.png", "image.tif"):
        (slide_copy / name).unlink()
    with pytest.raises(ReaderError, match="no tissue image") as err:
        readers.read_spaceranger(slide_copy)
    assert str(slide_copy) in str(err.value)
    with pytest.raises(ReaderError, match=r"hires image .*nothere.png not found"):
        readers.read_spaceranger(slide_copy, hires=slide_copy / "nothere.png")


def test_corrupt_image_is_reported(slide_copy):
    png = slide_copy / "spatial" / "tissue_hires_image.png"
    png.write_bytes(png.read_bytes()[:100])
    with pytest.raises(ReaderError, match="tissue_hires_image.png: cannot read the image"):
        readers.read_spaceranger(slide_copy)


def test_barcodes_missing_from_positions(slide_copy):
    positions_file = slide_copy / "spatial" / "tissue_positions.csv"
    positions = pd.read_csv(positions_file)
    in_tissue = positions.index[positions["in_tissue"] == 1]
    positions.drop(index=in_tissue[:3]).to_csv(positions_file, index=False)
    with pytest.raises(ReaderError, match=r"3 of \d+ barcodes") as err:
        readers.read_spaceranger(slide_copy)
    message = str(err.value)
    assert str(positions_file) in message and "filtered_feature_bc_matrix.h5" in message
    assert "same Space Ranger run" in message


def test_no_in_tissue_spots(slide_copy):
    positions_file = slide_copy / "spatial" / "tissue_positions.csv"
    positions = pd.read_csv(positions_file)
    positions["in_tissue"] = 0
    positions.to_csv(positions_file, index=False)
    with pytest.raises(ReaderError, match="none of the .* spots .* in_tissue = 1"):
        readers.read_spaceranger(slide_copy)


def test_negative_and_nan_counts(slide_copy, tiny_adata):
    expected = truth(tiny_adata)
    bad = expected.layers["counts"].tocsr().copy()
    bad.data[0] = -2
    h5 = slide_copy / "filtered_feature_bc_matrix.h5"
    synthetic.write_10x_h5(h5, bad, expected.obs_names, tiny_adata.var_names, tiny_adata.var["gene_symbol"])
    with pytest.raises(ReaderError, match="1 count value.* negative") as err:
        readers.read_spaceranger(slide_copy)
    assert str(h5) in str(err.value)
    table = pd.DataFrame(expected.layers["counts"].toarray(), index=expected.obs_names,
                         columns=tiny_adata.var_names)
    table.iloc[2, 3] = np.nan
    table.to_csv(slide_copy / "counts.csv")
    with pytest.raises(ReaderError, match="NaN or infinite"):
        readers.read_spaceranger(slide_copy, counts=slide_copy / "counts.csv")


def test_missing_positions_and_bad_scalefactors(slide_copy):
    (slide_copy / "spatial" / "scalefactors_json.json").write_text(json.dumps({"tissue_hires_scalef": 0.5}))
    with pytest.raises(ReaderError, match="spot_diameter_fullres"):
        readers.read_spaceranger(slide_copy)
    (slide_copy / "spatial" / "tissue_positions.csv").unlink()
    with pytest.raises(ReaderError, match="no positions file .*tissue_positions"):
        readers.read_spaceranger(slide_copy)


def test_legacy_st_spots_without_coordinates(tmp_path):
    folder = tmp_path / "S2"
    folder.mkdir()
    pd.DataFrame({"G": [1, 2]}, index=["1x1", "9x9"]).to_csv(folder / "counts.tsv.gz", sep="\t")
    pd.DataFrame({"x": [1], "y": [1], "pixel_x": [10.0], "pixel_y": [10.0], "selected": [1]}).to_csv(
        folder / "spots.tsv", sep="\t", index=False)
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(folder / "he.jpg")
    with pytest.raises(ReaderError, match=r"1 spots of .*counts.tsv.gz have no coordinates in .*spots.tsv"):
        readers.read_legacy_st(folder)
    (folder / "he.jpg").unlink()
    with pytest.raises(ReaderError, match=r"image file .*he.jpg not found"):
        readers.read_legacy_st(folder)


# ------------------------------------------------------------------------------------------------
# The real sample slides
# ------------------------------------------------------------------------------------------------


def test_real_spaceranger3_mtx_with_header(shared_real):
    folder = shared_real / "coexpress_mouse_visium"
    adata = readers.read_spaceranger(folder, slide_id="cx")
    assert_conventions(adata, "cx")
    assert adata.shape == (2898, 19465)  # SOURCES.md: 2,898 in-tissue spots × 19,465 genes
    assert adata.var_names[0].startswith("ENSMUSG") and adata.var["gene_symbol"].iloc[0] == "Xkr4"
    with gzip.open(folder / "filtered_feature_bc_matrix" / "matrix.mtx.gz") as handle:
        total = scipy.io.mmread(handle).sum()
    assert adata.layers["counts"].sum() == pytest.approx(total)
    positions = pd.read_csv(folder / "spatial" / "tissue_positions.csv", index_col=0)
    first = adata.obs_names[0]
    assert np.allclose(adata.obsm["spatial"][0], positions.loc[first, ["pxl_col_in_fullres", "pxl_row_in_fullres"]])
    library = adata.uns["spatial"]["cx"]
    assert set(library["images"]) == {"lowres"} and library["images"]["lowres"].shape == (600, 600, 3)
    assert library["scalefactors"]["tissue_lowres_scalef"] == pytest.approx(0.2)


def test_real_spaceranger1_h5_without_header(shared_real):
    adata = readers.read_spaceranger(shared_real / "squidpy_visium_fixture" / "outs")
    assert_conventions(adata, "squidpy_visium_fixture")
    assert adata.shape == (100, 100)
    # first line of tissue_positions_list.csv: AAACAAGTATCTCCCA-1,1,50,102,8513,9811
    spot = adata.obs.loc["AAACAAGTATCTCCCA-1"]
    assert (spot["array_row"], spot["array_col"]) == (50, 102)
    assert adata.obsm["spatial"][adata.obs_names.get_loc("AAACAAGTATCTCCCA-1")].tolist() == [9811, 8513]
    images = adata.uns["spatial"]["squidpy_visium_fixture"]["images"]
    assert images["hires"].shape == (2000, 2000, 3) and images["lowres"].shape == (600, 600, 3)


@pytest.mark.parametrize(("section", "n_spots"), [("C2", 187), ("C3", 180), ("C4", 184)])
def test_real_legacy_st_her2st(shared_real, section, n_spots):
    folder = shared_real / "her2st_patient_c" / section
    adata = readers.read_legacy_st(folder)
    assert_conventions(adata, section)
    assert adata.n_obs == n_spots and adata.n_vars > 15_000
    spots = pd.read_csv(folder / "spots.tsv", sep="\t")
    spots.index = spots["x"].astype(str) + "x" + spots["y"].astype(str)
    for i in (0, n_spots - 1):  # spot ids "XxY": array column X, row Y; pixels from spots.tsv
        row = spots.loc[adata.obs_names[i]]
        assert adata.obsm["spatial"][i].tolist() == [row["pixel_x"], row["pixel_y"]]
        assert (adata.obs["array_col"].iloc[i], adata.obs["array_row"].iloc[i]) == (row["x"], row["y"])
    library = adata.uns["spatial"][section]
    assert 110 < library["scalefactors"]["spot_diameter_fullres"] < 150  # ~half of the ~256 px spacing
    assert max(library["images"]["hires"].shape[:2]) == 2000
    assert "fullres" not in library["images"]  # ~92 Mpx: read from source_image_path when needed
    assert library["metadata"]["source_image_path"].endswith("he.jpg")


def test_real_h5ad_with_scaled_values(shared_real):
    folder = shared_real / "stlearn_breast_subset"
    with pytest.raises(ReaderError, match="negative .*not raw counts"):
        readers.read_h5ad_spatial(folder / "test_data.h5", hires=folder / "test_image.jpg")
    adata = readers.read_h5ad_spatial(folder / "test_data.h5", hires=folder / "test_image.jpg",
                                      require_counts=False)
    assert adata.shape == (316, 100) and "counts" not in adata.layers
    library = adata.uns["spatial"]["V1_Breast_Cancer_Block_A_Section_1"]
    assert library["images"]["hires"].shape == (2000, 2000, 3)
    assert library["scalefactors"]["tissue_hires_scalef"] == pytest.approx(0.08250825)
