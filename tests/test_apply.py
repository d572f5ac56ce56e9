"""spared_utils.apply: a new slide read, mapped to the panel, curated, completed, predicted and written."""

from __future__ import annotations

import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.sparse as sp

import spared_utils
from spared_utils import apply as apply_module
from spared_utils.completion import spackle
from spared_utils.patches import PatchStore
from spared_utils.predict import check_patch_size, load_predictor, predict_patches
from spared_utils.preprocess import PanelMismatchError
from spared_utils.readers import read_spaceranger
from spared_utils.synthetic import write_10x_h5
from tests.fixtures_apply import trained  # noqa: F401  (pytest fixture)


def _log2_tpm(counts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    rate = counts / lengths
    return np.log2(1 + 1e6 * rate / rate.sum(axis=1, keepdims=True))


@pytest.fixture(scope="module")
def applied(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("applied") / "slide.h5ad"
    result = spared_utils.apply(trained.slide, completion=trained.spackle, predictor=trained.predictor, out=out,
                                progress=False, device="cpu")
    return result, out


def test_layers_follow_the_training_curation_and_keep_real_values(trained, applied):
    result, out = applied
    panel = list(trained.adata.var_names)
    assert list(result.var_names) == panel and set(result.layers) >= {"measured", "completed", "predicted", "mask"}
    # log2(TPM + 1) computed here from the slide's own files and the vendored-style length table
    raw = read_spaceranger(trained.slide)
    lengths = np.loadtxt(trained.slide.parent / "gene_lengths.tsv", skiprows=1, usecols=1)
    expected = _log2_tpm(raw.layers["counts"].toarray().astype(np.float64), lengths)
    cols = [list(raw.var_names).index(g) for g in panel]
    np.testing.assert_allclose(result.layers["measured"], expected[:, cols], rtol=1e-4, atol=1e-4)
    mask = result.layers["mask"]
    np.testing.assert_array_equal(mask, expected[:, cols] > 0)
    np.testing.assert_array_equal(result.layers["completed"][mask], result.layers["measured"][mask])
    assert np.isfinite(result.layers["completed"]).all() and np.isfinite(result.layers["predicted"]).all()
    # the predicted layer is the checkpoint's model on the slide's patches (recomputed independently)
    bundle = load_predictor(trained.predictor, device="cpu")
    store_dir = out.parent / "patches_check"
    from spared_utils.patches import extract_patches

    work = raw.copy()
    work.obs["slide_id"] = trained.slide.name
    extract_patches(work, store_dir, patch_size=bundle.patch_size, patch_scale=bundle.patch_scale, progress=False)
    np.testing.assert_allclose(result.layers["predicted"], predict_patches(bundle, PatchStore(store_dir), progress=False),
                               rtol=1e-5, atol=1e-5)
    info = result.uns["apply"]
    assert info["training_dataset"] == "synthetic_tiny" and info["n_genes_found"] == len(panel)


def test_written_h5ad_reads_back_and_squidpy_plots_it(applied):
    import matplotlib

    matplotlib.use("agg")
    import squidpy as sq

    result, out = applied
    back = ad.read_h5ad(out)
    np.testing.assert_array_equal(back.layers["predicted"], result.layers["predicted"])
    assert back.layers["mask"].dtype == bool
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "a temporary file was left behind"
    gene = back.var_names[0]
    for layer in ("measured", "completed", "predicted"):
        axes = sq.pl.spatial_scatter(back, color=gene, layer=layer, return_ax=True)
        ax = axes[0] if isinstance(axes, (list, np.ndarray)) else axes
        spots = [c for c in ax.collections if len(c.get_paths()) == back.n_obs]
        assert spots and len(ax.images) == 1, f"spatial_scatter drew no {back.n_obs} spots over the image ({layer})"
        values = np.asarray(spots[0].get_array(), dtype=float)
        np.testing.assert_allclose(np.sort(values[np.isfinite(values)]),
                                   np.sort(back[:, gene].layers[layer].ravel()), rtol=1e-5)


def test_panel_gene_absent_from_the_slide_is_unmeasured_not_zero(trained, tmp_path):
    slide = trained.slide_copy(tmp_path / "copy")
    raw = read_spaceranger(slide)
    gone = str(trained.adata.var_names[3])
    keep = np.flatnonzero(raw.var_names != gone)
    h5 = slide / "filtered_feature_bc_matrix.h5"
    h5.unlink()
    write_10x_h5(h5, sp.csr_matrix(raw.layers["counts"])[:, keep], raw.obs_names, raw.var_names[keep],
                 raw.var["gene_symbol"].to_numpy()[keep])
    result = spared_utils.apply(slide, trained.spackle, trained.predictor, progress=False, device="cpu")
    j = list(result.var_names).index(gone)
    assert not result.var["in_slide"].iloc[j] and result.var["in_slide"].drop(gone).all()
    assert np.isnan(result.layers["measured"][:, j]).all()
    assert not result.layers["mask"][:, j].any()
    assert np.isfinite(result.layers["completed"][:, j]).all() and np.isfinite(result.layers["predicted"][:, j]).all()
    assert result.uns["apply"]["absent_genes"] == [gone]


def test_genes_found_by_symbol_when_ids_differ(trained):
    panel = {"genes": ["ENSG00000141510", "SYNG00001", "NOPE"], "symbols": ["TP53", "Syn1", "Nothing"]}
    slide = ad.AnnData(np.zeros((2, 3), np.float32))
    slide.var_names = ["ENSG00000141510.17", "other_id", "x"]
    slide.var["gene_symbol"] = ["TP53", "Syn1", "Syn9"]
    np.testing.assert_array_equal(apply_module.map_panel(slide, panel), [0, 1, -1])


def test_reference_batch_correction_moves_real_values_to_the_training_scale(trained):
    result = spared_utils.apply(trained.slide, trained.spackle, trained.predictor, progress=False,
                                device="cpu", batch_correction="reference")
    panel = spackle.load_checkpoint(trained.spackle, device="cpu").extra["panel"]
    real = result.layers["mask"]
    means = np.array([result.layers["measured"][real[:, j], j].mean() for j in range(result.n_vars)])
    np.testing.assert_allclose(means, panel["train_mean"], rtol=1e-4, atol=1e-4)
    assert (result.layers["measured"][~real] == 0).all()  # unmeasured entries stay 0, not median-filled
    assert result.uns["apply"]["batch_correction"] == "reference"


def test_checkpoints_refuse_other_genes_and_other_patch_sizes_naming_both(trained):
    model = spackle.load_checkpoint(trained.spackle, device="cpu")
    assert model.extra["panel"]["dataset_id"] == "synthetic_tiny" and "torch" in model.extra["panel"]["versions"]
    other = trained.adata[:, ::-1].copy()
    other.uns["dataset_id"] = "someone_elses"
    with pytest.raises(PanelMismatchError) as err:
        spackle.complete_with(model, other)
    assert str(trained.spackle) in str(err.value) and "someone_elses" in str(err.value)
    bundle = load_predictor(trained.predictor, device="cpu")
    assert bundle.meta["panel"]["dataset_fingerprint"] == "tiny-fingerprint" and bundle.meta["versions"]["torch"]
    with pytest.raises(PanelMismatchError) as err:
        check_patch_size(bundle, 224, "store /x/patches")
    assert str(trained.predictor) in str(err.value) and "/x/patches" in str(err.value) and "32 px" in str(err.value)


def test_command_help_and_a_refused_slide(trained, tmp_path, capsys):
    with pytest.raises(SystemExit) as done:  # the parser `python -m spared_utils.apply --help` runs
        apply_module.main(["--help"])
    assert done.value.code == 0 and "--completion" in capsys.readouterr().out
    out = tmp_path / "o.h5ad"
    status = apply_module.main([str(tmp_path / "nowhere"), "--completion", str(trained.spackle), "--predictor",
                                str(trained.predictor), "-o", str(out), "--no-progress"])
    assert status == 2 and "nowhere" in capsys.readouterr().err and not out.exists()


def test_predictor_checkpoint_reproduces_the_trained_model(trained):
    bundle = load_predictor(trained.predictor, device="cpu")
    store = trained.run.task.data.store
    rows = np.arange(6)
    mine = predict_patches(bundle, store.take(rows), progress=False)
    theirs = trained.run.task.predict(trained.run.model, rows)
    np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-4)
    with h5py.File(trained.slide / "filtered_feature_bc_matrix.h5") as f:
        assert f["matrix/shape"][0] == 64  # the new slide carries the generator's whole gene set


def test_space_ranger_1x_layout_with_an_mtx_folder_gives_the_same_slide(trained, applied, tmp_path):
    """Space Ranger 1.x: ``tissue_positions_list.csv`` without a header, and the mtx folder instead of ``.h5``."""
    import gzip

    import scipy.io

    slide = trained.slide_copy(tmp_path / "old")
    raw = read_spaceranger(slide)
    positions = slide / "spatial" / "tissue_positions.csv"
    positions.with_name("tissue_positions_list.csv").write_text("".join(positions.read_text().splitlines(True)[1:]))
    positions.unlink()
    (slide / "filtered_feature_bc_matrix.h5").unlink()
    folder = slide / "filtered_feature_bc_matrix"
    folder.mkdir()
    scipy.io.mmwrite(folder / "matrix.mtx", sp.csr_matrix(raw.layers["counts"]).T.astype(np.int64).tocoo())
    with open(folder / "matrix.mtx", "rb") as src, gzip.open(folder / "matrix.mtx.gz", "wb") as dst:
        dst.write(src.read())
    (folder / "matrix.mtx").unlink()
    with gzip.open(folder / "features.tsv.gz", "wt") as f:
        f.writelines(f"{g}\t{s}\tGene Expression\n" for g, s in zip(raw.var_names, raw.var["gene_symbol"]))
    with gzip.open(folder / "barcodes.tsv.gz", "wt") as f:
        f.writelines(f"{b}\n" for b in raw.obs_names)
    old = spared_utils.apply(slide, trained.spackle, trained.predictor, progress=False, device="cpu")
    new, _ = applied
    assert list(old.obs_names) == list(new.obs_names)
    for layer in ("measured", "completed", "predicted"):
        np.testing.assert_allclose(old.layers[layer], new.layers[layer], rtol=1e-5, atol=1e-5)
