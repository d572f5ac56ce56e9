"""Curation steps on small data with known answers, and the whole pipeline on the tiny synthetic set."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData

from spared_utils import preprocess as pp
from spared_utils.registry import PipelineParams


def Spec(**overrides) -> PipelineParams:
    """Curation parameters of the tests: SpaRED's defaults with 16 genes."""
    return PipelineParams(**{"n_genes": 16, **overrides})


def collection(counts, slides, lengths=None, splits=None) -> AnnData:
    counts = np.asarray(counts, dtype=np.float32)
    n = counts.shape[0]
    obs = pd.DataFrame({
        "slide_id": slides,
        "split": splits if splits is not None else ["train"] * n,
        "patient": "P1",
        "array_row": 0,
        "array_col": np.arange(n) * 2,
    }, index=[f"spot{i}" for i in range(n)])
    adata = AnnData(X=sp.csr_matrix(counts), obs=obs)
    adata.var_names = [f"g{j}" for j in range(counts.shape[1])]
    adata.layers["counts"] = adata.X.copy()
    if lengths is not None:
        adata.var["gene_length"] = lengths
    return adata


# ----------------------------------------------------------------------------------------- step 1


def test_collect_keeps_in_tissue_spots_and_moves_counts_to_a_layer():
    adata = collection([[1, 2], [3, 4], [5, 6]], ["a", "a", "b"])
    adata.obs["in_tissue"] = [1, 0, 1]
    out = pp.collect(adata)
    assert out.obs_names.tolist() == ["spot0", "spot2"]
    assert out.layers["counts"].toarray().tolist() == [[1, 2], [5, 6]]
    assert out.obs["slide_id"].dtype == "category"


@pytest.mark.parametrize("bad, word", [(np.nan, "NaN"), (-3.0, "negative")])
def test_bad_counts_name_the_slide_spot_and_gene(bad, word):
    counts = np.ones((4, 3))
    counts[3, 2] = bad
    adata = collection(counts, ["a", "a", "b", "b"])
    with pytest.raises(ValueError, match=rf"slide 'b'.*{word}.*spot3.*g2.*raw"):
        pp.collect(adata)


def test_missing_obs_columns_are_named():
    adata = collection([[1, 2]], ["a"])
    del adata.obs["patient"]
    with pytest.raises(ValueError, match="patient"):
        pp.collect(adata)


# ----------------------------------------------------------------------------------------- step 2


def test_expression_fractions_known_answer():
    counts = [[1, 0, 0], [2, 3, 0], [0, 1, 0], [4, 0, 5]]  # slides a: rows 0-1, b: rows 2-3
    frac = pp.expression_fractions(collection(counts, ["a", "a", "b", "b"]))
    np.testing.assert_allclose(frac["a"], [1.0, 0.5, 0.0])
    np.testing.assert_allclose(frac["b"], [0.5, 0.5, 0.5])
    np.testing.assert_allclose(frac["exp_frac"], [0.5, 0.5, 0.0])
    np.testing.assert_allclose(frac["glob_exp_frac"], [0.75, 0.5, 0.25])


def test_real_data_rule_keeps_longest_prefix_with_mean_above_threshold():
    exp_frac = [0.9, 0.5, 0.8, 0.2]
    glob = [0.9, 0.6, 0.8, 0.1]
    # order g0, g2, g1, g3; running means 0.9, 0.85, 0.767, 0.6
    assert pp.real_data_genes(exp_frac, glob, 0.7).tolist() == [True, True, True, False]
    assert pp.real_data_genes(exp_frac, glob, 0.8).tolist() == [True, False, True, False]
    # the running mean may dip below and come back: the longest prefix wins (0.9, 0.6, 0.733)
    assert pp.real_data_genes([0.9, 0.8, 0.7], [0.9, 0.3, 1.0], 0.7).tolist() == [True, True, True]


def test_real_data_rule_without_any_passing_prefix_raises():
    with pytest.raises(ValueError, match="real_data_percentage=0.9"):
        pp.real_data_genes([0.5, 0.4], [0.5, 0.4], 0.9)


