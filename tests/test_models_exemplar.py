"""Exemplar-guided predictors (EGN, EGGN) and their exemplar bank: shapes, leakage, graphs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spared_utils import graphs
from spared_utils.models import egn as egn_mod
from spared_utils.models import eggn as eggn_mod
from spared_utils.models import exemplar as ex
from spared_utils.training import count_parameters

TINY_EGN = dict(image_size=32, patch_size=8, dim=32, depth=4, heads=2, dim_head=8, mlp_dim=64,
                bridge_heads=2, bridge_dim_head=8, feature_dim=16)
TINY_EGGN = dict(hidden=24, n_layers=2, feature_dim=16, score_dim=8)
G = 5  # genes


def _tiny_egn(seed: int = 0) -> egn_mod.EGN:
    torch.manual_seed(seed)
    return egn_mod.egn(G, **TINY_EGN)


def _tiny_eggn(seed: int = 0) -> eggn_mod.EGGN:
    torch.manual_seed(seed)
    return eggn_mod.eggn(G, **TINY_EGGN)


def _hex_slide(n_rows: int = 4, n_cols: int = 8):
    r, c = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    keep = (r + c) % 2 == 0
    return torch.as_tensor(r[keep]), torch.as_tensor(c[keep])


def _bank(n_per_slide: int = 6, slides=("a", "b", "c"), f: int = 16, seed: int = 0) -> ex.ExemplarBank:
    g = torch.Generator().manual_seed(seed)
    n = n_per_slide * len(slides)
    return ex.ExemplarBank(
        torch.randn(n, f, generator=g), torch.rand(n, G, generator=g) * 10,
        slides=np.repeat(slides, n_per_slide), ids=[f"spot{i}" for i in range(n)], splits=["train"] * n,
    )


def _assert_all_grads_finite(model: torch.nn.Module) -> None:
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad}"


# ---------------------------------------------------------------------------------------------
# Shapes and gradients
# ---------------------------------------------------------------------------------------------


def test_egn_shape_gradients_and_input_checks():
    m = _tiny_egn()
    # 24 px uint8 patches: resized to image_size=32 inside (4 × 4 grid of 8 px patches)
    x = torch.randint(0, 256, (3, 3, 24, 24), dtype=torch.uint8)
    feats, expr, own = torch.randn(3, 6, 16), torch.rand(3, 6, G) * 10, torch.randn(3, 16)
    y = m(x, feats, expr, own)
    assert y.shape == (3, G)
    ex.egn_loss(y, torch.rand(3, G) * 10).backward()
    _assert_all_grads_finite(m)
    assert m.input_stats == "training" and m.exemplar_backbone == "resnet50" and m.exemplar_metric == "l2"
    with pytest.raises(ValueError, match="exemplar_expression"):
        m(x, feats, expr[..., :-1], own)
    with pytest.raises(ValueError, match="query_features"):
        m(x, feats, expr, own[:, :-1])


def test_eggn_shape_and_gradients():
    m = _tiny_eggn()
    rows, cols = _hex_slide()
    n = len(rows)
    idx = torch.randint(0, 9, (n, 6), generator=torch.Generator().manual_seed(1))
    bank_f, bank_y = torch.randn(9, 16), torch.rand(9, G) * 10
    y = m(torch.randn(n, 16), rows, cols, bank_f[idx], bank_y[idx], exemplar_indices=idx)
    assert y.shape == (n, G)
    ex.egn_loss(y, torch.rand(n, G)).backward()
    _assert_all_grads_finite(m)
    assert m.exemplar_backbone == "resnet18" and m.exemplar_metric == "l1"


def test_expression_range_normalises_inputs_and_maps_the_output_back():
    """With the range set to an affine image of the data, the output moves by the same map."""
    m = _tiny_egn().eval()
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    feats, own = torch.randn(2, 6, 16), torch.randn(2, 16)
    expr = torch.rand(2, 6, G)
    lo, hi = torch.zeros(G), torch.ones(G)
    a, b = torch.linspace(2, 6, G), torch.linspace(-1, 3, G)
    with torch.no_grad():
        m.set_expression_range(lo, hi)
        base = m(x, feats, expr, own)
        m.set_expression_range(a * lo + b, a * hi + b)
        moved = m(x, feats, expr * a + b, own)
    torch.testing.assert_close(moved, base * a + b, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(moved, base, atol=1e-2)


# ---------------------------------------------------------------------------------------------
# The bank
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["val", "test"])
def test_bank_refuses_validation_and_test_spots(bad):
    n = 4
    splits = ["train", "train", bad, "train"]
    with pytest.raises(ValueError, match="training spots only"):
        ex.ExemplarBank(torch.randn(n, 8), torch.rand(n, G), ["s"] * n, list("abcd"), splits)
    with pytest.raises(ValueError, match="training spots only"):  # refused before any encoding
        ex.ExemplarBank.from_patches(torch.zeros(n, 3, 16, 16, dtype=torch.uint8), torch.rand(n, G),
                                     ["s"] * n, list("abcd"), splits, backbone="resnet18")
    ex.ExemplarBank(torch.randn(n, 8), torch.rand(n, G), ["s"] * n, list("abcd"), ["train"] * n)  # accepted


@pytest.mark.parametrize("p", [2.0, 1.0])
def test_chunked_knn_equals_unchunked_and_brute_force(p):
    g = torch.Generator().manual_seed(0)
    q, r = torch.randn(53, 12, generator=g), torch.randn(71, 12, generator=g)
    whole_d, whole_i = graphs.chunked_knn(q, r, 6, p=p, chunk_size=len(q))
    ref = torch.cdist(q.double(), r.double(), p=p).topk(6, largest=False)
    assert torch.equal(whole_i, ref.indices)
    for chunk in (1, 7, 50):
        d, i = graphs.chunked_knn(q, r, 6, p=p, chunk_size=chunk)
        assert torch.equal(i, whole_i)
        torch.testing.assert_close(d, whole_d, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(whole_d.double(), ref.values, rtol=1e-4, atol=1e-4)


def test_bank_metric_l1_differs_from_l2():
    """A query where the L1 and L2 nearest rows differ: the bank's metric decides."""
    feats = torch.tensor([[1.0, 1.0], [1.5, 0.0]])  # from the origin: L1 2 vs 1.5, L2 1.41 vs 1.5
    kw = dict(expression=torch.zeros(2, 1), slides=["a", "b"], ids=["x", "y"], splits=["train"] * 2)
    q = torch.zeros(1, 2)
    assert int(ex.ExemplarBank(feats, metric="l2", **kw).query(q, 1).indices) == 0
    assert int(ex.ExemplarBank(feats, metric="l1", **kw).query(q, 1).indices) == 1


