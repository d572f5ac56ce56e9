"""Hexagonal and square-grid neighbourhoods from array coordinates."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import squidpy as sq

from spared_utils import graphs


def _full_hex(n_rows=12, n_cols=24, slides=("s1",)):
    r, c = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    keep = (r + c) % 2 == 0
    r, c = r[keep], c[keep]
    obs = pd.concat(
        [pd.DataFrame({"array_row": r, "array_col": c, "slide_id": s}) for s in slides], ignore_index=True
    )
    obs.index = obs.index.astype(str)
    a = ad.AnnData(np.zeros((len(obs), 1)), obs=obs)
    a.obsm["spatial"] = np.column_stack([a.obs["array_col"] * 50.0, a.obs["array_row"] * 50.0 * np.sqrt(3)])
    return a


def test_interior_spot_has_6_then_18_then_36_then_60_within_rings():
    a = _full_hex()
    i = int(np.flatnonzero((a.obs["array_row"] == 6) & (a.obs["array_col"] == 12))[0])
    rings = graphs.ring_neighbourhoods(graphs.adjacency(a), 4)
    assert [int(r[i].sum()) for r in rings] == [6, 18, 36, 60]
    idx = graphs.neighbour_index(a, n_hops=2)
    assert idx.shape[1] == 18 and (idx[i] >= 0).all()
    assert set(idx[i]) == set(rings[1][i].indices)


def test_corner_spot_has_fewer_neighbours_padded_with_minus_one():
    a = _full_hex()
    corner = int(np.flatnonzero((a.obs["array_row"] == 0) & (a.obs["array_col"] == 0))[0])
    idx = graphs.neighbour_index(a, n_hops=1)
    # (0,0) touches (0,2) and (1,1) only
    assert graphs.n_neighbours(idx)[corner] == 2
    assert (idx[corner] == -1).sum() == 4


def test_square_grid_has_four_neighbours():
    r, c = np.meshgrid(np.arange(5), np.arange(5), indexing="ij")
    a = ad.AnnData(np.zeros((25, 1)), obs=pd.DataFrame({"array_row": r.ravel(), "array_col": c.ravel()}, index=[str(i) for i in range(25)]))
    adj = graphs.adjacency(a, hex_geometry=False)
    assert adj[12].sum() == 4 and adj[0].sum() == 2
    assert (adj != adj.T).nnz == 0


def test_slides_are_never_connected():
    a = _full_hex(slides=("s1", "s2"))
    adj = graphs.adjacency(a)
    s = a.obs["slide_id"].to_numpy()
    i, j = adj.nonzero()
    assert (s[i] == s[j]).all()
    # ...and within a slide the spots are connected: every spot has a neighbour, and each slide
    # has the 12x24 hex grid's 12*11 horizontal + 11*23 diagonal = 385 edges (both directions stored)
    assert (np.asarray(adj.sum(1)).ravel() >= 2).all()
    assert adj.nnz == 2 * 2 * (12 * 11 + 11 * 23)
    r, c = a.obs["array_row"].to_numpy(), a.obs["array_col"].to_numpy()
    dr, dc = np.abs(r[:, None] - r[None]), np.abs(c[:, None] - c[None])
    brute = (s[:, None] == s[None]) & (((dr == 0) & (dc == 2)) | ((dr == 1) & (dc == 1)))
    assert np.array_equal(adj.toarray().astype(bool), brute)


def test_matches_squidpy_grid_graph(tiny_adata):
    a = tiny_adata[tiny_adata.obs["slide_id"] == "SYN_A1"].copy()
    ours = graphs.adjacency(a)
    sq.gr.spatial_neighbors_grid(a, n_neighs=6)  # squidpy 1.8+ (spatial_neighbors is deprecated)
    theirs = a.obsp["spatial_connectivities"].astype(bool)
    assert (ours != theirs).nnz == 0


def test_duplicate_positions_are_refused():
    a = _full_hex()
    a.obs.iloc[1, a.obs.columns.get_loc("array_col")] = a.obs["array_col"].iloc[0]
    a.obs.iloc[1, a.obs.columns.get_loc("array_row")] = a.obs["array_row"].iloc[0]
    with pytest.raises(ValueError, match="unique"):
        graphs.adjacency(a)


def test_missing_coordinates_named():
    a = ad.AnnData(np.zeros((3, 1)))
    with pytest.raises(KeyError, match="array_row"):
        graphs.adjacency(a)