def test_filter_dataset_thresholds_are_strict():
    counts = np.array([
        [10, 0, 0, 0],   # total 10: not > 10 -> dropped
        [6, 5, 0, 1],    # 12
        [6, 6, 0, 1],    # 13
        [9, 9, 5, 1],    # 24
    ], dtype=float)
    out = pp.filter_dataset(collection(counts, ["a", "a", "b", "b"]), cell_min_counts=10,
                            gene_min_counts=10, real_data_percentage=0.0)
    assert out.obs_names.tolist() == ["spot1", "spot2", "spot3"]
    # gene totals after the spot filter: 21, 20, 5, 3 -> g2, g3 have total <= 10
    assert out.var_names.tolist() == ["g0", "g1"]
    np.testing.assert_allclose(out.var["exp_frac"], [1.0, 1.0])


def test_filter_dataset_drops_spots_left_empty():
    counts = np.array([[20, 0, 0], [20, 0, 0], [0, 0, 30], [20, 0, 0]], dtype=float)
    out = pp.filter_dataset(collection(counts, ["a", "a", "b", "b"]), real_data_percentage=0.7)
    # exp_frac g0 = 0.5 (slide b), g2 = 0 ; prefix [g0] (glob 0.75) passes, adding g2 gives 0.5
    assert out.var_names.tolist() == ["g0"]
    assert out.obs_names.tolist() == ["spot0", "spot1", "spot3"]


def test_slide_without_spots_after_filtering_is_named():
    counts = np.array([[50, 50], [60, 60], [1, 1], [2, 2]], dtype=float)
    with pytest.raises(ValueError, match=r"slide 'b'.*cell_min_counts"):
        pp.filter_dataset(collection(counts, ["a", "a", "b", "b"]), cell_min_counts=10)


# ----------------------------------------------------------------------------------------- step 3


def test_tpm_known_answer_and_log2():
    adata = collection([[10, 20], [0, 5]], ["a", "a"], lengths=[1000, 2000])
    out = pp.log1p(pp.tpm(adata))
    # spot 0: 10/1000 = 20/2000 = 0.01 each -> 5e5, 5e5 ; spot 1: only gene 1 -> 1e6
    np.testing.assert_allclose(out.layers["tpm"].toarray(), [[5e5, 5e5], [0, 1e6]], rtol=1e-6)
    np.testing.assert_allclose(out.layers["log1p"].toarray(), np.log2(np.array([[5e5, 5e5], [0, 1e6]]) + 1), rtol=1e-6)
    # scanpy's base argument: natural log with base=None, log10 with base=10; a base of 1 is refused
    dense_tpm = np.array([[5e5, 5e5], [0, 1e6]])
    np.testing.assert_allclose(pp.log1p(out, key_added="ln", base=None).layers["ln"].toarray(), np.log1p(dense_tpm),
                               rtol=1e-6)
    np.testing.assert_allclose(pp.log1p(out, key_added="l10", base=10).layers["l10"].toarray(),
                               np.log10(dense_tpm + 1), rtol=1e-6)
    with pytest.raises(ValueError, match="log base"):
        pp.log1p(out, base=1)


def test_tpm_drops_genes_without_length():
    adata = collection([[10, 20, 5]], ["a"], lengths=[1000, np.nan, 0])
    out = pp.tpm(adata)
    assert out.var_names.tolist() == ["g0"]
    assert out.layers["tpm"].toarray().tolist() == [[1e6]]


def test_gene_lengths_from_the_vendored_gencode_table():
    table = pp.load_gene_lengths("human")  # vendored in data/annotations/: a missing table is a failure
    assert len(table) > 60_000 and table.index.is_unique and (table > 0).all()
    adata = collection([[1, 1, 1]], ["a"])
    adata.var_names = ["ENSG00000223972", "ENSG00000290825.1", "NOT_A_GENE"]
    lengths = pp.gene_lengths_for(adata, "human")
    assert lengths.iloc[0] == table["ENSG00000223972"] == 632  # merged-exon length in GENCODE v43
    assert lengths.iloc[1] == 1657 and np.isnan(lengths.iloc[2])
    assert pp.load_gene_lengths("mouse")["ENSMUSG00000102693"] == 1070  # GENCODE vM33, first row


# ----------------------------------------------------------------------------------------- step 5