def test_leakage_a_training_spot_never_retrieves_itself_nor_its_slide():
    bank = _bank()
    i = 4  # a training spot of slide "a", querying with its own bank feature
    q = bank.features[i:i + 1]
    leaky = bank.query(q, 3)
    assert int(leaky.indices[0, 0]) == i and float(leaky.distances[0, 0]) < 1e-4  # what must not happen
    by_id = bank.query(q, 3, exclude_ids=[bank.ids[i]])
    assert i not in by_id.indices[0].tolist()
    official = bank.query(q, 3, exclude_slides=[bank.slides[i]], exclude_ids=[bank.ids[i]])
    assert (bank.slides[official.indices[0].numpy()] != "a").all()
    assert (official.distances[0] > 0.5).all()
    torch.testing.assert_close(official.expression, bank.expression[official.indices])
    torch.testing.assert_close(official.features, bank.features[official.indices])
    # a spot of an unseen (test) slide with an unknown id excludes nothing
    foreign = bank.query(q, 3, exclude_slides=["test_slide"], exclude_ids=["unknown"])
    assert torch.equal(foreign.indices, leaky.indices)

    # Had its own entry been returned, the prediction would differ: the leaked exemplar carries the
    # spot's own (target) expression.
    m = _tiny_egn().eval()
    patch = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        clean = m(patch, official.features, official.expression, q)
        leaked = m(patch, leaky.features, leaky.expression, q)
    assert not torch.allclose(clean, leaked, atol=1e-4)


