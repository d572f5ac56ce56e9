"""The prediction harness: patch dataset, masked loss, scenarios, training runs, results rows."""

from __future__ import annotations

import pickle

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from spared_utils import datasets, models, patches, predict, results


def _toy_adata(n_per_slide: int = 20, n_genes: int = 3, seed: int = 0) -> ad.AnnData:
    """Three slides (train/val/test); each spot is a flat square whose brightness b sets gene 0 = 4b.

    Gene 1 = 2 - 2b, gene 2 is noise. A third of the values are not real (mask False); their
    ``c_d_log1p`` holds a median-like 0.5 and SpaCKLE's ``c_t_log1p`` the true value.
    """
    rng = np.random.default_rng(seed)
    slides, obs, truth, xy = {}, [], [], []
    side = 32
    for s, split in zip(("S1", "S2", "S3"), ("train", "val", "test")):
        image = np.zeros((side * 2, side * n_per_slide, 3), dtype=np.uint8)
        for i in range(n_per_slide):
            b = rng.uniform(0.1, 0.9)
            image[:, i * side:(i + 1) * side] = int(255 * b)
            obs.append({"name": f"{s}_{i}", "slide_id": s, "split": split, "array_row": 0, "array_col": 2 * i})
            truth.append([4 * b, 2 - 2 * b, rng.normal(1, 0.3)][:n_genes])
            xy.append([i * side + side / 2, side])
        slides[s] = {"images": {"fullres": image}, "scalefactors": {"spot_diameter_fullres": side / 2}}
    obs = pd.DataFrame(obs).set_index("name")
    truth = np.asarray(truth, dtype=np.float32)
    real = rng.random(truth.shape) > 1 / 3
    real[:, 0] |= ~real.any(axis=1)
    c_d = np.where(real, truth, 0.5).astype(np.float32)
    adata = ad.AnnData(X=c_d.copy(), obs=obs, var=pd.DataFrame(index=[f"G{j}" for j in range(n_genes)]))
    adata.layers["c_d_log1p"] = c_d
    adata.layers["c_t_log1p"] = truth
    adata.layers["mask"] = real
    adata.obsm["spatial"] = np.asarray(xy)
    adata.uns["spatial"] = slides
    return adata


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The toy AnnData and a patch store of 64-px patches, written in shuffled order."""
    adata = _toy_adata()
    order = np.random.default_rng(1).permutation(adata.n_obs)
    path = patches.extract_patches(adata[order].copy(), tmp_path_factory.mktemp("store") / "patches",
                                   patch_size=64, progress=False)
    return adata, patches.PatchStore(path)


def _config(**kw) -> predict.PredictorConfig:
    base = dict(model="shufflenet", iterations=2, batch_size=4, eval_every=1, eval_batch_size=8, progress=False,
                device="cpu")
    return predict.PredictorConfig.make(**{**base, **kw})


# ---------------------------------------------------------------------------------------------


def test_masked_mse_loss_hand_computed():
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    target = torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    mask = torch.tensor([[True, False], [True, True]])
    # squared errors on real entries: 1, 4, 9 → 14 / 3
    assert predict.masked_mse_loss(pred, target, mask).item() == pytest.approx(14 / 3)
    # hidden entries never count, whatever their value
    target2 = target.clone()
    target2[0, 1] = 1e6
    assert predict.masked_mse_loss(pred, target2, mask).item() == pytest.approx(14 / 3)
    # all True: plain MSE
    full = torch.ones_like(mask)
    assert predict.masked_mse_loss(pred, target, full).item() == pytest.approx(F.mse_loss(pred, target).item())
    assert predict.masked_mse_loss(pred, target, torch.zeros_like(mask)).item() == 0.0


def test_scenarios_choose_target_and_loss_mask(toy):
    adata, store = toy
    data = {s: predict.prediction_data(adata, store, s) for s in predict.SCENARIOS}
    raw, done = data["raw"], data["completed"]
    real = adata.layers["mask"]
    assert not real.all() and real.any()
    # raw (the paper's): zero where the value was missing, real values kept, loss on every entry
    assert np.array_equal(raw.target[real], adata.layers["c_d_log1p"][real]) and (raw.target[~real] == 0).all()
    assert (adata.layers["c_d_log1p"][~real] != 0).any(), "the toy's missing entries are median-filled, not 0"
    assert raw.loss_mask.all()
    # masked: the curated layer, loss on real values only; median: the same layer, loss everywhere
    assert np.array_equal(data["masked"].target, adata.layers["c_d_log1p"])
    assert np.array_equal(data["masked"].loss_mask, real)
    assert np.array_equal(data["median"].target, adata.layers["c_d_log1p"]) and data["median"].loss_mask.all()
    assert np.array_equal(done.target, adata.layers["c_t_log1p"]) and done.loss_mask.all()
    # evaluation reads the same real values in every scenario, and the trivial predictor is the same
    for d in data.values():
        assert np.array_equal(d.truth, raw.truth) and np.array_equal(d.real, raw.real)
        np.testing.assert_array_equal(d.real_mean(), data["masked"].training_mean())
    assert (raw.training_mean() < raw.real_mean()).all(), "zeros pull the raw scenario's own mean down"
    assert {k: len(v) for k, v in raw.splits.items()} == {"train": 20, "val": 20, "test": 20}
    # store rows undo the shuffled order of the store
    assert list(store.obs_names[raw.store_rows]) == list(adata.obs_names)
    bare = adata.copy()
    del bare.layers["c_t_log1p"]
    with pytest.raises(KeyError, match=r"c_t_log1p.*completion\.ensure"):  # names the layer and the fix
        predict.prediction_data(bare, store, "completed")
    with pytest.raises(ValueError, match="scenario"):
        predict.prediction_data(adata, store, "denoised")


def test_training_mean_uses_the_values_the_loss_sees(toy):
    adata, store = toy
    raw = predict.prediction_data(adata, store, "masked")
    train = adata.obs["split"].to_numpy() == "train"
    y, m = adata.layers["c_d_log1p"][train], adata.layers["mask"][train]
    expected = [y[m[:, j], j].mean() for j in range(y.shape[1])]
    assert np.allclose(raw.training_mean(), expected, atol=1e-6)
    done = predict.prediction_data(adata, store, "completed")
    assert np.allclose(done.training_mean(), adata.layers["c_t_log1p"][train].mean(0), atol=1e-6)


def test_target_shift_is_how_far_each_scenarios_targets_sit_from_the_real_mean(toy):
    adata, store = toy
    data = {s: predict.prediction_data(adata, store, s) for s in predict.SCENARIOS}
    assert data["masked"].target_shift() == 0.0, "the masked loss reads real values only"
    assert data["raw"].target_shift() < 0, "zeros pull the targets down"
    train = adata.obs["split"].to_numpy() == "train"
    y, m = adata.layers["c_t_log1p"][train].astype(float), adata.layers["mask"][train]
    real_mean = np.array([y[m[:, j], j].mean() for j in range(y.shape[1])])
    # c_t_log1p keeps real values, so the shift is (missing share) × (filled mean − real mean) per gene
    expected = np.mean(y.mean(0) - real_mean)
    assert data["completed"].target_shift() == pytest.approx(expected, abs=1e-5)
    assert data["median"].target_shift() != data["completed"].target_shift()


def test_patch_dataset_items_and_augmentation(toy):
    adata, store = toy
    data = predict.prediction_data(adata, store, "masked")
    ds = data.dataset(data.rows("val"))
    image, target, mask = ds[3]
    row = data.rows("val")[3]
    assert image.dtype == torch.uint8 and image.shape == (3, 64, 64)
    assert torch.equal(image, torch.from_numpy(store[data.store_rows[row]]).permute(2, 0, 1))
    assert np.array_equal(target.numpy(), data.target[row]) and np.array_equal(mask.numpy(), data.real[row])

    # augmentation draws uniformly among the 8 symmetries of the square
    x = torch.arange(3 * 4 * 4, dtype=torch.uint8).view(3, 4, 4)
    views = [tuple(v.flatten().tolist()) for v in models.dihedral_views(x[None])]
    torch.manual_seed(0)
    seen = [views.index(tuple(predict.random_symmetry(x).flatten().tolist())) for _ in range(400)]
    counts = np.bincount(seen, minlength=8)
    assert (counts > 25).all(), counts


def test_patch_dataset_pickles_without_the_pixels(toy):
    adata, store = toy
    data = predict.prediction_data(adata, store, "raw")
    ds = data.dataset(data.rows("train"), augment=True)
    _ = ds[0]  # opens the memory map
    blob = pickle.dumps(ds)
    assert len(blob) < 20_000, "workers must reopen the memory map, not receive the patches"
    again = pickle.loads(blob)
    assert again[0][0].shape == (3, 64, 64)


def test_loader_with_worker_processes(toy):
    adata, store = toy
    data = predict.prediction_data(adata, store, "raw")
    loader = predict.make_loader(data.dataset(data.rows("train"), augment=True), 8, True, 2,
                                 torch.device("cpu"), seed=0, drop_last=True)
    batches = list(loader)
    assert len(batches) == 2 and batches[0][0].shape == (8, 3, 64, 64) and batches[0][1].shape == (8, 3)


def test_channel_stats_of_flat_patches(toy):
    adata, store = toy
    rows = np.arange(len(store))
    mean, std = predict.patch_channel_stats(store, rows, n_patches=len(rows))
    pixels = np.stack([store[i] for i in rows]).reshape(-1, 3) / 255.0
    assert np.allclose(mean, pixels.mean(0), atol=1e-5) and np.allclose(std, pixels.std(0), atol=1e-5)


def test_trivial_baseline_known_answer(toy):
    adata, store = toy
    data = predict.prediction_data(adata, store, "raw")
    table = predict.trivial_baseline(data).set_index("split")
    rows = data.rows("val")
    train = data.rows("train")
    real_train = data.real[train]
    mean = np.array([data.truth[train][real_train[:, j], j].mean() for j in range(data.n_genes)])
    real = data.real[rows]
    expected = float(((data.truth[rows] - mean)[real] ** 2).mean())
    assert table.loc["val", "mse"] == pytest.approx(expected, rel=1e-6)
    assert table.loc["val", "n_values"] == real.sum()
    # the trivial predictor is each gene's mean over real training values in every scenario
    for scenario in predict.SCENARIOS:
        other = predict.trivial_baseline(predict.prediction_data(adata, store, scenario)).set_index("split")
        assert other.loc["val", "mse"] == pytest.approx(expected, rel=1e-6)


def test_train_predictor_writes_rows_and_resumes(toy):
    adata, store = toy
    data = predict.prediction_data(adata, store, "raw")
    cfg = _config(val_spots=6, eval_spots=10)
    run = predict.train_predictor(data, cfg, dataset="toy")
    assert list(run.history["iteration"]) == [1, 2]
    assert set(run.metrics["split"]) == {"val", "test"} and (run.metrics["n_spots"] == 10).all()
    assert run.predictions["test"].shape == (10, 3)
    assert run.n_params == models.count_parameters(run.model)
    store_rows = results.read()
    rows = store_rows[store_rows["stage"] == "predict"]
    assert len(rows) == 2
    assert {"mse", "pcc_gene", "pcc_global", "n_params", "wall_time_s", "device", "versions", "config_hash",
            "learning_rate", "seed", "scenario"} <= set(rows.columns)
    assert rows["scenario"].eq("raw").all() and rows["dataset"].eq("toy").all()
    # the metric of the row is the metric of the predictions on real values only
    r = run.rows["val"]
    expected = float(((run.predictions["val"] - data.truth[r])[data.real[r]] ** 2).mean())
    assert rows.set_index("split").loc["val", "mse"] == pytest.approx(expected, rel=1e-5)
    # a rerun with the same config resumes from the finished checkpoint: same history, same predictions
    again = predict.train_predictor(data, cfg, dataset="toy")
    assert again.history["val_loss"].tolist() == pytest.approx(run.history["val_loss"].tolist())
    assert np.allclose(again.predictions["test"], run.predictions["test"], atol=1e-5)


def test_same_seed_same_numbers(toy):
    adata, store = toy
    data = predict.prediction_data(adata, store, "completed")
    a = predict.train_predictor(data, _config(scenario="completed", resume=False), write_results=False, checkpoints=False)
    b = predict.train_predictor(data, _config(scenario="completed", resume=False), write_results=False, checkpoints=False)
    assert a.history["train_loss"].tolist() == pytest.approx(b.history["train_loss"].tolist(), rel=1e-5)
    # control: another seed gives other numbers (so the equality above is the seed's doing)
    c = predict.train_predictor(data, _config(scenario="completed", resume=False, seed=1), write_results=False,
                                checkpoints=False)
    assert c.history["train_loss"].tolist() != pytest.approx(a.history["train_loss"].tolist(), rel=1e-3)


def test_stnet_run_gets_training_statistics(toy):
    adata, store = toy
    data = predict.prediction_data(adata, store, "raw")
    model = predict.build_for_data(_config(model="stnet"), data)
    mean, _ = predict.patch_channel_stats(store, data.store_rows[data.rows("train")])
    assert np.allclose(model.normalize.mean.flatten().numpy(), mean)
    assert np.allclose(model.head.bias.detach().numpy(), data.training_mean())


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="unknown predictor"):
        predict.PredictorConfig.make(model="nope")
    with pytest.raises(ValueError, match="scenario"):
        predict.PredictorConfig.make(model="shufflenet", scenario="both")
    with pytest.raises(ValueError, match="eval_spots"):
        predict.PredictorConfig.make(model="shufflenet", eval_spots=0)
    with pytest.raises(TypeError, match="model"):
        predict.PredictorConfig.make(scenario="raw")  # a run names its predictor
    assert predict.parse_scenarios("both") == ["raw", "completed"]
    assert predict.parse_scenarios("all") == ["raw", "masked", "median", "completed"]
    with pytest.raises(ValueError):
        predict.parse_scenarios("denoised")


def test_lr_search_picks_the_best_grid_value(toy):
    adata, store = toy
    data = predict.prediction_data(adata, store, "raw")
    best, table = predict.search_learning_rate(data, _config(iterations=3, resume=False), grid=[1e-6, 1e-2],
                                               dataset="toy")
    assert best == table.loc[table["best_val"].idxmin(), "learning_rate"]
    rows = results.read()
    assert (rows["stage"] == "predict_lr_search").sum() == 2
    assert rows.loc[rows["stage"] == "predict_lr_search", "selected"].sum() == 1
    # oracle: each rate trained on its own, outside the search (no checkpoint, no results store)
    alone = {lr: predict.train_predictor(data, _config(iterations=3, resume=False, learning_rate=lr),
                                         write_results=False, checkpoints=False).train.best_val for lr in (1e-6, 1e-2)}
    assert abs(alone[1e-6] - alone[1e-2]) > 1e-3, "the two rates must end apart for the choice to mean anything"
    assert best == min(alone, key=alone.get)
    assert table.set_index("learning_rate")["best_val"].to_dict() == pytest.approx(alone, rel=1e-5)
    search = rows[rows["stage"] == "predict_lr_search"].set_index("learning_rate")
    assert search.loc[best, "selected"]
    assert search.loc[best, "mse_val_subsample"] == pytest.approx(alone[best], rel=1e-5)


def test_run_chapter_on_given_data(toy):
    adata, store = toy
    spec = predict.RunSpec.make("shufflenet", dataset="toy", scenario="both", learning_rate=1e-3, iterations=2,
                                batch_size=4, eval_every=1, eval_spots=8, progress=False, device="cpu")
    out = predict.run_chapter(spec, adata=adata, store=store)
    table = out.metrics()
    assert set(table["scenario"]) == {"raw", "completed", "any"}  # the trivial predictor serves every scenario
    assert (table["model"] == "training mean").sum() == 2
    best, worst = out.best_and_worst_genes("raw")
    assert best in adata.var_names and worst in adata.var_names
    slide, rows, pred = out.map_inputs("completed")
    assert slide == "S3" and len(rows) == len(pred) == 8
    stored = results.read()
    assert set(stored["stage"]) == {"predict", "predict_baseline", "predict_reference"}
    # the toy data have array coordinates but no library sizes: the spatial reference only
    refs = stored[stored["stage"] == "predict_reference"]
    assert set(refs["model"]) == {"spatial_neighbours"} and set(refs["split"]) == {"val", "test"}

    # The verdict of "What we saw" compares each scenario with the trivial predictor on the same spots.
    split = out.eval_split
    base_mse = out.baseline.set_index("split").loc[split, "mse"]
    verdict = out.beats_training_mean()
    for scenario, run in out.runs.items():
        assert verdict[scenario] == (run.metrics.set_index("split").loc[split, "mse"] < base_mse)
    raw_metrics = out.runs["raw"].metrics
    raw_metrics.loc[raw_metrics["split"] == split, "mse"] = base_mse + 1.0
    completed_metrics = out.runs["completed"].metrics
    completed_metrics.loc[completed_metrics["split"] == split, "mse"] = base_mse - 1.0
    assert out.beats_training_mean() == {"raw": False, "completed": True}
    saw = out.what_we_saw()
    assert "Why not (raw): its targets are 0 at the" in saw and "Why not (completed)" not in saw
    # completed − raw: the numbers "What we saw" reports, from the same metric tables
    diff = out.completed_minus_raw()
    raw_row = raw_metrics.set_index("split").loc[split]
    done_row = completed_metrics.set_index("split").loc[split]
    assert diff["mse"] == pytest.approx(-2.0)
    assert diff["pcc_gene"] == pytest.approx(done_row["pcc_gene"] - raw_row["pcc_gene"], nan_ok=True)
    completed_metrics.loc[completed_metrics["split"] == split, "mse"] = base_mse + 1.0
    assert out.beats_training_mean() == {"raw": False, "completed": False}
    assert out.completed_minus_raw()["mse"] == pytest.approx(0.0)


def test_completed_minus_uses_raw_if_it_ran_else_masked(toy):
    from dataclasses import replace

    adata, store = toy
    spec = predict.RunSpec.make("shufflenet", dataset="toy", scenario=["raw", "masked", "completed"], learning_rate=1e-3,
                                iterations=2, batch_size=4, eval_every=1, eval_spots=8, progress=False, device="cpu")
    out = predict.run_chapter(spec, adata=adata, store=store)
    split = out.eval_split
    table = {s: r.metrics.set_index("split").loc[split] for s, r in out.runs.items()}

    def minus(ref):
        return {k: float(table["completed"][k] - table[ref][k]) for k in ("mse", "pcc_gene")}

    # raw ran: the paper's pair, and completed_minus_raw is the same numbers without the name
    diff = out.completed_minus()
    assert diff["reference"] == "raw"
    assert {k: diff[k] for k in ("mse", "pcc_gene")} == pytest.approx(minus("raw"), nan_ok=True)
    assert out.completed_minus_raw() == pytest.approx(minus("raw"), nan_ok=True)
    assert "Training on completed instead of raw data changed" in out.what_we_saw()
    # an explicit reference
    assert out.completed_minus("masked")["reference"] == "masked"
    # the chapters' default pair: no raw, so masked is the reference
    paired = replace(out, runs={s: out.runs[s] for s in ("masked", "completed")})
    diff = paired.completed_minus(split=split)
    assert diff["reference"] == "masked"
    assert {k: diff[k] for k in ("mse", "pcc_gene")} == pytest.approx(minus("masked"), nan_ok=True)
    assert paired.completed_minus_raw() == {}
    saw = paired.what_we_saw()
    assert "Training on completed instead of with the loss on real values only (masked) changed" in saw
    assert "instead of raw" not in saw
    # nothing to compare: completed alone, or no completed run
    assert replace(out, runs={"completed": out.runs["completed"]}).completed_minus() == {}
    assert replace(out, runs={s: out.runs[s] for s in ("raw", "masked")}).completed_minus() == {}
    assert out.completed_minus("median") == {}


def test_a_predictor_learns_what_the_image_shows(toy):
    """ShuffleNet trained briefly beats the training mean on validation (brightness → gene 0, 1)."""
    adata, store = toy
    data = predict.prediction_data(adata, store, "completed")
    cfg = _config(scenario="completed", iterations=60, batch_size=10, eval_every=10, learning_rate=3e-3,
                  augment=True, resume=False)
    run = predict.train_predictor(data, cfg, write_results=False, checkpoints=False)
    baseline = predict.trivial_baseline(data).set_index("split").loc["val", "mse"]
    assert run.train.best_val < 0.8 * baseline, (run.train.best_val, baseline)


def test_full_resolution_image_is_found_in_memory_or_on_disk():
    lib = {"images": {"hires": np.zeros((2, 2, 3))}, "metadata": {}}
    adata = ad.AnnData(np.zeros((1, 1)), uns={"spatial": {"s1": lib}})
    assert not datasets._has_fullres(adata)  # hires only: the patch store must be cut from the raw files
    lib["metadata"]["source_image_path"] = "/data/s1_fullres.tif"  # what the Space Ranger reader writes
    assert datasets._has_fullres(adata)
    lib["metadata"] = {"fullres_path": "/data/s1.tif"}
    assert datasets._has_fullres(adata)
    lib["metadata"] = {}
    lib["images"]["fullres"] = np.zeros((4, 4, 3))
    assert datasets._has_fullres(adata)
    assert not datasets._has_fullres(ad.AnnData(np.zeros((1, 1))))


def test_learning_trend_says_whether_the_budget_or_the_rate_stops_a_model():
    from spared_utils.predict.harness import learning_trend

    falling = pd.DataFrame({"iteration": [10, 20, 30], "val_loss": [3.6, 3.4, 3.3]})
    text = learning_trend(falling, baseline=3.1)
    assert "still falling" in text and "the budget stops it" in text
    assert "about 20 more iterations" in text  # (3.3 − 3.1) / 0.01 per iteration
    rising = pd.DataFrame({"iteration": [10, 20, 30], "val_loss": [3.6, 3.2, 3.5]})
    text = learning_trend(rising, baseline=3.1)
    assert "rose to 3.500" in text and "lower `learning_rate`" in text and "best of 3.200 (iteration 20" in text
    assert "one evaluation" in learning_trend(falling.iloc[:1], baseline=3.1)


def test_lr_search_runs_once_per_dataset_and_predictor(toy, monkeypatch, tmp_path):
    """A second chapter run (another scenario and seed) reuses the finished search runs."""
    from spared_utils import training
    from spared_utils.predict import engine

    adata, store = toy
    steps = {"n": 0}
    real_fit = training.fit

    def counting_fit(model, batches, loss_fn, validate, config, parameters=None):
        def counted(m, b):
            steps["n"] += 1
            return loss_fn(m, b)
        return real_fit(model, batches, counted, validate, config, parameters=parameters)

    monkeypatch.setattr(engine, "fit", counting_fit)
    kw = dict(dataset="toy", learning_rate="search", lr_grid=[1e-4, 1e-2], iterations=2, batch_size=4,
              eval_every=1, eval_spots=8, progress=False, device="cpu", out_dir=str(tmp_path))
    first = predict.run_chapter(predict.RunSpec.make("shufflenet", scenario="raw", seed=0, **kw), adata=adata, store=store)
    # two search runs of 2 steps; the raw run at seed 0 IS the search's run at the chosen rate (resumed)
    assert steps["n"] == 2 * 2
    steps["n"] = 0
    second = predict.run_chapter(predict.RunSpec.make("shufflenet", scenario="masked", seed=1, **kw), adata=adata,
                                 store=store)
    assert steps["n"] == 2, "only the masked run trains: the search's runs are finished"
    assert second.learning_rate == first.learning_rate
    assert list(second.lr_table["learning_rate"]) == list(first.lr_table["learning_rate"])


def test_the_library_size_reference_fits_each_gene_on_log_library_size_from_training_spots(toy):
    from spared_utils.predict import references

    adata, store = toy
    adata = adata.copy()
    rng = np.random.default_rng(3)
    counts = rng.uniform(100, 5000, adata.n_obs)
    adata.obs["total_counts"] = counts
    data = predict.prediction_data(adata, store, "masked")
    # gene 0 made linear in log library size on real training values; the fit must recover it
    x = np.log1p(counts)
    data.truth[:, 0] = 0.5 + 0.8 * x
    test = data.rows("test")
    pred = references.reference_predictions(data, test, "library_size")
    np.testing.assert_allclose(pred[:, 0], 0.5 + 0.8 * x[test], rtol=1e-6)
    # fitted on training spots only: held-out values do not move the fit
    data.truth[test, 1] += 100.0
    again = references.reference_predictions(data, test, "library_size")
    np.testing.assert_allclose(again[:, 1], pred[:, 1])


def test_the_spatial_reference_reads_measured_neighbours_only_and_widens_its_ring(toy):
    from spared_utils.predict import references

    adata, store = toy
    data = predict.prediction_data(adata.copy(), store, "masked")
    test = data.rows("test")  # one row of 20 spots at array columns 0, 2, ..., 38
    data.truth[test, 0] = np.arange(len(test), dtype=float)
    data.real[test, 0] = True
    data.real[test[5], 0] = False  # a missing neighbour is never read
    data.truth[test[5], 0] = 1000.0
    pred = references.reference_predictions(data, test, "spatial_neighbours")
    assert pred[3, 0] == pytest.approx((2 + 4) / 2), "its two neighbours on the row, not itself"
    assert pred[4, 0] == pytest.approx(3.0) and pred[6, 0] == pytest.approx(7.0), "spot 5 is not real: skipped"
    data.real[test[[3, 5]], 0] = False
    pred = references.reference_predictions(data, test, "spatial_neighbours")
    assert pred[4, 0] == pytest.approx((2 + 6) / 2), "no real first ring: the second"
    data.real[test[[2, 6]], 0] = False
    pred = references.reference_predictions(data, test, "spatial_neighbours")
    assert pred[4, 0] == pytest.approx((1 + 7) / 2), "then the third"


def test_a_chapter_runs_several_seeds_and_completions_each_its_own_rows(toy):
    adata, store = toy
    spec = predict.RunSpec.make("shufflenet", dataset="toy", scenario=["raw", "completed"], seed=[0, 1],
                                learning_rate=1e-3, iterations=2, batch_size=4, eval_every=1, eval_spots=8,
                                progress=False, device="cpu")
    assert spec.seeds == (0, 1) and spec.config().train.seed == 0
    out = predict.run_chapter(spec, adata=adata, store=store)
    assert set(out.runs) == {"raw", "completed"} and out.config.train.seed == 0, "the chapter shows the first seed"
    assert set(out.other_seeds) == {1}
    table = out.all_runs()
    assert sorted(set(zip(table["seed"], table["scenario"]))) == [(0, "completed"), (0, "raw"), (1, "completed"),
                                                                 (1, "raw")]
    stored = results.read()
    rows = stored[stored["stage"] == "predict"]
    assert len(rows) == 2 * 2 * 2 and rows["config_hash"].nunique() == 4, "each run its own hash and rows"
    mine = rows.set_index(["seed", "scenario", "split"])["mse"]
    shown = out.all_runs().set_index(["seed", "scenario", "split"])["mse"]
    pd.testing.assert_series_equal(mine.sort_index(), shown.sort_index(), check_names=False)
    assert set(stored.loc[stored["stage"] == "predict_baseline", "seed"]) == {0, 1}


def test_scenario_names_with_a_completion_method_are_checked():
    assert predict.parse_scenarios(["raw", "completed:spackle_plus"]) == ["raw", "completed:spackle_plus"]
    for bad in (["completed:nonsense"], ["masked:spackle"], ["raw", "raw"]):
        with pytest.raises(ValueError):
            predict.parse_scenarios(bad)
    with pytest.raises(ValueError, match="distinct"):
        predict.RunSpec.make("shufflenet", seed=[0, 0])


#: The predictors whose runs share frozen features within a process (the exemplar banks, the
#: probe), and ShuffleNet for what every run goes through (all eleven cost CI minutes more).
SHARING = ("shufflenet", "egn", "eggn", "linear_probe")

#: Runs each of ``names`` at one seed in a fresh process, on the tiny dataset, and prints its metrics.
_ALONE = """
import json, sys
import torch
torch.set_num_threads(1)
from spared_utils import models, predict
kw, names = json.loads(sys.argv[1]), sys.argv[2:]
out = {}
for name in names:
    spec = predict.RunSpec.make(name, seed=1, **kw)
    out[name] = predict.run_chapter(spec).runs["masked"].metrics.to_dict("records")
