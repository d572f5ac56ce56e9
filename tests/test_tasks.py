"""Every predictor through the one engine: its task, the bank and slide rules, SEPAL's stage 1."""

from __future__ import annotations

from dataclasses import replace

from pathlib import Path

import numpy as np
import pytest
import torch

from spared_utils import models, patches, predict, results
from spared_utils.models import features

from .test_predict import _toy_adata

#: Small versions of the seven predictors that are not patch encoders (same code, tiny widths).
SMALL = {
    "histogene": {"patch_size": 32, "dim": 32, "depth": 1, "heads": 2, "dim_head": 16, "mlp_dim": 64},
    "hist2st": {"patch_size": 28, "conv_patch": 7, "depth": 1, "gnn_depth": 2, "heads": 2, "dim_head": 16},
    "egn": {"image_size": 64, "patch_size": 16, "dim": 32, "depth": 2, "mlp_dim": 64, "heads": 2, "dim_head": 16,
            "bridge_heads": 2, "bridge_dim_head": 16, "k": 3},
    "eggn": {"hidden": 32, "n_layers": 1, "k": 3, "score_dim": 32},
    "bleep": {"backbone": "resnet18", "projection_dim": 32, "top_k": 5},
    "sepal": {"hidden": (32, 16), "n_hops": 1},
    "linear_probe": {"encoder": "resnet18", "n_components": 8},
}
STAGE1 = {"iterations": 1, "batch_size": 2, "eval_every": 1, "val_spots": 2}


@pytest.fixture(scope="module")
def toy2(tmp_path_factory):
    """The toy data with two training slides (S1, S2) and a test slide (S3): exemplar rules need two."""
    adata = _toy_adata(n_per_slide=12)
    adata.obs["split"] = adata.obs["slide_id"].map({"S1": "train", "S2": "train", "S3": "test"}).astype(str)
    adata.obs.loc[adata.obs_names[adata.obs["slide_id"] == "S3"][:6], "split"] = "val"
    path = patches.extract_patches(adata, tmp_path_factory.mktemp("store2") / "patches", patch_size=64, progress=False)
    return adata, patches.PatchStore(path)


def _config(name, **kw):
    base = dict(model=name, iterations=2, batch_size=6, eval_every=1, eval_batch_size=8, progress=False, device="cpu",
                model_options=SMALL[name], val_spots=4, eval_spots=5)
    if name == "sepal":
        base.update(setup={"stage1": STAGE1}, train_spots=4)
    return predict.PredictorConfig.make(**{**base, **kw})


@pytest.mark.parametrize("name", [n for n in SMALL if n != "sepal"])  # SEPAL: its own test below
def test_every_new_predictor_trains_and_predicts_through_the_engine(name, toy2, tmp_path):
    adata, store = toy2
    data = predict.prediction_data(adata, store, "raw")
    run = predict.train_predictor(data, _config(name), dataset="toy", out_dir=tmp_path)
    assert models.record(name).kind in models.KINDS
    assert type(run.task) is models.record(name).task and models.record(name).task is not models.PatchTask
    assert set(run.metrics["split"]) == {"val", "test"}
    for split, pred in run.predictions.items():
        assert pred.shape == (len(run.rows[split]), data.n_genes) and np.isfinite(pred).all()
    # the history has one row per validation (the probe: one closed-form fit)
    assert len(run.history) == (1 if name == "linear_probe" else 2)
    # predicting again gives the same numbers (eval mode, no randomness at prediction)
    again = run.task.predict(run.model, run.rows["test"])
    np.testing.assert_allclose(again, run.predictions["test"], rtol=1e-5, atol=1e-5)
    rows = results.select(tmp_path / results.STORE_NAME, model=name)
    assert len(rows) == 2 and set(rows["split"]) == {"val", "test"}


def test_slide_windows_never_mix_slides_and_prediction_runs_one_slide_at_a_time(toy2):
    adata, store = toy2
    data = predict.prediction_data(adata, store, "raw")
    model = predict.build_for_data(_config("histogene"), data)
    task = predict.make_task(_config("histogene", batch_size=5), data, model)
    windows = task.windows()
    for _ in range(20):
        rows = next(windows)
        assert len(rows) == 5 and len(set(data.slides[rows])) == 1 and set(adata.obs["split"].to_numpy()[rows]) == {"train"}
        # a window is contiguous: the 5 spots nearest a centre on the row are 5 consecutive columns
        cols = np.sort(data.coords[rows, 1])
        assert (np.diff(cols) == 2).all()
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, patches, r, c):
            seen.append(len(patches))
            return torch.zeros(len(patches), data.n_genes)

    val_test = np.concatenate([data.rows("val"), data.rows("test")])
    task.predict(Recorder(), val_test)
    assert seen == [int((data.slides == "S3").sum())]  # one call, with every spot of slide S3 (val and test)