def test_leakage_eggn_prediction_depends_on_the_retrieved_exemplars():
    bank = _bank()
    rows, cols = _hex_slide(2, 6)
    n = len(rows)  # 6 spots = slide "a" of the bank
    q = bank.features[:n]
    ids, slides = bank.ids[:n], bank.slides[:n]
    leaky = bank.query(q, 3)
    clean = bank.query(q, 3, exclude_slides=slides, exclude_ids=ids)
    assert (leaky.indices[:, 0] == torch.arange(n)).all()
    assert not (clean.indices[:, :, None] == torch.arange(n)).any()
    m = _tiny_eggn().eval()
    with torch.no_grad():
        a = m(q, rows, cols, clean.features, clean.expression, clean.indices)
        b = m(q, rows, cols, leaky.features, leaky.expression, leaky.indices)
    assert not torch.allclose(a, b, atol=1e-4)


def test_bank_raises_when_exclusions_leave_too_few_exemplars():
    bank = _bank(n_per_slide=4, slides=("only",))
    with pytest.raises(ValueError, match="fewer than k"):
        bank.query(bank.features[:1], 2, exclude_slides=["only"])


def test_bank_from_patches_uses_a_frozen_encoder():
    g = torch.Generator().manual_seed(0)
    patches = torch.randint(0, 256, (5, 16, 16, 3), dtype=torch.uint8, generator=g)  # channel-last
    bank = ex.ExemplarBank.from_patches(patches, torch.rand(5, G), list("aabbc"), list("vwxyz"),
                                        ["train"] * 5, backbone="resnet18", batch_size=2)
    assert bank.features.shape == (5, 512) and bank.metric == "l1"
    assert count_parameters(bank.encoder) == 0
    bank.encoder.train()
    assert not bank.encoder.training
    again = bank.encode(patches.permute(0, 3, 1, 2)[1:2])  # channel-first, same patch as entry 1
    torch.testing.assert_close(again, bank.features[1:2])
    assert int(bank.query(again, 1).indices) == 1
    assert 1 not in bank.query(again, 2, exclude_ids=["w"]).indices[0].tolist()


# ---------------------------------------------------------------------------------------------
# EGGN graphs
# ---------------------------------------------------------------------------------------------


def test_eggn_spot_graph_is_the_hexagonal_first_ring():
    m = _tiny_eggn()
    rows, cols = _hex_slide(5, 10)
    n = len(rows)
    idx = torch.zeros(n, 2, dtype=torch.long)
    graph = m.build_graph(rows, cols, torch.zeros(n, 2, 16), torch.zeros(n, 2, G), idx)
    got = {(int(s), int(t)) for s, t in graph.spot_spot.T}
    pos = {(int(r), int(c)): i for i, (r, c) in enumerate(zip(rows, cols))}
    want = {(pos[(r + dr, c + dc)], i) for (r, c), i in pos.items()
            for dr, dc in graphs.HEX_OFFSETS if (r + dr, c + dc) in pos}
    assert got == want and len(want) > 0
    square = eggn_mod.eggn(G, hex_geometry=False, **TINY_EGGN)
    r, c = torch.meshgrid(torch.arange(3), torch.arange(3), indexing="ij")
    g2 = square.build_graph(r.flatten(), c.flatten(), torch.zeros(9, 1, 16), torch.zeros(9, 1, G),
                            torch.zeros(9, 1, dtype=torch.long))
    assert int((g2.spot_spot[1] == 4).sum()) == 8  # radius √2 on a square grid: 8 surrounding spots


def test_eggn_merges_shared_exemplars_by_index_or_value():
    m = _tiny_eggn().eval()
    rows, cols = _hex_slide(2, 6)
    n = len(rows)
    g = torch.Generator().manual_seed(2)
    idx = torch.randint(0, 5, (n, 3), generator=g)
    bank_f, bank_y = torch.randn(5, 16, generator=g), torch.rand(5, G, generator=g)
    graph = m.build_graph(rows, cols, bank_f[idx], bank_y[idx], idx)
    assert len(graph.exemplar_x) == len(torch.unique(idx))
    # every (spot, retrieved exemplar) pair is one exemplar → spot edge
    assert graph.exemplar_spot.shape[1] == len({(s, int(e)) for s in range(n) for e in idx[s]})
    knn = graph.exemplar_exemplar
    assert (knn[0] != knn[1]).all() and torch.equal(torch.bincount(knn[1]), torch.full((len(graph.exemplar_x),), 3))
    spot_f = torch.randn(n, 16, generator=g)
    with torch.no_grad():
        by_index = m(spot_f, rows, cols, bank_f[idx], bank_y[idx], idx)
        by_value = m(spot_f, rows, cols, bank_f[idx], bank_y[idx])
    torch.testing.assert_close(by_index, by_value)


