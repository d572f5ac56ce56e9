"""Adaptive median completion: hand-computed answers and equality with the per-entry loop."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

from spared_utils.preprocess import (
    median_complete,
    median_complete_array,
    median_complete_loop,
    nonzero_medians,
    window_tables,
)


def hex_grid(n_rows: int, n_cols: int, slide: str = "s1") -> pd.DataFrame:
    rows, cols = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    keep = (rows + cols) % 2 == 0
    return pd.DataFrame({"array_row": rows[keep], "array_col": cols[keep], "slide_id": slide})


def spots(obs: pd.DataFrame, values: np.ndarray) -> AnnData:
    obs = obs.reset_index(drop=True)
    obs.index = [f"{s}_{i}" for i, s in enumerate(obs["slide_id"])]
    return AnnData(X=np.asarray(values, dtype=np.float64), obs=obs)


# A hexagon: centre (1, 2) and its six neighbours.
HEXAGON = pd.DataFrame({
    "array_row": [1, 1, 1, 0, 0, 2, 2],
    "array_col": [2, 0, 4, 1, 3, 1, 3],
    "slide_id": "s1",
})


def test_window_widths_on_a_full_hex_grid():
    adata = spots(hex_grid(21, 42), np.zeros((441, 1)))
    tables = window_tables(adata, n_rings=4)
    centre = int(np.flatnonzero((adata.obs["array_row"] == 10) & (adata.obs["array_col"] == 20))[0])
    sizes = [int((t[centre] >= 0).sum()) for t in tables]
    assert sizes == [7, 19, 37, 61]  # 1 + 3k(k+1): the spot itself and its k rings
    assert all(t[centre, 0] == centre for t in tables)


def test_centre_zero_takes_median_of_first_ring_including_itself():
    # gene 0: centre missing, ring values 1..6 -> window [0,1,2,3,4,5,6] -> median 3
    values = np.array([[0.0], [1], [2], [3], [4], [5], [6]])
    out = median_complete_array(values, window_tables(spots(HEXAGON, values), n_rings=4))
    assert out[0, 0] == 3.0
    np.testing.assert_array_equal(out[1:, 0], values[1:, 0])  # real values stay


def test_even_window_averages_the_two_middle_values():
    # Drop one neighbour: window of the centre = [0, 1, 2, 3, 4, 6] -> (2 + 3) / 2
    obs = HEXAGON.iloc[[0, 1, 2, 3, 4, 6]]
    values = np.array([[0.0], [1], [2], [3], [4], [6]])
    out = median_complete_array(values, window_tables(spots(obs, values), n_rings=4))
    assert out[0, 0] == 2.5


def test_all_zero_windows_fall_back_to_the_slides_nonzero_median():
    # Centre window [0,0,0,0,0,5,6] has median 0 at every ring (7 spots only) -> median(5, 6)
    values = np.array([[0.0], [0], [0], [0], [0], [5], [6]])
    out = median_complete_array(values, window_tables(spots(HEXAGON, values), n_rings=4))
    assert out[0, 0] == 5.5
    assert np.all(out[values[:, 0] == 0, 0] == 5.5)


def test_gene_without_any_value_stays_zero():
    values = np.zeros((7, 2))
    values[:, 1] = np.arange(1, 8)
    out = median_complete_array(values, window_tables(spots(HEXAGON, values), n_rings=4))
    assert np.all(out[:, 0] == 0)
    np.testing.assert_array_equal(out[:, 1], values[:, 1])


def test_second_ring_is_used_when_first_ring_median_is_zero():
    # A line of spots on row 0: cols 0, 2, 4, 6, 8 (ring 1 = left/right neighbour).
    obs = pd.DataFrame({"array_row": 0, "array_col": [0, 2, 4, 6, 8], "slide_id": "s1"})
    values = np.array([[7.0], [0], [0], [0], [9]])
    out = median_complete_array(values, window_tables(spots(obs, values), n_rings=4))
    # spot 2 (col 4): ring 1 window [0,0,0] -> 0; ring 2 window [7,0,0,0,9] -> 0;
    # spot 1 (col 2): ring 1 window [0,7,0] -> 0; ring 2 [0,7,0,0] -> 0; ring 3 [0,7,0,0,9] -> 0
    # every window is zero-heavy, so all three fall back to median(7, 9) = 8
    assert out[1:4, 0].tolist() == [8.0, 8.0, 8.0]
    values = np.array([[7.0], [0], [5], [0], [9]])
    out = median_complete_array(values, window_tables(spots(obs, values), n_rings=4))
    # spot 1: ring 1 window [0, 7, 5] -> 5 ; spot 3: ring 1 [0, 5, 9] -> 5
    assert out[1, 0] == 5.0 and out[3, 0] == 5.0


def test_nonzero_medians_known_answer():
    values = np.array([[0.0, 1.0, 0.0], [2.0, 3.0, 0.0], [4.0, 0.0, 0.0], [9.0, 5.0, 0.0]])
    np.testing.assert_array_equal(nonzero_medians(values), [4.0, 3.0, 0.0])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("hex_geometry", [True, False])
def test_identical_to_the_per_entry_loop(dtype, hex_geometry):
    rng = np.random.default_rng(1)
    obs = hex_grid(14, 28) if hex_geometry else pd.DataFrame(
        {"array_row": np.repeat(np.arange(14), 14), "array_col": np.tile(np.arange(14), 14), "slide_id": "s1"})
    n = len(obs)
    values = rng.lognormal(0, 1, (n, 30)).astype(dtype)
    values[rng.random(values.shape) < 0.3] = 0
    values[:, :5][rng.random((n, 5)) < 0.9] = 0  # sparse genes reach the outer rings and the fallback
    values[::3, 7] = 0
    tables = window_tables(spots(obs, values), n_rings=4, hex_geometry=hex_geometry)
    fast = median_complete_array(values, tables)
    slow = median_complete_loop(values, tables)
    assert fast.dtype == dtype
    np.testing.assert_array_equal(fast, slow.astype(dtype))
    assert np.all(fast[values != 0] == values[values != 0])
    assert (fast == 0).sum() < (values == 0).sum()


def test_anndata_version_completes_each_slide_on_its_own():
    rng = np.random.default_rng(2)
    obs = pd.concat([hex_grid(8, 16, "a"), hex_grid(8, 16, "b")])
    values = rng.lognormal(0, 1, (len(obs), 6))
    values[rng.random(values.shape) < 0.4] = 0
    values[len(obs) // 2 :, 0] = 0  # gene 0 is absent from slide b: must stay 0 there
    adata = spots(obs, values)
    adata.layers["log1p"] = adata.X.copy()
    median_complete(adata, progress=False)
    for slide in ("a", "b"):
        sel = (adata.obs["slide_id"] == slide).to_numpy()
        sub = adata[sel]
        expected = median_complete_loop(values[sel], window_tables(sub, n_rings=4))
        np.testing.assert_array_equal(adata.layers["d_log1p"][sel], expected)
    assert np.all(adata.layers["d_log1p"][len(obs) // 2 :, 0] == 0)
    assert np.all(adata.layers["d_log1p"][: len(obs) // 2, 0] > 0)


def test_missing_layer_is_named():
    adata = spots(HEXAGON, np.ones((7, 1)))
    with pytest.raises(KeyError, match="log1p"):
        median_complete(adata, progress=False)
