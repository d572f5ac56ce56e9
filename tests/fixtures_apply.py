"""Tiny trained checkpoints and a new slide in the Space Ranger layout, for apply and reliability tests.

``trained`` (session scope, ~15 s): the tiny synthetic dataset curated (16 genes), a SpaCKLE
checkpoint (5 iterations) and a ShuffleNet checkpoint folder (2 iterations, 32 px patches), all
under a session tmp folder; ``new_slide``: a slide of the same generator that the dataset does
not contain (:func:`spared_utils.synthetic.write_new_slide`).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

TINY = {"n_rows": 16, "n_cols": 32, "n_genes": 64}


@dataclass
class Trained:
    root: Path
    adata: object  # the curated, completed training data
    spackle: Path  # SpaCKLE checkpoint file
    predictor: Path  # predictor checkpoint folder
    slide: Path  # a pristine new slide (copy it before damaging it)
    run: object  # the predictor run

    def slide_copy(self, dest: Path) -> Path:
        """A copy of the new slide (with the gene-length table beside it) to damage in a test."""
        shutil.copytree(self.slide.parent, dest)
        return dest / self.slide.name


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Trained:
    import torch

    from spared_utils import completion, patches, preprocess, synthetic
    from spared_utils.predict import PredictorConfig, prediction_data, train_predictor
    from spared_utils.registry import PipelineParams

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("trained")
    raw = synthetic.make_dataset(seed=0, **TINY)
    adata = preprocess.run_pipeline(raw, PipelineParams(n_genes=16, organism="synthetic"), progress=False)
    adata.uns["dataset_id"] = "synthetic_tiny"
    adata.uns["dataset_spec"] = "tiny-fingerprint"
    config = completion.SpackleConfig.make(iterations=5, d_model=16, dim_feedforward=32, eval_every=5,
                                           progress=False, device="cpu", checkpoint_dir=str(root / "spackle"))
    result = completion.train_spackle(adata, config=config)
    completion.complete(adata, model=result)
    store = patches.extract_patches(adata, root / "patches", patch_size=32, progress=False)
    data = prediction_data(adata, patches.PatchStore(store), "completed")
    cfg = PredictorConfig.make(model="shufflenet", scenario="completed", iterations=2, batch_size=4, eval_every=1,
                               val_spots=4, eval_spots=4, progress=False, num_workers=0, device="cpu",
                               model_options={"width": 0.5})
    run = train_predictor(data, cfg, dataset="synthetic_tiny", out_dir=root / "results")
    predictor = next((root / "results").rglob("predictor.json")).parent
    slide = synthetic.write_new_slide(root / "new_slide", seed=0, **TINY)
    return Trained(root=root, adata=adata, spackle=Path(result.checkpoint), predictor=predictor, slide=slide, run=run)
