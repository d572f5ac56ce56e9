"""The benchmark projection's arithmetic (benchmarks/bench_batch.py)."""

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_batch  # noqa: E402


def test_projection_scales_measured_rates_to_the_paper_budget_and_protocols():
    store = pd.DataFrame([
        {"stage": "predict", "model": "shufflenet", "wall_time_s": 10.0, "iterations": 10, "batch_size": 10,
         "device": "cpu"},
        {"stage": "predict", "model": "shufflenet", "wall_time_s": 30.0, "iterations": 10, "batch_size": 10,
         "device": "cuda:0"},
        {"stage": "predict", "model": "histogene", "wall_time_s": 8.0, "iterations": 4, "batch_size": 128,
         "device": "cpu"},
        {"stage": "predict_lr_search", "model": "shufflenet", "wall_time_s": 1e6, "iterations": 1, "batch_size": 1,
         "device": "cpu"},
    ])
    rates = bench_batch.seconds_per_sample(store, slide_spots=2000).set_index(["model", "device"])
    assert rates.loc[("shufflenet", "cpu"), "s_per_sample"] == pytest.approx(0.1)  # the search row is ignored
    assert rates.loc[("shufflenet", "cuda"), "s_per_sample"] == pytest.approx(0.3)
    table = bench_batch.projection(rates.reset_index(), slide_spots=2000).set_index(["model", "device"])
    shuffle = table.loc[("shufflenet", "cpu")]
    assert shuffle["paper_run_h"] == pytest.approx(0.1 * 1000 * 256 / 3600)
    assert shuffle["paper (26 × 2 scenarios × 1 seed) h"] == pytest.approx(26 * (2 + 3) * 0.1 * 1000 * 256 / 3600)
    assert shuffle["book (26 × 4 scenarios × 3 seeds) h"] == pytest.approx(26 * (12 + 3) * 0.1 * 1000 * 256 / 3600)
    # a slide model's paper step reads a whole slide (here 2,000 spots), not its batch of 10,000
    slide = table.loc[("histogene", "cpu")]
    assert slide["paper_run_h"] == pytest.approx(8.0 / (4 * 128) * 1000 * 2000 / 3600)


def test_a_plans_projection_counts_its_runs_and_its_learning_rate_search():
    store = pd.DataFrame([
        {"stage": "predict", "model": "shufflenet", "wall_time_s": 10.0, "iterations": 10, "batch_size": 10,
         "device": "cpu"},
        {"stage": "predict", "model": "stnet", "wall_time_s": 2.0, "iterations": 10, "batch_size": 10,
         "device": "cuda"},
    ])
    rates = bench_batch.seconds_per_sample(store, slide_spots=2000)
    root = Path(__file__).resolve().parents[1]
    table = bench_batch.plan_projection(root / "workflow" / "spared26.yml", rates, 2000).set_index("model")
    assert set(table.index) == {"shufflenet", "stnet"}, "only the measured predictors"
    # 26 datasets × (raw + completed) + the 3-rate search on each dataset
    assert table.loc["shufflenet", "runs"] == 26 * (2 + 3) == table.loc["stnet", "runs"]
    assert table.loc["stnet", "device"] == "cuda"
    assert table.loc["shufflenet", "hours"] == pytest.approx(130 * 0.1 * 1000 * 256 / 3600)
