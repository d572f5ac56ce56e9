"""The predictor registry and the patch-encoder predictors (ShuffleNet, ViT-B, ViT-B+Δ, STNet)."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch
from torch import nn

from spared_utils import models
from spared_utils.models import encoders


def _tiny_backbone() -> nn.Module:
    """A small, not rotation-invariant backbone: 4×4 average pooling, flattened (48 features)."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten())


def _tiny(**flags) -> encoders.PatchRegressor:
    torch.manual_seed(0)
    return encoders.PatchRegressor(_tiny_backbone(), 48, 3, **flags)


def test_names_and_interface():
    assert set(models.NAMES) >= {"shufflenet", "vit_b", "vit_b_delta", "stnet"}
    with pytest.raises(ValueError, match="known: shufflenet"):
        models.build("resnet9000", 4)
    with pytest.raises(ValueError, match="n_genes"):
        models.build("shufflenet", 0)
    with pytest.raises(TypeError, match="does not accept"):
        models.build("shufflenet", 4, nonsense=1)


def test_shufflenet_output_shape_and_parameter_count():
    m = models.build("shufflenet", 7)
    x = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    m.eval()
    with torch.no_grad():
        assert m(x).shape == (2, 7)
    total = sum(p.numel() for p in m.parameters())
    assert models.count_parameters(m) == total
    # Freeze the backbone: only the head counts (1024 features × 7 genes + 7 biases).
    for p in m.backbone.parameters():
        p.requires_grad_(False)
    assert models.count_parameters(m) == 1024 * 7 + 7


def test_shufflenet_width_is_a_parameter():
    half = models.count_parameters(models.build("shufflenet", 4))
    full = models.count_parameters(models.build("shufflenet", 4, width=1.0))
    assert half < full
    with pytest.raises(ValueError, match="width"):
        models.build("shufflenet", 4, width=0.7)


@pytest.mark.parametrize("name,flags", [
    ("vit_b", dict(predict_delta=False, mean_init_head=False, dihedral_average=False, input_stats="imagenet")),
    ("vit_b_delta", dict(predict_delta=True, mean_init_head=True, dihedral_average=False, input_stats="imagenet")),
    ("stnet", dict(predict_delta=False, mean_init_head=True, dihedral_average=True, input_stats="training")),
])
def test_each_predictor_has_its_recipe(name, flags):
    m = models.build(name, 5)
    assert {k: getattr(m, k) for k in flags} == flags
    assert m.head.out_features == 5


def test_parameter_ordering_matches_the_paper():
    counts = {n: models.count_parameters(models.build(n, 128)) for n in ("shufflenet", "stnet", "vit_b", "vit_b_delta")}
    assert counts["shufflenet"] < counts["stnet"] < counts["vit_b"] == counts["vit_b_delta"]
    assert 0.3e6 < counts["shufflenet"] < 0.7e6 and 80e6 < counts["vit_b"] < 90e6 and 6e6 < counts["stnet"] < 8e6


