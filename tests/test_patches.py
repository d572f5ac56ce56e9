"""Patch extraction: crop geometry, the on-disk store, image sources and the streaming reader."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from PIL import Image

from spared_utils import patches, readers


def position_image(h: int = 60, w: int = 80) -> np.ndarray:
    """An RGB image whose red channel is the row and green channel the column of each pixel."""
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([rows, cols, np.full_like(rows, 7)], axis=-1).astype(np.uint8)


def spots_on(image: np.ndarray, xy, diameter: float = 10.0, slide: str = "s1") -> AnnData:
    xy = np.asarray(xy, dtype=float)
    obs = pd.DataFrame({"slide_id": slide}, index=[f"{slide}_{i}" for i in range(len(xy))])
    adata = AnnData(X=np.zeros((len(xy), 1)), obs=obs)
    adata.obsm["spatial"] = xy
    adata.uns["spatial"] = {slide: {"images": {"fullres": image},
                                    "scalefactors": {"spot_diameter_fullres": diameter, "tissue_hires_scalef": 0.5},
                                    "metadata": {}}}
    return adata


def test_window_is_even_and_scales():
    assert patches.window_px(22.0) == 22
    assert patches.window_px(22.9) == 22          # int() as the authors' code
    assert patches.window_px(21.0) == 22          # odd -> even
    assert patches.window_px(22.0, 2.0) == 44


def test_crop_is_centred_on_the_spot():
    img = position_image()
    patch = patches.crop(img, x=30, y=20, window=10)
    assert patch.shape == (10, 10, 3)
    assert patch[0, 0, 0] == 15 and patch[0, 0, 1] == 25      # rows 15..24, cols 25..34
    assert patch[-1, -1, 0] == 24 and patch[-1, -1, 1] == 34


def test_crop_mirrors_past_the_border():
    img = position_image()
    patch = patches.crop(img, x=1, y=0, window=6)  # rows -3..2, cols -2..3
    assert patch[:, 0, 0].tolist() == [2, 1, 0, 0, 1, 2]
    assert patch[0, :, 1].tolist() == [1, 0, 0, 1, 2, 3]


def test_as_rgb_uint8_handles_channel_first_16_bit_and_rgba():
    img16 = np.full((3, 5, 6), 65535, dtype=np.uint16)
    out = readers.as_rgb_uint8(img16)
    assert out.shape == (5, 6, 3) and out.dtype == np.uint8 and out.max() == 255
    rgba = np.zeros((5, 4, 4), dtype=np.uint8)
    assert readers.as_rgb_uint8(rgba).shape == (5, 4, 3)


def test_extract_and_stream(tmp_path):
    img = position_image()
    adata = spots_on(img, [[30, 20], [40, 30], [2, 2]])
    out = patches.extract_patches(adata, tmp_path / "store", patch_size=16, progress=False)
    store = patches.PatchStore(out)
    assert len(store) == 3 and store.obs_names.tolist() == adata.obs_names.tolist()
    assert isinstance(store.array, np.memmap)
    expected = np.asarray(Image.fromarray(patches.crop(img, 40, 30, 10)).resize((16, 16), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(store[1], expected)
    assert store[0].shape == (16, 16, 3) and store[0].dtype == np.uint8
    assert store.take([2, 0]).shape == (2, 16, 16, 3)
    np.testing.assert_array_equal(store.positions(["s1_2", "s1_0"]), [2, 0])
    with pytest.raises(KeyError, match="not in the patch store"):
        store.positions(["nope"])
    # centre pixel of a patch holds the spot's own row/column (red/green channels)
    assert abs(int(store[0][8, 8, 0]) - 20) <= 1 and abs(int(store[0][8, 8, 1]) - 30) <= 1
    clone = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(clone[1], store[1])
    assert [p.name for p in tmp_path.iterdir()] == ["store"]  # no temporary folder left


def test_existing_store_is_reused_unless_overwritten(tmp_path):
    adata = spots_on(position_image(), [[30, 20], [40, 30]])
    out = patches.extract_patches(adata, tmp_path / "store", patch_size=8, progress=False)
    stamp = (out / patches.ARRAY_NAME).stat().st_mtime_ns
    patches.extract_patches(adata, out, patch_size=8, progress=False)
    assert (out / patches.ARRAY_NAME).stat().st_mtime_ns == stamp
    patches.extract_patches(adata, out, patch_size=12, progress=False)  # other parameters: rewritten
    assert patches.PatchStore(out).patch_size == 12


def test_image_file_and_hires_fallbacks(tmp_path):
    img = position_image()
    adata = spots_on(img, [[30, 20], [40, 30]])
    ref = patches.PatchStore(patches.extract_patches(adata, tmp_path / "a", patch_size=8, progress=False))
    Image.fromarray(img).save(tmp_path / "image.tif")
    lib = adata.uns["spatial"]["s1"]
    del lib["images"]["fullres"]
    lib["metadata"]["fullres_path"] = str(tmp_path / "image.tif")
    from_file = patches.PatchStore(patches.extract_patches(adata, tmp_path / "b", patch_size=8, progress=False))
    np.testing.assert_array_equal(from_file.array, ref.array)
    assert from_file.meta["image_source"]["s1"].endswith("image.tif")
    del lib["metadata"]["fullres_path"]
    lib["images"]["hires"] = img[::2, ::2]
    with pytest.warns(UserWarning, match="hires"):
        hires = patches.PatchStore(patches.extract_patches(adata, tmp_path / "c", patch_size=8, progress=False))
    assert hires.meta["window_px"]["s1"] == 6  # 10 px * 0.5, made even
    del lib["images"]["hires"]
    lib["images"]["lowres"] = img[::5, ::5]
    lib["scalefactors"]["tissue_lowres_scalef"] = 0.2
    with pytest.warns(UserWarning, match="lowres"):
        lowres = patches.PatchStore(patches.extract_patches(adata, tmp_path / "e", patch_size=8, progress=False))
    assert lowres.meta["window_px"]["s1"] == 2  # 10 px * 0.2
    assert lowres.meta["image_source"]["s1"] == "uns images['lowres']"
    del lib["images"]["lowres"]
    with pytest.raises(KeyError, match="no image"):
        patches.extract_patches(adata, tmp_path / "d", progress=False)


def test_incomplete_store_is_refused(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(FileNotFoundError, match="extract_patches"):
        patches.PatchStore(tmp_path / "half")


def test_synthetic_patches_show_tissue(tiny_adata, tmp_path):
    one = tiny_adata[tiny_adata.obs["slide_id"] == "SYN_A1"][:20].copy()
    store = patches.PatchStore(patches.extract_patches(one, tmp_path / "p", progress=False))
    assert store.array.shape == (20, 224, 224, 3)
    assert 60 < store.array.mean() < 250  # stained tissue, neither blank nor black


def test_store_from_another_curation_is_rewritten(tmp_path):
    img = position_image()
    adata = spots_on(img, [[30, 20], [40, 30]])
    adata.uns["dataset_spec"] = "curation A"
    out = patches.extract_patches(adata, tmp_path / "store", patch_size=8, progress=False)
    assert patches.PatchStore(out).meta["source_id"] == "curation A"
    adata.uns["spatial"]["s1"]["images"]["fullres"] = 255 - img  # new images, same spots and sizes
    adata.uns["dataset_spec"] = "curation B"
    patches.extract_patches(adata, out, patch_size=8, progress=False)
    store = patches.PatchStore(out)
    assert store.meta["source_id"] == "curation B"
    assert abs(int(store[0][4, 4, 0]) - (255 - 20)) <= 2  # red = 255 - row: cut from the new image
