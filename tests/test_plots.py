"""Figures whose data a chapter's reading depends on."""

import matplotlib

matplotlib.use("Agg")

import numpy as np

from spared_utils import pl


def test_sorted_counts_draws_counts_largest_first_and_the_even_spread():
    counts = np.array([1, 7, 0, 3])
    ax = pl.sorted_counts(counts, expected=2.75)
    drawn = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert drawn.max() == 7 and np.isin([7, 3, 1, 0], drawn).all()
    tops = [v for v in drawn if v > 0]
    assert tops == sorted(tops, reverse=True), "largest first"
    (line,) = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    assert np.allclose(line.get_ydata(), 2.75)


def test_scenario_differences_plot_draws_each_pair_with_its_interval():
    import pandas as pd

    table = pd.DataFrame({"model": ["a", "a", "b"], "pair": ["completed − raw", "completed − masked", "completed − raw"],
                          "mean_diff": [-2.0, 0.5, -1.0], "ci_low": [-3.0, 0.1, np.nan], "ci_high": [-1.0, 0.9, np.nan]})
    ax = pl.scenario_differences(table)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["completed − raw", "completed − masked"]
    xs = sorted(float(x) for c in ax.containers for x in c.lines[0].get_xdata() if np.isfinite(x))
    assert xs == [-2.0, -1.0, 0.5]


def test_wins_pie_shows_only_models_that_won_with_their_counts():
    import pandas as pd

    summary = pd.DataFrame({"model": ["a", "b", "c"], "wins": [3, 0, 1]})
    ax = pl.wins_pie(summary, names={"a": "Model A"})
    labels = [t.get_text() for t in ax.texts]
    assert labels == ["Model A (3)", "c (1)"]
    angles = [w.theta2 - w.theta1 for w in ax.patches]
    assert np.allclose(angles, [270, 90])


def test_predictor_comparison_places_models_best_first_against_the_mean():
    import pandas as pd

    table = pd.DataFrame({"model": ["a", "b", "a", "b"], "scenario": ["raw", "raw", "completed", "completed"],
                          "mse_ratio": [4.0, 1.2, 0.8, 0.9], "mse_sd": [0.4, 0.0, np.nan, 0.1],
                          "baseline_mse": [2.0] * 4})
    ax = pl.predictor_comparison(table)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"], "a has the lowest ratio (0.8)"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["raw", "completed"]
    raw, done = ax.containers
    assert np.allclose(raw.lines[0].get_xdata(), [4.0, 1.2]) and np.allclose(done.lines[0].get_xdata(), [0.8, 0.9])
    (mean_line,) = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    assert np.allclose(mean_line.get_xdata(), 1)


def test_bias_vs_shift_puts_each_scenario_at_its_shift_and_bias():
    import pandas as pd

    table = pd.DataFrame({"model": ["m", "m", "m"], "scenario": ["raw", "masked", "completed"],
                          "bias": [-3.0, 0.1, -0.4], "target_shift": [-2.8, 0.0, np.nan]})
    ax = pl.bias_vs_shift(table)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["raw", "masked"], "NaN shift left out"
    points = np.vstack([c.get_offsets() for c in ax.collections])
    # each run, then its scenario's mean (one run per scenario here: the same place)
    assert np.allclose(points, [[-2.8, -3.0], [-2.8, -3.0], [0.0, 0.1], [0.0, 0.1]])
    (identity,) = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    assert np.allclose(identity.get_xdata(), identity.get_ydata())


def test_normalised_mse_models_draws_violins_only_with_several_datasets():
    import pandas as pd
    from matplotlib.collections import PolyCollection

    norm = pd.DataFrame({"model": ["a", "a", "b", "b"], "dataset": ["d0", "d1", "d0", "d1"],
                         "normalised_mse": [1.0, 1.0, 1.2, 1.4]})
    summary = pd.DataFrame({"model": ["a", "b"], "mean": [1.0, 1.3], "sd": [0.0, 0.14]})
    ax = pl.normalised_mse_models(norm, summary)
    assert sum(isinstance(c, PolyCollection) for c in ax.collections) >= 1
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"], "one row per model, best first"
    one = pl.normalised_mse_models(norm[norm["dataset"] == "d0"], summary)
    assert not any(isinstance(c, PolyCollection) for c in one.collections)


