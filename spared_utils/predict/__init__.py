"""The prediction stage: train any predictor, evaluate it, store the results.

Three modules, in the order data flows:

* :mod:`~spared_utils.predict.engine` – one run of any predictor (:func:`train_predictor`: the
  record's setup hook, its task in the shared training loop, the metrics, the results rows)
  and the learning-rate search;
* :mod:`~spared_utils.predict.bundle` – a trained patch predictor as a folder that new slides
  can use (:func:`save_predictor`, :func:`load_predictor`);
* :mod:`~spared_utils.predict.harness` – a whole chapter (:func:`run_chapter` on a
  :class:`RunSpec`);

What a run reads (:func:`prediction_data`) and how each predictor trains (its
:class:`~spared_utils.models.task.Task`) live with the predictors in :mod:`spared_utils.models`;
this stage names no predictor.

**Scenarios** (:data:`SCENARIOS`; the target layer of each is :data:`TARGET_LAYERS`):

* ``raw`` – the paper's: the curated ``c_d_log1p`` with every value that was missing set back
  to 0, the loss on *every* entry (the authors' code);
* ``masked`` – the same layer, the loss on real values only (``mask`` True), nothing filled in;
* ``median`` – the median-completed ``c_d_log1p``, the loss on every entry;
* ``completed`` – a completion method's ``c_t_log1p`` (SpaCKLE's by default), the loss on every entry.

**Evaluation is always on real values only** (``c_d_log1p`` where ``mask`` is True), so every
scenario is scored against the same measurements.
"""

from ..models.data import (
    MASK_LAYER,
    SCENARIOS,
    TARGET_LAYERS,
    TRUTH_LAYER,
    PatchDataset,
    PredictionData,
    Scenario,
    open_store,
    patch_channel_stats,
    prediction_data,
    random_symmetry,
    store_positions,
)
from ..models.task import Task, default_num_workers, make_loader, masked_mse_loss, predict
from .engine import (
    DEFAULT_LR_GRID,
    PredictorConfig,
    PredictorRun,
    build_for_data,
    checkpoint_dir,
    evaluate_predictions,
    make_task,
    result_rows,
    run_setup,
    search_learning_rate,
    train_predictor,
    trivial_baseline,
)
from .bundle import PredictorBundle, check_patch_size, load_predictor, predict_patches, save_predictor
from .harness import COST_FIELDS, ChapterRun, RunSpec, parse_scenarios, run_chapter

__all__ = [
    "COST_FIELDS", "DEFAULT_LR_GRID", "MASK_LAYER", "SCENARIOS", "TARGET_LAYERS", "TRUTH_LAYER", "ChapterRun",
    "PatchDataset", "PredictionData", "PredictorBundle", "PredictorConfig", "PredictorRun", "RunSpec", "Scenario", "Task",
    "build_for_data", "check_patch_size", "checkpoint_dir", "default_num_workers", "evaluate_predictions",
    "load_predictor", "make_loader", "make_task", "masked_mse_loss", "open_store", "parse_scenarios",
    "patch_channel_stats", "predict", "predict_patches", "prediction_data", "random_symmetry", "result_rows",
    "run_chapter", "run_setup", "save_predictor", "search_learning_rate", "store_positions", "train_predictor",
    "trivial_baseline",
]
