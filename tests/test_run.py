"""The papermill entry point: refuses bad input before running, executes a chapter."""

from __future__ import annotations

import subprocess
import sys

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

    monkeypatch.setattr(papermill, "execute_notebook", fake)
    monkeypatch.delenv(STATIC_ENV, raising=False)
    run.execute("00_tour", "synthetic_tiny", {}, output=tmp_path / "out.ipynb", progress=False)
    assert seen["value"] == "1", "the kernel papermill starts inherits the static setting"
    import os

    assert STATIC_ENV not in os.environ, "the caller's environment is left as it was"
