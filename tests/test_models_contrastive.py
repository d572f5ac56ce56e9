"""BLEEP (spared_utils.models.contrastive): embeddings, its soft-target loss, and retrieval."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from spared_utils.models import contrastive
from spared_utils.models.contrastive import (
    BLEEP,
    RetrievalBank,
    bleep,
    bleep_loss,
    build_bank,
    topk_search,
)
from spared_utils.models.encoders import PretrainedWeightsUnavailable
from spared_utils.training import count_parameters


@pytest.fixture(scope="module")
def tiny():
    """ResNet-18 BLEEP at 32 px, 5 genes, random weights."""
    torch.manual_seed(0)
    return bleep(5, backbone="resnet18")


def _patches(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def _hand_loss(img: np.ndarray, expr: np.ndarray, tau: float) -> float:
    """The official formula, written with loops in float64."""
    b = img.shape[0]

    def softmax(v):
        e = np.exp(v - v.max())
        return e / e.sum()

    logits = expr @ img.T / tau
    sim = (img @ img.T + expr @ expr.T) / 2 / tau
    targets = np.stack([softmax(sim[i]) for i in range(b)])
    total = 0.0
    for i in range(b):
        spot_ce = -(targets[i] * np.log(softmax(logits[i]))).sum()
        image_ce = -(targets[:, i] * np.log(softmax(logits[:, i]))).sum()
        total += (spot_ce + image_ce) / 2
    return total / b


# ---------------------------------------------------------------------------------------------
# Encoders and loss
# ---------------------------------------------------------------------------------------------


def test_shapes_loss_and_gradients(tiny):
    tiny.train()
    x, y = _patches(4), torch.rand(4, 5) * 10
    assert tiny.embed_images(x).shape == (4, 256)
    assert tiny.embed_expression(y).shape == (4, 256)
    tiny.zero_grad()
    loss = tiny.contrastive_loss(x, y)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    conv_grad = tiny.image_encoder.conv1.weight.grad
    expr_grad = tiny.expression_projection.projection.weight.grad
    assert conv_grad is not None and conv_grad.abs().sum() > 0
    assert expr_grad is not None and expr_grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"\(B, 5\)"):
        tiny.embed_expression(torch.rand(4, 6))


def test_parameter_count_matches_the_heads(tiny):
    # ResNet-18 (512 features) + two heads: Linear(d,256) + Linear(256,256) + LayerNorm(256).
    backbone = count_parameters(tiny.image_encoder)
    head = lambda d: d * 256 + 256 + 256 * 256 + 256 + 2 * 256
    assert count_parameters(tiny) == backbone + head(512) + head(5)


def test_loss_equals_hand_computation():
    g = torch.Generator().manual_seed(1)
    img, expr = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    for tau in (1.0, 0.5):
        assert bleep_loss(img, expr, tau).item() == pytest.approx(_hand_loss(img.double().numpy(),
                                                                             expr.double().numpy(), tau), rel=1e-5)


def test_model_loss_is_bleep_loss_of_its_embeddings(tiny):
    tiny.eval()  # no dropout: the embeddings are deterministic
    x, y = _patches(3, seed=2), torch.rand(3, 5)
    with torch.no_grad():
        expected = bleep_loss(tiny.embed_images(x), tiny.embed_expression(y), tiny.temperature)
        assert tiny.contrastive_loss(x, y).item() == pytest.approx(expected.item(), rel=1e-6)


def test_aligned_pairs_have_lower_loss_than_shuffled():
    # Identical encoders on identical inputs: the image "encoder" is the channel mean of the
    # (normalised) patch, the expression is that same 3-vector and both heads share weights.
    torch.manual_seed(3)
    model = BLEEP(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), 3, 3, projection_dim=8, dropout=0.0)
    model.expression_projection.load_state_dict(model.image_projection.state_dict())
    x = torch.rand(6, 3, 8, 8) * torch.linspace(0, 1, 6).view(6, 1, 1, 1)  # spots of distinct brightness
    x[:, 1] = x[:, 1].flip(0)                                              # and distinct colours
    features = model.normalize(x).mean(dim=(2, 3))
    assert torch.allclose(model.embed_images(x), model.embed_expression(features), atol=1e-6)
    aligned = model.contrastive_loss(x, features).item()
    perm = torch.tensor([1, 2, 3, 4, 5, 0])
    shuffled = model.contrastive_loss(x, features[perm]).item()
    assert aligned < shuffled
    # Same comparison on random embeddings.
    e = torch.randn(16, 8, generator=torch.Generator().manual_seed(4))
    assert bleep_loss(e, e).item() < bleep_loss(e, e[torch.randperm(16)]).item()


# ---------------------------------------------------------------------------------------------
# Retrieval
# ---------------------------------------------------------------------------------------------


def test_topk_mean_equals_hand_computation():
    keys = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [-1.0, 0.2]])
    values = torch.tensor([[1.0, 10.0], [2.0, 20.0], [4.0, 40.0], [8.0, 80.0]])
    bank = RetrievalBank(keys, values, ids=["a", "b", "c", "d"])
    query = torch.tensor([[2.0, 0.5]])
    # cosines: a 0.970, b 0.243, c 0.857, d -0.891  →  top-2 = {a, c}, top-3 = {a, c, b}
    pred2, idx2 = bank.query(query, k=2, return_indices=True)
    assert idx2.tolist() == [[0, 2]]
    assert torch.allclose(pred2, torch.tensor([[2.5, 25.0]]))
    assert torch.allclose(bank.query(query, k=3), torch.tensor([[7 / 3, 70 / 3]]))
    # The raw scale of the query does not matter (cosine similarity), k=1 is "simple".
    assert torch.allclose(bank.query(query * 7, k=1), values[:1])


def test_weighted_variant_equals_hand_computation():
    keys = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [-1.0, 0.2]])
    values = torch.tensor([[1.0], [2.0], [4.0], [8.0]])
    bank = RetrievalBank(keys, values, ids=range(4))
    q = torch.tensor([[2.0, 0.5]])
    d = ((keys[[0, 2]] - q) ** 2).sum(1)         # raw squared distances of the cosine top-2 (a, c)
    w = torch.exp(-(d - d.min()))
    expected = (w * values[[0, 2], 0]).sum() / w.sum()
    got = bank.query(q, k=2, method="weighted")
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert got.item() != pytest.approx(2.5)       # differs from the plain mean


def test_masked_bank_averages_real_values_only():
    keys = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    values = torch.tensor([[1.0, 5.0], [3.0, 0.0], [9.0, 7.0]])
    mask = torch.tensor([[True, False], [True, False], [True, True]])
    bank = RetrievalBank(keys, values, ids=range(3), mask=mask)
    pred = bank.query(torch.tensor([[1.0, 0.0]]), k=2)          # neighbours 0 and 1
    # gene 0: mean of 1 and 3; gene 1: no real neighbour → bank mean over real values (7)
    assert torch.allclose(pred, torch.tensor([[2.0, 7.0]]))


def test_a_training_spot_does_not_retrieve_itself():
    # Constructed leak: spot "s2" has a key identical to the query and a distinctive expression.
    keys = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
    values = torch.tensor([[0.0], [1.0], [100.0], [3.0]])
    bank = RetrievalBank(keys, values, ids=["s0", "s1", "s2", "s3"])
    query = keys[2:3].clone()
    leaked, idx_leaked = bank.query(query, k=2, return_indices=True)
    clean, idx_clean = bank.query(query, k=2, exclude_ids=["s2"], return_indices=True)
    assert 2 in idx_leaked[0].tolist()                  # without ids it finds itself...
    assert 2 not in idx_clean[0].tolist()               # ...with its id it does not
    assert leaked.item() == pytest.approx(50.5)         # (100 + 1) / 2: its own value leaks in
    assert clean.item() == pytest.approx(2.0)           # (1 + 3) / 2
    # An id that is not in the bank (a test spot) excludes nothing.
    assert bank.query(query, k=2, exclude_ids=["t9"]).item() == pytest.approx(50.5)


def test_model_bank_excludes_every_training_query(tiny):
    tiny.eval()
    n = 6
    x, y = _patches(n, seed=5), torch.rand(n, 5) * 10
    ids = [f"spot{i}" for i in range(n)]
    build_bank(tiny, y, train_ids=ids)
    with torch.no_grad():
        pred, idx = tiny.predict(x, k=n - 1, exclude_ids=ids, return_indices=True)
        via_forward = tiny(x, spot_ids=ids)
    assert pred.shape == (n, 5)
    for i in range(n):
        assert i not in idx[i].tolist()
    # Every other training spot is retrieved: the mean of the others, by hand.
    expected = (y.sum(0, keepdim=True) - y) / (n - 1)
    assert torch.allclose(pred, expected, atol=1e-5)
    assert torch.allclose(via_forward, expected, atol=1e-5)
    tiny.attach_bank(None)


def test_chunked_search_equals_unchunked():
    g = torch.Generator().manual_seed(6)
    keys = torch.nn.functional.normalize(torch.randn(300, 16, generator=g), dim=1)
    queries = torch.randn(57, 16, generator=g)
    full_scores, full_idx = torch.topk(queries @ keys.T, 9, dim=1)
    scores, idx = topk_search(queries, keys, 9, chunk_size=7)
    assert torch.equal(idx, full_idx)
    assert torch.allclose(scores, full_scores, atol=1e-6)
    # With exclusions, and through the bank's prediction.
    exclude = torch.randint(-1, 300, (57,), generator=g)
    sim = queries @ keys.T
    rows = torch.nonzero(exclude >= 0).squeeze(1)
    sim[rows, exclude[rows]] = float("-inf")
    _, ref_idx = torch.topk(sim, 9, dim=1)
    _, ex_idx = topk_search(queries, keys, 9, exclude=exclude, chunk_size=5)
    assert torch.equal(ex_idx, ref_idx)
    values = torch.randn(300, 4, generator=g)
    bank = RetrievalBank(keys, values, ids=np.arange(300))
    ids = exclude.numpy()
    one_block = bank.query(queries, k=9, exclude_ids=ids, chunk_size=1000)
    chunked = bank.query(queries, k=9, exclude_ids=ids, chunk_size=4)
    assert torch.allclose(one_block, chunked, atol=1e-6)
    assert torch.allclose(one_block, values[ref_idx].mean(1), atol=1e-6)


def test_build_bank_refuses_non_training_spots(tiny):
    tiny.attach_bank(None)
    y = torch.rand(4, 5)
    with pytest.raises(ValueError, match="training spots only.*'val': 1"):
        build_bank(tiny, y, train_ids=list("abcd"), splits=["train", "train", "val", "train"])
    with pytest.raises(ValueError, match="'test': 2"):
        build_bank(tiny, y, splits=["test", "train", "test", "train"], attach=False)
    assert tiny.bank is None
    bank = build_bank(tiny, y, train_ids=list("abcd"), splits=["train"] * 4, attach=False)
    assert len(bank) == 4 and tiny.bank is None
    with pytest.raises(ValueError, match="unique"):
        build_bank(tiny, y, train_ids=list("abca"), attach=False)


def test_image_keys_option(tiny):
    tiny.eval()
    x, y = _patches(4, seed=7), torch.rand(4, 5)
    bank = build_bank(tiny, y, x, train_ids=range(4), key="image", attach=False)
    with torch.no_grad():
        emb = tiny.embed_images(x)
    assert torch.allclose(bank.keys, torch.nn.functional.normalize(emb, dim=1), atol=1e-5)
    # A training patch's nearest image key is its own: excluded, the nearest other spot is found.
    _, idx = bank.query(emb, k=1, exclude_ids=range(4), return_indices=True)
    assert all(idx[i, 0] != i for i in range(4))
    with pytest.raises(ValueError, match="needs train_images"):
        build_bank(tiny, y, key="image", attach=False)


def test_forward_needs_a_bank_and_bank_stays_out_of_checkpoints(tiny):
    tiny.attach_bank(None)
    with pytest.raises(RuntimeError, match="no bank attached"):
        tiny(_patches(2))
    build_bank(tiny, torch.rand(3, 5), train_ids=range(3))
    state = tiny.state_dict()
    assert not any(k.startswith("bank") for k in state)
    fresh = bleep(5, backbone="resnet18")
    fresh.load_state_dict(state)
    tiny.eval()
    with torch.no_grad():
        assert tiny(_patches(2)).shape == (2, 5)
    tiny.attach_bank(None)


def test_bank_memory_bytes_matches_the_tensors():
    keys, values = torch.randn(10, 8), torch.randn(10, 3)
    plain = RetrievalBank(keys, values, ids=range(10))
    masked = RetrievalBank(keys, values, ids=range(10), mask=torch.rand(10, 3) > 0.5)
    for bank in (plain, masked):
        held = sum(b.numel() * b.element_size() for b in bank.buffers())
        assert bank.memory_bytes() == held
    # The benchmark's largest bank: 43,804 × 256 keys ≈ 43 MiB; a 1,024-query block ≈ 171 MiB.
    assert contrastive.bank_memory_bytes(43_804, 256) == 43_804 * 257 * 4
    assert contrastive.search_memory_bytes(43_804, 1024) == 43_804 * 1024 * 4
    assert contrastive.search_memory_bytes(43_804, contrastive.auto_chunk_size(43_804)) <= contrastive.DEFAULT_BLOCK_BYTES


def test_builder_errors(monkeypatch):
    with pytest.raises(ValueError, match="unknown timm backbone"):
        bleep(4, backbone="resnet9000")
    import timm

    def offline(*args, **kwargs):
        if kwargs.get("pretrained"):
            raise OSError("no network")
        return nn.Identity()

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(PretrainedWeightsUnavailable, match="pretrained=False"):
        bleep(4, pretrained=True, backbone="resnet18")


def test_bleep_input_size_resizes_patches_before_the_encoder():
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(tuple(x.shape[-2:]))
            return x.mean(dim=(2, 3))

    model = contrastive.BLEEP(Probe(), 3, 4, projection_dim=8, input_size=32)
    model.embed_images(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8))
    contrastive.BLEEP(Probe(), 3, 4, projection_dim=8).embed_images(torch.rand(1, 3, 48, 48))
    assert seen == [(32, 32), (48, 48)], "resized to input_size when set, read as stored otherwise"
