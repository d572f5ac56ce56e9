"""The spatial-mean completion (``neighbour_mean``) and completion scored by the structure it keeps."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from spared_utils import completion, graphs, metrics, synthetic
from spared_utils.completion import evaluate as E

# Offsets of the first three rings of the Visium grid, written out by hand (row, column).
RING1 = {(0, -2), (0, 2), (-1, -1), (-1, 1), (1, -1), (1, 1)}
RING2 = {(0, -4), (0, 4), (-1, -3), (-1, 3), (1, -3), (1, 3), (-2, 0), (2, 0), (-2, -2), (-2, 2), (2, -2),
         (2, 2)}
CENTRE = (3, 7)


def _hex_slide(n_rows: int = 7, n_cols: int = 14) -> tuple[np.ndarray, np.ndarray]:
    r, c = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    keep = (r + c) % 2 == 0
    return r[keep], c[keep]


def _two_slides(test_values: np.ndarray, test_real: np.ndarray, train_values: np.ndarray) -> ad.AnnData:
    """A training slide (every value real) and a test slide on the same hexagonal grid."""
    r, c = _hex_slide()
    n = len(r)
    obs = pd.DataFrame({"slide_id": ["T"] * n + ["E"] * n, "split": ["train"] * n + ["test"] * n,
                        "array_row": np.r_[r, r], "array_col": np.r_[c, c]},
                       index=[f"s{i}" for i in range(2 * n)])
    values = np.vstack([train_values, test_values]).astype(np.float32)
    a = ad.AnnData(X=values, obs=obs)
    a.var_names = [f"g{j}" for j in range(values.shape[1])]
    a.layers["c_d_log1p"] = values.copy()
    a.layers["mask"] = np.vstack([np.ones_like(train_values, dtype=bool), test_real])
    return a


def _known_answer_slides() -> tuple[ad.AnnData, int]:
    """Gene 0: the first ring holds real values; gene 1: only the second; gene 2: nothing on the slide."""
    r, c = _hex_slide()
    offset = {(int(i) - CENTRE[0], int(j) - CENTRE[1]): k for k, (i, j) in enumerate(zip(r, c))}
    n = len(r)
    values = np.full((n, 3), 50.0)
    real = np.ones((n, 3), dtype=bool)
    # gene 0: the centre is missing; of its first ring, three spots are real (2, 4, 6) and three
    # missing (their values, 100, must not count); everything farther holds 50 and must not count
    real[offset[(0, 0)], 0] = False
    for off, v, is_real in (((0, -2), 2, True), ((0, 2), 4, True), ((-1, -1), 6, True),
                            ((-1, 1), 100, False), ((1, -1), 100, False), ((1, 1), 100, False)):
        values[offset[off], 0] = v
        real[offset[off], 0] = is_real
    # gene 1: the centre and its whole first ring are missing; two second-ring spots are real (1 and
    # 5), the other ten missing; the third ring and beyond are real at 99 (too far: not used)
    values[:, 1] = 99.0
    real[offset[(0, 0)], 1] = False
    for off in RING1 | RING2:
        values[offset[off], 1] = 100.0
        real[offset[off], 1] = False
    for off, v in (((0, -4), 1.0), ((-2, 0), 5.0)):
        values[offset[off], 1] = v
        real[offset[off], 1] = True
    # gene 2: nothing real on the test slide
    real[:, 2] = False
    train = np.column_stack([np.linspace(10, 20, n), np.full(n, 7.0), np.linspace(0, 3, n)])
    return _two_slides(values, real, train), n + offset[(0, 0)]


def test_neighbour_mean_known_answer_first_ring():
    a, centre = _known_answer_slides()
    completion.complete(a, method="neighbour_mean")
    out = a.layers["c_t_log1p"]
    assert out[centre, 0] == pytest.approx((2 + 4 + 6) / 3)
    real = a.layers["mask"]
    np.testing.assert_array_equal(out[real], a.layers["c_d_log1p"][real])
    assert a.uns["completion"]["method"] == "neighbour_mean" and '"n_rings": 3' in a.uns["completion"]["config"]


def test_neighbour_mean_widens_to_the_second_ring_only_when_the_first_has_no_real_value():
    a, centre = _known_answer_slides()
    completion.complete(a, method="neighbour_mean")
    assert a.layers["c_t_log1p"][centre, 1] == pytest.approx((1.0 + 5.0) / 2)
    values, real = a.layers["c_d_log1p"], a.layers["mask"]
    rings = graphs.ring_neighbourhoods(graphs.adjacency(a), 3)
    means, ring = graphs.ring_mean(values, real, rings, np.array([centre]))
    assert ring[0].tolist() == [1, 2, 0] and np.isnan(means[0, 2])


def test_neighbour_mean_falls_back_to_the_training_mean_beyond_its_rings_and_never_crosses_slides():
    a, centre = _known_answer_slides()
    train = a.layers["c_d_log1p"][a.obs["split"].to_numpy() == "train"]
    b = a.copy()
    completion.complete(a, method="neighbour_mean")
    # gene 2 has no real value on the test slide: the training slide's mean, though that slide has
    # real values at the very same array positions
    assert a.layers["c_t_log1p"][centre, 2] == pytest.approx(float(train[:, 2].mean()), rel=1e-6)
    # with one ring only, gene 1 (real values from the second ring on) falls back as well
    completion.complete(b, method="neighbour_mean", n_rings=1)
    assert b.layers["c_t_log1p"][centre, 1] == pytest.approx(7.0)
    assert b.layers["c_t_log1p"][centre, 0] == pytest.approx(4.0)


def test_ring_mean_matches_a_brute_force_search_ring_by_ring():
    rng = np.random.default_rng(4)
    r, c = _hex_slide(9, 18)
    n = len(r)
    values = rng.normal(10, 2, size=(n, 5))
    real = rng.random((n, 5)) < np.array([0.9, 0.5, 0.2, 0.05, 0.0])
    obs = pd.DataFrame({"slide_id": "S", "array_row": r, "array_col": c}, index=[f"s{i}" for i in range(n)])
    a = ad.AnnData(X=values.astype(np.float32), obs=obs)
    means, ring = graphs.ring_mean(values, real, graphs.ring_neighbourhoods(graphs.adjacency(a), 3))
    where = {(int(i), int(j)): k for k, (i, j) in enumerate(zip(r, c))}
    shells = [set(graphs.hop_offsets(k)) - set(graphs.hop_offsets(k - 1) if k > 1 else []) for k in (1, 2, 3)]
    for spot in range(n):
        for g in range(5):
            expected, used = np.nan, 0
            for k, shell in enumerate(shells, start=1):
                found = [values[where[p], g] for p in ((r[spot] + dr, c[spot] + dc) for dr, dc in shell)
                         if p in where and real[where[p], g]]
                if found:
                    expected, used = float(np.mean(found)), k
                    break
            assert ring[spot, g] == used
            np.testing.assert_allclose(means[spot, g], expected, rtol=1e-12)


def test_neighbour_mean_rejects_bad_options():
    a, _ = _known_answer_slides()
    with pytest.raises(TypeError, match="unknown option"):
        completion.complete(a.copy(), method="neighbour_mean", rings=2)
    with pytest.raises(ValueError, match="n_rings"):
        completion.complete(a.copy(), method="neighbour_mean", n_rings=0)
    assert completion.address(a, "neighbour_mean") != completion.address(a, "neighbour_mean", n_rings=2)


# ---------------------------------------------------------------------------------------------
# Structure-aware scoring
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data():
    from tests.test_completion import _median_layer

    return _median_layer(synthetic.make_dataset(seed=1, n_rows=12, n_cols=24, n_genes=12, images=False))


def _oracle(a, v, r, h, rows):
    return v[rows]


def test_masking_scores_structure_truth_has_no_gap_and_the_mean_flattens(data):
    methods = {"oracle": _oracle, **E.masking_methods()}
    summary, _, runs = E.evaluate_masking(data, methods, levels=(0.5,), splits=("test",), progress=False)
    by = summary.set_index("method")
    assert set(E.STRUCTURE_COLUMNS) <= set(summary.columns)
    assert by.loc["oracle", "moran_gap"] == 0 and by.loc["oracle", "corr_distance"] == 0
    assert by.loc["oracle", "moran_completed"] == by.loc["oracle", "moran_measured"] > 0.1
    # the training mean fills half of the real values with one number per gene: its maps lose
    # part of their spatial autocorrelation, and its gap is larger than the truth's (0)
    assert by.loc["mean", "moran_completed"] < by.loc["mean", "moran_measured"]
    assert by.loc["mean", "moran_gap"] > 0.05 and by.loc["mean", "corr_distance"] > 0
    # the measured side is the test slide's real values on its own grid graph, built independently
    run = runs[0]
    sub = data[run.rows]
    i_true = metrics.morans_i(run.truth, graphs.adjacency(sub), data.layers["mask"][run.rows])
    assert by.loc["oracle", "moran_measured"] == pytest.approx(float(np.nanmean(i_true)), rel=1e-9)
    table = E.structure_table(summary, ["mean", "neighbour_mean", "oracle", "median"])
    assert list(table.index) == ["mean", "neighbour_mean", "oracle", "median"]
    assert table.loc["oracle", "mse_rank"] == 1 and table.loc["oracle", "moran_gap_rank"] == 1
    with pytest.raises(KeyError, match="structure=True"):
        E.structure_table(summary.drop(columns=["moran_gap"]))


def test_same_seed_gives_identical_scores_and_another_seed_other_masks(data):
    methods = E.masking_methods()
    a, _, _ = E.evaluate_masking(data, methods, levels=(0.3, 0.6), seed=5, progress=False)
    b, _, _ = E.evaluate_masking(data, methods, levels=(0.3, 0.6), seed=5, progress=False)
    c, _, _ = E.evaluate_masking(data, methods, levels=(0.3, 0.6), seed=6, progress=False)
    cols = ["mse", "bias", "pcc_gene", *E.STRUCTURE_COLUMNS]
    pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"))
    assert not np.allclose(a[cols].to_numpy(float), c[cols].to_numpy(float), equal_nan=True)
    assert "neighbour_mean" in set(a["method"])


def test_evaluate_missing_reports_error_bias_and_structure_for_neighbour_mean(data):
    a = data.copy()
    rng = np.random.default_rng(0)
    values, real = a.layers["c_d_log1p"], a.layers["mask"]
    truth = np.where(real, values, values - 0.5 + 0.1 * rng.normal(size=values.shape)).astype(np.float32)
    a.layers[E.TRUTH_LAYER] = truth
    methods = {"perfect": lambda a_, v, r, h, rows: truth[rows], **E.masking_methods()}
    summary, preds = E.evaluate_missing(a, methods, splits=("test",))
    by = summary.set_index("method")
    assert {"median", "mean", "neighbour_mean"} <= set(by.index)
    assert by.loc["perfect", "mse"] == 0 and by.loc["perfect", "moran_gap"] == 0
    assert by.loc["perfect", "corr_distance"] == 0
    test = np.flatnonzero(a.obs["split"].to_numpy() == "test")
    expected = E.neighbour_fill(a, values, real, test)
    np.testing.assert_allclose(preds["test"]["neighbour_mean"], expected)
    err = (expected - truth[test])[~real[test]]
    assert by.loc["neighbour_mean", "mean_signed_error"] == pytest.approx(float(err.mean()), rel=1e-5)
    assert by.loc["neighbour_mean", "mse"] == pytest.approx(float((err**2).mean()), rel=1e-5)
    assert by.loc["neighbour_mean", "moran_gap"] > 0


def test_score_missing_lists_every_method_with_mse_bias_and_structure(tiny_adata):
    from spared_utils.preprocess import run_pipeline
    from tests.test_preprocess import Spec

    curated = run_pipeline(tiny_adata.copy(), Spec(), progress=False)
    table = E.score_missing(curated, E.masking_methods(), tiny_adata, splits=("test",))
    assert list(table.index) == ["median", "mean", "neighbour_mean"]
    metrics_shown = list(dict.fromkeys(table.columns.get_level_values(0)))
    assert metrics_shown == ["mse", "mean_signed_error", "moran_gap", "corr_distance"]
    assert np.isfinite(table.to_numpy(float)).all()
    assert E.TRUTH_LAYER not in curated.layers


def test_comparison_table_puts_the_neighbour_mean_beside_mean_and_median():
    summary = pd.DataFrame({"masking": [0.1] * 4, "method": ["median", "mean", "neighbour_mean", "spackle_plus"],
                            "mse": [2.0, 1.0, 0.5, 0.25]})
    table = E.comparison_table(summary, ["median", "mean", "neighbour_mean", "spackle_plus"])
    assert table.loc[0.1, "ours vs neighbour mean (% lower MSE)"] == pytest.approx(50.0)
    assert list(table.columns[:3]) == ["median", "mean", "neighbour_mean"]
    assert "ours vs LGDiST (% lower MSE)" not in table  # only where both are present


def test_comparison_table_sets_lgdist_against_spackle_and_ours():
    summary = pd.DataFrame({"masking": [0.1] * 3, "method": ["spackle", "lgdist", "spackle_plus"],
                            "mse": [2.0, 1.6, 0.4]})
    table = E.comparison_table(summary)
    assert table.loc[0.1, "LGDiST vs SpaCKLE (% lower MSE)"] == pytest.approx(20.0)
    assert table.loc[0.1, "ours vs LGDiST (% lower MSE)"] == pytest.approx(75.0)


def test_structure_figure_draws_one_series_per_method_without_overlapping_labels():
    import matplotlib.pyplot as plt

    from spared_utils import plots
    from spared_utils.plots.style import overlapping_text

    rng = np.random.default_rng(0)
    methods = ["median", "mean", "neighbour_mean", "spackle", "spackle_plus"]
    summary = pd.DataFrame([{"masking": lv, "method": m, "mse": rng.uniform(0.1, 2), "moran_gap": rng.uniform(0, .5),
                             "corr_distance": rng.uniform(0, .3)} for lv in (0.1, 0.4, 0.7) for m in methods])
    ax = plots.structure_vs_mse(summary, "moran_gap", methods=methods)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "median", "training mean", "neighbour mean", "SpaCKLE", "ours (SpaCKLE+)"]
    assert len(ax.collections) == len(methods) and ax.get_xscale() == "log"
    assert overlapping_text(ax.figure) == []
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="moran_gap"):
        plots.structure_vs_mse(summary, "pcc")
    with pytest.raises(KeyError, match="structure=True"):
        plots.structure_vs_mse(summary.drop(columns="corr_distance"), "corr_distance")