print(json.dumps(out))
"""


@pytest.mark.slow
def test_a_run_gives_the_same_numbers_after_other_runs_of_its_process_as_alone(tmp_path):
    """A published row is re-run alone (tests/test_benchmark.py), but a chapter makes it after the
    runs of earlier seeds in the same process: whatever those leave behind (a shared cache, a random
    stream) must not change it. Seed 1 after seed 0 in one process against seed 1 alone in a fresh
    one (another results folder, so nothing is resumed)."""
    import json
    import subprocess
    import sys

    kw = dict(dataset="synthetic_tiny", scenario=["masked"], learning_rate=1e-3, progress=False, device="cpu",
              costs={"iterations": 2, "batch_size": 16, "eval_every": 1, "val_spots": 8, "eval_spots": 16,
                     "train_spots": 64})
    together = {}
    for name in SHARING:
        run = predict.run_chapter(predict.RunSpec.make(name, seed=[0, 1], out_dir=str(tmp_path / "together"), **kw))
        together[name] = run.other_seeds[1]["masked"]
    done = subprocess.run([sys.executable, "-c", _ALONE, json.dumps({**kw, "out_dir": str(tmp_path / "alone")}),
                           *SHARING],
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    alone = json.loads(done.stdout.strip().splitlines()[-1])
    differ = {name: (together[name]["mse"].tolist(), [m["mse"] for m in alone[name]])
              for name in SHARING
              if together[name]["mse"].tolist() != pytest.approx([m["mse"] for m in alone[name]], rel=1e-9, abs=1e-12)}
    assert not differ, f"seed 1 after seed 0 in one process is not seed 1 alone (MSE per split): {differ}"
