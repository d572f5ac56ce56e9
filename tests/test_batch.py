"""The batch driver and its Snakemake workflow: plans, resumable runs, failures kept, same plan."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from spared_utils import batch, paths, run
from spared_utils.registry import registry

ROOT = paths.project_root()


def _plan(tmp_path, text: str) -> Path:
    path = tmp_path / "plan.yml"
    path.write_text(text)
    return path


PLAN = """
datasets: [synthetic_tiny]
chapters: [00_tour, 10_shufflenet]
scenarios: [raw, masked]
seeds: [0, 1]
parameters: {budget: cpu, iterations: 2}
chapter_parameters:
  10_shufflenet: {batch_size: 4}
"""


def test_jobs_expand_scenarios_and_seeds_only_where_a_chapter_declares_them(tmp_path):
    plan = batch.load_plan(_plan(tmp_path, PLAN))
    jobs = batch.jobs(plan, tmp_path / "res")
    names = [j.output.name for j in jobs]
    # the tour has a seed but no scenario; the predictor chapter has both
    assert names == ["00_tour-0.ipynb", "00_tour-1.ipynb",
                     "10_shufflenet-raw-0.ipynb", "10_shufflenet-raw-1.ipynb",
                     "10_shufflenet-masked-0.ipynb", "10_shufflenet-masked-1.ipynb"]
    tour, shuffle = jobs[0], jobs[3]
    assert tour.parameters == {"dataset": "synthetic_tiny", "seed": 0}  # budget/iterations: not the tour's
    assert shuffle.parameters == {"budget": "cpu", "iterations": 2, "batch_size": 4, "dataset": "synthetic_tiny",
                                  "scenario": "raw", "seed": 1}
    assert all(j.output.parent == tmp_path / "res" / "synthetic_tiny" for j in jobs)


@pytest.mark.parametrize("text, message", [
    ("chapters: [00_tour]\nrepeats: 3\n", "unknown key"),
    ("datasets: [nowhere]\nchapters: [00_tour]\n", "unknown dataset 'nowhere'"),
    ("chapters: [99_nothing]\n", "no chapter '99_nothing'"),
    ("chapters: [00_tour]\nchapter_parameters: {00_tour: {learning_rate: 1}}\n", "no parameter 'learning_rate'"),
    ("chapters: [10_shufflenet]\nscenarios: [zeros]\n", "unknown scenario"),
    ("datasets: [synthetic]\n", "names no chapter"),
    ("chapters: [00_tour\n", "not valid YAML"),
])
def test_bad_plans_are_refused_naming_the_file(tmp_path, text, message):
    path = _plan(tmp_path, text)
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        batch.load_plan(path)
    assert str(path) in str(err.value)


def _fake_execute(calls, fail=()):
    """Stands in for :func:`spared_utils.run.execute` (its contract, without papermill): writes a
    notebook with papermill's metadata at ``output``, or fails halfway and keeps it at
    ``run.failed_path(output)`` (tests/test_run.py checks the real one does)."""

    def execute(chapter, dataset, params, output, progress=False):
        calls.append(Path(output))
        injected = {"cell_type": "code", "execution_count": None, "id": "inj", "outputs": [],
                    "metadata": {"tags": ["injected-parameters"]}, "source": f"dataset = {dataset!r}"}
        nb = {"cells": [injected], "metadata": {"papermill": {"parameters": {**params, "dataset": dataset},
                                                      "exception": None}}, "nbformat": 4, "nbformat_minor": 5}
        if any(f in Path(output).name for f in fail):
            run.failed_path(output).write_text(json.dumps(nb))
            raise RuntimeError("cell 3 raised ZeroDivisionError")
        Path(output).write_text(json.dumps(nb))
        run.failed_path(output).unlink(missing_ok=True)
        return Path(output)

    return execute


def test_run_plan_resumes_keeps_failures_and_goes_on(tmp_path, monkeypatch):
    plan = batch.load_plan(_plan(tmp_path, PLAN))
    calls = []
    monkeypatch.setattr(batch, "execute", _fake_execute(calls, fail=("raw-1",)))
    table = batch.run_plan(plan, tmp_path / "res", progress=False)
    assert list(table["status"]) == ["done", "done", "done", "failed", "done", "done"]
    failed = table[table["status"] == "failed"].iloc[0]
    assert "ZeroDivisionError" in failed["error"] and failed["output"].endswith("10_shufflenet-raw-1.failed.ipynb")
    assert Path(failed["output"]).is_file(), "the failed notebook (with its traceback) is kept"
    out = tmp_path / "res" / "synthetic_tiny"
    assert not (out / "10_shufflenet-raw-1.ipynb").exists(), "a failed run leaves no notebook that looks finished"
    assert [c.name for c in calls] == [j.output.name for j in batch.jobs(plan, tmp_path / "res")]

    # a second run: finished notebooks are skipped, the failed one runs again (and its .failed goes)
    calls.clear()
    monkeypatch.setattr(batch, "execute", _fake_execute(calls))
    again = batch.run_plan(plan, tmp_path / "res", progress=False)
    assert list(again["status"]) == ["skipped"] * 3 + ["done"] + ["skipped"] * 2
    assert len(calls) == 1 and not (out / "10_shufflenet-raw-1.failed.ipynb").exists()

    # changed parameters: the notebook no longer counts as finished
    changed = batch.load_plan(_plan(tmp_path, PLAN.replace("iterations: 2", "iterations: 3")))
    assert [batch.finished(j) for j in batch.jobs(changed, tmp_path / "res")] == [True, True] + [False] * 4


def test_an_interrupted_run_leaves_no_finished_notebook(tmp_path, monkeypatch):
    plan = batch.load_plan(_plan(tmp_path, "datasets: [synthetic_tiny]\nchapters: [00_tour]\n"))

    import papermill

    def interrupted(nb_in, nb_out, **kwargs):  # papermill has written part of the notebook
        Path(nb_out).write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(papermill, "execute_notebook", interrupted)
    with pytest.raises(KeyboardInterrupt):
        batch.run_plan(plan, tmp_path / "res", progress=False)
    (job,) = batch.jobs(plan, tmp_path / "res")
    assert not job.output.exists() and not batch.finished(job)
    assert batch.failed_path(job).is_file(), "what ran is kept, under the failed name"


def test_cli_dry_run_prints_one_line_per_run_and_bad_plan_exits_2(tmp_path, capsys):
    path = _plan(tmp_path, PLAN)
    assert batch.main([str(path), "--dry-run", "--results-dir", str(tmp_path / "res")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 6 and all(line.endswith("[to run]") for line in lines)
    assert "10_shufflenet --dataset synthetic_tiny" in lines[2] and '-p scenario "raw"' in lines[2]
    assert batch.main([str(_plan(tmp_path, "chapters: [99_nothing]\n")), "--dry-run"]) == 2
    assert "no chapter" in capsys.readouterr().err
    # without a plan: the benchmark's default plan (every predictor chapter, four scenarios, seeds)
    assert batch.main(["--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    default = batch.load_plan(batch.default_plan())
    from spared_utils.run import chapter_parameters, chapter_source

    per_dataset = sum((4 if "scenario" in chapter_parameters(chapter_source(c)) else 1) * len(default.seeds)
                      for c in default.chapters)
    assert len(lines) == len(batch.jobs(default)) == len(default.datasets) * per_dataset
    assert set(default.datasets) == {k for k in registry() if k.startswith("synsuite_")}


def test_dry_run_estimates_the_remaining_time_from_finished_notebooks(tmp_path, capsys):
    plan = batch.load_plan(_plan(tmp_path, PLAN))
    res = tmp_path / "res"
    jobs = {j.output.stem: j for j in batch.jobs(plan, res)}

    def write(path, params, seconds, exception=None):
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"papermill": {"parameters": params, "duration": seconds, "exception": exception}}
        path.write_text(json.dumps({"cells": [], "metadata": meta, "nbformat": 4, "nbformat_minor": 5}))

    tour = jobs["00_tour-0"]
    write(tour.output, dict(tour.parameters), 10.0)  # finished: not to run, but it times the tour
    raw0 = jobs["10_shufflenet-raw-0"]
    write(raw0.output, dict(raw0.parameters), 100.0)
    write(res / "other" / "10_shufflenet-masked-5.ipynb", {}, 40.0)  # another dataset's masked run
    write(res / "other" / "10_shufflenet-masked-6.ipynb", {}, 60.0)
    write(res / "other" / "10_shufflenet-masked-8.ipynb", {}, 3000.0)  # a straggler: median 60 s, mean 1033 s
    write(res / "other" / "10_shufflenet-raw-7.ipynb", {}, 9999.0, exception=True)  # failed: not a timing
    table = batch.estimate(list(jobs.values()), res).set_index("chapter")
    shuffle, tour_row = table.loc["10_shufflenet"], table.loc["00_tour"]
    assert shuffle["to_run"] == 3 and shuffle["timed"] == 4
    # raw-1 from the raw run (100 s), masked-0/1 from the masked median (60 s), not the mean (1033 s)
    assert shuffle["hours"] == pytest.approx((100 + 60 + 60) / 3600, abs=0.005)
    assert shuffle["hours"] != pytest.approx((100 + 2 * (40 + 60 + 3000) / 3) / 3600, abs=0.005)
    assert shuffle["s_per_run"] == 60.0, "the median over the runs to do: 100, 60, 60"
    assert tour_row["to_run"] == 1 and tour_row["s_per_run"] == 10.0
    assert batch.main([str(_plan(tmp_path, PLAN)), "--dry-run", "--results-dir", str(res)]) == 0
    out = capsys.readouterr()
    assert len(out.out.strip().splitlines()) == 6, "stdout stays one line per run"
    assert "estimated from finished notebooks" in out.err and "for 4 of 4 notebooks" in out.err
    empty = batch.estimate(list(jobs.values()), tmp_path / "nothing")
    assert empty["timed"].eq(0).all() and empty["hours"].isna().all()


@pytest.mark.slow
def test_snakemake_plans_the_batch_runs_and_runs_a_tiny_plan(tmp_path):
    """``snakemake -n`` plans exactly the notebooks the batch dry-run lists; ``-c1`` runs them."""
    if shutil.which("snakemake", path=str(Path(sys.executable).parent)) is None:
        pytest.fail("snakemake is not installed in this environment: pip install -e '.[dev]'")
    snakemake = str(Path(sys.executable).parent / "snakemake")
    res = tmp_path / "res"
    plan = _plan(tmp_path, PLAN)
    planned = {str(j.output) for j in batch.jobs(batch.load_plan(plan), res)}
    cmd = [snakemake, "-s", str(ROOT / "workflow" / "Snakefile"), "--config", f"plan={plan}", f"results_dir={res}",
           "--directory", str(tmp_path)]
    dry = subprocess.run([*cmd, "-n", "-p"], capture_output=True, text=True, cwd=ROOT)
    assert dry.returncode == 0, dry.stderr + dry.stdout
    shells = set(re.findall(r"--only (\S+\.ipynb)", dry.stdout + dry.stderr))
    assert shells == planned

    tiny = _plan(tmp_path, "datasets: [synthetic_tiny]\nchapters: [00_tour]\nseeds: [2]\n")
    (job,) = batch.jobs(batch.load_plan(tiny), res)
    run = subprocess.run([*cmd[:4], f"plan={tiny}", f"results_dir={res}", "--directory", str(tmp_path), "-c1"],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    assert batch.finished(job), "Snakemake's job ran the chapter through the batch driver"
    again = subprocess.run([*cmd[:4], f"plan={tiny}", f"results_dir={res}", "--directory", str(tmp_path), "-n"],
                           capture_output=True, text=True, cwd=ROOT)
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.slow
def test_the_slurm_profile_plans_the_26_datasets_one_gpu_per_notebook(tmp_path):
    """The SpaRED-26 plan through the SLURM profile: ``-n`` plans every notebook of the plan, each
    job asking for one GPU (nothing is submitted in a dry run)."""
    snakemake = str(Path(sys.executable).parent / "snakemake")
    plan = ROOT / "workflow" / "spared26.yml"
    res = tmp_path / "res"
    jobs = batch.jobs(batch.load_plan(plan), res)
    assert len({j.dataset for j in jobs}) == 26 and all(j.parameters.get("budget", "paper") == "paper" for j in jobs)
    assert sum(batch.runs_of(j) for j in jobs) == 26 * (1 + 11 * 2), "02 once, 11 predictors x raw/completed"
    dry = subprocess.run([snakemake, "-s", str(ROOT / "workflow" / "Snakefile"), "--profile",
                          str(ROOT / "workflow" / "profiles" / "slurm"), "--config", f"plan={plan}",
                          f"results_dir={res}", "--directory", str(tmp_path), "-n", "-p"],
                         capture_output=True, text=True, cwd=ROOT)
    out = dry.stdout + dry.stderr
    assert dry.returncode == 0, out[-3000:]
    assert set(re.findall(r"--only (\S+\.ipynb)", out)) == {str(j.output) for j in jobs}
    assert re.search(r"chapter\s+" + str(len(jobs)), out) and "gpu=1" in out and "slurm_partition=gpu" in out


def test_batch_notebooks_become_a_results_part_of_the_book(tmp_path, monkeypatch):
    import yaml

    from spared_utils import book

    plan = batch.load_plan(_plan(tmp_path, PLAN))
    monkeypatch.setattr(batch, "execute", _fake_execute([], fail=("masked-1",)))
    batch.run_plan(plan, progress=False)  # into SPARED_RESULTS_DIR (conftest: a tmp folder)
    (paths.results_dir() / "synthetic_tiny" / "00_tour.ipynb").write_text("{}")  # a book run, not a batch one
    runs = book.batch_notebooks(paths.results_dir())
    assert [p.stem for p in runs["synthetic_tiny"]] == sorted(
        ["00_tour-0", "00_tour-1", "10_shufflenet-raw-0", "10_shufflenet-raw-1", "10_shufflenet-masked-0"])
    src = book.stage(ROOT, {}, tmp_path / "_build")
    toc = yaml.safe_load((src / "_toc.yml").read_text())
    (part,) = [p for p in toc["parts"] if p["caption"] == "Results"]
    (entry,) = part["chapters"]
    assert entry["file"] == "results/synthetic_tiny/index"
    assert [s["file"] for s in entry["sections"]] == [f"results/synthetic_tiny/{p.stem}" for p in runs["synthetic_tiny"]]
    for s in entry["sections"]:
        assert (src / f"{s['file']}.ipynb").is_file()
    page = (src / "results" / "synthetic_tiny" / "index.md").read_text()
    assert "| [10_shufflenet-raw-1](10_shufflenet-raw-1.ipynb) | 10_shufflenet | raw / 1 |" in page
    assert "masked-1" not in page, "a failed run is not published"
    assert [p["caption"] for p in toc["parts"]][:3] == ["Data", "Completion", "Prediction"]
    assert [p["caption"] for p in toc["parts"]][-2:] == ["Results", "References"], "the bibliography stays last"
    # papermill's injected-parameters cell is left out of the HTML (the source stays untouched)
    staged = json.loads((src / "results" / "synthetic_tiny" / "00_tour-0.ipynb").read_text())
    assert "remove-cell" in staged["cells"][0]["metadata"]["tags"]
    original = json.loads(runs["synthetic_tiny"][0].read_text())
    assert "remove-cell" not in original["cells"][0]["metadata"]["tags"]


GROUPED = """
datasets: [synthetic_tiny]
chapters: [02_completion, 10_shufflenet, 20_linear_probe]
scenarios: [raw, completed]
seeds: [0]
per_notebook: [scenario, seed]
parameters: {budget: cpu}
chapter_parameters:
  10_shufflenet: {scenario: [raw, masked, "completed:spackle_plus"], seed: [0, 1, 2], iterations: 2}
