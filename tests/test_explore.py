"""Interactive explorers: a widget change redraws the figure with the newly chosen data."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from spared_utils import pl


@pytest.fixture(scope="module")
def curated_like(tiny_adata):
    """The tiny dataset with the layers the explorers read (log counts, a mask, two completions)."""
    adata = tiny_adata.copy()
    counts = np.asarray(adata.layers["counts"].todense(), dtype=np.float32)
    logged = np.log2(counts + 1)
    adata.layers["mask"] = counts > 0
    adata.layers["c_d_log1p"] = logged
    adata.layers["c_t_log1p"] = logged + 0.5
    return adata


def _shown(explorer, panel: int) -> np.ndarray:
    """The colour values of the last scatter drawn on a panel."""
    return np.asarray(explorer.figure.axes[panel].collections[-1].get_array())


def test_slide_explorer_redraws_when_the_gene_or_slide_changes(curated_like):
    ex = pl.explore_slide(curated_like)
    assert ex.updates == 1 and set(ex.controls) == {"dataset", "slide", "gene"}
    titles = [ax.get_title() for ax in ex.figure.axes[:4]]
    assert titles[0] == "measured" and titles[1].startswith("missing values")
    other = next(g for g in curated_like.var_names if g != ex.controls["gene"].value)
    ex.controls["gene"].value = other
    assert ex.updates == 2, "changing the gene must call the update"
    slide = ex.controls["slide"].value
    rows = np.flatnonzero(curated_like.obs["slide_id"].astype(str).to_numpy() == slide)
    j = curated_like.var_names.get_loc(other)
    expected = curated_like.layers["c_t_log1p"][rows, j]
    np.testing.assert_allclose(np.sort(_shown(ex, 3)), np.sort(expected), rtol=1e-6)
    ex.controls["slide"].value = new = next(s for s in ex.controls["slide"].options if s != slide)
    assert ex.updates == 3
    new_rows = np.flatnonzero(curated_like.obs["slide_id"].astype(str).to_numpy() == new)
    np.testing.assert_allclose(np.sort(_shown(ex, 2)), np.sort(curated_like.layers["c_d_log1p"][new_rows, j]))
    assert new in ex.figure._suptitle.get_text()


def test_slide_explorer_shows_the_measured_values_only_where_the_mask_is_true(curated_like):
    ex = pl.explore_slide({"tiny": curated_like}, slide=str(curated_like.obs["slide_id"].iloc[0]))
    slide = ex.controls["slide"].value
    rows = np.flatnonzero(curated_like.obs["slide_id"].astype(str).to_numpy() == slide)
    j = curated_like.var_names.get_loc(ex.controls["gene"].value)
    real = curated_like.layers["mask"][rows, j]
    assert len(_shown(ex, 0)) == real.sum() < len(rows), "missing spots are not coloured as measured"
    png = base64.b64decode(ex._repr_mimebundle_()["image/png"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "the static view (no kernel) is a PNG of the figure"


def test_best_completion_panel_names_the_winning_method_and_keeps_real_values(curated_like):
    import pandas as pd

    from spared_utils import completion

    adata = curated_like.copy()
    real = adata.layers["mask"]
    summary = pd.DataFrame({"method": ["median", "median", "mean", "mean"], "masking": [0.1, 0.5] * 2,
                            "split": "test", "mse": [2.0, 4.0, 3.0, 2.5]})
    fills = {"median": lambda a, v, r, h, rows: np.full((len(rows), v.shape[1]), 7.0, np.float32),
             "mean": lambda a, v, r, h, rows: np.full((len(rows), v.shape[1]), -1.0, np.float32)}
    assert completion.add_best_completion(adata, fills, summary) == "mean"  # 2.75 < 3.0
    best = adata.layers[completion.BEST_LAYER]
    np.testing.assert_array_equal(best[real], adata.layers["c_d_log1p"][real])
    assert np.all(best[~real] == -1.0), "missing entries come from the winning method"
    ex = pl.explore_slide(adata)
    titles = [ax.get_title() for ax in ex.figure.axes[:5]]
    assert titles[4] == "best completion: mean"
    slide = ex.controls["slide"].value
    rows = np.flatnonzero(adata.obs["slide_id"].astype(str).to_numpy() == slide)
    j = adata.var_names.get_loc(ex.controls["gene"].value)
    np.testing.assert_allclose(np.sort(_shown(ex, 4)), np.sort(best[rows, j]))
    with pytest.raises(ValueError, match="no method"):
        completion.best_method(summary, ["spackle"])


def test_slide_explorer_refuses_a_dataset_without_a_mask(tiny_adata):
    with pytest.raises(ValueError, match="mask"):
        pl.explore_slide(tiny_adata)


def test_prediction_explorer_switches_prediction_and_gene(curated_like):
    rows = np.flatnonzero(curated_like.obs["split"].astype(str).to_numpy() == "test")
    truth = curated_like.layers["c_d_log1p"][rows]
    rng = np.random.default_rng(0)
    preds = {"good, completed": (rows, truth + rng.normal(0, 0.1, truth.shape)),
             "noise, raw": (rows, rng.normal(0, 1, truth.shape))}
    ex = pl.explore_prediction(curated_like, preds)
    assert ex.controls["prediction"].value == "good, completed"
    first = _shown(ex, 1).copy()
    bars = [p.get_height() for p in ex.figure.axes[2].patches]
    assert np.nanmedian(bars) > 0.9, "a near-perfect prediction has high per-gene PCC"
    ex.controls["prediction"].value = "noise, raw"
    assert ex.updates == 2
    assert not np.allclose(first, _shown(ex, 1)), "the predicted map must change with the prediction"
    bars = [p.get_height() for p in ex.figure.axes[2].patches]
    assert abs(np.nanmedian(bars)) < 0.5
    gene = curated_like.var_names[5]
    ex.controls["gene"].value = gene
    slide_rows = rows[curated_like.obs["slide_id"].to_numpy()[rows] == curated_like.obs["slide_id"].to_numpy()[rows[0]]]
    on = np.isin(rows, slide_rows)
    np.testing.assert_allclose(_shown(ex, 1), preds["noise, raw"][1][on, 5])
    assert gene in ex.figure.axes[2].get_title()


def test_prediction_explorer_names_a_misshapen_prediction(curated_like):
    with pytest.raises(ValueError, match="one column per gene"):
        pl.explore_prediction(curated_like, {"bad": (np.arange(3), np.zeros((3, 2)))})


def test_a_batch_run_shows_the_static_view_only(curated_like, monkeypatch):
    """In a live kernel the explorer adds its widgets; under papermill (the runner sets
    SPARED_STATIC_VIEWS) it shows the PNG alone."""
    from ipykernel.kernelbase import Kernel

    from spared_utils import explore

    monkeypatch.setattr(Kernel, "initialized", classmethod(lambda cls: True))
    ex = pl.explore_slide(curated_like)
    monkeypatch.delenv(explore.STATIC_ENV, raising=False)
    assert "application/vnd.jupyter.widget-view+json" in ex._repr_mimebundle_()
    monkeypatch.setenv(explore.STATIC_ENV, "1")
    bundle = ex._repr_mimebundle_()
    assert "image/png" in bundle and "application/vnd.jupyter.widget-view+json" not in bundle


def test_the_kernel_free_page_draws_each_view_beforehand_and_its_dropdowns_swap_them(curated_like, monkeypatch):
    """Under papermill (the book's build) the explorer's display holds an HTML fragment: one
    dropdown per control and the views drawn beforehand, at most MAX_VIEWS, each a different
    image; the first view is the one the figure shows."""
    import base64
    import json
    import re

    from spared_utils import explore

    rows = np.flatnonzero(curated_like.obs["split"].astype(str).to_numpy() == "test")
    truth = curated_like.layers["c_d_log1p"][rows]
    rng = np.random.default_rng(0)
    preds = {"good, completed": (rows, truth + rng.normal(0, 0.1, truth.shape)),
             "noise, raw": (rows, rng.normal(0, 1, truth.shape))}
    ex = pl.explore_prediction(curated_like, preds)
    views = ex.views()
    assert views["prediction"] == ["good, completed", "noise, raw"], "every prediction, the shown one first"
    assert views["gene"][0] == ex.values()["gene"] and len(views["gene"]) == explore.MAX_VIEWS // 2
    monkeypatch.setenv(explore.STATIC_ENV, "1")
    bundle = ex._repr_mimebundle_()
    page = bundle["text/html"]
    images = json.loads(re.search(r'<script type="application/json">(.*?)</script>', page).group(1))
    assert len(images) == explore.MAX_VIEWS and len(set(images.values())) == len(images), "each view its own image"
    first = "|".join(str(v) for v in ex.values().values())
    assert f'<img src="{images[first]}"' in page, "the page opens on the first view"
    assert page.count("<select") == 2 and "addEventListener('change'" in page
    assert base64.b64decode(bundle["image/png"])[:4] == b"\x89PNG", "the PNG stays for renderers without HTML"
    assert ex.values() == {"prediction": "good, completed", "gene": views["gene"][0]}, "controls unchanged"


def test_readable_labels_methods_as_the_figures_do_and_keeps_values_and_other_ids():
    import pandas as pd

    from spared_utils import pl
    from spared_utils.plots.style import COMPLETION_LABELS

    table = pd.DataFrame(
        {"neighbour_mean": [0.5, 0.25], "mean_signed_error": [-0.1, 0.2]},
        index=pd.Index(["spackle_plus", "synsuite_base"], name="completion_method"),
    )
    shown = pl.readable(table)
    assert list(shown.columns) == [COMPLETION_LABELS["neighbour_mean"], "mean signed error"]
    # a method row gets its legend name, a dataset id stays as it is (readers look it up)
    assert list(shown.index) == [COMPLETION_LABELS["spackle_plus"], "synsuite_base"]
    assert shown.index.name == "completion method"
    assert (shown.to_numpy() == table.to_numpy()).all()
    assert list(table.columns) == ["neighbour_mean", "mean_signed_error"]  # the input is untouched
    pairs = pd.DataFrame([[1, 2]], columns=pd.MultiIndex.from_tuples(
        [("moran_gap", "before_dropout"), ("moran_gap", "expected")], names=["score", "the_truth"]))
    assert pl.readable(pairs).columns.tolist() == [("moran gap", "before dropout"), ("moran gap", "expected")]
    assert pl.readable(pairs).columns.names == ["score", "the truth"]


def test_prediction_explorer_shows_the_first_gene_when_no_pcc_is_defined(curated_like):
    """A predictor trained a few steps can predict every spot alike (e.g. on tiny patches): no
    per-gene PCC exists, and the explorer shows the first gene instead of failing."""
    rows = np.arange(curated_like.n_obs)
    constant = np.ones((len(rows), curated_like.n_vars))
    ex = pl.explore_prediction(curated_like, {"constant": (rows, constant)})
    assert ex.controls["gene"].value == str(curated_like.var_names[0])
