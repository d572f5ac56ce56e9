"""The shared training loop: learns, keeps the best checkpoint, is reproducible and resumable."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from spared_utils import training


def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]]) + 0.05 * torch.randn(256, 1, generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:192], y[:192]), batch_size=32,
                                         shuffle=True, generator=torch.Generator().manual_seed(seed))
    xv, yv = x[192:], y[192:]

    def loss_fn(model, batch):
        xb, yb = batch
        return nn.functional.mse_loss(model(xb), yb)

    def validate(model):
        return float(nn.functional.mse_loss(model(xv), yv).detach())

    return loader, loss_fn, validate


def test_fit_learns_and_keeps_best_weights():
    loader, loss_fn, validate = _problem()
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    before = validate(model)
    res = training.fit(model, loader, loss_fn, validate, training.TrainConfig(iterations=60, eval_every=10, learning_rate=0.05, progress=False))
    assert res.best_val < 0.1 * before
    assert res.best_val == pytest.approx(res.history["val_loss"].min())
    assert validate(model) == pytest.approx(res.best_val, rel=1e-5), "model must hold the best weights"
    assert list(res.history["iteration"]) == [10, 20, 30, 40, 50, 60]


def test_same_seed_same_numbers_on_cpu():
    out = []
    for _ in range(2):
        loader, loss_fn, validate = _problem()
        torch.manual_seed(1)
        model = nn.Linear(4, 1)
        res = training.fit(model, loader, loss_fn, validate, training.TrainConfig(iterations=20, eval_every=5, learning_rate=0.01, progress=False, seed=3))
        out.append(res.history["val_loss"].to_numpy())
    np.testing.assert_array_equal(out[0], out[1])


def test_interrupted_run_resumes_from_last_checkpoint(tmp_path):
    loader, loss_fn, validate = _problem()
    cfg = training.TrainConfig(iterations=40, eval_every=10, learning_rate=0.05, progress=False, checkpoint_dir=str(tmp_path),
                               checkpoint_every_s=0)
    calls = {"n": 0}

    def interrupted(model, batch):
        calls["n"] += 1
        if calls["n"] == 25:
            raise KeyboardInterrupt
        return loss_fn(model, batch)

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        training.fit(nn.Linear(4, 1), loader, interrupted, validate, cfg)
    assert (tmp_path / "best.pt").is_file() and (tmp_path / "last.pt").is_file()
    calls["n"] = 100  # no more interruptions
    res = training.fit(nn.Linear(4, 1), loader, interrupted, validate, cfg)
    assert calls["n"] - 100 == 20, "only the 20 steps after the last checkpoint are run again"
    assert list(res.history["iteration"]) == [10, 20, 30, 40]
    other = training.TrainConfig(iterations=40, eval_every=10, learning_rate=0.01, progress=False, checkpoint_dir=str(tmp_path))
    calls["n"] = 100
    training.fit(nn.Linear(4, 1), loader, interrupted, validate, other)
    assert calls["n"] - 100 == 40, "a checkpoint of another configuration is not resumed"


def test_bad_config_and_nan_loss_are_clear():
    with pytest.raises(ValueError, match="iterations"):
        training.TrainConfig(iterations=0)
    loader, _, validate = _problem()
    with pytest.raises(FloatingPointError, match="learning_rate"):
        training.fit(nn.Linear(4, 1), loader, lambda m, b: m(b[0]).sum() * float("nan"), validate,
                     training.TrainConfig(iterations=3, progress=False))


def test_lr_search_picks_lowest_validation():
    def train(lr):
        loader, loss_fn, validate = _problem()
        torch.manual_seed(0)
        return training.fit(nn.Linear(4, 1), loader, loss_fn, validate,
                            training.TrainConfig(iterations=15, eval_every=5, learning_rate=lr, progress=False))

    best, table = training.lr_search(train, [1e-5, 5e-2])
    assert best == 5e-2
    assert table.set_index("learning_rate").loc[1e-5, "best_val"] > table.set_index("learning_rate").loc[5e-2, "best_val"]


def test_resolve_device():
    assert training.resolve_device("cpu").type == "cpu"
    assert training.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA"):
            training.resolve_device("cuda")


def test_finished_run_keeps_no_weights_in_last_checkpoint(tmp_path):
    """A finished last.pt drops the weights and Adam moments; a rerun still skips training."""
    loader, loss_fn, validate = _problem()
    cfg = training.TrainConfig(iterations=20, eval_every=10, learning_rate=0.05, progress=False, checkpoint_dir=str(tmp_path))
    calls = {"n": 0}

    def counted(model, batch):
        calls["n"] += 1
        return loss_fn(model, batch)

    torch.manual_seed(0)
    first = training.fit(nn.Linear(4, 1), loader, counted, validate, cfg)
    last = torch.load(tmp_path / "last.pt", weights_only=False)
    assert "model" not in last and "optimiser" not in last and last["iteration"] == 20
    calls["n"] = 0
    again = training.fit(nn.Linear(4, 1), loader, counted, validate, cfg)
    assert calls["n"] == 0, "a finished run is not trained again"
    assert again.best_val == first.best_val
    model = nn.Linear(4, 1)
    training.fit(model, loader, counted, validate, cfg)
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    torch.testing.assert_close(model.weight.detach(), best["weight"])  # the best weights are loaded
    (tmp_path / "best.pt").unlink()  # a finished record without its weights is trained again
    calls["n"] = 0
    training.fit(nn.Linear(4, 1), loader, counted, validate, cfg)
    assert calls["n"] == 20


def test_checkpoints_are_written_at_most_every_checkpoint_every_s(tmp_path):
    """With a long interval nothing is written before the end; at the end both files exist."""
    loader, loss_fn, validate = _problem()
    cfg = training.TrainConfig(iterations=40, eval_every=10, learning_rate=0.05, progress=False,
                               checkpoint_dir=str(tmp_path), checkpoint_every_s=1e9)
    seen = []

    def watched(model, batch):
        seen.append(sorted(p.name for p in tmp_path.iterdir()))
        return loss_fn(model, batch)

    torch.manual_seed(0)
    training.fit(nn.Linear(4, 1), loader, watched, validate, cfg)
    assert all(files == [] for files in seen), "nothing is written before the last evaluation"
    assert (tmp_path / "best.pt").is_file() and (tmp_path / "last.pt").is_file()


def test_warmup_raises_the_rate_linearly_then_holds_it():
    loader, loss_fn, validate = _problem()
    seen = []

    class Spy(nn.Linear):
        pass

    model = Spy(4, 1)
    cfg = training.TrainConfig(iterations=8, eval_every=4, learning_rate=0.04, warmup_iterations=4, progress=False)
    original = torch.optim.Adam.step

    def step(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return original(self, *a, **k)

    torch.optim.Adam.step = step
    try:
        training.fit(model, loader, loss_fn, validate, cfg)
    finally:
        torch.optim.Adam.step = original
    assert seen == pytest.approx([0.01, 0.02, 0.03, 0.04, 0.04, 0.04, 0.04, 0.04])
    assert [cfg.learning_rate_at(i) for i in (1, 4, 8)] == pytest.approx([0.01, 0.04, 0.04])


def test_warmup_changes_the_run_hash_only_when_set():
    plain = training.TrainConfig(iterations=10)
    assert "warmup_iterations" not in plain.identity(), "runs stored before warm-up existed keep their hash"
    assert plain.hash("x") == training.TrainConfig(iterations=10, warmup_iterations=0).hash("x")
    assert plain.hash("x") != training.TrainConfig(iterations=10, warmup_iterations=5).hash("x")
    with pytest.raises(ValueError, match="warmup_iterations"):
        training.TrainConfig(iterations=10, warmup_iterations=-1)
    short = training.TrainConfig(iterations=4, learning_rate=1.0, warmup_iterations=20)
    assert [short.learning_rate_at(i) for i in (1, 2, 4)] == pytest.approx([0.25, 0.5, 1.0]), "reaches the rate"


def test_ema_scores_the_average_and_resumes_to_the_same_numbers(tmp_path):
    def run(ckpt, interrupt_at=None, ema=0.9):
        loader, loss_fn, validate = _problem()
        calls = {"n": 0}

        def loss(model, batch):
            calls["n"] += 1
            if calls["n"] == interrupt_at:
                raise KeyboardInterrupt
            return loss_fn(model, batch)

        cfg = training.TrainConfig(iterations=40, eval_every=10, learning_rate=0.05, progress=False, ema_decay=ema,
                                   checkpoint_dir=str(ckpt) if ckpt else None, checkpoint_every_s=0)
        torch.manual_seed(0)
        model = nn.Linear(4, 1)
        res = training.fit(model, loader, loss, validate, cfg)
        return model, res, validate

    model, plain, validate = run(None)
    assert validate(model) == pytest.approx(plain.best_val, rel=1e-5), "the returned weights are the best average"
    _, raw, _ = run(None, ema=0.0)
    assert not np.allclose(plain.history["val_loss"], raw.history["val_loss"]), "the average is what is scored"
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, interrupt_at=25)
    _, resumed, _ = run(tmp_path)
    np.testing.assert_allclose(resumed.history["val_loss"], plain.history["val_loss"], rtol=1e-6)