def test_image_normalize_known_values():
    norm = encoders.ImageNormalize()
    white = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    out = norm(white)[0, :, 0, 0]
    expected = (1 - np.array(encoders.IMAGENET_MEAN)) / np.array(encoders.IMAGENET_STD)
    assert np.allclose(out.numpy(), expected, atol=1e-6)
    # float input is taken on the 0–1 scale
    assert torch.allclose(norm(torch.ones(1, 3, 2, 2)), norm(white))
    norm.set_stats([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    assert torch.allclose(norm(white), torch.full((1, 3, 2, 2), 2.0))
    with pytest.raises(ValueError, match="positive"):
        norm.set_stats([0, 0, 0], [0, 1, 1])


def test_delta_model_adds_the_training_mean_back():
    mean = np.array([1.5, -2.0, 7.25], dtype=np.float32)
    x = torch.rand(4, 3, 16, 16)
    plain, delta = _tiny(), _tiny(predict_delta=True)
    before = plain(x)
    plain.set_target_mean(mean)  # a no-op for a model without Δ or mean-initialised head
    assert torch.allclose(plain(x), before)
    delta.set_target_mean(mean)
    assert torch.allclose(delta(x) - torch.from_numpy(mean), before, atol=1e-6)
    with pytest.raises(ValueError, match="expected \\(3,\\)"):
        delta.set_target_mean(np.zeros(4))


def test_stnet_head_starts_at_the_training_mean():
    m = models.build("stnet", 3)
    mean = np.array([0.5, 3.0, 9.0], dtype=np.float32)
    m.set_target_mean(mean)
    assert torch.count_nonzero(m.head.weight) == 0
    m.eval()
    with torch.no_grad():
        out = m(torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8))
    assert np.allclose(out.numpy(), mean[None], atol=1e-6)


def test_mean_initialised_delta_head_starts_at_the_mean_not_twice_the_mean():
    mean = np.array([1.5, -2.0, 7.25], dtype=np.float32)
    m = _tiny(predict_delta=True, mean_init_head=True)
    m.set_target_mean(mean)
    assert torch.count_nonzero(m.head.weight) == 0 and torch.count_nonzero(m.head.bias) == 0
    with torch.no_grad():
        out = m(torch.rand(5, 3, 16, 16))
    assert np.allclose(out.numpy(), np.broadcast_to(mean, (5, 3)), atol=1e-6)
    assert not models.build("vit_b_delta", 3, mean_init_head=False).mean_init_head  # the authors' random head


def test_input_size_resizes_patches_before_the_backbone():
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(tuple(x.shape[-2:]))
            return x.mean(dim=(2, 3))

    m = encoders.PatchRegressor(Probe(), 3, 2, input_size=32)
    m(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8))
    assert seen == [(32, 32)], "a 64 px patch must reach the backbone at 32 px"
    encoders.PatchRegressor(Probe(), 3, 2)(torch.rand(1, 3, 48, 48))
    assert seen[-1] == (48, 48), "without input_size the patch is read as stored"
    with pytest.raises(ValueError, match="input_size"):
        encoders.PatchRegressor(Probe(), 3, 2, input_size=4)


def test_vit_at_112_px_reads_a_4x_shorter_sequence_with_interpolated_positions():
    torch.manual_seed(0)
    full, n_features = encoders._vit_b_16(False)
    torch.manual_seed(0)
    small, _ = encoders._vit_b_16(False, input_size=112)
    assert small.image_size == 112 and full.encoder.pos_embedding.shape[1] == 197
    assert small.encoder.pos_embedding.shape[1] == 50, "(112 / 16)² tiles + the class token"
    # the class token's position and every other weight carry over; the grid is interpolated
    assert torch.equal(small.encoder.pos_embedding[:, 0], full.encoder.pos_embedding[:, 0])
    assert torch.equal(small.conv_proj.weight, full.conv_proj.weight)
    grid = full.encoder.pos_embedding[:, 1:].reshape(1, 14, 14, -1)
    assert torch.allclose(small.encoder.pos_embedding[:, 1:].mean(), grid.mean(), atol=0.05)
    # element-wise: the 14x14 grid resampled to 7x7 independently (bicubic, corners aligned, as
    # torchvision's interpolate_embeddings does); the corner tiles keep their exact positions
    expected = torch.nn.functional.interpolate(grid.permute(0, 3, 1, 2), size=(7, 7), mode="bicubic",
                                               align_corners=True).permute(0, 2, 3, 1).reshape(1, 49, -1)
    assert grid.std() > 0.01, "a random ImageNet-like grid, so a wrong resampling shows"
    assert torch.allclose(small.encoder.pos_embedding[:, 1:], expected, atol=1e-6)
    small_grid = small.encoder.pos_embedding[:, 1:].reshape(1, 7, 7, -1)
    for (i, j), (k, l) in (((0, 0), (0, 0)), ((0, 6), (0, 13)), ((6, 0), (13, 0)), ((6, 6), (13, 13))):
        assert torch.allclose(small_grid[0, i, j], grid[0, k, l], atol=1e-6)
    m = models.build("vit_b", 3, input_size=112)
    with torch.no_grad():
        assert m(torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)).shape == (2, 3)
    head_32, head_3 = 768 * 32 + 32, 768 * 3 + 3
    fewer_positions = (197 - 50) * 768
    assert models.count_parameters(m) == models.record("vit_b").n_params_32 - head_32 + head_3 - fewer_positions
    with pytest.raises(ValueError, match="multiple of 16"):
        encoders._vit_b_16(False, input_size=100)