def grid_adata(n_side: int = 12) -> AnnData:
    rows, cols = np.meshgrid(np.arange(n_side), np.arange(2 * n_side), indexing="ij")
    keep = (rows + cols) % 2 == 0
    rows, cols = rows[keep], cols[keep]
    rng = np.random.default_rng(0)
    smooth = cols.astype(float) + 1           # a gradient: strongly autocorrelated
    alternating = (rows % 2) * 2.0 + 1        # alternating rows: negative autocorrelation
    noise = rng.random(len(rows)) + 1
    x = np.column_stack([noise, alternating, smooth])
    obs = pd.DataFrame({"array_row": rows, "array_col": cols, "slide_id": "a"}, index=[f"s{i}" for i in range(len(rows))])
    adata = AnnData(X=x, obs=obs)
    adata.var_names = ["noise", "alternating", "smooth"]
    adata.layers["d_log1p"] = x.copy()
    return adata


def moran_by_hand(x: np.ndarray, w: np.ndarray) -> float:
    w = w / w.sum(axis=1, keepdims=True)  # row-normalised weights, as squidpy's default
    z = x - x.mean()
    return float(len(x) / w.sum() * (z @ w @ z) / (z @ z))


def test_moran_matches_the_formula_and_ranks_smooth_genes_first():
    from spared_utils import graphs

    adata = grid_adata()
    table = pp.moran_i(adata, progress=False)
    w = graphs.adjacency(adata).toarray().astype(float)
    for gene in adata.var_names:
        assert table.loc[gene, "a"] == pytest.approx(moran_by_hand(adata[:, gene].X.ravel(), w), abs=1e-10)
    assert table.loc["smooth", "a"] > 0.8 and table.loc["alternating", "a"] < -0.2
    top = pp.select_top_moran(adata, 2, progress=False)
    assert top.var_names.tolist() == ["smooth", "noise"]
    assert top.var["d_log1p_moran"].is_monotonic_decreasing


def test_fewer_genes_than_requested_is_a_clear_error():
    with pytest.raises(ValueError, match=r"only 3 genes.*n_genes=5.*datasets.yml"):
        pp.select_top_moran(grid_adata(), 5, progress=False)


# ----------------------------------------------------------------------------------------- steps 6-7


def test_combat_removes_a_batch_shift():
    rng = np.random.default_rng(0)
    x = rng.normal(5, 1, (200, 40))
    x[100:] += 3.0
    adata = AnnData(X=x, obs=pd.DataFrame({"slide_id": ["a"] * 100 + ["b"] * 100}, index=[str(i) for i in range(200)]))
    adata.layers["log1p"] = x
    pp.combat(adata, "slide_id", "log1p", "c_log1p")
    c = adata.layers["c_log1p"]
    gap_before = np.abs(x[:100].mean(0) - x[100:].mean(0)).mean()
    gap_after = np.abs(c[:100].mean(0) - c[100:].mean(0)).mean()
    assert gap_before > 2.5 and gap_after < 0.1 * gap_before


def test_combat_with_a_single_batch_copies_the_layer():
    adata = AnnData(X=np.ones((3, 2)), obs=pd.DataFrame({"slide_id": ["a"] * 3}, index=list("xyz")))
    adata.layers["log1p"] = np.arange(6, dtype=float).reshape(3, 2)
    pp.combat(adata, "slide_id", "log1p", "c_log1p")
    np.testing.assert_array_equal(adata.layers["c_log1p"], adata.layers["log1p"])
    assert "single batch" in adata.uns["combat_skipped"]


def test_deltas_subtract_the_training_mean_and_mask_marks_real_values():
    x = np.array([[1.0, 0.0], [3.0, 2.0], [10.0, 4.0]])
    adata = AnnData(X=x, obs=pd.DataFrame({"split": ["train", "train", "val"]}, index=list("abc")))
    adata.layers["log1p"] = x
    adata.layers["tpm"] = x
    pp.deltas(adata, "log1p", "deltas")
    np.testing.assert_allclose(adata.layers["deltas"], [[-1, -1], [1, 1], [8, 3]])
    np.testing.assert_allclose(adata.var["log1p_avg_exp"], [2.0, 1.0])
    pp.add_mask(adata)
    assert adata.layers["mask"].tolist() == [[True, False], [True, True], [True, True]]


# ----------------------------------------------------------------------------------------- pipeline


@pytest.fixture(scope="module")
def processed(tiny_adata):
    return pp.run_pipeline(tiny_adata.copy(), Spec(), progress=False)


def test_pipeline_layers_and_shapes(processed, tiny_adata):
    expected = {"counts", "tpm", "log1p", "d_log1p", "c_log1p", "c_d_log1p",
                "deltas", "d_deltas", "c_deltas", "c_d_deltas", "mask"}
    assert set(processed.layers) == expected
    assert processed.n_vars == 16
    assert processed.n_obs <= tiny_adata.n_obs
    for key in expected - {"mask"}:
        assert isinstance(processed.layers[key], np.ndarray) and processed.layers[key].dtype == np.float32
    assert processed.layers["mask"].dtype == bool
    np.testing.assert_array_equal(processed.X, processed.layers["c_d_log1p"])