def test_exemplar_banks_hold_training_spots_only_and_skip_the_own_slide(toy2):
    adata, store = toy2
    data = predict.prediction_data(adata, store, "raw")
    for name in ("egn", "eggn"):
        model = predict.build_for_data(_config(name), data)
        task = predict.make_task(_config(name), data, model)
        assert set(task.bank.ids) == set(data.obs_names[data.rows("train")])
    # EGN: every training spot's exemplars come from the other training slide
    task = predict.make_task(_config("egn"), data, predict.build_for_data(_config("egn"), data))
    own = data.slides[task.train_rows]
    ex_slides = task.bank.slides[task.train_exemplars.cpu().numpy()]
    assert (ex_slides != own[:, None]).all()


def test_changing_held_out_targets_cannot_change_exemplar_predictions(toy2):
    """If val/test expression were in the bank, scaling it would change predictions; it must not."""
    adata, store = toy2
    data = predict.prediction_data(adata, store, "raw")
    held = np.concatenate([data.rows("val"), data.rows("test")])
    altered_target = data.target.copy()
    altered_target[held] *= 100.0
    altered = replace(data, target=altered_target)
    def egn():
        """The seeded EGN with a random head (the harness zeroes it, so an untrained model would ignore its input)."""
        model = predict.build_for_data(_config("egn"), data)
        with torch.no_grad():
            model.head[-1].weight.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(0))
        return model

    out = []
    for d in (data, altered):
        model = egn()  # same weights both times
        out.append(predict.make_task(_config("egn"), d, model).predict(model, held))
    np.testing.assert_array_equal(out[0], out[1])
    # ... whereas changing training targets does change them (the test can fail)
    altered_target = data.target.copy()
    altered_target[data.rows("train")] *= 100.0
    model = egn()
    changed = predict.make_task(_config("egn"), replace(data, target=altered_target), model).predict(model, held)
    assert not np.allclose(changed, out[0])


def test_bleep_training_spots_never_retrieve_themselves(toy2):
    adata, store = toy2
    data = predict.prediction_data(adata, store, "completed")
    n_train = len(data.rows("train"))
    config = _config("bleep", scenario="completed", model_options={**SMALL["bleep"], "top_k": n_train - 1})
    model = predict.build_for_data(config, data)
    task = predict.make_task(config, data, model)
    spot = data.rows("train")[0]
    before = task.predict(model, data.rows("train"))
    altered_target = data.target.copy()
    altered_target[spot] += 50.0
    after = predict.make_task(config, replace(data, target=altered_target), model).predict(model, data.rows("train"))
    np.testing.assert_allclose(after[0], before[0], rtol=1e-5, atol=1e-5)  # the spot itself: unchanged
    assert np.abs(after[1:] - before[1:]).max() > 1.0  # every other training spot averages it in
    assert {str(i) for i in task.build_bank(model).ids} == set(data.obs_names[data.rows("train")])
    # what a chapter counts: the training rows each spot retrieves, never itself, never a held-out spot
    train = data.rows("train")
    got = task.retrieved(model, train[:4], k=3)
    assert got.shape == (4, 3) and set(got.ravel()) <= set(train)
    assert not (got == train[:4, None]).any()
    held_out = task.retrieved(model, data.rows("test"), k=n_train)
    assert all(sorted(r) == sorted(train) for r in held_out)  # k = bank size: every training spot, once


def test_sepal_stage2_starts_from_its_own_stage1_and_refuses_another(toy2, tmp_path):
    adata, store = toy2
    data = predict.prediction_data(adata, store, "raw")
    run = predict.train_predictor(data, _config("sepal"), dataset="toy", out_dir=tmp_path)
    assert isinstance(run.task, models.sepal.SepalTask) and set(run.metrics["split"]) == {"val", "test"}
    assert run.predictions["test"].shape == (5, data.n_genes) and np.isfinite(run.predictions["test"]).all()
    stage1 = list((tmp_path / "checkpoints" / "toy" / "vit_b_delta" / "raw").glob("*/stage1.pt"))
    assert len(stage1) == 1
    assert models.sepal.read_stage1_meta(stage1[0]) == models.sepal.stage1_meta("toy", "raw", 0)
    # the stage-1 model SEPAL used is that checkpoint's, frozen
    saved = torch.load(stage1[0], weights_only=True)["model"]
    used = run.task.stage1.state_dict()
    assert all(torch.equal(saved[k], used[k].cpu()) for k in saved)
    assert not any(p.requires_grad for p in run.task.stage1.parameters())
    for wrong in ({"seed": 1}, {"scenario": "completed"}):
        cfg = _config("sepal", setup={"stage1_checkpoint": str(stage1[0])}, **wrong)
        d = predict.prediction_data(adata, store, cfg.scenario)
        with pytest.raises(ValueError, match="same dataset, scenario and seed"):
            predict.train_predictor(d, cfg, dataset="toy", out_dir=tmp_path, eval_splits=())
    with pytest.raises(ValueError, match="same dataset, scenario and seed"):
        predict.train_predictor(data, _config("sepal", setup={"stage1_checkpoint": str(stage1[0])}), dataset="other",
                                out_dir=tmp_path, eval_splits=())


