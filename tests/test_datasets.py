"""``datasets.load(id, stage=...)``: each stage made once, in order, and cached."""

from __future__ import annotations

import numpy as np
import pytest

from spared_utils import completion, datasets, paths


def test_completed_stage_trains_spackle_once_and_saves_the_layer(monkeypatch):
    adata = datasets.load("synthetic_tiny", stage="completed", progress=False, iterations=3, device="cpu")
    assert {"c_d_log1p", "c_t_log1p", "c_t_deltas"} <= set(adata.layers)
    real = adata.layers["mask"]
    assert np.array_equal(adata.layers["c_t_log1p"][real], adata.layers["c_d_log1p"][real])  # real values kept
    assert adata.uns["completion"]["method"] == "spackle"

    def refuse(*args, **kwargs):
        raise AssertionError("SpaCKLE must not train again: the completed layer is cached")

    monkeypatch.setattr(completion, "complete", refuse)
    again = datasets.load("synthetic_tiny", stage="completed", progress=False)
    assert np.array_equal(again.layers["c_t_log1p"], adata.layers["c_t_log1p"])
    curated = datasets.load("synthetic_tiny", progress=False)  # the curated stage is the same file
    assert "c_t_log1p" in curated.layers


def test_stage_and_option_errors_say_what_is_allowed():
    with pytest.raises(ValueError, match=r"stage must be one of \('raw', 'curated', 'completed'\)"):
        datasets.load("synthetic_tiny", stage="processed")
    with pytest.raises(TypeError, match="only apply to stage='completed'"):
        datasets.load("synthetic_tiny", stage="curated", iterations=3)


def test_patch_store_is_cut_on_first_use_and_reused(monkeypatch):
    adata = datasets.load("synthetic_tiny", progress=False)
    store = datasets.patch_store("synthetic_tiny", adata, progress=False)
    assert len(store) == adata.n_obs and list(store.obs_names) == list(adata.obs_names)
    assert store.meta["source_id"] == adata.uns["dataset_spec"] == datasets.spec_fingerprint(
        datasets.get_spec("synthetic_tiny"))
    assert store.path == paths.processed_dir() / "synthetic_tiny" / "patches"

    def refuse(*args, **kwargs):
        raise AssertionError("the patch store must be reused")

    monkeypatch.setattr(datasets, "extract_patches", refuse)
    again = datasets.patch_store("synthetic_tiny", adata, progress=False)
    assert np.array_equal(again[3], store[3])
