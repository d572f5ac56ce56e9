"""LGDiST (Cárdenas et al., arXiv 2509.01864): context genes, configuration, the two rounds, completion."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from spared_utils.completion import lgdist as L
from spared_utils.completion import spackle as S
from spared_utils.preprocess import median_complete, moran_i
from spared_utils.preprocess.context import CONTEXT_KEY, add_context, context_genes, context_matrix

N_PANEL = 8
N_CONTEXT = 8
#: a tiny budget: seconds on one CPU core
TINY = dict(ae_width=16, ae_feedforward=32, latent_dim=8, ae_epochs=25, dit_width=16, dit_depth=1, dit_heads=2,
            dit_epochs=25, lr_step_epochs=20, sample_steps=10, n_evals=2, val_max_spots=64, batch_size=64)


def _collection():
    """A small synthetic collection before Moran selection: log1p, median-completed d_log1p, mask."""
    from spared_utils.synthetic import make_dataset

    a = make_dataset(seed=2, images=False, n_rows=12, n_cols=24, n_genes=24)
    counts = np.asarray(a.layers["counts"].toarray(), dtype=np.float64)
    norm = counts / np.maximum(counts.sum(1, keepdims=True), 1) * 1e4
    a.layers["log1p"] = np.log2(norm + 1).astype(np.float32)
    median_complete(a, "log1p", "d_log1p", progress=False)
    return a


@pytest.fixture(scope="module")
def collection():
    return _collection()


@pytest.fixture(scope="module")
def data(collection):
    """The panel (top Moran genes) as a curated dataset, with its context genes in obsm."""
    order = np.argsort(-moran_i(collection, progress=False).mean(axis=1).to_numpy(), kind="stable")
    curated = collection[:, order[:N_PANEL]].copy()
    curated.layers["c_d_log1p"] = curated.layers["d_log1p"].copy()
    curated.layers["mask"] = curated.layers["log1p"] != 0
    add_context(collection, curated, N_CONTEXT)
    return curated


@pytest.fixture(scope="module")
def trained(data):
    cfg = L.LgdistConfig.make(**TINY, seed=0, device="cpu")
    return L.train_lgdist(data, config=cfg)


@pytest.fixture(scope="module")
def completed(data, trained):
    return L.complete_lgdist(data, trained)


def test_context_genes_are_the_next_moran_ranks_outside_the_panel(collection):
    mean = moran_i(collection, progress=False).mean(axis=1)
    ranked = list(mean.sort_values(ascending=False, kind="stable").index)
    panel = ranked[:5]
    got = context_genes(collection, panel, 6, moran=mean)
    assert got == ranked[5:11]
    assert not set(got) & set(panel)
    # asking for more than there are returns every candidate, once
    assert len(context_genes(collection, panel, 1000, moran=mean)) == mean.notna().sum() - 5
    values = context_matrix(collection, got)
    np.testing.assert_array_equal(values, collection[:, got].layers["d_log1p"])


def test_add_context_writes_values_mask_and_names(collection, data):
    genes = data.uns["context_genes"]
    assert len(genes) == N_CONTEXT and not set(genes) & set(data.var_names)
    assert data.obsm[CONTEXT_KEY].shape == (data.n_obs, N_CONTEXT)
    np.testing.assert_array_equal(data.obsm[CONTEXT_KEY + "_mask"], collection[:, genes].layers["log1p"] != 0)
    with pytest.raises(ValueError, match="other spots"):
        add_context(collection, data[:10].copy(), 2)


def test_config_round_trip_budgets_and_refusals():
    paper = L.LgdistConfig.paper()
    assert L.LgdistConfig.from_dict(paper.to_dict()) == paper
    assert (paper.latent_dim, paper.dit_depth, paper.diffusion_steps, paper.sample_steps, paper.total_genes) == \
        (128, 12, 1500, 50, 1024)
    assert L.LgdistConfig.make("paper", seed=3).seed == 3
    assert L.LgdistConfig.make().dit_width < paper.dit_width
    smoke = L.LgdistConfig.make("smoke", seed=5)
    assert smoke.seed == 5 and smoke.dit_epochs < L.LgdistConfig.cpu().dit_epochs
    assert smoke.rounds == paper.rounds == 2  # the smoke budget still runs both rounds
    with pytest.raises(ValueError, match="budget must be one of"):
        L.LgdistConfig.make("gpu")
    with pytest.raises(TypeError, match="unknown LGDiST option"):
        L.LgdistConfig.make(iterationz=3)
    with pytest.raises(ValueError, match="sample_steps"):
        L.LgdistConfig(sample_steps=2000)
    with pytest.raises(ValueError, match="rounds"):
        L.LgdistConfig(rounds=0)


def test_respaced_sampler_uses_every_training_step_when_asked():
    assert L.sampling_timesteps(1500, 1500) == list(range(1499, -1, -1))
    steps = L.sampling_timesteps(1500, 50)
    assert len(steps) == 50 and steps[0] == 1499 and steps[-1] == 0
    abar = L.alphas_cumprod(1500)
    assert abar[0] > 0.999 and abar[-1] < 1e-4 and bool((abar[1:] <= abar[:-1]).all())


def test_completion_keeps_real_values_and_fills_every_missing_one(data, completed):
    values, real = data.layers["c_d_log1p"], data.layers["mask"]
    assert completed.shape == data.shape and completed.dtype == np.float32
    assert np.isfinite(completed).all()
    np.testing.assert_array_equal(completed[real], values[real])
    assert (~real).sum() > 50
    assert np.mean(completed[~real] != values[~real]) > 0.99


def test_the_second_round_trains_on_the_first_completion(data, trained):
    values, real = data.layers["c_d_log1p"], data.layers["mask"]
    assert len(trained.rounds) == 2 and len(trained.inputs) == 2
    np.testing.assert_array_equal(trained.inputs[0], values)
    second = trained.inputs[1]
    np.testing.assert_array_equal(second[real], values[real])
    assert np.mean(second[~real] != values[~real]) > 0.99
    # ... and that input is exactly what round 1 alone completes
    first_only = L.complete_lgdist(data, replace(trained, rounds=trained.rounds[:1]))
    np.testing.assert_array_equal(first_only, second)
    # the rounds are two models: their weights and latent scales differ
    w1, w2 = (r.model.out.weight.detach() for r in trained.rounds)
    assert not np.allclose(w1.numpy(), w2.numpy())


def test_same_seed_same_numbers_other_seed_other_numbers(data, completed):
    again = L.complete_lgdist(data, None, config=L.LgdistConfig.make(**TINY, seed=0, device="cpu"))
    np.testing.assert_array_equal(again, completed)
    other = L.complete_lgdist(data, None, config=L.LgdistConfig.make(**TINY, seed=1, device="cpu"))
    real = data.layers["mask"]
    assert not np.allclose(other[~real], completed[~real])


def test_trained_model_beats_the_untrained_one_and_the_zero_fill(data, trained):
    values, real = data.layers["c_d_log1p"], data.layers["mask"]
    rows = np.flatnonzero((data.obs["split"] == "test").to_numpy())
    hidden = S.synthetic_hidden(real, 0.3, seed=11, rows=rows)
    truth = values[rows][hidden[rows]]

    def mse(result):
        pred = result.predict_hidden(data, hidden, rows)
        assert pred.shape == (len(rows), data.n_vars)
        return float(np.mean((pred[hidden[rows]] - truth) ** 2))

    untrained = L.train_lgdist(data, config=L.LgdistConfig.make(**{**TINY, "ae_epochs": 0, "dit_epochs": 0},
                                                                seed=0, device="cpu"))
    ours = mse(trained)
    assert ours < mse(untrained)
    assert ours < float(np.mean(truth ** 2))  # the zero fill


def test_progress_bars_and_bad_input(data, trained, capsys):
    L.train_lgdist(data, config=L.LgdistConfig.make(**{**TINY, "ae_epochs": 1, "dit_epochs": 1, "rounds": 1},
                                                    device="cpu"), progress=True)
    err = capsys.readouterr().err
    assert "LGDiST autoencoder" in err and "LGDiST diffusion" in err
    with pytest.raises(ValueError, match="one row per spot"):
        L.train_lgdist(data, config=L.LgdistConfig.make(**TINY), context=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="context"):
        L.complete_lgdist(data, trained, context=np.zeros((data.n_obs, 2), dtype=np.float32))


def test_complete_with_method_lgdist_fills_only_the_missing_entries(data):
    """``complete(adata, method="lgdist")``: the registered method, its layer and its record."""
    from spared_utils.completion import METHODS, complete

    assert "lgdist" in METHODS
    data = data.copy()
    complete(data, method="lgdist", **TINY, seed=0, device="cpu")
    real = data.layers["mask"].astype(bool)
    done = data.layers["c_t_log1p"]
    assert np.isfinite(done).all()
    np.testing.assert_array_equal(done[real], np.asarray(data.layers["c_d_log1p"])[real])
    assert data.uns["completion"]["method"] == "lgdist" and np.isfinite(data.uns["completion"]["best_val_mse"])
