"""Slide-level predictors (HisToGene, Hist2ST) and Hist2ST's spot graph."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from spared_utils.graphs import HEX_OFFSETS
from spared_utils.models import slide
from spared_utils.models.encoders import PretrainedWeightsUnavailable

GENES = 5
TINY_HISTOGENE = {"patch_size": 16, "dim": 16, "depth": 2, "heads": 2, "dim_head": 8, "mlp_dim": 32}
# 16 px / 4 px conv patch = 4×4 map, 8 channels → 1 after the 8× reduction: width 16.
TINY_HIST2ST = {"patch_size": 16, "conv_patch": 4, "channels": 8, "mixer_depth": 1, "depth": 1,
                "gnn_depth": 2, "heads": 2, "dim_head": 8}


def _hex_grid(n_rows: int, n_cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Visium-style array positions: (row, col) with row + col even."""
    pos = [(r, c) for r in range(n_rows) for c in range(n_cols) if (r + c) % 2 == 0]
    rows, cols = zip(*pos)
    return torch.tensor(rows), torch.tensor(cols)


def _slide(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def _tiny_histogene(**kw) -> slide.HisToGene:
    torch.manual_seed(0)
    return slide.histogene(GENES, **{**TINY_HISTOGENE, **kw})


def _tiny_hist2st(**kw) -> slide.Hist2ST:
    torch.manual_seed(0)
    return slide.hist2st(GENES, **{**TINY_HIST2ST, **kw})


def _edges(edge_index: torch.Tensor) -> set[tuple[int, int]]:
    return set(map(tuple, edge_index.t().tolist()))


# ---------------------------------------------------------------------------------------------
# Shapes and gradients
# ---------------------------------------------------------------------------------------------


def test_histogene_shape_and_finite_gradients():
    m = _tiny_histogene()
    rows, cols = _hex_grid(3, 6)  # 9 spots
    out = m(_slide(len(rows)), rows, cols)
    assert out.shape == (len(rows), GENES)
    out.square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert m.patch_embedding.weight.grad.abs().sum() > 0
    # Only the embedding rows of coordinates present in the slide receive gradient.
    row_grad = m.position.row_embed.weight.grad.abs().sum(1)
    assert (row_grad[:3] > 0).all() and (row_grad[3:] == 0).all()


def test_hist2st_shape_and_finite_gradients():
    m = _tiny_hist2st()
    assert m.dim == 16
    rows, cols = _hex_grid(3, 6)
    out = m(_slide(len(rows)), rows, cols)
    assert out.shape == (len(rows), GENES)
    out.square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # The gradient reaches the first layer through the GNN and the jumping knowledge.
    for p in (m.patch_embedding.weight, m.gnn[0].lin_l.weight, m.jk.lstm.weight_ih_l0):
        assert p.grad.abs().sum() > 0


def test_hist2st_default_width_and_pyg_jumping_knowledge():
    assert slide.hist2st(3, channels=32, conv_patch=7, patch_size=112, depth=1, gnn_depth=1).dim == 1024
    m = _tiny_hist2st(jk="pyg_lstm")
    rows, cols = _hex_grid(2, 4)
    assert m(_slide(len(rows)), rows, cols).shape == (len(rows), GENES)
    with pytest.raises(ValueError, match="jk"):
        _tiny_hist2st(jk="max")


def test_slide_batch_axis_resize_and_refusals():
    m = _tiny_histogene().eval()
    rows, cols = _hex_grid(2, 4)
    big = _slide(len(rows), size=40)
    with torch.no_grad():
        out = m(big, rows, cols)
        # A (1, N, ...) batch is the same slide.
        torch.testing.assert_close(m(big[None], rows[None], cols[None]), out)
        # Larger patches are resized down to patch_size before flattening.
        small = F.interpolate(big.float() / 255, size=(16, 16), mode="bilinear", antialias=True)
        torch.testing.assert_close(m(small, rows, cols), out, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="ONE slide"):
        m(torch.stack([big, big]), rows, cols)
    with pytest.raises(ValueError, match="patch_size=8"):
        m(_slide(len(rows), size=8), rows, cols)
    with pytest.raises(ValueError, match="rows"):
        m(big, rows[:-1], cols)
    for builder in (slide.histogene, slide.hist2st):
        with pytest.raises(PretrainedWeightsUnavailable, match="pretrained=False"):
            builder(GENES, pretrained=True)


# ---------------------------------------------------------------------------------------------
# HisToGene specifics
# ---------------------------------------------------------------------------------------------


def test_histogene_is_permutation_equivariant():
    m = _tiny_histogene().eval()
    rows, cols = _hex_grid(4, 6)  # 12 spots
    x = _slide(len(rows))
    perm = torch.randperm(len(rows), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = m(x, rows, cols)
        shuffled = m(x[perm], rows[perm], cols[perm])
        torch.testing.assert_close(shuffled, out[perm], atol=1e-5, rtol=1e-5)
        # The outputs are not all equal: the positions and patches matter.
        assert (out - out.mean(0)).abs().max() > 1e-3
        # Moving one spot's coordinates changes the prediction (position embeddings are used).
        moved = m(x, rows, torch.where(torch.arange(len(rows)) == 0, cols + 20, cols))
        assert (moved[0] - out[0]).abs().max() > 1e-4


@pytest.mark.parametrize("builder,tiny", [(slide.histogene, TINY_HISTOGENE), (slide.hist2st, TINY_HIST2ST)])
def test_out_of_range_coordinates_name_the_option(builder, tiny):
    m = builder(GENES, **tiny, max_rows=10, max_cols=20)
    x = _slide(2)
    with pytest.raises(ValueError, match=r"row 10 .*max_rows=11"):
        m(x, torch.tensor([0, 10]), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"column 25 .*max_cols=26"):
        m(x, torch.tensor([0, 1]), torch.tensor([25, 1]))
    with pytest.raises(ValueError, match=r"column -1 .*max_cols"):
        m(x, torch.tensor([0, 1]), torch.tensor([-1, 1]))
    # Visium coordinates fit the default tables (rows 0..77, columns 0..127).
    v = builder(GENES, **tiny)
    assert v(x, torch.tensor([0, 77]), torch.tensor([0, 127])).shape == (2, GENES)


# ---------------------------------------------------------------------------------------------
# Hist2ST specifics: spot graph, isolated spots, loss
# ---------------------------------------------------------------------------------------------


def test_spot_graph_on_a_hex_grid():
    # r0: (0,0) (0,2) (0,4) (0,6); r1: (1,1) (1,3) (1,5); r2: (2,0) (2,2) (2,4) (2,6).
    rows, cols = _hex_grid(3, 7)
    ei = slide.spot_graph(rows, cols, k=4, max_distance=2.0)
    # Spots within distance 2: the diagonals (±1, ±1) at √2, then (0, ±2) and (±2, 0) at 2.
    # Corners have 3, other spots ≥ 4, capped at k = 4.
    counts = torch.bincount(ei[1], minlength=len(rows)).tolist()
    assert counts == [3, 4, 4, 3, 4, 4, 4, 3, 4, 4, 3]
    pos = list(zip(rows.tolist(), cols.tolist()))
    idx = {p: i for i, p in enumerate(pos)}
    edges = _edges(ei)
    # The middle row's four nearest spots are its four diagonal neighbours, nothing else.
    for c in (1, 3, 5):
        got = {pos[s] for s, t in edges if t == idx[(1, c)]}
        assert got == {(0, c - 1), (0, c + 1), (2, c - 1), (2, c + 1)}
    assert {pos[s] for s, t in edges if t == idx[(0, 0)]} == {(1, 1), (0, 2), (2, 0)}
    # No self loops and no link longer than max_distance, whatever k.
    for k, max_d in ((4, 2.0), (8, 2.0), (20, 1.5)):
        e = slide.spot_graph(rows, cols, k=k, max_distance=max_d)
        d = torch.hypot((rows[e[0]] - rows[e[1]]).double(), (cols[e[0]] - cols[e[1]]).double())
        assert (e[0] != e[1]).all() and (d <= max_d + 1e-9).all()
    # k = 8: every spot within distance 2 (1.5 keeps the diagonals only).
    wide = torch.bincount(slide.spot_graph(rows, cols, k=8)[1], minlength=len(rows)).tolist()
    assert wide == [3, 5, 5, 3, 5, 6, 5, 3, 5, 5, 3]
    diag = torch.bincount(slide.spot_graph(rows, cols, k=20, max_distance=1.5)[1], minlength=len(rows)).tolist()
    assert diag == [1, 2, 2, 1, 4, 4, 4, 1, 2, 2, 1]


def test_spot_graph_hexagonal_ring_with_row_scale():
    rows, cols = _hex_grid(5, 10)
    ei = slide.spot_graph(rows, cols, k=6, max_distance=2.0, row_scale=math.sqrt(3))
    idx = {p: i for i, p in enumerate(zip(rows.tolist(), cols.tolist()))}
    ring = {(idx[(r + dr, c + dc)], i) for (r, c), i in idx.items() for dr, dc in HEX_OFFSETS
            if (r + dr, c + dc) in idx}
    assert _edges(ei) == ring
    # Degenerate slides: one spot, or k = 0, give no edge.
    assert slide.spot_graph(torch.tensor([3]), torch.tensor([5])).shape == (2, 0)
    assert slide.spot_graph(rows, cols, k=0).shape == (2, 0)


def test_hist2st_isolated_spot_is_finite_and_reads_its_own_patch():
    m = _tiny_hist2st().eval()
    rows = torch.tensor([0, 0, 1, 1, 2, 30])
    cols = torch.tensor([0, 2, 1, 3, 0, 60])  # the last spot is far from every other
    ei = m.graph(rows, cols)
    assert (ei[1] != 5).all() and (ei[0] != 5).all()
    # The official mean (adjacency row / neighbour count) is 0/0 there; the guard adds a self loop.
    guarded = slide._guard_isolated(ei, len(rows))
    assert _edges(guarded) - _edges(ei) == {(5, 5)}
    x = _slide(len(rows))
    with torch.no_grad():
        out = m(x, rows, cols)
        assert torch.isfinite(out).all()
        x2 = x.clone()
        x2[5] = 255 - x2[5]
        out2 = m(x2, rows, cols)
    assert (out2[5] - out[5]).abs().max() > 1e-4
    # A graph with no edge at all still gives finite outputs, in training mode too.
    m.train()
    out = m(x, rows, cols, edge_index=torch.empty(2, 0, dtype=torch.long))
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(m.gnn[0].lin_l.weight.grad).all()


def test_hist2st_explicit_graph_and_bad_graph():
    m = _tiny_hist2st().eval()
    rows, cols = _hex_grid(3, 6)
    x = _slide(len(rows))
    with torch.no_grad():
        default = m(x, rows, cols)
        torch.testing.assert_close(m(x, rows, cols, edge_index=m.graph(rows, cols)), default)
        # A different graph changes the output (the GNN reads the graph).
        ring = slide.spot_graph(rows, cols, k=6, row_scale=math.sqrt(3))
        assert (m(x, rows, cols, edge_index=ring) - default).abs().max() > 1e-5
    with pytest.raises(ValueError, match="outside"):
        m(x, rows, cols, edge_index=torch.tensor([[0], [len(rows)]]))


def test_hist2st_loss_mse_mask_and_distillation():
    rows, cols = _hex_grid(3, 6)
    n = len(rows)
    x = _slide(n)
    target = torch.randn(n, GENES, generator=torch.Generator().manual_seed(2))
    mask = torch.rand(n, GENES, generator=torch.Generator().manual_seed(3)) > 0.3

    plain = _tiny_hist2st().eval()
    with torch.no_grad():
        pred = plain(x, rows, cols)
        assert torch.isclose(slide.hist2st_loss(plain, x, rows, cols, target), F.mse_loss(pred, target))
        masked = ((pred - target)[mask] ** 2).mean()
        assert torch.isclose(slide.hist2st_loss(plain, x, rows, cols, target, mask=mask), masked)
    with pytest.raises(ValueError, match="distill_views"):
        plain.distillation_loss(x, rows, cols, pred)

    m = _tiny_hist2st(distill_views=3).eval()
    with torch.no_grad():
        pred = m(x, rows, cols)
        # Identity views reproduce the prediction: any weighting of identical views gives it back.
        m.distill_augment = lambda p: p
        assert m.distillation_loss(x, rows, cols, pred) < 1e-10
        # Inverted patches give different views: the term is positive.
        m.distill_augment = lambda p: 255 - p
        assert m.distillation_loss(x, rows, cols, pred) > 1e-8
    m.train()
    m.distill_augment = slide.default_distill_augment
    loss = slide.hist2st_loss(m, x, rows, cols, target)
    loss.backward()
    assert torch.isfinite(loss) and m.coef[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("builder", [_tiny_histogene, _tiny_hist2st])
def test_a_mean_initialised_slide_head_predicts_exactly_the_mean(builder):
    mean = torch.tensor([8.0, 0.5, -1.0, 3.0, 2.0])
    rows, cols = _hex_grid(3, 6)
    plain, zeroed = builder(), builder(mean_init_head=True)
    for m in (plain, zeroed):
        m.set_target_mean(mean.numpy())
        m.eval()
    with torch.no_grad():
        out_zero = zeroed(_slide(len(rows)), rows, cols)
        out_plain = plain(_slide(len(rows)), rows, cols)
    assert torch.allclose(out_zero, mean.expand_as(out_zero), atol=1e-6)
    assert not torch.allclose(out_plain, mean.expand_as(out_plain), atol=1e-3), "the official head adds noise"


# Parameter counts from the layer arithmetic of each architecture (module docstring, official
# code), written out here independently of the modules: the records' n_params_32/128 must match.


def _linear(i: int, o: int, bias: bool = True) -> int:
    return i * o + (o if bias else 0)


def _layer_norm(d: int) -> int:
    return 2 * d


def _pre_norm_block(dim: int, heads: int, dim_head: int, mlp_dim: int) -> int:
    """LN → multi-head attention (q, k, v without bias, output projection) and LN → 2-layer MLP."""
    inner = heads * dim_head
    attention = _linear(dim, 3 * inner, bias=False) + _linear(inner, dim)
    return 2 * _layer_norm(dim) + attention + _linear(dim, mlp_dim) + _linear(mlp_dim, dim)


def _histogene_params(n_genes, patch_size=112, dim=1024, depth=8, heads=16, dim_head=64, mlp_dim=2048,
                      max_rows=78, max_cols=128):
    return (_linear(3 * patch_size * patch_size, dim)                # flattened patch → dim
            + (max_rows + max_cols) * dim                            # row and column embeddings
            + depth * _pre_norm_block(dim, heads, dim_head, mlp_dim)
            + _layer_norm(dim) + _linear(dim, n_genes))              # head


def _hist2st_params(n_genes, patch_size=112, conv_patch=7, kernel_size=5, channels=32, mixer_depth=2, depth=8,
                    gnn_depth=4, heads=16, dim_head=64, max_rows=78, max_cols=128):
    dim = (patch_size // conv_patch) ** 2 * channels // 8
    conv = 3 * channels * conv_patch ** 2 + channels                 # patch embedding conv
    depthwise = channels * kernel_size ** 2 + channels               # one depthwise k×k conv
    batch_norm = 2 * channels
    mixer = 2 * (depthwise + batch_norm) + (channels * channels + channels) + batch_norm
    down = channels * (channels // 8) + channels // 8                # 1×1 conv to channels / 8
    lstm_layer = 4 * dim * (dim + dim) + 2 * 4 * dim                 # W_ih, W_hh, b_ih, b_hh of a width-dim LSTM
    return (conv + mixer_depth * mixer + down
            + (max_rows + max_cols) * dim
            + depth * _pre_norm_block(dim, heads, dim_head, dim)     # MLP width = feature width
            + gnn_depth * dim * dim                                  # SAGEConv: neighbour weight only, no bias
            + 2 * lstm_layer                                         # 2-layer LSTM jumping knowledge
            + _layer_norm(dim) + _linear(dim, n_genes))


def test_histogene_and_hist2st_parameter_counts_follow_from_the_layer_arithmetic():
    from spared_utils import models

    # the records (the book's tables) against the arithmetic at the official sizes
    for name, count in (("histogene", _histogene_params), ("hist2st", _hist2st_params)):
        record = models.record(name)
        assert (record.n_params_32, record.n_params_128) == (count(32), count(128)), name
    # the modules against the same arithmetic, on small sizes that change every term
    small_h = dict(patch_size=16, dim=24, depth=2, heads=3, dim_head=5, mlp_dim=40, max_rows=7, max_cols=9)
    model = slide.histogene(5, **small_h)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == _histogene_params(5, **small_h)
    small_2 = dict(patch_size=24, conv_patch=6, kernel_size=3, channels=16, mixer_depth=3, depth=2, gnn_depth=3,
                   heads=2, dim_head=7, max_rows=7, max_cols=9)
    model = slide.hist2st(5, **small_2)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == _hist2st_params(5, **small_2)
