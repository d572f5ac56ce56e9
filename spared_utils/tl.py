"""``su.tl``: the verbs that learn from a curated dataset.

Completion (:mod:`spared_utils.completion`): :func:`complete`, :func:`train_spackle`, the
paper's masking protocol (:func:`evaluate_masking`), and :func:`complete_slide`, which curates,
trains and completes a slide of one's own (read by scanpy, squidpy or the project's readers) in
one call. Prediction (:mod:`spared_utils.predict`):
:func:`prediction_data`, :func:`train_predictor`, :func:`predict`,
:func:`search_learning_rate` and a whole chapter, :func:`run_chapter` on a :class:`RunSpec`. Analysis
(:mod:`spared_utils.analysis`): :func:`scenario_differences` from the results store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _lazy_face

if TYPE_CHECKING:  # the face's names, each imported from its module on first use (see _lazy_face)
    from .analysis import scenario_differences
    from .completion import (
        ablation_table,
        add_best_completion,
        before_dropout_layer,
        complete,
        evaluate_masking,
        evaluate_missing,
        hex_geometry_of,
        masking_methods,
        relative_reduction,
        score_missing,
        train_plus,
        train_spackle,
    )
    from .completion import results_rows as completion_rows
    from .completion.own_slide import complete_slide
    from .predict import RunSpec, build_for_data, evaluate_predictions, predict, prediction_data, run_chapter, search_learning_rate, train_predictor, trivial_baseline

__all__ = [
    "ablation_table", "add_best_completion", "before_dropout_layer", "build_for_data", "complete", "complete_slide", "completion_rows", "evaluate_masking", "evaluate_missing", "evaluate_predictions", "hex_geometry_of", "masking_methods", "predict", "prediction_data", "relative_reduction",
    "RunSpec", "run_chapter", "scenario_differences", "score_missing", "search_learning_rate", "train_plus", "train_predictor", "train_spackle", "trivial_baseline",
]

__getattr__, __dir__ = _lazy_face(__name__)
