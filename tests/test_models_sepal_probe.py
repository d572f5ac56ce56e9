"""SEPAL (stage 2 over local graphs of ViT-B+Δ embeddings) and the HEST linear probe."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from anndata import AnnData
from torch import nn

from spared_utils import graphs, models
from spared_utils.models import encoders, probe, sepal
from spared_utils.training import count_parameters

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

D, G = 16, 5  # tiny embedding width and gene count


def _tiny_sepal(**kw) -> sepal.SEPAL:
    torch.manual_seed(0)
    opts = {"embedding_dim": D, "hidden": (12, 8, 6), "n_hops": 1, "zero_init_head": False}
    opts.update(kw)
    return sepal.sepal(G, **opts)


def _ring1_inputs(b: int = 3, seed: int = 0):
    """B centre spots with their full first hexagonal ring (7 nodes), random embeddings."""
    gen = torch.Generator().manual_seed(seed)
    offsets = torch.tensor([(0, 0)] + graphs.hop_offsets(1, True)).expand(b, -1, -1).clone()
    emb = torch.randn(b, 7, D, generator=gen)
    centre = torch.randn(b, G, generator=gen)
    mask = torch.ones(b, 7, dtype=torch.bool)
    return centre, emb, offsets, mask


def _hex_grid(n_rows: int = 9, n_cols: int = 18) -> AnnData:
    rows, cols = zip(*[(r, c) for r in range(n_rows) for c in range(n_cols) if (r + c) % 2 == 0])
    obs = pd.DataFrame({"array_row": rows, "array_col": cols}, index=[f"s{i}" for i in range(len(rows))])
    return AnnData(X=np.zeros((len(rows), 1), dtype=np.float32), obs=obs)


def _tiny_stage1(n_genes: int = 3) -> encoders.PatchRegressor:
    torch.manual_seed(0)
    m = encoders.PatchRegressor(nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten()), 12, n_genes,
                                predict_delta=True, mean_init_head=False)
    m.set_target_mean(np.arange(n_genes, dtype=np.float32))
    return m


# ---------------------------------------------------------------------------------------------
# SEPAL
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling,positional", [("sag", "concat"), ("mean", "sum")])
def test_sepal_shape_and_every_parameter_gets_a_gradient(pooling, positional):
    m = _tiny_sepal(pooling=pooling, positional=positional)
    centre, emb, off, mask = _ring1_inputs()
    mask[1, 3:] = False  # an edge spot
    centre.requires_grad_(True)
    out = m(centre, emb, off, mask)
    assert out.shape == (3, G)
    out.pow(2).sum().backward()
    # SAGPooling's SelectTopK scores a 1-channel input by x·w/|w|, whose gradient in w is 0 (sign only)
    dead = [n for n, p in m.named_parameters()
            if n != "pool.select.weight" and (p.grad is None or not torch.any(p.grad != 0))]
    assert not dead, f"parameters without gradient: {dead}"
    # the residual is added: d(out)/d(centre) is the identity
    assert torch.allclose(centre.grad, 2 * out.detach())


def test_sepal_zero_initialised_head_returns_the_stage1_prediction_then_learns():
    m = _tiny_sepal(zero_init_head=True)
    centre, emb, off, mask = _ring1_inputs()
    assert torch.equal(m(centre, emb, off, mask), centre)
    target = centre + 1.0
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(5):
        opt.zero_grad()
        loss = (m(centre, emb, off, mask) - target).pow(2).mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert not torch.allclose(m(centre, emb, off, mask), centre)
        assert float((m(centre, emb, off, mask) - target).pow(2).mean()) < 1.0  # started at exactly 1.0


@pytest.mark.parametrize("pooling", ["sag", "mean", "max"])
def test_masked_nodes_have_no_influence(pooling):
    m = _tiny_sepal(pooling=pooling).eval()
    centre, emb, off, mask = _ring1_inputs()
    mask[:, [2, 5]] = False
    ref = m(centre, emb, off, mask)
    emb2, off2 = emb.clone(), off.clone()
    emb2[:, 2] = 1e4 * torch.randn(3, D)
    emb2[:, 5] = float("nan")
    off2[:, 2] = torch.tensor([7, -3])
    assert torch.equal(m(centre, emb2, off2, mask), ref)
    # control: changing a present neighbour does change the output
    emb3 = emb.clone()
    emb3[:, 1] += 5.0
    assert not torch.allclose(m(centre, emb3, off, mask), ref)


def test_padded_graph_equals_the_compact_graph_and_lone_centre_works():
    m = _tiny_sepal().eval()
    centre, emb, off, mask = _ring1_inputs(b=2)
    keep = [0, 1, 4]
    mask[:, [2, 3, 5, 6]] = False
    padded = m(centre, emb, off, mask)
    compact = m(centre, emb[:, keep], off[:, keep], torch.ones(2, 3, dtype=torch.bool))
    assert torch.allclose(padded, compact, atol=1e-6)
    lone = torch.zeros_like(mask)
    lone[:, 0] = True
    out = m(centre, emb, off, lone)
    assert torch.allclose(out, m(centre, emb[:, :1], off[:, :1]), atol=1e-6)
    assert torch.isfinite(out).all()


def test_inputs_are_checked():
    m = _tiny_sepal()
    centre, emb, off, mask = _ring1_inputs()
    bad = mask.clone()
    bad[0, 0] = False
    with pytest.raises(ValueError, match="centre"):
        m(centre, emb, off, bad)
    with pytest.raises(ValueError, match="embedding_dim"):
        m(centre, emb[..., :-1], off, mask)
    with pytest.raises(ValueError, match="graph layer"):
        sepal.SEPAL(G, embedding_dim=D, hidden=(8,), n_preprocess=1)


def test_local_graph_is_the_n_hop_reachability_of_the_grid():
    """Edges = pairs of nodes within n_hops rings of each other (official get_graphs_one_slide)."""
    adata = _hex_grid()
    for n_hops in (1, 2):
        index = graphs.neighbour_index(adata, n_hops)
        reach = graphs.ring_neighbourhoods(graphs.adjacency(adata), n_hops)[-1].toarray()
        centre = int(np.flatnonzero((adata.obs.array_row == 4) & (adata.obs.array_col == 8))[0])
        _, off, mask = sepal.gather_neighbourhoods(index, [centre], np.zeros((adata.n_obs, D)), n_hops)
        assert mask.all()
        nodes = np.concatenate([[centre], index[centre]])
        m = sepal.SEPAL(G, embedding_dim=D, hidden=(8, 6), n_hops=n_hops)
        adj = m.local_adjacency(off, mask)[0].numpy()
        assert np.array_equal(adj, reach[np.ix_(nodes, nodes)])
    # first ring: centre–6 and each ring spot–its 2 ring neighbours, both directions
    assert sepal.SEPAL(G, embedding_dim=D, hidden=(8, 6), n_hops=1).local_adjacency(off[:, :7], mask[:, :7]).sum() == 24


def test_gather_neighbourhoods_places_embeddings_and_masks_edge_spots():
    adata = _hex_grid(4, 8)
    index = graphs.neighbour_index(adata, 2)
    embeddings = np.random.default_rng(0).normal(size=(adata.n_obs, D)).astype(np.float32)
    rows = np.arange(adata.n_obs)
    emb, off, mask = sepal.gather_neighbourhoods(index, rows, embeddings, 2)
    assert emb.shape == (adata.n_obs, 19, D) and off.shape == (adata.n_obs, 19, 2)
    assert np.array_equal(mask.sum(1).numpy(), graphs.n_neighbours(index) + 1)
    assert torch.equal(emb[:, 0], torch.from_numpy(embeddings))
    i, k = 5, int(np.flatnonzero(index[5] >= 0)[0])
    assert torch.equal(emb[i, k + 1], torch.from_numpy(embeddings[index[i, k]]))
    assert torch.all(emb[~mask] == 0)
    # offsets are the real array offsets of the neighbours
    r, c = adata.obs.array_row.to_numpy(), adata.obs.array_col.to_numpy()
    j = index[i, k]
    assert off[i, k + 1].tolist() == [r[j] - r[i], c[j] - c[i]]
    with pytest.raises(ValueError, match="columns"):
        sepal.gather_neighbourhoods(index, rows, embeddings, 1)


def test_positional_encoding_formula():
    pe = sepal.sincos_encoding_2d(torch.tensor([[3, -2]]), 8)[0]
    r, q = 3.0, -2.0
    expected = [np.sin(r), np.cos(r), np.sin(r / 100), np.cos(r / 100),
                np.sin(q), np.cos(q), np.sin(q / 100), np.cos(q / 100)]
    assert np.allclose(pe.numpy(), expected, atol=1e-6)
    assert sepal.sincos_encoding_2d(torch.zeros(1, 2, dtype=torch.long), 768).shape == (1, 768)


def test_default_sepal_parameter_count_matches_the_official_visium_configuration():
    def linear(i, o):
        return i * o + o

    expected = linear(1536, 512) + linear(512, 256) + linear(256, 128)  # preprocess + 2 GCNConv
    expected += (128 + 1) + 128 + 1  # SAGPooling: GraphConv(128 → 1) + SelectTopK weight
    for n_genes in (32, 128):
        assert count_parameters(sepal.sepal(n_genes)) == expected + linear(128, n_genes)


def test_check_stage1_refuses_another_dataset_scenario_or_seed(tmp_path):
    meta = sepal.stage1_meta("villacampa_lung_organoid", "raw", 0)
    sepal.check_stage1(meta, "villacampa_lung_organoid", "raw", 0)  # same: accepted
    with pytest.raises(ValueError, match=r"(?s)villacampa_lung_organoid.*vicari_mouse_brain.*dataset"):
        sepal.check_stage1(meta, "vicari_mouse_brain", "raw", 0)
    with pytest.raises(ValueError, match=r"(?s)'raw'.*'completed'.*scenario"):
        sepal.check_stage1(meta, "villacampa_lung_organoid", "completed", 0)
    with pytest.raises(ValueError, match=r"(?s)seed=0.*seed=1.*seed"):
        sepal.check_stage1(meta, "villacampa_lung_organoid", "raw", 1)
    with pytest.raises(ValueError, match="lacks"):
        sepal.check_stage1({"dataset": "villacampa_lung_organoid"}, "villacampa_lung_organoid", "raw", 0)

    model = _tiny_stage1()
    path = sepal.save_stage1_checkpoint(model, tmp_path / "stage1.pt", "villacampa_lung_organoid", "raw", 0)
    assert sepal.read_stage1_meta(path) == meta
    with pytest.raises(ValueError, match="vicari_mouse_brain"):
        sepal.load_stage1(path, "vicari_mouse_brain", "raw", 0, model=_tiny_stage1())
    fresh = encoders.PatchRegressor(nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten()), 12, 3, predict_delta=True)
    loaded = sepal.load_stage1(path, "villacampa_lung_organoid", "raw", 0, model=fresh)
    assert torch.equal(loaded.head.weight, model.head.weight) and torch.equal(loaded.offset, model.offset)
    assert count_parameters(loaded) == 0 and not loaded.training


def test_stage1_outputs_are_the_embedding_and_prediction_of_the_patch_model():
    model = _tiny_stage1()
    x = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    emb, pred = sepal.stage1_outputs(model, x, batch_size=2)
    assert emb.shape == (5, 12) and pred.shape == (5, 3)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(pred, model(x), atol=1e-6)
        assert torch.allclose(emb, model.backbone(model.normalize(x)), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Linear probe
# ---------------------------------------------------------------------------------------------


def _linear_data(n=400, f=64, g=6, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, f))
    w = rng.normal(size=(f, g)) / np.sqrt(f)
    y = x @ w + 8.0 + noise * rng.normal(size=(n, g))
    return x, y


def _r2(pred, true):
    return 1 - ((pred - true) ** 2).sum(0) / ((true - true.mean(0)) ** 2).sum(0)


def test_probe_recovers_a_linear_relation_on_held_out_rows():
    x, y = _linear_data()
    p = probe.linear_probe(y.shape[1], encoder=None).fit(x[:300], y[:300])
    pred = p.predict(x[300:])
    assert pred.shape == (100, 6) and pred.dtype == np.float32
    assert _r2(pred, y[300:]).min() > 0.9
    assert p.n_components_ == 64  # 256 capped at the 64 features
    assert p.alpha_ == pytest.approx(100 / (64 * 6))
    assert p.n_coefficients == 6 * 64 + 6
    assert p.fitted_sizes() == {"ridge": 6 * 64 + 6, "pca": 64 * 64 + 64, "scaler": 2 * 64}


def test_probe_caps_pca_for_few_samples_and_respects_a_given_alpha():
    x, y = _linear_data(n=10, f=50, g=3)
    p = probe.linear_probe(3, encoder=None).fit(x, y)
    assert p.n_components_ == 10 and p.coef_.shape == (3, 10)
    assert p.alpha_ == pytest.approx(100 / (10 * 3))
    assert probe.linear_probe(3, encoder=None, alpha=0.5).fit(x, y).alpha_ == 0.5
    with pytest.raises(RuntimeError, match="not fitted"):
        probe.linear_probe(3, encoder=None).predict(x)


def test_probe_intercept_fixes_hest_mean_zero_predictions():
    x, y = _linear_data()
    with_b = probe.linear_probe(6, encoder=None).fit(x[:300], y[:300]).predict(x[300:])
    hest = probe.linear_probe(6, encoder=None, fit_intercept=False).fit(x[:300], y[:300]).predict(x[300:])
    assert abs(with_b.mean() - 8.0) < 0.3
    assert abs(hest.mean()) < 0.5  # HEST's ridge without intercept on centred PCA features


def test_probe_mask_excludes_missing_targets():
    x, y = _linear_data()
    rng = np.random.default_rng(1)
    mask = rng.random(y.shape) > 0.3
    mask[:, 0] = True  # one gene observed everywhere (fitted jointly), the others one by one
    corrupted = np.where(mask, y, 1e3)
    p = probe.linear_probe(6, encoder=None).fit(x[:300], corrupted[:300], mask=mask[:300])
    assert _r2(p.predict(x[300:]), y[300:]).min() > 0.9
    naive = probe.linear_probe(6, encoder=None).fit(x[:300], corrupted[:300])
    assert _r2(naive.predict(x[300:]), y[300:])[1:].max() < 0.5
    with pytest.raises(ValueError, match="no observed"):
        probe.linear_probe(6, encoder=None).fit(x, y, mask=np.zeros(y.shape, dtype=bool))


def test_probe_encodes_tiny_images_fits_predicts_and_pickles(tmp_path):
    torch.manual_seed(0)
    p = probe.linear_probe(4, pretrained=False, encoder="resnet18", n_components=8, batch_size=5)
    assert count_parameters(p) == 0
    patches = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8)
    feats = p.encode(patches)
    assert feats.shape == (12, 512)
    assert np.allclose(p.encode(patches.float() / 255.0, batch_size=12), feats, atol=1e-4)
    y = np.random.default_rng(0).normal(size=(12, 4))
    p.fit(patches, y)
    assert p.n_components_ == 8
    pred = p(patches[:3])
    assert isinstance(pred, torch.Tensor) and pred.shape == (3, 4)
    assert np.allclose(pred.numpy(), p.predict(feats[:3]), atol=1e-4)
    loaded = probe.LinearProbe.load(p.save(tmp_path / "probe.joblib"))
    assert np.array_equal(loaded.predict(patches[:3]), pred.numpy())


def test_probe_default_encoder_is_hest_truncated_resnet50():
    stage = probe.HEST_RESNET50[1]
    enc = probe.linear_probe(3).encoder  # the default: encoder="resnet50", pretrained=False
    assert (enc.stage, type(enc.model).__name__) == (stage, "FeatureListNet")
    assert enc.n_features == 1024
    with torch.no_grad():
        assert enc(torch.rand(1, 3, 32, 32)).shape == (1, 1024)
    with pytest.raises(ValueError, match="knows no model"):
        probe.linear_probe(3, encoder="no_such_model_xyz")


def test_probe_pretrained_offline_fails_fast_with_advice(monkeypatch, tmp_path):
    monkeypatch.setattr(probe, "_reachable", lambda url, timeout=3.0: False)
    monkeypatch.setattr(probe, "_hf_cache_dir", lambda: tmp_path)
    with pytest.raises(encoders.PretrainedWeightsUnavailable, match=r"(?s)resnet50\.tv_in1k.*pretrained=False"):
        probe.linear_probe(3, pretrained=True)
    with pytest.raises(encoders.PretrainedWeightsUnavailable, match="MahmoodLab/uni"):
        probe.linear_probe(3, pretrained=True, encoder="hf-hub:MahmoodLab/uni")


def test_a_112_px_stage1_checkpoint_loads_without_a_model_at_its_own_size(tmp_path):
    torch.manual_seed(0)
    model = models.build("vit_b_delta", 3, input_size=112)
    path = sepal.save_stage1_checkpoint(model, tmp_path / "stage1.pt", "synthetic", "masked", 0)
    loaded = sepal.load_stage1(path, "synthetic", "masked", 0)
    assert loaded.backbone.image_size == 112, "the input size is read back from the position embeddings"
    assert torch.equal(loaded.backbone.encoder.pos_embedding, model.backbone.encoder.pos_embedding)