def test_shufflenet_can_start_at_the_training_mean():
    m = models.build("shufflenet", 3, mean_init_head=True, input_size=64)
    mean = np.array([8.0, 0.5, 3.0], dtype=np.float32)
    m.set_target_mean(mean)
    m.eval()
    with torch.no_grad():
        out = m(torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8))
    assert np.allclose(out.numpy(), np.broadcast_to(mean, (2, 3)), atol=1e-5)
    assert not models.build("shufflenet", 3).mean_init_head, "the paper's head starts at PyTorch's init"


def test_dihedral_views_are_the_eight_symmetries():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    views = encoders.dihedral_views(x)
    assert len(views) == 8
    assert len({tuple(v.flatten().tolist()) for v in views}) == 8
    assert torch.equal(views[0], x)
    # The set is closed under a rotation: rotating x permutes its views.
    rotated = {tuple(v.flatten().tolist()) for v in encoders.dihedral_views(torch.rot90(x, 1, (-2, -1)))}
    assert rotated == {tuple(v.flatten().tolist()) for v in views}


def test_dihedral_average_makes_evaluation_invariant():
    m = _tiny(dihedral_average=True)
    x = torch.rand(2, 3, 16, 16)
    turned = torch.flip(torch.rot90(x, 1, (-2, -1)), dims=(-1,))
    m.train()
    assert not torch.allclose(m(x), m(turned), atol=1e-4), "the tiny backbone should not be invariant by itself"
    m.eval()
    with torch.no_grad():
        assert torch.allclose(m(x), m(turned), atol=1e-5)
        views = encoders.dihedral_views(x)
        assert torch.allclose(m(x), torch.stack([m.forward_single(v) for v in views]).mean(0), atol=1e-6)


def test_pretrained_offline_fails_fast_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    attempts = []

    def no_network(address, timeout=None, *args, **kwargs):
        attempts.append((address, timeout))
        raise OSError("network is unreachable (forced by the test)")

    def must_not_download(*args, **kwargs):  # pragma: no cover - failing path
        raise AssertionError("no download should be attempted when the host is unreachable")

    monkeypatch.setattr(encoders.socket, "create_connection", no_network)
    import torchvision.models._api as api

    monkeypatch.setattr(api, "load_state_dict_from_url", must_not_download)
    for name in ("shufflenet", "vit_b", "stnet"):
        attempts.clear()
        with pytest.raises(models.PretrainedWeightsUnavailable, match="pretrained=False") as info:
            models.build(name, 4, pretrained=True)
        # fails fast: one connection attempt, bounded by a short timeout, no retry, no download
        assert len(attempts) == 1, f"{name}: {len(attempts)} connection attempts, expected one"
        (host, port), timeout = attempts[0]
        assert port == 443 and host and timeout is not None and 0 < timeout <= 5
        assert str(tmp_path / "torch") in str(info.value), "the message names the cache folder to fill"


def test_pretrained_download_failure_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(encoders, "_reachable", lambda url, timeout=3.0: True)
    import torchvision.models._api as api

    def fail(*args, **kwargs):
        raise urllib.error.URLError("connection reset (forced by the test)")

    monkeypatch.setattr(api, "load_state_dict_from_url", fail)
    with pytest.raises(models.PretrainedWeightsUnavailable, match="download failed"):
        models.build("shufflenet", 4, pretrained=True)


def test_weights_cache_path_follows_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    from torchvision.models import ShuffleNet_V2_X0_5_Weights

    path = encoders.weights_cache_path(ShuffleNet_V2_X0_5_Weights.IMAGENET1K_V1)
    assert path == tmp_path / "hub" / "checkpoints" / "shufflenetv2_x0.5-f707e7126e.pth"
