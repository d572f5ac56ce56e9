"""The results store: atomic appends, schema growth, read-back."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from spared_utils import results


def test_append_and_read_back(tmp_path):
    path = tmp_path / "r.csv"
    results.append({"stage": "prediction", "dataset": "d", "model": "m", "mse": 0.5}, path)
    results.append([{"stage": "completion", "dataset": "d", "model": "spackle", "masking": 0.3, "mse": 0.1}], path)
    df = results.read(path)
    assert len(df) == 2
    assert list(df.columns[:4]) == ["timestamp", "stage", "dataset", "model"]
    assert df["masking"].isna().tolist() == [True, False]
    assert "torch=" in df["versions"].iloc[0]
    assert not list(tmp_path.glob(".r.csv.*.tmp"))


def test_empty_store_reads_as_empty_frame(tmp_path):
    df = results.read(tmp_path / "none.csv")
    assert df.empty and "dataset" in df.columns


def test_default_location_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARED_RESULTS_DIR", str(tmp_path))
    results.append({"dataset": "x"})
    assert (tmp_path / "results.csv").is_file()
    assert results.read()["dataset"].tolist() == ["x"]


def _writer(path, k, barrier=None):
    if barrier is not None:
        barrier.wait(timeout=60)  # every writer starts appending at the same moment
    for i in range(5):
        results.append({"dataset": f"w{k}", "i": i}, path)


def test_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "r.csv"
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=_writer, args=(path, k, barrier)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    alive = [p.pid for p in procs if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert not alive, f"writers still running after 60 s: {alive}"
    assert [p.exitcode for p in procs] == [0, 0, 0], "every writer exits cleanly"
    assert len(results.read(path)) == 15
    table = results.read(path)
    assert sorted(zip(table["dataset"], table["i"].astype(int))) == [(f"w{k}", i) for k in range(3) for i in range(5)]


def test_corrupt_store_names_the_file(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text('a,b\n1,"unterminated\n')
    with pytest.raises(ValueError, match="r.csv"):
        results.read(path)


def test_a_row_without_a_value_in_a_numeric_column_appends_without_a_pandas_warning(tmp_path):
    import warnings

    store = tmp_path / "r.csv"
    results.append({"stage": "predict", "model": "m", "mse": 0.5, "learning_rate": 1e-3}, store)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # pandas: concatenation with all-NA entries
        results.append({"stage": "predict", "model": "n", "mse": None, "learning_rate": None}, store)
    table = results.read(store)
    assert table["mse"].dtype == float and table["mse"].tolist()[0] == 0.5 and table["mse"].isna().tolist() == [False, True]
    assert list(table["model"]) == ["m", "n"]


def test_the_provenance_a_chapter_prints_fits_the_page():
    prov = {"rows": 2166, "plan": "workflow/benchmark.yml", "complete": True, "date": "2026-12-05",
            "commit": "f288d0f8c874", "row_commits": [f"{k:012x}" for k in range(6)],
            "machine": {"cpus": 2, "memory_gib": 23.5}, "devices": ["cpu"], "threads_per_run": [1],
            "versions": ["spared-utils=0.1.0;torch=2.14.1;timm=1.0.31;scanpy=1.11.5;squidpy=1.8.2;anndata=0.12.19"]}
    text = results.describe_provenance(prov)
    assert max(len(line) for line in text.splitlines()) <= 88
    assert "000000000005" in text and "anndata=0.12.19" in text.split(), "wrapped between words, nothing cut"
