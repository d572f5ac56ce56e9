"""``datasets.load(id, stage=...)``: each stage made once, in order, and cached."""

from __future__ import annotations

import numpy as np
import pytest

from spared_utils import completion, datasets, paths


def _refuse_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("nothing may train here: the completion is stored")

    monkeypatch.setattr(completion.methods, "train_spackle", refuse)
    monkeypatch.setattr(completion.artefacts, "complete", refuse)


def test_completed_stage_never_trains_and_says_how_to_complete(monkeypatch):
    _refuse_training(monkeypatch)
    with pytest.raises(FileNotFoundError, match=r"'synthetic_tiny' has no stored 'spackle' completion.*"
                                                r"su\.completion\.ensure\(.*method='spackle'"):
        datasets.load("synthetic_tiny", stage="completed", progress=False)
    with pytest.raises(FileNotFoundError, match="no stored 'median' completion"):
        datasets.load("synthetic_tiny", stage="completed", method="median", progress=False)
    assert not completion.completion_dir("synthetic_tiny").exists(), "nothing was written"


def test_ensure_stores_the_completion_once_and_load_reads_it(monkeypatch, capsys):
    curated = datasets.load("synthetic_tiny", progress=False)
    adata = completion.ensure(curated, "synthetic_tiny", "spackle", iterations=3, device="cpu")
    assert {"c_d_log1p", "c_t_log1p", "c_t_deltas"} <= set(adata.layers)
    assert "c_t_log1p" not in curated.layers, "the curated data is not modified"
    real = adata.layers["mask"]
    assert np.array_equal(adata.layers["c_t_log1p"][real], adata.layers["c_d_log1p"][real])  # real values kept
    key = adata.uns["completion"]["address"]
    assert adata.uns["completion"]["method"] == "spackle" and key.startswith("spackle-")
    path = completion.completion_dir("synthetic_tiny") / f"{key}.h5ad"
    assert path.is_file() and f"completing with spackle ({key})" in capsys.readouterr().out

    _refuse_training(monkeypatch)
    again = completion.ensure(curated, "synthetic_tiny", "spackle", iterations=3, device="cpu")
    assert f"found completion {key}" in capsys.readouterr().out
    assert np.array_equal(again.layers["c_t_log1p"], adata.layers["c_t_log1p"])
    assert np.array_equal(again.layers["c_t_deltas"], adata.layers["c_t_deltas"])
    # another seed is another address: it would train (and here is refused)
    with pytest.raises(AssertionError, match="nothing may train"):
        completion.ensure(curated, "synthetic_tiny", "spackle", iterations=3, device="cpu", seed=1)
    loaded = datasets.load("synthetic_tiny", stage="completed", progress=False)
    assert np.array_equal(loaded.layers["c_t_log1p"], adata.layers["c_t_log1p"])
    assert loaded.uns["completion"]["address"] == key
    assert "c_t_log1p" not in datasets.load("synthetic_tiny", progress=False).layers, "the curated file is unchanged"


def test_stage_and_option_errors_say_what_is_allowed():
    with pytest.raises(ValueError, match=r"stage must be one of \('raw', 'curated', 'completed'\)"):
        datasets.load("synthetic_tiny", stage="processed")
    with pytest.raises(TypeError, match="only applies to stage='completed'"):
        datasets.load("synthetic_tiny", stage="curated", method="spackle")
    with pytest.raises(ValueError, match="unknown completion method 'knn'"):
        datasets.load("synthetic_tiny", stage="completed", method="knn")


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
