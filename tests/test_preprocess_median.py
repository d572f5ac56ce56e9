"""Adaptive median completion: hand-computed answers and equality with the per-entry loop."""

from __future__ import annotations

from pathlib import Path

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


# --- graph="authors": the neighbour graph of the authors' median_cleaner (squidpy on pixels) ---

def hex_pixels(obs: pd.DataFrame) -> np.ndarray:
    """Visium pixel positions: 100 µm between neighbours (2 array columns, or 1 row and 1 column)."""
    return np.column_stack([obs["array_col"] * 50.0, obs["array_row"] * 50.0 * np.sqrt(3)])


def square_grid(n: int, slide: str = "s1") -> pd.DataFrame:
    return pd.DataFrame({"array_row": np.repeat(np.arange(n), n), "array_col": np.tile(np.arange(n), n),
                         "slide_id": slide})


def table_sets(table: np.ndarray) -> list[set[int]]:
    return [set(row[row >= 0].tolist()) for row in table]


def directed_knn_windows(coords: np.ndarray, k: int, n_rings: int) -> list[set[int]]:
    """The authors' windows restated: each spot's k nearest others (sklearn), walked n_rings times."""
    from sklearn.neighbors import NearestNeighbors

    _, nn = NearestNeighbors(n_neighbors=k).fit(coords).kneighbors()
    out = []
    for i in range(len(coords)):
        reach, frontier = {i}, {i}
        for _ in range(n_rings):
            frontier = {int(j) for f in frontier for j in nn[f]} - reach
            reach |= frontier
        out.append(reach)
    return out