def test_pipeline_layers_agree_with_each_other(processed):
    L = processed.layers
    mask = L["mask"]
    np.testing.assert_array_equal(mask, L["tpm"] != 0)
    np.testing.assert_array_equal(L["d_log1p"][mask], L["log1p"][mask])       # real values kept
    assert np.all(L["log1p"][~mask] == 0) and np.all(L["d_log1p"][~mask] > 0)  # missing ones completed
    np.testing.assert_allclose(L["log1p"], np.log2(L["tpm"].astype(np.float64) + 1), rtol=1e-5)
    train = (processed.obs["split"] == "train").to_numpy()
    np.testing.assert_allclose(L["c_d_deltas"][train].mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(L["c_d_log1p"] - L["c_d_deltas"], np.broadcast_to(
        processed.var["c_d_log1p_avg_exp"].to_numpy(np.float32), L["c_d_log1p"].shape), rtol=1e-5, atol=1e-5)
    assert processed.var["d_log1p_moran"].is_monotonic_decreasing


def test_pipeline_records_parameters_and_counts(processed, tiny_adata):
    rec = processed.uns["preprocessing"]
    assert rec["params"]["n_genes"] == 16 and rec["params"]["real_data_percentage"] == 0.7
    steps = rec["steps"]
    assert steps["n_spots"].iloc[0] == tiny_adata.n_obs and steps["n_genes"].iloc[0] == tiny_adata.n_vars
    assert steps["n_genes"].iloc[-1] == 16 and steps["n_genes"].is_monotonic_decreasing
    per_slide = rec["spots_per_slide"]
    assert per_slide.iloc[:, -1].sum() == processed.n_obs
    assert 0 < rec["missing_fraction"] < 1


def test_pipeline_reads_thresholds_from_the_spec(tiny_adata):
    with pytest.raises(ValueError, match=r"slide '.*'.*cell_min_counts"):
        pp.run_pipeline(tiny_adata.copy(), Spec(cell_min_counts=1e5), progress=False)
    with pytest.raises(ValueError, match=r"n_genes=500"):
        pp.run_pipeline(tiny_adata.copy(), Spec(n_genes=500), progress=False)


def test_pipeline_refuses_nan_counts(tiny_adata):
    bad = tiny_adata.copy()
    counts = bad.layers["counts"].toarray()
    counts[5, 3] = np.nan
    bad.layers["counts"] = sp.csr_matrix(counts)
    with pytest.raises(ValueError, match=rf"slide '{bad.obs['slide_id'].iloc[5]}'.*NaN"):
        pp.run_pipeline(bad, Spec(), progress=False)


def test_write_and_read_processed(processed, tmp_path, monkeypatch):
    monkeypatch.setenv("SPARED_PROCESSED_DIR", str(tmp_path))
    path = pp.write_processed(processed, "synthetic_tiny")
    assert path == tmp_path / "synthetic_tiny" / "adata.h5ad"
    back = pp.read_processed("synthetic_tiny")
    np.testing.assert_array_equal(back.layers["c_d_log1p"], processed.layers["c_d_log1p"])
    assert "fullres" not in next(iter(back.uns["spatial"].values()))["images"]
    assert "fullres" in next(iter(processed.uns["spatial"].values()))["images"]  # input untouched
    assert list(tmp_path.joinpath("synthetic_tiny").iterdir()) == [path]  # no temporary left


def test_filter_qc_tables_record_every_spot_and_gene():
    counts = np.array([[10, 0, 0, 0], [6, 5, 0, 1], [6, 6, 0, 1], [9, 9, 5, 1]], dtype=float)
    out, spot_qc, gene_qc = pp.filter_dataset(collection(counts, ["a", "a", "b", "b"]), real_data_percentage=0.0,
                                              return_qc=True)
    assert spot_qc["total_counts"].tolist() == [10, 12, 13, 24]
    assert spot_qc["kept"].tolist() == [False, True, True, True]
    assert gene_qc["passes_counts"].tolist() == [True, True, False, False]
    assert gene_qc["kept"].tolist() == [True, True, False, False]
    np.testing.assert_allclose(gene_qc["glob_exp_frac"], [1.0, 1.0, 1 / 3, 1.0])  # after the spot filter


def test_pipeline_keeps_qc_tables(processed, tiny_adata):
    rec = processed.uns["preprocessing"]
    assert len(rec["spot_qc"]) == tiny_adata.n_obs and rec["spot_qc"]["kept"].sum() == processed.n_obs
    assert len(rec["gene_qc"]) == tiny_adata.n_vars
    assert set(processed.var_names) <= set(rec["gene_qc"].index[rec["gene_qc"]["kept"]])


def test_missing_by_slide_and_table_totals_known_answers():
    adata = AnnData(X=np.zeros((4, 2)), obs=pd.DataFrame({"slide_id": ["a", "a", "b", "b"]}, index=list("wxyz")))
    adata.layers["mask"] = np.array([[True, False], [True, True], [True, True], [True, True]])
    table = pp.missing_by_slide(adata)
    assert table.loc["a", "missing %"] == 25.0 and table.loc["b", "missing %"] == 0.0
    assert table.loc["a", "spots with a missing value %"] == 50.0
    supp = pd.DataFrame({"spots_paper": [100, 50, np.nan], "slides_paper": [2, 3, np.nan],
                         "patients_paper": [1, 2, np.nan], "spots_ours": [np.nan, 40, 7],
                         "slides_ours": [np.nan, 3, 4], "patients_ours": [np.nan, 2, 2]})
    totals = pp.table_totals(supp)
    assert totals["paper"].tolist() == [2, 5, 3, 150]
    assert totals["curated here"].tolist() == [2, 7, 4, 47]


def test_embedding_separates_slides_before_combat():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (120, 10))
    x[60:] += 4.0
    adata = AnnData(X=x, obs=pd.DataFrame({"slide_id": ["a"] * 60 + ["b"] * 60}, index=[str(i) for i in range(120)]))
    adata.layers["d_log1p"] = x
    assert pp.embed(adata, "d_log1p", "pca").shape == (120, 2)
    assert pp.slide_silhouette(adata, "d_log1p") > 0.5


