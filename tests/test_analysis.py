"""Analysis tables from the results store: the scenario question's paired differences."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from spared_utils import analysis


def _store(effect: dict, n_datasets=3, seeds=(0, 1), noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for d in range(n_datasets):
        for s in seeds:
            base = 3.0 + rng.normal(0, 0.3)
            for scenario, shift in effect.items():
                rows.append({"timestamp": "2026-12-02T00:00:00+00:00", "stage": "predict", "dataset": f"d{d}",
                             "model": "shufflenet", "scenario": scenario, "seed": s, "split": "test",
                             "mse": base + shift + rng.normal(0, noise)})
    return pd.DataFrame(rows)


def test_scenario_differences_recover_known_effects_with_intervals():
    store = _store({"raw": 12.0, "masked": 0.0, "median": 0.3, "completed": 0.2})
    table = analysis.scenario_differences(store, unit="run", pooled=False).set_index("pair")
    done_raw = table.loc["completed − raw"]
    assert done_raw["n"] == 6 and done_raw["n_datasets"] == 3
    assert done_raw["mean_diff"] == pytest.approx(-11.8, abs=0.1)
    assert done_raw["ci_low"] < done_raw["mean_diff"] < done_raw["ci_high"] < 0 and done_raw["p_ttest"] < 1e-6
    masked = table.loc["completed − masked"]
    assert masked["ci_low"] > 0, "completion worse than a masked loss, and the interval says so"
    # the interval is scipy's paired t interval on the differences
    wide = store.pivot_table(index=["dataset", "seed"], columns="scenario", values="mse")
    d = wide["completed"] - wide["masked"]
    lo, hi = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    assert (masked["ci_low"], masked["ci_high"]) == pytest.approx((lo, hi))
    assert masked["p_wilcoxon"] == pytest.approx(stats.wilcoxon(d).pvalue)


def test_the_dataset_is_the_unit_seeds_averaged_first_and_kinds_kept_apart():
    # seeds of a dataset differ a lot, datasets little: the dataset-level interval is narrow and
    # n counts datasets; the seed spread is reported beside it
    rows = []
    for d, name in enumerate(["synsuite_base", "synsuite_small", "synsuite_intra", "her2st_patient_c"]):
        for seed, jitter in ((0, -1.0), (1, 1.0)):
            for model, effect in (("shufflenet", -0.5), ("stnet", -0.3)):
                base = {"timestamp": "2026-12-05", "stage": "predict", "dataset": name, "model": model,
                        "seed": seed, "split": "test"}
                rows += [{**base, "scenario": "masked", "mse": 3.0 + 0.01 * d},
                         {**base, "scenario": "completed", "mse": 3.0 + 0.01 * d + effect + jitter + 0.02 * d}]
    table = analysis.scenario_differences(pd.DataFrame(rows), pairs=[("completed", "masked")])
    gen = table[(table["kind"] == "generated") & (table["model"] == "shufflenet")].iloc[0]
    assert gen["unit"] == "dataset" and gen["n"] == 3 and gen["n_datasets"] == 3 and gen["n_seeds"] == 2
    assert gen["mean_diff"] == pytest.approx(-0.5 + 0.02, abs=1e-9)  # datasets 0-2: +0.00, +0.02, +0.04
    assert gen["seed_sd"] == pytest.approx(np.std([-1, 1], ddof=1))
    assert gen["ci_low"] < gen["mean_diff"] < gen["ci_high"] < 0, "seeds averaged first: their ±1 cancels"
    real = table[(table["kind"] == "real") & (table["model"] == "shufflenet")].iloc[0]
    assert real["n_datasets"] == 1 and real["unit"] == "seed" and real["n"] == 2, "one real dataset: its seeds"
    pooled = table[(table["kind"] == "generated") & (table["model"] == analysis.ALL_MODELS)].iloc[0]
    assert pooled["mean_diff"] == pytest.approx((-0.5 - 0.3) / 2 + 0.02, abs=1e-9)
    lines = analysis.scenario_verdicts(table)
    assert len(lines) == 2 and lines[0].startswith("- generated data, completed − masked: -0.380")
    assert "`completed` is better than `masked`" in lines[0]
    assert "no difference at 95%" in lines[1] or "better" in lines[1]


def test_repeated_runs_count_once_and_unmatched_pairs_are_left_out():
    store = _store({"raw": 1.0, "completed": 0.0}, n_datasets=2, seeds=(0,))
    again = store[store["scenario"] == "completed"].assign(timestamp="2026-12-03T00:00:00+00:00",
                                                           mse=lambda t: t["mse"] + 100)
    table = analysis.scenario_differences(pd.concat([store, again]), unit="run", pooled=False)
    row = table.set_index("pair").loc["completed − raw"]
    assert row["n"] == 2 and row["mean_diff"] > 90, "the newest completed rows replaced the old ones"
    assert set(table["pair"]) == {"completed − raw"}, "no masked or median runs: those pairs are absent"
    assert analysis.scenario_differences(store.iloc[:0]).empty


def test_normalised_mse_and_summary_rank_models_per_dataset():
    rows = []
    for d, mses in {"d0": {"a": 2.0, "b": 3.0}, "d1": {"a": 4.0, "b": 2.0}, "d2": {"a": 1.0, "b": 1.2}}.items():
        for model, mse in mses.items():
            for seed, jitter in ((0, -0.1), (1, 0.1)):  # seeds are averaged first
                rows.append({"timestamp": "2026-12-02", "stage": "predict", "dataset": d, "model": model,
                             "scenario": "completed", "seed": seed, "split": "test", "mse": mse + jitter,
                             "n_params": {"a": 10, "b": 1000}[model]})
    rows.append({**rows[0], "scenario": "raw", "mse": 0.01})  # another scenario is not mixed in
    norm = analysis.normalised_mse(pd.DataFrame(rows)).set_index(["dataset", "model"])
    assert norm.loc[("d0", "a"), "normalised_mse"] == pytest.approx(1.0)
    assert norm.loc[("d0", "b"), "normalised_mse"] == pytest.approx(1.5)
    assert norm.loc[("d1", "a"), "normalised_mse"] == pytest.approx(2.0)
    summary = analysis.model_summary(norm.reset_index()).set_index("model")
    assert summary.loc["a", "wins"] == 2 and summary.loc["b", "wins"] == 1
    assert summary.loc["a", "mean"] == pytest.approx((1 + 2 + 1) / 3)
    assert summary.loc["b", "mean"] == pytest.approx((1.5 + 1 + 1.2) / 3)
    assert list(summary.index) == ["b", "a"], "best mean first"
    assert summary.loc["b", "n_params"] == 1000


def test_paper_claims_read_the_store():
    base = {"timestamp": "2026-12-02", "split": "test", "seed": 0, "dataset": "d0"}
    rows = [
        {**base, "stage": "completion", "model": "spackle", "scenario": "masking_10", "mse": 1.0},
        {**base, "stage": "completion", "model": "median", "scenario": "masking_10", "mse": 4.0},
        {**base, "stage": "completion", "model": "spackle", "scenario": "masking_50", "mse": 3.0},
        {**base, "stage": "completion", "model": "median", "scenario": "masking_50", "mse": 4.0},
    ]
    for model, scenario, mse, pcc in [("vit_b_delta", "completed", 2.0, 0.5), ("sepal", "completed", 2.5, 0.4),
                                      ("vit_b_delta", "raw", 9.0, 0.2), ("sepal", "raw", 8.0, 0.3)]:
        rows.append({**base, "stage": "predict", "model": model, "scenario": scenario, "mse": mse, "pcc_gene": pcc})
    claims = analysis.paper_claims(pd.DataFrame(rows)).set_index("paper")["ours"]
    assert claims["82.5%"] == "50.0%"  # (75% + 25%) / 2
    assert claims["+0.36"] == "+0.20 at most"  # best PCC 0.5 completed vs 0.3 raw
    assert claims["ViT-B+Δ"].startswith("ViT-B+Δ (1.000)")
    assert claims["behind"] == "SEPAL 1.250 vs ViT-B+Δ 1.000"
    assert "EGN / ShuffleNet" in claims["Hist2ST / ShuffleNet"]
    spots = analysis.registry_spots()
    assert spots["spots"].sum() == 308_843 and spots["datasets"].sum() == 26


def test_model_tests_friedman_and_holm_corrected_pairs():
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(1)
    rows = []
    for d in range(8):
        base = 3 + rng.normal(0, 0.5)
        for model, shift in {"a": 0.0, "b": 0.05, "c": 1.0}.items():
            rows.append({"timestamp": "2026-12-02", "stage": "predict", "dataset": f"d{d}", "model": model,
                         "scenario": "completed", "seed": 0, "split": "test", "mse": base + shift + rng.normal(0, 0.1)})
    store = pd.DataFrame(rows)
    friedman, pairs = analysis.model_tests(store)
    wide = store.pivot_table(index="dataset", columns="model", values="mse")
    expected = stats.friedmanchisquare(wide["a"], wide["b"], wide["c"])
    assert friedman["p"] == pytest.approx(expected.pvalue) and friedman["n_datasets"] == 8
    pairs = pairs.set_index(["model_a", "model_b"])
    raw_p = [stats.wilcoxon(wide[x] - wide[y]).pvalue for x, y in pairs.index]
    np.testing.assert_allclose(pairs["p_holm"], multipletests(raw_p, method="holm")[1])
    assert pairs.loc[("a", "c"), "rejected"] and pairs.loc[("b", "c"), "rejected"]  # c is clearly worse
    one, _ = analysis.model_tests(store[store["model"] != "c"])
    assert np.isnan(one["p"]), "fewer than three models: no Friedman test"


def test_best_pcc_takes_each_datasets_best_model_per_scenario():
    rows = []
    for d, vals in {"d0": {("a", "raw"): 0.2, ("b", "raw"): 0.3, ("a", "completed"): 0.5, ("b", "completed"): 0.1},
                    "d1": {("a", "raw"): 0.4, ("a", "completed"): 0.35}}.items():
        for (model, scenario), pcc in vals.items():
            rows.append({"timestamp": "2026-12-02", "stage": "predict", "dataset": d, "model": model,
                         "scenario": scenario, "seed": 0, "split": "test", "mse": 1.0, "pcc_gene": pcc})
    best = analysis.best_pcc(pd.DataFrame(rows)).set_index("dataset")
    assert best.loc["d0", "raw"] == 0.3 and best.loc["d0", "completed"] == 0.5
    assert best.loc["d0", "gain"] == pytest.approx(0.2) and best.loc["d1", "gain"] == pytest.approx(-0.05)
    from spared_utils import pl

    ax = pl.best_pcc_arrows(best.reset_index())
    assert [t.get_text() for t in ax.get_yticklabels()] == ["d0", "d1"]


def test_completion_by_dataset_averages_seeds_then_levels_and_picks_one_level():
    rows = []
    for d, (spackle, median) in {"d0": ((1.0, 3.0), (4.0, 8.0)), "d1": ((2.0, 2.0), (2.0, 6.0))}.items():
        for level, s_mse, m_mse in zip((0.1, 0.5), spackle, median):
            for seed, jitter in ((0, -0.5), (1, 0.5)):
                for model, mse in (("spackle", s_mse), ("median", m_mse)):
                    rows.append({"timestamp": "2026-12-02", "stage": "completion", "dataset": d, "model": model,
                                 "scenario": f"masking_{int(level * 100)}", "masking": level, "seed": seed,
                                 "split": "test", "mse": mse + jitter})
    rows.append({**rows[0], "split": "val", "mse": 100.0})  # another split is not mixed in
    table = analysis.completion_by_dataset(pd.DataFrame(rows)).set_index(["dataset", "method"])
    assert table.loc[("d0", "spackle"), "mse"] == pytest.approx(2.0)  # (1 + 3) / 2, seeds cancel
    assert table.loc[("d1", "median"), "mse"] == pytest.approx(4.0)
    assert table.loc[("d0", "median"), "n_levels"] == 2 and table.loc[("d0", "median"), "n_seeds"] == 2
    at_half = analysis.completion_by_dataset(pd.DataFrame(rows), masking=0.5).set_index(["dataset", "method"])
    assert at_half.loc[("d0", "median"), "mse"] == pytest.approx(8.0) and at_half["n_levels"].eq(1).all()
    assert analysis.completion_by_dataset(pd.DataFrame(rows), masking=0.7).empty


def test_predictor_table_compares_each_model_with_the_training_mean_on_the_same_spots():
    base = {"timestamp": "2026-12-02", "split": "test", "dataset": "d0"}
    rows = []
    for seed in (0, 1):
        for model, scenario, mse, spots in [("a", "raw", 6.0, 200), ("a", "completed", 2.0, 200),
                                            ("b", "completed", 3.5, 100)]:
            rows.append({**base, "stage": "predict", "model": model, "scenario": scenario, "seed": seed,
                         "mse": mse + seed, "pcc_gene": 0.1 * seed, "n_params": 10, "wall_time_s": 5.0,
                         "eval_spots": spots})
        for spots, mse in ((200, 4.0), (100, 3.0)):  # the training mean on each chapter's own spots
            rows.append({**base, "stage": "predict_baseline", "model": "training_mean", "scenario": "any",
                         "seed": seed, "mse": mse, "eval_spots": spots})
    table = analysis.predictor_table(pd.DataFrame(rows)).set_index(["model", "scenario"])
    assert table.loc[("a", "completed"), "mse"] == pytest.approx(2.5) and table.loc[("a", "completed"), "n_seeds"] == 2
    assert table.loc[("a", "completed"), "mse_ratio"] == pytest.approx(2.5 / 4.0)
    assert table.loc[("a", "raw"), "mse_ratio"] > 1, "the raw model is worse than the mean"
    assert table.loc[("b", "completed"), "baseline_mse"] == pytest.approx(3.0), "matched on eval_spots"
    assert list(table.xs("completed", level="scenario").index) == ["a", "b"], "best first within a scenario"
    assert list(dict.fromkeys(table.index.get_level_values("scenario"))) == ["raw", "completed"], "the paper's order"


def test_paper_claims_explain_each_difference():
    base = {"timestamp": "2026-12-02", "split": "test", "seed": 0}
    rows = []
    for d in ("d0", "d1"):
        for model, mse in (("shufflenet", 2.0), ("vit_b_delta", 3.0), ("sepal", 2.5)):
            rows.append({**base, "dataset": d, "stage": "predict", "model": model, "scenario": "completed",
                         "mse": mse, "pcc_gene": 0.3})
    claims = analysis.paper_claims(pd.DataFrame(rows)).set_index("paper")
    assert claims["note"].str.len().gt(10).all()
    assert "2 dataset(s)" in claims.loc["ViT-B+Δ", "note"] and "ShuffleNet" in claims.loc["ViT-B+Δ", "ours"]
    assert claims.loc["behind", "note"].startswith("SEPAL ahead"), "SEPAL 2.5 beat ViT-B+Δ 3.0 here"
    assert "chapter 02" in claims.loc["82.5%", "note"]


def test_bias_decomposition_splits_mse_into_shift_and_rest_against_the_masked_runs():
    rows = []
    for d in ("d0", "d1"):
        for seed in (0, 1):
            for scenario, bias, rest, shift in (("masked", 0.0, 2.0, 0.0), ("completed", -0.5, 2.0, -0.4),
                                                ("raw", -3.0, 2.5, -2.8)):
                rows.append({"timestamp": "2026-12-02", "stage": "predict", "dataset": d, "model": "m",
                             "scenario": scenario, "seed": seed, "split": "test", "bias": bias,
                             "mse": rest + bias ** 2, "target_shift": shift})
    rows.append({**rows[0], "seed": 9, "scenario": "median", "bias": np.nan, "mse": 1.0})  # an old row
    table = analysis.bias_decomposition(pd.DataFrame(rows)).set_index("scenario")
    assert list(table.index) == ["raw", "masked", "completed"], "the paper's order; the NaN-bias row left out"
    done = table.loc["completed"]
    assert done["n"] == 4 and done["bias2"] == pytest.approx(0.25) and done["rest"] == pytest.approx(2.0)
    assert done["d_mse"] == pytest.approx(0.25) and done["d_bias2"] == pytest.approx(0.25), "lost by its shift alone"
    raw = table.loc["raw"]
    assert raw["d_mse"] == pytest.approx(9.5) and raw["d_bias2"] == pytest.approx(9.0)
    assert raw["target_shift"] == pytest.approx(-2.8)
    assert analysis.bias_decomposition(pd.DataFrame(rows).drop(columns="bias")).empty


def test_a_completed_run_with_another_completion_method_is_its_own_scenario():
    base = {"timestamp": "2026-12-02", "stage": "predict", "dataset": "d0", "model": "m", "split": "test"}
    rows = []
    for seed in (0, 1):
        rows += [{**base, "seed": seed, "scenario": "completed", "completion": "spackle", "mse": 3.0},
                 {**base, "seed": seed, "scenario": "completed", "completion": "spackle_plus", "mse": 2.5 + seed},
                 {**base, "seed": seed, "scenario": "raw", "mse": 9.0}]
    runs = analysis.latest_runs(pd.DataFrame(rows))
    assert sorted(runs["scenario"].unique()) == ["completed", "completed:spackle_plus", "raw"]
    assert len(runs) == 6, "the two completions of a seed are different runs, not a repeat"
    table = analysis.scenario_differences(pd.DataFrame(rows), pairs=[("completed:spackle_plus", "completed")],
                                          pooled=False)
    assert table.iloc[0]["mean_diff"] == pytest.approx(0.0)  # (-0.5 + 0.5) / 2


def test_predictor_table_puts_the_references_beside_the_models_with_their_structure_scores():
    base = {"timestamp": "2026-12-05", "dataset": "synsuite_base", "split": "test", "seed": 0}
    rows = [
        {**base, "stage": "predict", "model": "shufflenet", "scenario": "completed", "mse": 2.0, "eval_spots": None,
         "moran_pred": 0.2, "moran_true": 0.5, "moran_gap": 0.3, "corr_distance": 0.1},
        {**base, "stage": "predict_baseline", "model": "training_mean", "scenario": "any", "mse": 4.0,
         "eval_spots": None},
        # the same reference scored on every spot and on a chapter's 200: the table keeps every spot's
        {**base, "stage": "predict_reference", "model": "spatial_neighbours", "scenario": "any", "mse": 1.0,
         "eval_spots": None, "moran_pred": 0.6, "moran_true": 0.5},
        {**base, "stage": "predict_reference", "model": "spatial_neighbours", "scenario": "any", "mse": 9.0,
         "eval_spots": 200, "moran_pred": 0.6, "moran_true": 0.5},
        {**base, "stage": "predict_reference", "model": "library_size", "scenario": "any", "mse": 3.0,
         "eval_spots": None, "moran_pred": 0.1, "moran_true": 0.5},
    ]
    table = analysis.predictor_table(pd.DataFrame(rows)).set_index("model")
    assert list(table["scenario"]) == ["reference", "reference", "completed"], "references first"
    assert table.loc["spatial_neighbours", "mse"] == 1.0 and table.loc["spatial_neighbours", "mse_ratio"] == 0.25
    assert table.loc["shufflenet", "moran_gap"] == 0.3 and table.loc["shufflenet", "mse_ratio"] == 0.5
    assert "reference" not in analysis.predictor_table(pd.DataFrame(rows), references=False)["scenario"].tolist()
    lines = analysis.predictor_verdicts(analysis.predictor_table(pd.DataFrame(rows)))
    assert lines[0].startswith("- `completed`: best shufflenet (MSE 2.000, 0.50× the training mean); 1 of 1")
    assert "0 of 1 beat the spatial_neighbours reference (MSE 1.000)" in lines[1]
    assert "1 of 1 beat the library_size reference" in lines[2]
    assert "keep 40% to 40%" in lines[3] and "spatial_neighbours 120%" in lines[3]


def test_run_sources_counts_each_datasets_runs_by_source_and_kind():
    base = {"timestamp": "2026-12-05", "stage": "predict", "split": "test", "scenario": "raw", "mse": 1.0}
    store = pd.DataFrame([
        {**base, "dataset": "synsuite_base", "model": "shufflenet", "seed": 0, "source": "published"},
        {**base, "dataset": "synsuite_base", "model": "stnet", "seed": 1, "source": "published"},
        {**base, "dataset": "her2st_patient_c", "model": "shufflenet", "seed": 0, "source": "local"},
        {**base, "dataset": "her2st_patient_c", "stage": "completion", "model": "median", "seed": 0,
         "source": "local"},
    ])
    table = analysis.run_sources(store).set_index("dataset")
    assert table.loc["synsuite_base", "kind"] == "generated" and table.loc["her2st_patient_c", "kind"] == "real"
    assert table.loc["synsuite_base", "runs"] == 2 and table.loc["synsuite_base", "seeds"] == 2
    assert table.loc["her2st_patient_c", "completion_rows"] == 1 and table.loc["her2st_patient_c", "source"] == "local"
    assert table["stale"].sum() == 0, "rows without a configuration hash are not judged"
    wide = analysis.beats_training_mean(pd.DataFrame([
        {**base, "dataset": d, "model": "shufflenet", "seed": 0, "scenario": "completed", "mse": m}
        for d, m in (("her2st_patient_c", 3.0), ("synsuite_base", 1.0))] + [
        {**base, "dataset": d, "stage": "predict_baseline", "model": "training_mean", "seed": 0, "scenario": "any",
         "mse": 2.0} for d in ("her2st_patient_c", "synsuite_base")]))
    assert list(wide.index) == ["synsuite_base (generated)", "her2st_patient_c (real)"], "generated first"
    assert list(wide["shufflenet"]) == [0.5, 1.5]


def _pooled(pair, kind, mean, low, high, n=7, unit="dataset"):
    return {"kind": kind, "model": analysis.ALL_MODELS, "pair": pair, "unit": unit, "n": n, "mean_diff": mean,
            "ci_low": low, "ci_high": high, "p_wilcoxon": 0.02}


def test_the_benchmarks_two_questions_are_answered_from_the_intervals_per_kind_of_data():
    diffs = pd.DataFrame([
        _pooled("completed − raw", "generated", -9.0, -11.0, -7.0),
        _pooled("completed − masked", "generated", 0.03, -0.03, 0.1),
        _pooled("completed − raw", "real", 0.5, 0.2, 0.8, n=3, unit="seed"),
        _pooled("completed:spackle_plus − completed", "generated", -0.2, -0.3, -0.1),
    ])
    completion = pd.DataFrame({"dataset": ["synthetic", "synthetic", "synsuite_base", "synsuite_base"],
                               "method": ["spackle", "spackle_plus"] * 2, "mse": [2.0, 1.0, 4.0, 3.0]})
    answers = analysis.completion_answers(diffs, completion)
    helps, more = answers["Does completion help?"], answers["Does a better completion help more?"]
    generated = next(line for line in helps if "Generated" in line)
    assert "completion helps (-9.000" in generated and "it makes no difference at 95% (+0.030" in generated
    real = next(line for line in helps if "Real" in line)
    assert "completion hurts (+0.500" in real and "over 3 seeds of one dataset" in real and "`masked`" not in real
    # 1 − 1/2 and 1 − 3/4: the median of 50% and 25%
    assert "38% lower error than `spackle` (median over 2 datasets)" in more[0] and "instead: better (-0.200" in more[0]


def test_a_question_without_its_runs_says_what_is_missing():
    answers = analysis.completion_answers(pd.DataFrame([_pooled("median − masked", "generated", 0.1, -0.1, 0.3)]))
    assert answers["Does completion help?"] == ["- Not answerable: the store has no matched `raw` and `completed` runs."]
    assert "`completed:spackle_plus`" in answers["Does a better completion help more?"][0]
