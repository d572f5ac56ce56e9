"""The curation chapter end to end on the tiny synthetic dataset (slow: executes the notebook)."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_curation_chapter_writes_a_dataset_that_load_reuses(tmp_path):
    import anndata as ad

    from spared_utils import datasets, patches, run
    from spared_utils.preprocess import processed_path

    out = run.execute("01_curation", "synthetic_tiny", {"embedding": "pca", "n_patch_examples": 4},
                      output=tmp_path / "01_curation.ipynb", progress=False)
    assert out.is_file()
    adata_path = processed_path("synthetic_tiny")
    written = ad.read_h5ad(adata_path)
    assert written.n_vars == datasets.get_spec("synthetic_tiny").n_genes
    store = patches.PatchStore(processed_path("synthetic_tiny", "patches"))
    assert store.obs_names.equals(written.obs_names)
    stamp = adata_path.stat().st_mtime_ns
    again = datasets.load("synthetic_tiny", progress=False)  # reused, not recomputed
    assert adata_path.stat().st_mtime_ns == stamp
    assert again.obs_names.equals(written.obs_names)
