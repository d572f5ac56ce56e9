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