def test_pipeline_overview_draws_the_four_stages_in_order_with_their_chapters():
    ax = pl.pipeline_overview()
    boxes = [p for p in ax.patches if p.get_label() in {s[0] for s in pl.PIPELINE_STAGES}]
    assert [b.get_label() for b in boxes] == ["Curation", "Completion", "Prediction", "Benchmark"]
    assert all(a.get_x() + a.get_width() < b.get_x() for a, b in zip(boxes, boxes[1:])), "left to right"
    texts = {t.get_text() for t in ax.texts}
    assert {"chapters 00, 01", "chapter 02", "chapters 10–20", "chapter 90"} <= texts
    arrows = [t for t in ax.texts if getattr(t, "arrow_patch", None) is not None]
    assert len(arrows) == 3, "one arrow between consecutive stages"


def test_overview_figure_is_written_whole_and_the_same_each_time(tmp_path):
    from spared_utils import book

    a = book.write_overview_figure(tmp_path / "a" / "pipeline.svg")
    b = book.write_overview_figure(tmp_path / "b.svg")
    assert a.read_bytes() == b.read_bytes()
    text = a.read_text()
    assert text.lstrip().startswith("<?xml") and text.rstrip().endswith("</svg>")
    assert "Completion" in text, "labels stay text (svg.fonttype none)"
    assert [p.name for p in a.parent.iterdir()] == ["pipeline.svg"], "no temporary file left"


def _benchmark_store():
    """A store shaped like the published benchmark: 11 models, 8 datasets, the scenarios, references."""
    import pandas as pd

    from spared_utils import models

    rng = np.random.default_rng(0)
    datasets = ["synthetic", "synsuite_base", "synsuite_128genes", "synsuite_small", "synsuite_dropout",
                "synsuite_intra", "synsuite_six_slides", "her2st_patient_c"]
    rows = []
    for d in datasets:
        base = {"timestamp": "2026-12-05", "dataset": d, "split": "test"}
        for seed in (0, 1, 2):
            rows.append({**base, "stage": "predict_baseline", "model": "training_mean", "scenario": "any",
                         "seed": seed, "mse": 3.0})
            for ref, mse in (("library_size", 3.1), ("spatial_neighbours", 1.5)):
                rows.append({**base, "stage": "predict_reference", "model": ref, "scenario": "any", "seed": seed,
                             "mse": mse, "moran_pred": 0.3, "moran_true": 0.5})
            for model in models.NAMES:
                for scenario, shift in (("raw", 9.0), ("masked", 0.0), ("median", -0.1), ("completed", -0.05)):
                    mse = 2.5 + shift + rng.normal(0, 0.2)
                    rows.append({**base, "stage": "predict", "model": model, "scenario": scenario, "seed": seed,
                                 "mse": mse, "pcc_gene": rng.uniform(0.1, 0.5), "bias": rng.normal(0, 0.5),
                                 "target_shift": rng.normal(-1, 0.5), "n_params": 10 ** rng.uniform(3, 8),
                                 "moran_pred": rng.uniform(0.1, 0.6), "moran_true": 0.5})
                rows.append({**rows[-1], "completion": "spackle_plus", "mse": rows[-1]["mse"] - 0.02})
        for method in ("median", "mean", "spackle", "spackle_plus", "stlearn"):
            for level in (0.1, 0.3, 0.5):
                rows.append({**base, "stage": "completion", "model": method, "scenario": f"masking_{level}",
                             "masking": level, "seed": 0, "mse": rng.uniform(0.2, 2.0)})
    return pd.DataFrame(rows)


#: The ``su.pl`` functions drawn by the next test (the book's build draws the rest: test_book).
BENCHMARK_FIGURES = ("completion_mse_violin", "scenario_differences", "bias_vs_shift", "best_pcc_arrows",
                     "normalised_mse_models", "wins_pie", "mse_vs_parameters", "training_mean_ratio",
                     "predictor_comparison", "structure_vs_error")