"""


def test_a_notebook_loops_over_what_per_notebook_names_where_the_chapter_takes_a_list(tmp_path):
    plan = batch.load_plan(_plan(tmp_path, GROUPED))
    jobs = batch.jobs(plan, tmp_path / "res")
    assert [j.output.name for j in jobs] == ["02_completion-0.ipynb", "10_shufflenet-scenarios-seeds.ipynb",
                                             "20_linear_probe-scenarios-seeds.ipynb"]
    completion, shuffle, probe = jobs
    # chapter 02 takes one seed (an int): it runs once per seed, never with a list
    assert completion.parameters == {"dataset": "synthetic_tiny", "seed": 0}
    assert shuffle.parameters["scenario"] == ["raw", "masked", "completed:spackle_plus"]
    assert shuffle.parameters["seed"] == [0, 1, 2] and shuffle.parameters["iterations"] == 2
    assert probe.parameters["scenario"] == ["raw", "completed"] and probe.parameters["seed"] == [0]
    assert [batch.runs_of(j) for j in jobs] == [1, 9, 2]
    # the same plan without per_notebook: one notebook per run
    flat = batch.jobs(batch.load_plan(_plan(tmp_path, GROUPED.replace("per_notebook: [scenario, seed]\n", ""))),
                      tmp_path / "res")
    assert len(flat) == 1 + 9 + 2 and all(batch.runs_of(j) == 1 for j in flat)
    assert "10_shufflenet-completed:spackle_plus-2.ipynb" in {j.output.name for j in flat}


def test_a_plan_with_an_unknown_completion_scenario_is_refused(tmp_path):
    text = GROUPED.replace('"completed:spackle_plus"', '"completed:nonsense"')
    with pytest.raises(ValueError, match=r"plan.yml: unknown scenario 'completed:nonsense'"):
        batch.load_plan(_plan(tmp_path, text))


def test_parallel_jobs_run_apart_log_each_notebook_and_report_failures(tmp_path, monkeypatch):
    """--jobs 2: each notebook in its own process (faked here), every finished one logged as it ends."""
    plan = batch.load_plan(_plan(tmp_path, PLAN))
    seen = []

    def apart(job, plan_, root, threads):
        seen.append(threads)
        if "raw-1" in job.output.name:
            return batch._job_row(job, "failed", 1.0, batch.failed_path(job), "ZeroDivisionError: boom")
        job.output.parent.mkdir(parents=True, exist_ok=True)
        _fake_execute([])(job.chapter, job.dataset, {k: v for k, v in job.parameters.items() if k != "dataset"},
                          output=job.output)
        return batch._job_row(job, "done", 2.0, job.output)

    monkeypatch.setattr(batch, "_run_apart", apart)
    table = batch.run_plan(plan, tmp_path / "res", progress=False, n_jobs=2, threads=1)
    assert list(table["job"]) == [j.name for j in batch.jobs(plan, tmp_path / "res")], "rows in plan order"
    assert list(table["status"]) == ["done", "done", "done", "failed", "done", "done"]
    assert seen == [1] * 6
    log = __import__("pandas").read_csv(batch.log_path(tmp_path / "res", plan))
    assert len(log) == 6 and set(log["threads"]) == {1} and (log["status"] == "failed").sum() == 1


def test_publish_writes_the_plans_rows_and_provenance_and_refuses_an_unfinished_plan(tmp_path, monkeypatch):
    import pandas as pd
    import yaml

    from spared_utils import results

    plan = batch.load_plan(_plan(tmp_path, PLAN))
    root = tmp_path / "res"
    monkeypatch.setattr(batch, "execute", _fake_execute([]))
    jobs = batch.jobs(plan, root)
    batch.run_plan(plan, root, progress=False, only=[jobs[0].output])
    rows = [{"stage": "predict", "dataset": "synthetic_tiny", "model": "shufflenet", "scenario": "raw", "seed": 0,
             "split": "test", "mse": 1.5, "device": "cpu", "threads": 1},
            {"stage": "predict", "dataset": "synthetic", "model": "shufflenet", "scenario": "raw", "seed": 0,
             "split": "test", "mse": 9.0, "device": "cpu", "threads": 1},  # not a dataset of the plan
            {"stage": "predict_lr_search", "dataset": "synthetic_tiny", "model": "shufflenet", "split": "val"}]
    results.append(rows, path=root / "results.csv")
    target = tmp_path / "published"
    with pytest.raises(ValueError, match="5 of 6 notebooks of .* are not finished"):
        batch.publish(plan, root, target)
    assert not target.exists(), "nothing written for a refused publication"
    batch.publish(plan, root, target, partial=True)
    published = pd.read_csv(target / "results.csv")
    assert list(published["dataset"]) == ["synthetic_tiny"] and list(published["stage"]) == ["predict"]
    prov = yaml.safe_load((target / "provenance.yml").read_text())
    assert prov["complete"] is False and prov["notebooks"] == {"planned": 6, "finished": 1}
    assert prov["runs"] == {"planned": 6, "finished": 1} and prov["rows"] == 1
    assert prov["threads_per_run"] == [1] and prov["devices"] == ["cpu"]
    assert prov["budgets"]["shufflenet"]["iterations"] == 2, "the plan's override of the record's budget"
    assert prov["commit"] and prov["plan_sha256"] and prov["machine"]["cpus"] >= 1
    store = results.read_benchmark(root / "results.csv", published=target)
    assert set(store["source"]) == {"published", "local"} and len(store) == 1 + 3
    assert "partial: 1 of 6 runs" in " ".join(results.describe_provenance(results.benchmark_provenance(target)).split())

    # a later part on a machine that kept nothing but the repository: the published notebook is
    # not run again, its rows come back into the new store, and the next publication keeps both
    assert list(pd.read_csv(target / batch.RECEIPTS)["notebook"]) == [f"synthetic_tiny/{jobs[0].output.name}"]
    fresh = tmp_path / "fresh"
    calls = []
    monkeypatch.setattr(batch, "execute", _fake_execute(calls))
    table = batch.run_plan(plan, fresh, progress=False, published=target,
                           only=[fresh / j.dataset / j.output.name for j in jobs[:2]])
    assert list(table["status"]) == ["published", "done"] and len(calls) == 1
    merged = results.read(fresh / "results.csv")
    assert list(merged["mse"]) == [1.5], "the published row is back in the local store"
    batch.run_plan(plan, fresh, progress=False, published=target)  # merging again adds nothing twice
    assert len(results.read(fresh / "results.csv")) == 1
    batch.publish(plan, fresh, target, partial=True)
    assert yaml.safe_load((target / "provenance.yml").read_text())["notebooks"]["finished"] == 6


def test_a_publication_holds_each_result_once_as_last_made():
    import pandas as pd

    run = {"stage": "predict", "dataset": "d", "model": "egn", "scenario": "masked", "seed": 2, "split": "test",
           "config_hash": "abc", "completion": None, "masking": None, "eval_spots": None}
    rows = pd.DataFrame([
        {**run, "timestamp": "2026-12-05T09:58:13", "mse": 2.54},             # the first run
        {**run, "split": "val", "timestamp": "2026-12-05T09:58:13", "mse": 2.7},
        {**run, "seed": 1, "timestamp": "2026-12-05T09:50:00", "mse": 2.9},   # another run: kept
        {**run, "timestamp": "2026-12-05T17:20:00", "mse": 2.55},             # made again after a fix
        {**run, "stage": "predict_baseline", "model": "training_mean", "timestamp": "2026-12-05T10:00:00", "mse": 4.0},
        {**run, "stage": "predict_baseline", "model": "training_mean", "timestamp": "2026-12-05T11:00:00", "mse": 4.0},
        # the baseline on the spots another predictor is scored on: another result
        {**run, "stage": "predict_baseline", "model": "training_mean", "timestamp": "2026-12-05T11:00:00", "mse": 4.2,
         "eval_spots": 60},
    ])
    kept = batch.newest_rows(rows)
    assert list(kept.index) == [1, 2, 3, 5, 6], "the store's order, one row per result"
    assert kept.loc[3, "mse"] == 2.55 and 0 not in kept.index, "the newer row of the run made again"