def test_pipeline_leaves_its_input_untouched(tiny_adata):
    raw = tiny_adata.copy()
    before = raw.layers["counts"].copy()
    uns_keys = set(raw.uns)
    out = pp.run_pipeline(raw, Spec(), progress=False)
    assert (raw.layers["counts"] != before).nnz == 0
    assert set(raw.uns) == uns_keys and "preprocessing" not in raw.uns
    assert raw.n_obs == tiny_adata.n_obs and raw.n_vars == tiny_adata.n_vars
    assert out.uns["spatial"].keys() == raw.uns["spatial"].keys()


def test_pipeline_keeps_context_genes_beside_the_panel_when_asked(processed, tiny_adata):
    """``n_context``: the next genes by Moran's I (not in the panel), their values on the curated
    spots and a mask of their real values; the default keeps none and leaves the stamp of files
    curated before the field unchanged."""
    from dataclasses import replace

    from spared_utils import datasets
    from spared_utils.preprocess.context import CONTEXT_KEY
    from spared_utils.preprocess.store import curation_fingerprint

    with_context = pp.run_pipeline(tiny_adata.copy(), Spec(n_context=6), progress=False)
    genes = with_context.uns["context_genes"]
    assert len(genes) == 6 and not set(genes) & set(with_context.var_names)
    np.testing.assert_array_equal(with_context.var_names, processed.var_names)  # the panel is the same
    np.testing.assert_array_equal(with_context.layers["c_d_log1p"], processed.layers["c_d_log1p"])
    moran = processed.uns["preprocessing"]["moran"]
    mean = (moran["mean"] if "mean" in moran else moran.mean(axis=1)).drop(processed.var_names)
    assert genes == list(mean.sort_values(ascending=False, kind="stable").index[:6])
    values = with_context.obsm[CONTEXT_KEY]
    assert values.shape == (with_context.n_obs, 6) and np.isfinite(values).all()
    assert with_context.obsm[CONTEXT_KEY + "_mask"].dtype == bool
    assert CONTEXT_KEY not in processed.obsm and "context_genes" not in processed.uns
    spec = datasets.get_spec("synthetic")
    assert "n_context" not in curation_fingerprint(spec)
    assert '"n_context": 6' in curation_fingerprint(replace(spec, curation=replace(spec.curation, n_context=6)))