def test_the_benchmark_figures_print_no_label_over_another():
    """Chapters 90 and 91's figures at the published benchmark's size (11 models, 8 datasets):
    no tick label, axis label, title, legend entry or annotation drawn over another."""
    import matplotlib.pyplot as plt

    from spared_utils import analysis, models, plots
    from spared_utils.plots.style import overlapping_text

    store = _benchmark_store()
    names = {k: models.display_name(k) for k in models.NAMES}
    completion = analysis.completion_by_dataset(store)
    methods = tuple(completion.groupby("method")["mse"].mean().sort_values().index)
    norm = analysis.normalised_mse(store)
    summary = analysis.model_summary(norm)
    table = analysis.predictor_table(store[store["dataset"] == "synthetic"])
    draws = {
        "completion_mse_violin": lambda: plots.completion_mse_violin(completion, by="dataset", methods=methods),
        "scenario_differences": lambda: plots.scenario_differences(
            analysis.scenario_differences(store).query("kind == 'generated'")),
        "bias_vs_shift": lambda: plots.bias_vs_shift(analysis.bias_decomposition(store)),
        "best_pcc_arrows": lambda: plots.best_pcc_arrows(analysis.best_pcc(store)),
        "normalised_mse_models": lambda: plots.normalised_mse_models(norm, summary),
        "wins_pie": lambda: plots.wins_pie(summary, names=names),
        "mse_vs_parameters": lambda: plots.mse_vs_parameters(summary),
        "training_mean_ratio": lambda: plots.training_mean_ratio(analysis.beats_training_mean(store), names=names),
        "predictor_comparison": lambda: plots.predictor_comparison(table, names=names),
        "structure_vs_error": lambda: plots.structure_vs_error(table, names=names),
    }
    assert set(draws) == set(BENCHMARK_FIGURES)
    found = {}
    for name, draw in draws.items():
        ax = draw()
        fig = ax.figure if hasattr(ax, "figure") else ax
        pairs = overlapping_text(fig)
        if pairs:
            found[name] = pairs[:4]
        plt.close(fig)
    assert found == {}, f"labels drawn over each other: {found}"


def test_the_overlap_check_sees_two_labels_on_top_of_each_other():
    import matplotlib.pyplot as plt

    from spared_utils.plots.style import overlapping_text

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.set_xticks(range(6), [f"a rather long label {k}" for k in range(6)])
    assert overlapping_text(fig), "crowded tick labels"
    ax.set_xticks(range(2), ["a", "b"])
    ax.annotate("here", (0.5, 0.5))
    ax.annotate("there", (0.5, 0.5))
    assert overlapping_text(fig) == [("here", "there")]
    plt.close(fig)
    # what matplotlib keeps but does not draw does not count: the labels of an axis turned off and
    # of ticks outside the view limits
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.set_xticks(range(6), [f"a rather long label {k}" for k in range(6)])
    ax.set_axis_off()
    assert overlapping_text(fig) == []
    ax.set_axis_on()
    ax.set_xlim(-0.5, 0.5)
    assert overlapping_text(fig) == []
    plt.close(fig)


def test_models_at_the_same_point_get_labels_apart():
    """ViT-B and its delta variant have almost the same parameter count and MSE: their labels
    would be printed on top of each other; they are moved apart (adjustText)."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from spared_utils import plots
    from spared_utils.plots.style import overlapping_text

    summary = pd.DataFrame({"model": ["vit_b", "vit_b_delta", "stnet", "shufflenet"],
                            "n_params": [86.0e6, 86.1e6, 7.0e6, 1.3e6],
                            "mean": [1.01, 1.012, 0.95, 0.97]})
    ax = plots.mse_vs_parameters(summary)
    assert sorted(t.get_text() for t in ax.texts) == sorted(summary["model"])
    assert overlapping_text(ax.figure) == []
    plt.close(ax.figure)


def test_the_neighbourhood_legend_stays_clear_of_a_panel_beside_it(tiny_adata):
    """Chapter 02 draws the 2-hop neighbourhood with a histogram to its right: the legend must not
    fall on the histogram's tick labels."""
    import matplotlib.pyplot as plt
    import numpy as np

    from spared_utils import plots, pp
    from spared_utils.plots.style import overlapping_text

    adata = tiny_adata  # the tiny book's size: few spots, so the histogram's ticks are close
    index = pp.neighbour_index(adata, n_hops=2, hex_geometry=True)
    n_nb = pp.n_neighbours(index)
    fig, axs = plt.subplots(1, 2, figsize=(10, 3.8))
    plots.hex_neighbourhood(adata, index, int(np.argmax(n_nb == n_nb.max())), ax=axs[0])
    axs[1].hist(n_nb, bins=np.arange(-0.5, 19.5))
    axs[1].set(xlabel="neighbours present (of 18)", ylabel="spots", title="Neighbourhood sizes")
    fig.tight_layout()
    labels = [t.get_text() for t in axs[0].get_legend().get_texts()]
    assert labels[0].startswith("ring 1") and labels[-1] == "centre spot"
    assert overlapping_text(fig) == []
    plt.close(fig)
