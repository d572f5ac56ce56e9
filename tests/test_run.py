"""The papermill entry point: refuses bad input before running, executes a chapter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from spared_utils import run


def test_parse_value_reads_yaml_literals():
    assert run.parse_value("20") == 20
    assert run.parse_value("1e-4") == pytest.approx(1e-4)
    assert run.parse_value("true") is True
    assert run.parse_value("cpu") == "cpu"
    assert run.parse_value("[1, 2]") == [1, 2]


def test_unknown_chapter_lists_the_known_ones():
    with pytest.raises(run.ChapterError, match="00_tour"):
        run.chapter_source("99_nothing")


def test_unknown_dataset_is_refused_before_running():
    with pytest.raises(run.ChapterError, match="unknown dataset 'no_such_data'"):
        run.execute("00_tour", "no_such_data")


def test_unknown_parameter_names_the_declared_ones():
    with pytest.raises(run.ChapterError, match="no parameter 'iteratoins'.*dataset"):
        run.execute("00_tour", "synthetic", {"iteratoins": 3})


def test_a_list_of_names_also_takes_one_name_or_a_keyword():
    # scenario = ["masked", "completed"]: the batch driver and `-p scenario both` pass a string
    for value in ("raw", "both", "all", ["raw", "completed"]):
        assert run._type_problem(["masked", "completed"], value) == ""
    assert "give a list" in run._type_problem([0.0001, 0.001], "fast")  # numbers still want a list
    assert "give a list" in run._type_problem([], "raw")


def test_cli_exit_code_and_message_for_bad_dataset():
    proc = subprocess.run([sys.executable, "-m", "spared_utils.run", "00_tour", "--dataset", "nope"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown dataset 'nope'" in proc.stderr


def test_tour_executes_on_tiny_dataset(tmp_path):
    out = run.execute("00_tour", "synthetic_tiny", {"seed": 1}, output=tmp_path / "tour.ipynb", progress=False)
    nb = nbformat.read(out, as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "synthetic_tiny" in injected[0].source and "seed = 1" in injected[0].source
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 4, "the tour shows at least four figures"
    text = "".join(str(o.get("data", {}).get("text/markdown", "")) for c in nb.cells for o in c.get("outputs", []))
    assert "What we saw" in text and "spots" in text


def test_papermill_runs_see_static_explorers_and_the_setting_is_restored(tmp_path, monkeypatch):
    import papermill

    from spared_utils.explore import STATIC_ENV

    seen = {}

    def fake(nb_in, nb_out, **kwargs):
        import os

        seen["value"] = os.environ.get(STATIC_ENV)
        Path(nb_out).write_text("{}")  # papermill writes the executed notebook

    monkeypatch.setattr(papermill, "execute_notebook", fake)
    monkeypatch.delenv(STATIC_ENV, raising=False)
    run.execute("00_tour", "synthetic_tiny", {}, output=tmp_path / "out.ipynb", progress=False)
    assert seen["value"] == "1", "the kernel papermill starts inherits the static setting"
    import os

    assert STATIC_ENV not in os.environ, "the caller's environment is left as it was"


def test_a_value_of_the_wrong_declared_type_is_refused_before_anything_runs(tmp_path):
    """``-p iterations abc``: one line naming the parameter, the type, the value and an example;
    no notebook, no results folder."""
    env = {**os.environ, "SPARED_RESULTS_DIR": str(tmp_path / "results")}
    proc = subprocess.run([sys.executable, "-m", "spared_utils.run", "10_shufflenet", "--dataset", "synthetic_tiny",
                           "-p", "iterations", "abc"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "'iterations'" in error[0] and "'abc'" in error[0]
    assert "give a whole number" in error[0] and "-p iterations 500" in error[0]
    assert not (tmp_path / "results").exists()


def test_declared_types_take_numbers_as_written_and_their_words():
    source = run.chapter_source("10_shufflenet")
    types = run.declared_types(source)
    assert types["iterations"] == "int" and types["eval_spots"] == "int|'all'" and types["dataset"] is None
    # 1e3 (a string to YAML 1.1) is a whole number; "all" and "search" are the words those parameters take
    given = {"iterations": run.parse_value("1e3"), "eval_spots": "all", "learning_rate": "search", "val_spots": None}
    typed = run.typed_parameters(source, given)
    assert typed == {"iterations": 1000, "eval_spots": "all", "learning_rate": "search", "val_spots": None}
    assert type(typed["iterations"]) is int
    assert run.typed_parameters(source, {"learning_rate": run.parse_value("1e-3")})["learning_rate"] == 0.001
    for name, value, expected in (("eval_spots", "most", "a whole number or 'all'"), ("iterations", 2.5, "whole number"),
                                  ("learning_rate", "fast", "a number or 'search'"), ("batch_size", True, "whole")):
        with pytest.raises(run.ChapterError, match=f"'{name}'.*{expected}"):
            run.check_parameters(source, {name: value})


def test_a_chapter_that_fails_is_kept_as_failed_never_at_the_success_path(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARED_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setenv("SPARED_PROCESSED_DIR", str(tmp_path / "processed"))
    out = tmp_path / "ran" / "10_shufflenet.ipynb"
    with pytest.raises(Exception, match="unknown completion method"):  # fails in the chapter's first run cell
        run.execute("10_shufflenet", "synthetic_tiny", {"completion": "knn"}, output=out, progress=False)
    assert not out.exists() and sorted(p.name for p in out.parent.iterdir()) == ["10_shufflenet.failed.ipynb"]
    nb = nbformat.read(run.failed_path(out), as_version=4)
    assert any(o.get("output_type") == "error" for c in nb.cells for o in c.get("outputs", []))