def test_eggn_never_links_spots_of_different_slides():
    m = _tiny_eggn().eval()
    rows, cols = _hex_slide(3, 6)
    n = len(rows)
    g = torch.Generator().manual_seed(3)
    # two slides at the same array positions, retrieving from the same bank entries
    rows2, cols2 = torch.cat((rows, rows)), torch.cat((cols, cols))
    batch = torch.repeat_interleave(torch.arange(2), n)
    idx = torch.randint(0, 4, (2 * n, 3), generator=g)
    bank_f, bank_y = torch.randn(4, 16, generator=g), torch.rand(4, G, generator=g)
    spot_f = torch.randn(2 * n, 16, generator=g)
    graph = m.build_graph(rows2, cols2, bank_f[idx], bank_y[idx], idx, batch=batch)
    sb, eb = graph.spot_batch, graph.exemplar_batch
    assert graph.spot_spot.shape[1] > 0
    assert (sb[graph.spot_spot[0]] == sb[graph.spot_spot[1]]).all()
    assert (eb[graph.exemplar_spot[0]] == sb[graph.exemplar_spot[1]]).all()
    assert (eb[graph.exemplar_exemplar[0]] == eb[graph.exemplar_exemplar[1]]).all()
    # a bank entry retrieved in both slides is one node per slide, not a bridge between them
    shared = set(idx[:n].flatten().tolist()) & set(idx[n:].flatten().tolist())
    assert len(graph.exemplar_x) == len(set(idx[:n].flatten().tolist())) + len(set(idx[n:].flatten().tolist()))
    assert shared
    # so each slide's prediction is what it is alone
    with torch.no_grad():
        joint = m(spot_f, rows2, cols2, bank_f[idx], bank_y[idx], idx, batch=batch)
        alone = m(spot_f[:n], rows, cols, bank_f[idx[:n]], bank_y[idx[:n]], idx[:n])
        merged = m(spot_f, rows2, cols2, bank_f[idx], bank_y[idx], idx)  # no batch: one slide
    torch.testing.assert_close(joint[:n], alone, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(merged[:n], alone, atol=1e-4)  # the check above could fail


# ---------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------


def test_egn_loss_is_mse_plus_half_one_minus_pcc_on_masked_entries():
    g = torch.Generator().manual_seed(4)
    pred, target = torch.randn(8, 3, generator=g), torch.randn(8, 3, generator=g)
    p, t = pred.double().numpy(), target.double().numpy()
    pcc = np.mean([np.corrcoef(p[:, j], t[:, j])[0, 1] for j in range(3)])
    want = np.mean((p - t) ** 2) + 0.5 * (1 - pcc)
    assert float(ex.egn_loss(pred, target)) == pytest.approx(want, rel=1e-5)
    mask = torch.ones(8, 3, dtype=torch.bool)
    mask[:3, 1] = False
    mask[:, 2] = False  # gene 2 has no real value: out of MSE and PCC
    pm = [p[mask[:, j].numpy(), j] for j in range(2)]
    tm = [t[mask[:, j].numpy(), j] for j in range(2)]
    mse = np.mean(np.concatenate([(a - b) ** 2 for a, b in zip(pm, tm)]))
    want = mse + 0.5 * (1 - np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(pm, tm)]))
    noisy = target.clone()
    noisy[~mask] = 1e3  # masked-out targets must not matter
    assert float(ex.egn_loss(pred, noisy, mask)) == pytest.approx(want, rel=1e-5)


