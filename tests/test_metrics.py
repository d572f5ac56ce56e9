"""Masked metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from spared_utils import metrics

PRED = np.array([[1.0, 2.0], [3.0, 0.0], [5.0, 4.0]])
TRUE = np.array([[2.0, 2.0], [3.0, 9.0], [4.0, 6.0]])
MASK = np.array([[True, True], [True, False], [True, True]])


def test_masked_mse_by_hand():
    # masked squared errors: 1, 0, 0, 1, 4 → mean 6/5 (the unmasked 81 never counts)
    assert metrics.masked_mse(PRED, TRUE, MASK) == pytest.approx(6 / 5)
    assert metrics.masked_mae(PRED, TRUE, MASK) == pytest.approx(4 / 5)
    # signed errors on the mask: -1, 0, +1, 0, -2 → -2/5 (the unmasked -9 never counts)
    assert metrics.masked_bias(PRED, TRUE, MASK) == pytest.approx(-2 / 5)
    assert metrics.evaluate(PRED, TRUE, MASK)["bias"] == pytest.approx(-2 / 5)
    assert metrics.masked_mse(PRED, TRUE) == pytest.approx((1 + 0 + 0 + 0 + 81 + 1 + 4) / 6)


def test_per_gene_values_by_hand():
    np.testing.assert_allclose(metrics.per_gene_mse(PRED, TRUE, MASK), [2 / 3, 2.0])
    r = metrics.per_gene_pcc(PRED, TRUE, MASK, min_values=2)
    # gene 0: pred (1,3,5) vs true (2,3,4) → perfectly correlated; gene 1 has 2 values
    assert r[0] == pytest.approx(1.0)
    assert r[1] == pytest.approx(1.0)  # two points always correlate ±1: (2,4) vs (2,6)
    assert np.isnan(metrics.per_gene_pcc(PRED, TRUE, MASK, min_values=3)[1])


def test_constant_gene_gives_nan_not_error():
    pred = np.array([[1.0], [1.0], [1.0]])
    true = np.array([[0.0], [1.0], [2.0]])
    assert np.isnan(metrics.per_gene_pcc(pred, true)[0])
    ev = metrics.evaluate(pred, true)
    assert np.isnan(ev["pcc_gene"]) and ev["n_values"] == 3


def test_empty_mask_and_shape_mismatch_are_refused():
    with pytest.raises(ValueError, match="no value"):
        metrics.masked_mse(PRED, TRUE, np.zeros_like(MASK))
    with pytest.raises(ValueError, match="shape"):
        metrics.masked_mse(PRED[:2], TRUE)


def test_pcc_global_matches_numpy():
    rng = np.random.default_rng(0)
    p, t = rng.normal(size=(20, 5)), rng.normal(size=(20, 5))
    m = rng.random((20, 5)) > 0.3
    assert metrics.pcc_global(p, t, m) == pytest.approx(np.corrcoef(p[m], t[m])[0, 1])


def _hex_grid(n_rows=12, n_cols=12):
    from spared_utils import graphs

    r, c = np.meshgrid(np.arange(n_rows), np.arange(0, 2 * n_cols, 2), indexing="ij")
    r, c = r.ravel(), c.ravel() + (r.ravel() % 2)
    return r, c, graphs.grid_adjacency(np.zeros(len(r)), r, c, hex_geometry=True)


def test_morans_i_is_scanpys_on_the_grid_and_zero_for_a_flat_map():
    import scanpy as sc

    r, c, adj = _hex_grid()
    rng = np.random.default_rng(0)
    maps = np.stack([np.sin(r / 2.5) + 0.2 * rng.normal(size=len(r)), rng.normal(size=len(r)),
                     np.full(len(r), 4.0)], axis=1)
    ours = metrics.morans_i(maps, adj)
    np.testing.assert_allclose(ours[:2], sc.metrics.morans_i(adj.astype(float), maps[:, :2].T), rtol=1e-10)
    assert ours[0] > 0.5 and abs(ours[1]) < 0.2, "a smooth map is autocorrelated, noise is not"
    assert ours[2] == 0.0, "a constant map has no pattern"


def test_morans_i_reads_only_the_real_spots_of_each_gene():
    r, c, adj = _hex_grid()
    smooth = np.sin(r / 2.5)
    mask = np.ones((len(r), 1), dtype=bool)
    mask[::3, 0] = False
    spoiled = smooth.copy()
    spoiled[::3] = np.random.default_rng(1).normal(0, 50, size=len(spoiled[::3]))  # garbage where not real
    kept = np.flatnonzero(mask[:, 0])
    expected = metrics.morans_i(smooth[kept, None], adj[kept][:, kept])
    np.testing.assert_allclose(metrics.morans_i(spoiled[:, None], adj, mask), expected)


def test_structure_scores_a_perfect_a_flat_and_a_shuffled_prediction():
    r, c, adj = _hex_grid()
    rng = np.random.default_rng(2)
    base = np.sin(r / 2.5)
    true = np.stack([base + 0.1 * rng.normal(size=len(r)), -base + 0.1 * rng.normal(size=len(r)),
                     np.cos(c / 3.0) + 0.1 * rng.normal(size=len(r))], axis=1)
    mask = rng.random(true.shape) > 0.1
    perfect = metrics.structure(true, true, mask, adj)
    assert perfect["moran_gap"] == 0 and perfect["corr_distance"] == 0
    assert perfect["moran_pred"] == perfect["moran_true"] > 0.5
    flat = metrics.structure(np.broadcast_to(true.mean(0), true.shape), true, mask, adj)
    assert flat["moran_pred"] == 0 and flat["moran_gap"] == pytest.approx(flat["moran_true"])
    c_true = metrics.gene_correlations(true, mask)
    off = ~np.eye(3, dtype=bool)
    assert flat["corr_distance"] == pytest.approx(np.abs(c_true[off]).mean()), "a flat map co-varies with nothing"
    shuffled = metrics.structure(true[rng.permutation(len(r))], true, mask, adj)
    assert shuffled["moran_pred"] < 0.2 and shuffled["moran_gap"] > 0.4, "the right values in the wrong places"
