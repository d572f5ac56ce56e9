"""SpaCKLE and the completion baselines: model, masking, training, inference, bad input."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from spared_utils import completion, graphs, results
from spared_utils.completion import evaluate as E
from spared_utils.completion import spackle as S
from spared_utils.training import count_parameters

FAST = dict(d_model=16, dim_feedforward=32, n_layers=1, iterations=6, eval_every=3, batch_size=64,
            val_max_spots=64, progress=False, learning_rate=3e-3)


def _median_layer(adata: ad.AnnData) -> ad.AnnData:
    """Test input: log1p of per-spot normalised counts, median-filled, mask = counts > 0."""
    from spared_utils.preprocess import median_complete

    counts = np.asarray(adata.layers["counts"].toarray() if hasattr(adata.layers["counts"], "toarray")
                        else adata.layers["counts"], dtype=np.float64)
    norm = counts / np.maximum(counts.sum(1, keepdims=True), 1) * 1e4
    adata.layers["log1p"] = np.log2(norm + 1).astype(np.float32)
    median_complete(adata, "log1p", "c_d_log1p", progress=False)
    adata.layers["mask"] = counts > 0
    return adata


@pytest.fixture(scope="module")
def data():
    from spared_utils.synthetic import make_dataset

    a = make_dataset(seed=1, n_rows=12, n_cols=24, n_genes=12)
    return _median_layer(a)


def _line_adata(values: np.ndarray, real: np.ndarray, cols=None) -> ad.AnnData:
    """Spots on one Visium row (columns 0, 2, 4, ...), one slide, all train."""
    n = len(values)
    cols = np.arange(0, 2 * n, 2) if cols is None else np.asarray(cols)
    obs = pd.DataFrame({"slide_id": "S1", "split": "train", "array_row": 0, "array_col": cols},
                       index=[f"s{i}" for i in range(n)])
    a = ad.AnnData(X=np.asarray(values, dtype=np.float32), obs=obs)
    a.var_names = [f"g{j}" for j in range(values.shape[1])]
    a.layers["c_d_log1p"] = a.X.copy()
    a.layers["mask"] = np.asarray(real, dtype=bool)
    a.obsm["spatial"] = np.c_[cols * 50.0, np.zeros(n)]
    return a


# ---------------------------------------------------------------------------------------------
# Neighbourhoods, masks, model
# ---------------------------------------------------------------------------------------------


def test_gather_pads_edge_spots_with_zero_tokens(data):
    index = graphs.neighbour_index(data, n_hops=2)
    assert index.shape == (data.n_obs, 18)
    values = torch.arange(data.n_obs * 2, dtype=torch.float32).reshape(-1, 2) + 1
    edge = int(np.argmin((index >= 0).sum(1)))
    x, padding, tokens = S.gather(values, torch.as_tensor(index), torch.tensor([edge]))
    assert x.shape == (1, 19, 2)
    assert padding[0, 0].item() is False  # the centre is never padding
    n_pad = int((index[edge] < 0).sum())
    assert n_pad > 0 and int(padding.sum()) == n_pad
    assert torch.all(x[padding] == 0)
    assert torch.equal(x[0, 0], values[edge])


def test_training_mask_hides_only_real_entries_at_rate_rho():
    torch.manual_seed(0)
    real = torch.rand(400, 19, 30) < 0.6
    hide = S.training_mask(real, 0.3)
    assert not (hide & ~real).any()  # median-completed / padding entries are never hidden
    assert hide.sum() / real.sum() == pytest.approx(0.3, abs=0.01)


def test_mask_probabilities_per_gene_rule():
    real = np.zeros((10, 3), dtype=bool)
    real[:5, 0] = True  # 50% real → 0.3 / 0.5 = 0.6
    real[:, 1] = True  # 100% real → 0.3
    real[:2, 2] = True  # 20% real → 1.5, capped at 1
    p = S.mask_probabilities(real, 0.3, "per_gene")
    np.testing.assert_allclose(p, [0.6, 0.3, 1.0], rtol=1e-6)
    np.testing.assert_allclose(S.mask_probabilities(real, 0.3, "uniform"), [0.3] * 3)


def test_attention_stays_inside_each_neighbourhood():
    torch.manual_seed(0)
    cfg = S.SpackleConfig.make(d_model=16, dim_feedforward=32, iterations=1)
    model = S.Spackle(5, 4, cfg).eval()
    a, b, c = torch.randn(3, 1, 4, 5)
    with torch.no_grad():
        out_ab = model(torch.cat([a, b]))
        out_ac = model(torch.cat([a, c]))
    torch.testing.assert_close(out_ab[0], out_ac[0])  # a's output ignores its batch neighbours
    torch.manual_seed(0)
    authors = S.Spackle(5, 4, S.SpackleConfig.make(d_model=16, dim_feedforward=32, iterations=1, attention="batch")).eval()
    with torch.no_grad():
        assert not torch.allclose(authors(torch.cat([a, b]))[0], authors(torch.cat([a, c]))[0])


def test_padding_tokens_do_not_change_the_output():
    torch.manual_seed(0)
    model = S.Spackle(5, 4, S.SpackleConfig.make(d_model=16, dim_feedforward=32, iterations=1)).eval()
    x = torch.randn(2, 4, 5)
    padding = torch.tensor([[False, False, True, True], [False, True, False, True]])
    y = x.clone()
    y[padding] = 99.0
    with torch.no_grad():
        out_x, out_y = model(x, padding), model(y, padding)
    torch.testing.assert_close(out_x[~padding], out_y[~padding])


def test_model_width_and_parameter_count():
    model = S.Spackle(32, 19, S.SpackleConfig.make(iterations=1))
    # adapters 32→128→32, 2 encoder layers of width 128 with the default 2048 feed-forward.
    per_layer = 4 * 128 * 128 + 4 * 128 + 2 * 128 * 2048 + 2048 + 128 + 4 * 128
    assert count_parameters(model) == (32 * 128 + 128) + (128 * 32 + 32) + 2 * per_layer
    authors = S.Spackle(32, 19, S.SpackleConfig.make(iterations=1, d_model=None))
    assert authors.d_model == 32


def test_gene_scaling_is_a_reparametrisation_of_the_adapters():
    torch.manual_seed(0)
    cfg = S.SpackleConfig.make(d_model=16, dim_feedforward=32, iterations=1, dropout=0.0)
    s_in, s_out = torch.tensor([2.0, 10.0, 0.5]), torch.tensor([3.0, 1.0, 4.0])
    scaled = S.Spackle(3, 4, cfg, gene_scale=s_in, out_scale=s_out).eval()
    plain = S.Spackle(3, 4, cfg).eval()
    plain.load_state_dict({k: v for k, v in scaled.state_dict().items() if "scale" not in k}, strict=False)
    with torch.no_grad():
        plain.adapter_in.weight.copy_(scaled.adapter_in.weight / s_in)
        plain.adapter_out.weight.copy_(scaled.adapter_out.weight * s_out[:, None])
        plain.adapter_out.bias.copy_(scaled.adapter_out.bias * s_out)
        x = torch.randn(2, 4, 3)
        torch.testing.assert_close(scaled(x), plain(x))


def test_knn_neighbourhood_stays_on_its_slide(data):
    index = S.knn_index(data, k=18)
    slides = data.obs["slide_id"].to_numpy()
    rows, cols = np.nonzero(index >= 0)
    assert np.all(slides[rows] == slides[index[rows, cols]])
    xy = data.obsm["spatial"]
    d = np.linalg.norm(xy[index[:, :1]] - xy[:, None], axis=2).ravel()
    hex_step = np.min(np.linalg.norm(xy[1:] - xy[:-1], axis=1)[np.linalg.norm(xy[1:] - xy[:-1], axis=1) > 0])
    assert np.all(d[index[:, 0] >= 0] <= hex_step * 1.01)  # the nearest neighbour is one step away


# ---------------------------------------------------------------------------------------------
# Training, reproducibility, inference, checkpoints
# ---------------------------------------------------------------------------------------------


def test_training_is_reproducible_on_cpu(data):
    cfg = S.SpackleConfig.make(**FAST, seed=3, device="cpu")
    one = S.train_spackle(data, config=cfg)
    two = S.train_spackle(data, config=cfg)
    assert one.best_val == two.best_val
    np.testing.assert_array_equal(one.history["train_loss"], two.history["train_loss"])
    c1 = S.complete_with(one, data)
    c2 = S.complete_with(two, data)
    np.testing.assert_array_equal(c1, c2)
    other = S.train_spackle(data, config=S.SpackleConfig.make(**FAST, seed=4, device="cpu"))
    assert other.history["train_loss"].iloc[0] != one.history["train_loss"].iloc[0]


def test_complete_spackle_fills_missing_and_keeps_real(data):
    a = data.copy()
    completion.complete(a, method="spackle", **FAST, device="cpu")
    out, before, real = a.layers["c_t_log1p"], a.layers["c_d_log1p"], a.layers["mask"]
    np.testing.assert_array_equal(out[real], before[real])
    assert np.all(np.isfinite(out))
    assert np.mean(out[~real] != before[~real]) > 0.99  # every missing entry got a model value
    train_mean = out[(a.obs["split"] == "train").to_numpy()].mean(0)
    np.testing.assert_allclose(a.layers["c_t_deltas"], out - train_mean, atol=1e-4)
    assert a.uns["completion"]["method"] == "spackle"
    assert a.uns["completion"]["missing_completed"] == int((~real).sum())


def test_checkpoint_roundtrip_and_gene_mismatch(data, tmp_path):
    res = S.train_spackle(data, config=S.SpackleConfig.make(**FAST, device="cpu", checkpoint_dir=str(tmp_path / "ck")))
    assert res.checkpoint is not None and res.checkpoint.is_file()
    assert len(list((tmp_path / "ck").glob(f"*_lr_{FAST['learning_rate']:g}/best.pt"))) == 1
    again = S.train_spackle(data, config=S.SpackleConfig.make(**FAST, device="cpu", checkpoint_dir=str(tmp_path / "ck")))
    assert again.best_val == res.best_val  # resumed from the finished run
    S.train_spackle(data, config=S.SpackleConfig.make(**FAST, device="cpu", loss_on="hidden",
                                                 checkpoint_dir=str(tmp_path / "ck")))
    assert len(list((tmp_path / "ck").glob("*_lr_*"))) == 2  # another configuration, another run
    a = data.copy()
    completion.complete(a, method="spackle", checkpoint=res.checkpoint, device="cpu")
    np.testing.assert_allclose(a.layers["c_t_log1p"], S.complete_with(res, data), rtol=1e-6)
    wrong = data[:, list(reversed(data.var_names))].copy()
    with pytest.raises(ValueError, match="genes mismatch"):
        completion.complete(wrong, method="spackle", checkpoint=res.checkpoint, device="cpu")
    fewer = data[:, data.var_names[:-1]].copy()
    with pytest.raises(ValueError, match="1 of the model's genes are absent"):
        completion.complete(fewer, method="spackle", model=res)


def test_learning_rate_search_keeps_the_best(data):
    res = S.train_spackle(data, config=S.SpackleConfig.make(**{**FAST, "iterations": 3}, lr_grid=(1e-9, 3e-3), device="cpu"))
    assert list(res.lr_table["learning_rate"]) == [1e-9, 3e-3]
    best = res.lr_table.loc[res.lr_table["best_val"].idxmin(), "learning_rate"]
    assert res.learning_rate == best == 3e-3


# ---------------------------------------------------------------------------------------------
# Baselines
# ---------------------------------------------------------------------------------------------


def test_median_method_known_answer():
    # Five spots in a row; spot 2's gene 0 is missing. Its 1-ring window is spots 1, 2, 3 with
    # values (4, 0, 8): median 4, non-zero, so 4 is the completed value.
    values = np.array([[1.0, 1], [4, 1], [7, 1], [8, 1], [9, 1]], dtype=np.float32)
    real = np.ones_like(values, dtype=bool)
    real[2, 0] = False
    a = _line_adata(values, real)
    completion.complete(a, method="median")
    assert a.layers["c_t_log1p"][2, 0] == pytest.approx(4.0)
    np.testing.assert_array_equal(a.layers["c_t_log1p"][real], values[real])


def test_sme_known_answer_weights():
    from spared_utils.completion import sme

    # Four spots in a row, 100 px per array column: unit 100 px, radius 3 units = 300 px, so spot 3
    # (exactly 300 px away) is outside spot 0's neighbourhood.
    values = np.array([[0.0], [2.0], [4.0], [10.0]])
    observed = np.array([[False], [True], [True], [True]])
    xy = np.c_[np.arange(4) * 100.0, np.zeros(4)]
    morph = np.array([[1.0, 0], [1, 0], [0.6, 0.8], [0, 1]])  # cos to spot 0: 1, 1, 0.6, 0
    cfg = sme.SmeConfig(weights="pd_md", unit_rule="published")
    out = sme.sme_impute_slide(values, observed, xy, np.zeros(4), np.arange(4), cfg, morphology=morph)
    # Spot 0: top-3 weights are itself (1, value 0), spot 1 (1, value 2), spot 2 (0.6, value 4).
    assert out[0, 0] == pytest.approx((1 * 0 + 1 * 2 + 0.6 * 4) / 2.6)
    np.testing.assert_array_equal(out[1:], values[1:])


def test_sme_unit_and_radius_rules():
    from spared_utils.completion import sme

    rows, cols = np.meshgrid(np.arange(6), np.arange(12), indexing="ij")
    keep = (rows + cols) % 2 == 0
    rows, cols = rows[keep], cols[keep]
    spacing = 100.0
    x, y = cols * spacing / 2, rows * spacing * np.sqrt(3) / 2
    assert sme.array_unit(y, x, rows, cols, "published") == pytest.approx(spacing)
    assert sme.array_unit(y, x, rows, cols, "stlearn_1.2") == pytest.approx(spacing / np.sqrt(2))
    i, j = sme.radius_pairs(np.c_[[0.0, 100, 300], [0, 0, 0]], 300.0)
    pairs = set(zip(i.tolist(), j.tolist()))
    assert (0, 1) in pairs and (1, 2) in pairs and (0, 2) not in pairs  # strictly below the radius
    assert {(0, 0), (1, 1), (2, 2)} <= pairs


def test_stlearn_method_runs_with_random_backbone(data):
    a = data[data.obs["slide_id"] == data.obs["slide_id"].cat.categories[0]].copy()
    a.obs["split"] = "train"
    completion.complete(a, method="stlearn", backbone="resnet18", pretrained=False, tile_size=32, device="cpu")
    out, real = a.layers["c_t_log1p"], a.layers["mask"]
    np.testing.assert_array_equal(out[real], a.layers["c_d_log1p"][real])
    assert np.all(np.isfinite(out)) and np.any(out[~real] > 0)


def test_tile_features_shape():
    from spared_utils.completion import sme

    image = np.random.default_rng(0).integers(0, 255, size=(60, 80, 3), dtype=np.uint8)
    cfg = sme.SmeConfig(backbone="resnet18", pretrained=False, tile_size=32, crop_size=10, device="cpu")
    feats = sme.tile_features(image, np.array([[5.0, 5.0], [40.0, 30.0], [79.0, 59.0]]), cfg)
    assert feats.shape == (3, 512) and np.all(np.isfinite(feats))


# ---------------------------------------------------------------------------------------------
# Evaluation protocol, results, writing
# ---------------------------------------------------------------------------------------------


def test_evaluate_masking_scores_hidden_real_values_only(data):
    truth_fn = lambda a, v, r, h, rows: v[rows]  # noqa: E731 (a perfect method)
    zero_fn = lambda a, v, r, h, rows: np.zeros((len(rows), a.n_vars))  # noqa: E731
    summary, per_gene, runs = E.evaluate_masking(data, {"oracle": truth_fn, "zero": zero_fn, **E.masking_methods()},
                                                 levels=(0.2, 0.6), progress=False)
    assert set(summary["split"]) == {"val", "test"}
    oracle = summary[summary["method"] == "oracle"]
    assert np.all(oracle["mse"] == 0)
    values, real = data.layers["c_d_log1p"], data.layers["mask"]
    for run in runs:
        assert not (run.hidden & ~real[run.rows]).any()
        expected = np.mean(values[run.rows][run.hidden] ** 2)
        got = summary.query("method == 'zero' and masking == @run.level and split == @run.split")["mse"].item()
        assert got == pytest.approx(expected, rel=1e-5)
    frac = summary.groupby("masking")["masked_fraction"].mean()
    assert frac[0.6] > frac[0.2]
    assert set(per_gene["method"]) == {"oracle", "zero", "median", "mean", "neighbour_mean"}
    red = E.relative_reduction(summary, "oracle", "median")
    np.testing.assert_allclose(red["reduction_pct"], 100.0)


def test_results_rows_and_processed_write(data, tmp_path, monkeypatch):
    monkeypatch.setenv("SPARED_PROCESSED_DIR", str(tmp_path / "processed"))
    summary, _, _ = E.evaluate_masking(data, E.masking_methods(mean=False, neighbour_mean=False), levels=(0.3,),
                                       splits=("test",), progress=False)
    rows = completion.results_rows(summary, "tiny", seed=0)
    store = results.append(rows, tmp_path / "store.csv")
    table = results.read(store)
    assert list(table["stage"]) == ["completion"] and table["model"].item() == "median"
    assert table["masking"].item() == 0.3 and table["mse"].item() == pytest.approx(summary["mse"].item())
    a = data.copy()
    completion.complete(a, method="median")
    path = completion.save_completed(a, "tiny")
    assert path == tmp_path / "processed" / "tiny" / "adata.h5ad"
    back = ad.read_h5ad(path)
    np.testing.assert_array_equal(back.layers["c_t_log1p"], a.layers["c_t_log1p"])
    assert "c_t_deltas" in back.layers


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_missing_mask_layer_is_a_clear_error(data):
    a = data.copy()
    del a.layers["mask"]
    with pytest.raises(KeyError, match="has no 'mask' layer"):
        completion.complete(a, method="median")


def test_an_uncurated_slide_is_pointed_to_the_one_call_that_curates_it(data):
    """A slide read by scanpy has counts but no curated layer: the error names the layer and the
    call that curates, trains and completes it (su.tl.complete_slide), which exists."""
    from spared_utils import tl

    a = data.copy()
    del a.layers["c_d_log1p"]
    with pytest.raises(KeyError, match="'c_d_log1p' not found") as err:
        completion.complete(a, method="spackle_plus")
    assert "su.tl.complete_slide(" in str(err.value)
    assert callable(tl.complete_slide)


def test_nan_values_are_refused(data):
    a = data.copy()
    a.layers["c_d_log1p"][3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        completion.complete(a, method="spackle", **FAST)


def test_single_spot_slide_is_refused(data):
    a = data.copy()
    a.obs["slide_id"] = a.obs["slide_id"].astype(str)
    a.obs.iloc[0, a.obs.columns.get_loc("slide_id")] = "LONELY"
    with pytest.raises(ValueError, match="single spot"):
        completion.complete(a, method="spackle", **FAST)


@pytest.mark.parametrize("iterations", [0, -5])
def test_non_positive_iterations_are_refused(data, iterations):
    with pytest.raises(ValueError, match="positive number of optimiser steps"):
        completion.complete(data.copy(), method="spackle", **{**FAST, "iterations": iterations})


def test_unknown_method_and_option(data):
    with pytest.raises(ValueError, match="unknown completion method"):
        completion.complete(data.copy(), method="knn")
    with pytest.raises(TypeError, match="unknown option"):
        completion.complete(data.copy(), method="spackle", iteration=5)


def test_completion_address_names_method_configuration_and_data(data, tmp_path, capsys):
    budget = completion.budget_options("spackle", seed=0, device="cpu", iterations=6)
    assert budget == {**completion.CPU_BUDGET, "iterations": 6, "seed": 0, "device": "cpu", "progress": False}
    assert completion.budget_options("median", seed=3) == {}
    key = completion.address(data, "spackle", **budget)
    cfg = completion.spackle_config("spackle", **budget)
    index = S.neighbourhoods(data, cfg, hex_geometry=completion.hex_geometry_of(data))
    values, real = S.check_input(data)
    assert key == f"spackle-{S.config_tag(cfg, values, real, index)}_lr_0.003", "the checkpoints' tag"
    # neither the device nor the progress bar changes what is computed; the seed, the method and the data do
    assert completion.address(data, "spackle", **{**budget, "device": "cuda", "progress": True}) == key
    assert completion.address(data, "spackle", **{**budget, "seed": 1}) != key
    assert completion.address(data, "spackle_plus", **budget).startswith("spackle_plus-")
    other = data.copy()
    other.layers["c_d_log1p"] = other.layers["c_d_log1p"] + 1
    assert completion.address(other, "spackle", **budget) != key
    assert completion.address(data, "median") == completion.address(data, "median", n_rings=4)
    assert completion.address(data, "median", n_rings=2) != completion.address(data, "median")
    with pytest.raises(TypeError, match="unknown option"):
        completion.address(data, "mean", n_rings=2)
    # ensure: made once (stored under its address), then found; the input is not modified
    made = completion.ensure(data, "tiny", "median", folder=tmp_path)
    path = tmp_path / f"{completion.address(data, 'median')}.h5ad"
    assert path.is_file() and "c_t_log1p" not in data.layers
    expected = completion.complete(data.copy(), method="median").layers["c_t_log1p"]
    np.testing.assert_array_equal(made.layers["c_t_log1p"], expected)
    found = completion.ensure(data, "tiny", "median", folder=tmp_path)
    out = capsys.readouterr().out
    assert "completing with median" in out and "found completion median-" in out
    np.testing.assert_array_equal(found.layers["c_t_deltas"], made.layers["c_t_deltas"])
    assert completion.stored(data, "tiny", "median", folder=tmp_path) is not None
    assert completion.stored(data, "tiny", "mean", folder=tmp_path) is None


def test_a_configuration_lists_only_what_differs_from_spackles_defaults():
    from spared_utils.completion import SpackleConfig

    assert SpackleConfig.make().changed() == {}
    config = SpackleConfig.make(iterations=200, dim_feedforward=512)
    assert config.changed() == {"iterations": (10_000, 200), "dim_feedforward": (2048, 512)}
    assert set(config.changed()) < set(config.flat())