# Parameter counts from the layer arithmetic of each architecture (module docstring, official
# code), written out here independently of the modules: the records' n_params_32/128 must match.


def _linear(i: int, o: int, bias: bool = True) -> int:
    return i * o + (o if bias else 0)


def _layer_norm(d: int) -> int:
    return 2 * d


def _egn_params(n_genes, image_size=256, patch_size=32, dim=1024, depth=8, heads=16, dim_head=64, mlp_dim=4096,
                bridge_every=2, bridge_heads=8, bridge_dim_head=64, projector_layers=2, feature_dim=2048):
    n_patches = (image_size // patch_size) ** 2
    residual_mlp = lambda hidden: _layer_norm(dim) + _linear(dim, hidden) + _linear(hidden, dim)  # noqa: E731
    projector = (_linear(feature_dim, dim) + _linear(feature_dim + n_genes, dim)  # spot, exemplar tokens
                 + projector_layers * residual_mlp(dim) + _linear(n_genes, dim))  # linear expression projection
    attention = _layer_norm(dim) + _linear(dim, 3 * heads * dim_head, bias=False) + _linear(heads * dim_head, dim)
    bridge_inner, update_hidden = bridge_heads * bridge_dim_head, 4 * bridge_dim_head

    def bridge(updates_exemplars: bool) -> int:
        gates = _linear(2 * dim, update_hidden) + _linear(update_hidden, (2 if updates_exemplars else 1) * dim)
        update = gates + _linear(dim, dim) + (_layer_norm(dim) if updates_exemplars else 0)
        return (update + _layer_norm(dim) + _linear(dim, bridge_inner)          # to_x
                + _layer_norm(dim) + _linear(dim, n_patches * bridge_heads)     # one gate per (head, position)
                + 2 * _linear(bridge_inner, dim, bias=False))                   # to tokens, to spot

    n_bridges = depth // bridge_every  # after every bridge_every-th block; the last one updates no exemplar
    return (_linear(3 * patch_size ** 2, dim) + n_patches * dim + projector
            + depth * (attention + residual_mlp(mlp_dim))
            + (n_bridges - 1) * bridge(True) + bridge(False)
            + _linear(dim, dim)                                             # CSRA pooling
            + _layer_norm(2 * dim) + _linear(2 * dim, n_genes))             # head on [pooled, spot]


def _eggn_params(n_genes, hidden=512, n_layers=4, feature_dim=512, score_dim=128):
    sage = _linear(hidden, hidden) + _linear(hidden, hidden, bias=False)    # neighbour mean (bias) + root
    bridge = (3 * _linear(hidden, hidden, bias=False)                       # exemplar, spot, expression
              + _linear(hidden, score_dim, bias=False) + _linear(score_dim, 2 * score_dim)
              + 2 * hidden                                                  # two biases
              + 2 * _linear(hidden, hidden))                                # outputs
    return (_linear(feature_dim, hidden, bias=False) + _linear(feature_dim + n_genes, hidden, bias=False)
            + _linear(hidden, hidden, bias=False) + _linear(n_genes, hidden, bias=False)
            + n_layers * (2 * sage + bridge)
            + 1 + _linear(hidden, hidden)                                   # pooling: lambda and its head
            + _linear(hidden, n_genes))


def test_egn_and_eggn_parameter_counts_follow_from_the_layer_arithmetic():
    from spared_utils import models

    # the records (the book's tables) against the arithmetic at the official sizes
    for name, count in (("egn", _egn_params), ("eggn", _eggn_params)):
        record = models.record(name)
        assert (record.n_params_32, record.n_params_128) == (count(32), count(128)), name
    # the modules against the same arithmetic, on small sizes that change every term
    small = dict(image_size=32, patch_size=8, dim=24, depth=6, heads=3, dim_head=5, mlp_dim=40, bridge_every=3,
                 bridge_heads=2, bridge_dim_head=6, projector_layers=3, feature_dim=20)
    assert count_parameters(egn_mod.egn(5, **small)) == _egn_params(5, **small)
    small = dict(hidden=24, n_layers=3, feature_dim=20, score_dim=8)
    assert count_parameters(eggn_mod.eggn(5, **small)) == _eggn_params(5, **small)