def test_authors_graph_is_the_lattice_away_from_the_tissue_edge():
    # On a regular hexagonal grid a spot with its full hexagon has exactly its 6 lattice
    # neighbours as 6 nearest spots; so windows of up to 4 rings agree wherever every spot
    # within 3 rings has a full hexagon, i.e. at least 4 rings from the edge.
    obs = hex_grid(20, 40)
    rng = np.random.default_rng(3)
    values = rng.lognormal(0, 1, (len(obs), 8))
    values[rng.random(values.shape) < 0.5] = 0
    adata = spots(obs, values)
    adata.obsm["spatial"] = hex_pixels(adata.obs)
    lattice = window_tables(adata, n_rings=4)
    authors = window_tables(adata, n_rings=4, graph="authors")
    r, c = adata.obs["array_row"].to_numpy(), adata.obs["array_col"].to_numpy()
    rings_to_edge = np.minimum.reduce([r, 19 - r, np.minimum(c, 39 - c) // 2])
    inner = rings_to_edge >= 4
    assert inner.sum() > 50
    for lt, at in zip(lattice, authors):
        assert table_sets(lt[inner]) == table_sets(at[inner])
        assert table_sets(lt[~inner]) != table_sets(at[~inner])  # the edge is where they differ
    adata.layers["log1p"] = adata.X.copy()
    median_complete(adata, key_added="lat", progress=False)
    median_complete(adata, key_added="auth", progress=False, graph="authors")
    np.testing.assert_array_equal(adata.layers["lat"][inner], adata.layers["auth"][inner])
    assert not np.array_equal(adata.layers["lat"][~inner], adata.layers["auth"][~inner])


def test_authors_graph_is_directed_6nn_in_pixel_space_at_the_edge_and_around_holes():
    obs = hex_grid(12, 24)
    obs = obs[~((obs["array_row"].between(5, 6)) & (obs["array_col"].between(9, 13)))]  # a hole
    adata = spots(obs, np.zeros((len(obs), 1)))
    adata.obsm["spatial"] = hex_pixels(adata.obs)
    tables = window_tables(adata, n_rings=3, graph="authors")
    for k, table in enumerate(tables, start=1):
        assert table_sets(table) == directed_knn_windows(adata.obsm["spatial"], 6, k)
    corner = int(np.flatnonzero((adata.obs["array_row"] == 0) & (adata.obs["array_col"] == 0))[0])
    assert (tables[0][corner] >= 0).sum() == 7  # itself + 6 nearest, though it has 2 lattice neighbours
    assert (window_tables(adata, n_rings=1)[0][corner] >= 0).sum() == 3


def test_authors_graph_on_a_legacy_st_grid_is_squidpys_8_neighbour_grid():
    obs = square_grid(12)
    rng = np.random.default_rng(4)
    values = rng.lognormal(0, 1, (len(obs), 10))
    values[rng.random(values.shape) < 0.5] = 0
    adata = spots(obs, values)
    # ST pixel positions: ~200 px per array step, jittered, as in real ST spot tables
    adata.obsm["spatial"] = np.column_stack([obs["array_col"] * 200.0, obs["array_row"] * 200.0]) \
        + rng.normal(0, 8, (len(obs), 2))
    authors = window_tables(adata, n_rings=4, hex_geometry=False, graph="authors")
    lattice = window_tables(adata, n_rings=4, hex_geometry=False)
    centre = int(np.flatnonzero((adata.obs["array_row"] == 6) & (adata.obs["array_col"] == 6))[0])
    ring1 = set(authors[0][centre][1:][authors[0][centre][1:] >= 0].tolist())
    expected = {int(np.flatnonzero((adata.obs["array_row"] == 6 + dr) & (adata.obs["array_col"] == 6 + dc))[0])
                for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)}
    assert ring1 == expected  # the diagonals too: 8 neighbours, not the lattice's 4
    assert (lattice[0][centre] >= 0).sum() == 5
    adata.layers["log1p"] = adata.X.copy()
    median_complete(adata, key_added="auth", hex_geometry=False, graph="authors", progress=False)
    median_complete(adata, key_added="lat", hex_geometry=False, progress=False)
    np.testing.assert_array_equal(adata.layers["auth"], median_complete_loop(values, authors))
    assert (adata.layers["auth"] != adata.layers["lat"]).sum() > 0.05 * (values == 0).sum()


def test_authors_graph_needs_pixel_coordinates_and_unknown_graph_is_refused():
    adata = spots(hex_grid(6, 12), np.ones((36, 1)))
    adata.layers["log1p"] = adata.X.copy()
    with pytest.raises(KeyError, match="spatial"):
        median_complete(adata, graph="authors", progress=False)
    with pytest.raises(ValueError, match="'lattice', 'authors'"):
        median_complete(adata, graph="knn", progress=False)
    with pytest.raises(ValueError, match="'lattice', 'authors'"):
        window_tables(adata, graph="knn")


AUTHORS_MEDIAN = Path(__file__).resolve().parent / "data" / "authors_median_cleaner.npz"


def _recorded_authors_median() -> dict[str, tuple[AnnData, bool, np.ndarray]]:
    """The inputs of the test below and the authors' ``median_cleaner`` output on each, as recorded
    in ``tests/data/authors_median_cleaner.npz`` (how: ``tests/data/README.md``)."""
    with np.load(AUTHORS_MEDIAN) as z:
        data = {key: z[key] for key in z.files}
    out = {}
    for name in sorted({key.split(".")[0] for key in data}):
        obs = pd.DataFrame({"array_row": data[f"{name}.array_row"], "array_col": data[f"{name}.array_col"],
                            "slide_id": str(data[f"{name}.slide_id"])}, index=data[f"{name}.obs_names"])
        values = data[f"{name}.log1p"]
        adata = AnnData(X=values.copy(), obs=obs)
        adata.var_names = [f"g{j}" for j in range(values.shape[1])]
        adata.layers["log1p"] = values.copy()
        adata.obsm["spatial"] = data[f"{name}.spatial"]
        out[name] = (adata, bool(data[f"{name}.hex_geometry"]), data[f"{name}.authors_d_log1p"])
    return out


def test_authors_graph_reproduces_the_recorded_authors_output_entry_for_entry():
    """``graph="authors"`` against the output the authors' ``median_cleaner`` (spared 2.2.1) gave
    on a Visium block and a legacy-ST section, recorded as test data: every value identical."""
    recorded = _recorded_authors_median()
    assert {hexg for _, hexg, _ in recorded.values()} == {True, False}
    for name, (adata, hex_geometry, theirs) in recorded.items():
        missing = adata.layers["log1p"] == 0
        assert missing.mean() > 0.25, f"{name}: the recorded input has entries to complete"
        median_complete(adata, hex_geometry=hex_geometry, graph="authors", progress=False)
        assert adata.layers["d_log1p"].dtype == theirs.dtype, name
        np.testing.assert_array_equal(adata.layers["d_log1p"], theirs, err_msg=name)
        median_complete(adata, key_added="lattice", hex_geometry=hex_geometry, progress=False)
        assert not np.array_equal(adata.layers["lattice"], theirs)  # the graph matters


def test_authors_graph_reproduces_the_authors_package_entry_for_entry():
    """Their ``median_cleaner`` (benchmarks/.env-spared, ``bench_curation.py --setup-spared-env``)
    and ``graph="authors"`` on a Visium block and a legacy-ST section: every value identical.
    Without the side environment the recorded output (the test above) still checks it."""
    import importlib.util
    import warnings
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_curation.py"
    spec = importlib.util.spec_from_file_location("bench_curation_for_test", path)
    bench = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():  # the benchmark silences warnings when imported
        spec.loader.exec_module(bench)
    if bench.spared_env_python() is None:
        pytest.skip(f"no side environment with the authors' package at {bench.SPARED_ENV}")
    inputs = bench.authors_graph_inputs(n_genes=30, real=False)
    assert {hexg for _, hexg in inputs.values()} == {True, False}
    theirs = bench.run_authors_median_cleaner(inputs)
    assert theirs is not None, "the authors' median_cleaner failed in the side environment"
    recorded = _recorded_authors_median()
    for name, (adata, hex_geometry) in inputs.items():
        # the recorded test data is what the authors' package gives on these inputs
        np.testing.assert_array_equal(adata.layers["log1p"], recorded[name][0].layers["log1p"], err_msg=name)
        np.testing.assert_array_equal(theirs[name]["values"], recorded[name][2], err_msg=name)
        median_complete(adata, hex_geometry=hex_geometry, graph="authors", progress=False)
        np.testing.assert_array_equal(adata.layers["d_log1p"], theirs[name]["values"], err_msg=name)
        median_complete(adata, key_added="lattice", hex_geometry=hex_geometry, progress=False)
        assert not np.array_equal(adata.layers["lattice"], theirs[name]["values"])  # the graph matters


@pytest.mark.parametrize("hex_geometry", [True, False])
def test_authors_graph_is_squidpys_spatial_neighbors_without_its_deprecation_warning(hex_geometry):
    import warnings

    import squidpy as sq

    from spared_utils.preprocess.median import _squidpy_first_ring

    obs = hex_grid(8, 16) if hex_geometry else square_grid(8)
    ours, theirs = (spots(obs, np.zeros((len(obs), 2))) for _ in range(2))
    for adata in (ours, theirs):
        adata.obsm["spatial"] = hex_pixels(adata.obs) if hex_geometry else adata.obs[["array_col", "array_row"]].to_numpy(float)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _squidpy_first_ring(ours, hex_geometry)
    assert not [w for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the authors' call, deprecated by squidpy
        sq.gr.spatial_neighbors(theirs, coord_type="generic" if hex_geometry else "grid", n_neighs=6 if hex_geometry else 8)
    for key in ("spatial_connectivities", "spatial_distances"):
        assert ours.obsp[key].nnz > 0 and (ours.obsp[key] != theirs.obsp[key]).nnz == 0
