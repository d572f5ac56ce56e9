"""The prediction stage: train a patch → expression predictor, evaluate it, store the results.

Four modules, in the order data flows:

* :mod:`~spared_utils.predict.data` – targets, masks and splits of one scenario
  (:func:`prediction_data`) and the streaming patch dataset;
* :mod:`~spared_utils.predict.tasks` – what one training step of each kind of predictor reads
  and how it predicts (patches, slide windows, exemplar banks, retrieval, SEPAL's neighbourhood
  graphs, the closed-form probe), the masked loss, loaders and :func:`predict`;
* :mod:`~spared_utils.predict.engine` – one run of any predictor (:func:`train_predictor`)
  and the learning-rate search;
* :mod:`~spared_utils.predict.harness` – a whole chapter (:func:`run_chapter`).

**Scenarios.** ``raw``: the target is ``c_d_log1p`` and the loss is MSE on real values only
(``mask`` True); ``completed``: the target is SpaCKLE's ``c_t_log1p`` and the loss is MSE on
every value. **Evaluation is always on real values only** (``c_d_log1p`` where ``mask`` is
True), so both scenarios are scored against the same measurements.
"""

from .data import (
    MASK_LAYER,
    SCENARIOS,
    TARGET_LAYERS,
    TRUTH_LAYER,
    PatchDataset,
    PredictionData,
    open_store,
    patch_channel_stats,
    prediction_data,
    random_symmetry,
    store_positions,
)
from .engine import (
    DEFAULT_LR_GRID,
    PredictorConfig,
    PredictorRun,
    build_for_data,
    checkpoint_dir,
    default_num_workers,
    evaluate_predictions,
    make_loader,
    make_task,
    masked_mse_loss,
    predict,
    result_rows,
    search_learning_rate,
    stage1_for_sepal,
    train_predictor,
    trivial_baseline,
)
from .bundle import PredictorBundle, check_patch_size, load_predictor, predict_patches, save_predictor
from .tasks import TASKS, Task, task_class
from .harness import ChapterRun, parse_scenarios, run_chapter

__all__ = [
    "DEFAULT_LR_GRID", "MASK_LAYER", "SCENARIOS", "TARGET_LAYERS", "TRUTH_LAYER", "ChapterRun", "PatchDataset",
    "PredictionData", "PredictorBundle", "PredictorConfig", "PredictorRun", "build_for_data", "check_patch_size", "checkpoint_dir", "default_num_workers",
    "TASKS", "Task", "evaluate_predictions", "make_loader", "load_predictor", "make_task", "masked_mse_loss", "open_store", "patch_channel_stats", "parse_scenarios",
    "predict", "predict_patches", "prediction_data", "random_symmetry", "result_rows", "run_chapter", "save_predictor", "search_learning_rate",
    "stage1_for_sepal", "store_positions", "task_class", "train_predictor", "trivial_baseline",
]