def test_probe_alpha_cv_beats_hest_alpha_on_random_features():
    """On features of an untrained network HEST's near-zero penalty overfits; leave-one-out picks a larger one."""
    rng = np.random.default_rng(0)
    n, f = 120, 64
    x = rng.normal(size=(n, f)) @ rng.normal(size=(f, f))  # correlated, like untrained-network features
    w = rng.normal(size=(f, 3)) * (rng.random((f, 1)) < 0.1)
    y = x @ w * 0.1 + rng.normal(size=(n, 3))
    train, test = slice(0, 80), slice(80, None)
    errs = {}
    for alpha in (None, "cv"):
        probe = models.probe.LinearProbe(3, None, n_components=64, alpha=alpha).fit(x[train], y[train])
        errs[alpha] = float(((probe.predict(x[test]) - y[test]) ** 2).mean())
    assert errs["cv"] < errs[None]
    assert models.probe.LinearProbe(3, None, n_components=64, alpha="cv").fit(x[train], y[train]).alpha_ > \
        models.probe.hest_alpha(64, 3)


def test_frozen_cache_encodes_each_spot_once_and_bf16_stays_close_to_fp32(toy2):
    adata, store = toy2
    data = predict.prediction_data(adata, store, "completed")
    torch.manual_seed(0)
    net = models.build("shufflenet", 4, pretrained=False).eval()

    def encode(x):
        return net(x.float() / 255.0)

    exact = features.FrozenCache(data, encode, torch.device("cpu"), batch_size=5, bf16=False)
    fast = features.FrozenCache(data, encode, torch.device("cpu"), batch_size=5, bf16=True)
    rows = np.arange(12)
    (a,), (b,) = exact.get(rows), fast.get(rows)
    assert exact.n_encoded == 12 and a.dtype == b.dtype == torch.float32
    exact.get(np.array([3, 3, 11, 12]))
    assert exact.n_encoded == 13, "spots already encoded are not encoded again"
    assert not torch.equal(a, b), "bf16 really ran"
    assert (a - b).abs().max() <= 0.05 * a.abs().max() + 1e-3
    assert features.FrozenCache(data, encode, torch.device("cpu")).bf16 == features.native_bf16(torch.device("cpu"))


def test_frozen_features_are_kept_on_disk_for_the_next_process_keyed_by_the_weights(toy2, monkeypatch):
    adata, store = toy2
    data = predict.prediction_data(adata, store, "completed")
    torch.manual_seed(0)
    net = models.build("shufflenet", 4, pretrained=False).eval()

    def cache(module):
        return features.FrozenCache(data, lambda x: module(x.float() / 255.0), torch.device("cpu"), batch_size=5,
                                 bf16=False, module=module)

    first = cache(net)
    assert first.file is not None and first.file.parent == Path(store.path) / "features"
    (a,) = first.get(np.arange(12))
    assert first.file.is_file() and first.n_loaded == 0
    again = cache(net)  # another process with the same weights: reads, encodes nothing already there
    assert again.n_loaded == 12
    (b,) = again.get(np.arange(12))
    assert again.n_encoded == 0 and torch.equal(a, b)
    again.get(np.array([12, 13]))
    assert again.n_encoded == 2
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        next(net.parameters()).add_(1.0)  # other weights: another file, nothing read
    other = cache(net)
    assert other.file != first.file and other.n_loaded == 0
    first.file.write_bytes(b"not a torch file")  # damaged: recomputed with a warning, never trusted
    net.load_state_dict(weights)
    with pytest.warns(UserWarning, match="unreadable feature cache"):
        damaged = cache(net)
    assert damaged.n_loaded == 0 and torch.allclose(damaged.get(np.arange(12))[0], a)
    monkeypatch.setenv(features.FEATURE_CACHE_ENV, "0")
    assert cache(net).file is None
