"""Run a plan of chapters: ``python -m spared_utils.batch [PLAN.yml] [--dry-run] [--only OUTPUT]``.

A plan is a YAML file naming datasets, chapters, scenarios and seeds, with parameters for every
chapter and per chapter::

    datasets: [synthetic]
    chapters: [10_shufflenet, 12_vit_b_delta]
    scenarios: [raw, masked, median, completed]   # chapters without a `scenario` parameter run once
    seeds: [0, 1, 2]                              # chapters without a `seed` parameter run once
    parameters: {budget: cpu}                     # every chapter (those that declare them)
    chapter_parameters:
      12_vit_b_delta: {iterations: 60}

Each (dataset, chapter, scenario, seed) is one papermill run of the chapter
(:func:`spared_utils.run.execute`) into
``<results>/<dataset>/<chapter>[-<scenario>][-<seed>].ipynb``; the chapters themselves append
their rows to the results store. The driver is resumable: a notebook already there whose
papermill parameters equal the plan's is skipped; a run is written under a temporary name and
renamed only when it succeeds, so an interrupted run leaves no notebook that looks finished; a
failed run is kept as ``<name>.failed.ipynb`` (with its traceback), reported at the end, and the
rest of the plan goes on. The same plan runs on a cluster through ``workflow/Snakefile``
(Snakemake plans exactly the outputs :func:`jobs` lists).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from . import models, paths, results
from .utils import atomic_path, file_lock
from .predict.harness import parse_scenarios
from .registry import is_known
from .run import (
    ChapterError,
    chapter_parameters,
    chapter_source,
    check_parameters,
    declared_types,
    execute,
)
from .run import failed_path as run_failed_path

PLAN_KEYS = ("datasets", "chapters", "scenarios", "seeds", "per_notebook", "parameters", "chapter_parameters")
#: What a plan may loop over inside one notebook instead of one notebook each (``per_notebook``).
GROUPABLE = ("scenario", "seed")


@dataclass(frozen=True)
class Plan:
    """What a plan file says (:func:`load_plan` checks it)."""

    datasets: tuple[str, ...]
    chapters: tuple[str, ...]
    scenarios: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()
    #: what one notebook loops over (a subset of :data:`GROUPABLE`); empty: one notebook per run
    per_notebook: tuple[str, ...] = ()
    parameters: Mapping[str, Any] = field(default_factory=dict)
    chapter_parameters: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: the file it was read from (parallel jobs re-read it)
    source: Path | None = None


@dataclass(frozen=True)
class Job:
    """One papermill run of a plan."""

    dataset: str
    chapter: str
    parameters: Mapping[str, Any]
    output: Path

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.output.stem}"

    def describe(self) -> str:
        """The dry-run line: output, chapter, dataset and parameters."""
        extra = " ".join(f"-p {k} {json.dumps(v)}" for k, v in sorted(self.parameters.items()) if k != "dataset")
        return f"{self.output}  <-  {self.chapter} --dataset {self.dataset} {extra}".rstrip()


def _as_tuple(value, key: str, path) -> tuple:
    if value is None:
        return ()
    if isinstance(value, (str, int)):
        return (value,)
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{path}: '{key}' must be a list, got {type(value).__name__}")
    return tuple(value)


def default_plan() -> Path:
    """``workflow/plan.yml``: the benchmark on the embedded data (the Snakefile's default too)."""
    return paths.project_root() / "workflow" / "plan.yml"


def load_plan(path: str | Path) -> Plan:
    """Read and check a plan file (unknown keys, datasets, chapters and parameters are refused,
    naming the file and what is valid)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no plan file {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a plan is a mapping with keys {', '.join(PLAN_KEYS)}")
    unknown = sorted(set(raw) - set(PLAN_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {', '.join(unknown)}; a plan has {', '.join(PLAN_KEYS)}")
    plan = Plan(
        datasets=_as_tuple(raw.get("datasets", ["synthetic"]), "datasets", path),
        chapters=tuple(str(c) for c in _as_tuple(raw.get("chapters"), "chapters", path)),
        scenarios=_as_tuple(raw.get("scenarios"), "scenarios", path),
        seeds=tuple(int(s) for s in _as_tuple(raw.get("seeds"), "seeds", path)),
        per_notebook=tuple(str(k) for k in _as_tuple(raw.get("per_notebook"), "per_notebook", path)),
        parameters=dict(raw.get("parameters") or {}),
        chapter_parameters={str(k): dict(v or {}) for k, v in (raw.get("chapter_parameters") or {}).items()},
        source=path.resolve(),
    )
    if not plan.chapters:
        raise ValueError(f"{path}: the plan names no chapter ('chapters: [10_shufflenet, ...]')")
    for d in plan.datasets:
        if not is_known(d):
            raise ValueError(f"{path}: unknown dataset {d!r} (not in data/datasets.yml)")
    for c in plan.chapter_parameters:
        if c not in plan.chapters:
            raise ValueError(f"{path}: chapter_parameters names {c!r}, which is not in chapters {list(plan.chapters)}")
    try:
        for c in plan.chapters:
            check_parameters(chapter_source(c), plan.chapter_parameters.get(c, {}))
    except ChapterError as err:
        raise ValueError(f"{path}: {err}") from err
    bad = sorted(set(plan.per_notebook) - set(GROUPABLE))
    if bad:
        raise ValueError(f"{path}: per_notebook may hold {list(GROUPABLE)}, not {bad}")
    named = [plan.scenarios] + [_as_tuple(p.get("scenario"), "scenario", path) for p in plan.chapter_parameters.values()]
    try:
        for scenarios in named:
            if scenarios:
                parse_scenarios(list(scenarios))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    return plan


def jobs(plan: Plan, results_dir: str | Path | None = None) -> list[Job]:
    """Every papermill run of ``plan``, in plan order (dataset, chapter, scenario, seed).

    A chapter runs once per scenario only if it declares ``scenario`` (the predictor chapters),
    once per seed only if it declares ``seed``; a chapter's ``chapter_parameters`` may give its
    own ``scenario`` and ``seed`` lists instead of the plan's. What ``per_notebook`` names is
    looped over inside one notebook (the chapter gets the list; its output is
    ``<chapter>-scenarios-seeds.ipynb``, naming what it loops over) instead of one notebook per
    value. Plan-wide ``parameters`` reach only the chapters that declare them,
    ``chapter_parameters`` are checked against the chapter.
    """
    root = Path(results_dir) if results_dir else paths.results_dir()
    out = []
    for dataset in plan.datasets:
        for chapter in plan.chapters:
            source = chapter_source(chapter)
            declared = chapter_parameters(source)
            kinds = declared_types(source)
            # a chapter loops over what it takes as a list (the predictor chapters' scenario and seed)
            takes_list = {k for k in GROUPABLE if k in declared and (isinstance(declared[k], list) or "list" in (
                kinds.get(k) or "").split("|"))}
            base = {k: v for k, v in plan.parameters.items() if k in declared}
            own = dict(plan.chapter_parameters.get(chapter, {}))
            loops = {"scenario": _as_tuple(own.pop("scenario", None), "scenario", chapter) or plan.scenarios,
                     "seed": _as_tuple(own.pop("seed", None), "seed", chapter) or plan.seeds}
            base.update(own)
            groups = {}
            for key, values in loops.items():
                if not values or key not in declared:
                    groups[key] = [None]
                elif key in plan.per_notebook and key in takes_list:
                    groups[key] = [list(values)]
                else:
                    groups[key] = list(values)
            for scenario in groups["scenario"]:
                for seed in groups["seed"]:
                    params = {**base, "dataset": dataset}
                    stem = source.stem
                    for key, value, plural in (("scenario", scenario, "scenarios"), ("seed", seed, "seeds")):
                        if value is None:
                            continue
                        params[key] = value
                        stem = f"{stem}-{plural if isinstance(value, list) else value}"
                    out.append(Job(dataset, source.stem, params, root / dataset / f"{stem}.ipynb"))
    names = [j.output for j in out]
    if len(set(names)) != len(names):
        raise ValueError("the plan gives two runs the same output notebook (a chapter listed twice?)")
    return out


def runs_of(job: Job) -> int:
    """How many runs (scenario × seed) one notebook of a plan makes."""
    return math.prod(len(v) if isinstance(v, list) else 1
                     for k, v in job.parameters.items() if k in GROUPABLE)


def finished(job: Job) -> bool:
    """True if ``job.output`` exists and papermill ran it with exactly the job's parameters."""
    if not job.output.is_file():
        return False
    try:
        meta = json.loads(job.output.read_text()).get("metadata", {}).get("papermill", {})
    except (OSError, ValueError):
        return False
    return meta.get("parameters") == json.loads(json.dumps(dict(job.parameters))) and not meta.get("exception")


def notebook_seconds(path: Path) -> float | None:
    """Seconds papermill took for a finished notebook (its ``metadata.papermill.duration``);
    ``None`` for a failed, unreadable or unfinished one."""
    try:
        meta = json.loads(path.read_text()).get("metadata", {}).get("papermill", {})
    except (OSError, ValueError):
        return None
    duration = meta.get("duration")
    return float(duration) if duration is not None and not meta.get("exception") else None


def estimate(planned: Sequence[Job], results_dir: str | Path | None = None) -> pd.DataFrame:
    """What the notebooks of a plan still to do would take, from the notebooks already finished.

    For each chapter, the median papermill seconds *per run* of its finished notebooks under
    ``results_dir`` (any dataset; a notebook that loops over several scenarios and seeds counts
    its runs, :func:`runs_of`), times the runs still to do. One row per chapter: ``to_run``
    (notebooks), ``timed`` (notebooks the median comes from, 0 = unknown), ``s_per_run`` and
    ``hours``; largest first.
    """
    root = Path(results_dir) if results_dir else paths.results_dir()
    rows = []
    for chapter in dict.fromkeys(j.chapter for j in planned):
        todo = [j for j in planned if j.chapter == chapter and not finished(j)]
        found = sorted(root.glob(f"*/{chapter}*.ipynb")) if root.is_dir() else []
        timed = {nb.stem: _seconds_per_run(nb) for nb in found
                 if not nb.name.startswith(".") and not nb.name.endswith(".failed.ipynb")}
        timed = {stem: sec for stem, sec in timed.items() if sec is not None}
        rates, seconds = [], []
        for job in todo:
            # runs of the same scenario first (a notebook per run), then any run of the chapter
            scenario = job.parameters.get("scenario")
            tag = f"{chapter}-{scenario}" if isinstance(scenario, str) else None
            same = [sec for stem, sec in timed.items() if tag and (stem == tag or stem.startswith(tag + "-"))]
            pool = same or list(timed.values())
            rate = float(pd.Series(pool).median()) if pool else float("nan")
            rates.append(rate)
            seconds.append(rate * runs_of(job))
        known = pd.Series(seconds, dtype=float)
        rows.append({"chapter": chapter, "to_run": len(todo), "timed": len(timed),
                     "s_per_run": round(float(pd.Series(rates, dtype=float).dropna().median()), 1)
                     if pd.Series(rates, dtype=float).notna().any() else float("nan"),
                     "hours": round(float(known.sum()) / 3600, 2) if known.notna().any() else float("nan")})
    table = pd.DataFrame(rows, columns=["chapter", "to_run", "timed", "s_per_run", "hours"])
    return table.sort_values("hours", ascending=False, na_position="last").reset_index(drop=True)


def _seconds_per_run(path: Path) -> float | None:
    """Papermill's seconds for a finished notebook over the runs it made."""
    seconds = notebook_seconds(path)
    if seconds is None:
        return None
    try:
        params = json.loads(path.read_text()).get("metadata", {}).get("papermill", {}).get("parameters", {})
    except (OSError, ValueError):
        return None
    return seconds / runs_of(Job("", "", params, path))


def failed_path(job: Job) -> Path:
    return run_failed_path(job.output)


def run_job(job: Job, progress: bool = False) -> None:
    """Execute one job (:func:`spared_utils.run.execute`: a temporary notebook renamed to
    ``job.output`` on success, to :func:`failed_path` on failure, then the error is raised)."""
    job.output.parent.mkdir(parents=True, exist_ok=True)
    params = {k: v for k, v in job.parameters.items() if k != "dataset"}
    execute(job.chapter, job.dataset, params, output=job.output, progress=progress)


def _job_row(job: Job, status: str, seconds: float, where: Path, error: str = "") -> dict:
    return {"job": job.name, "status": status, "runs": runs_of(job), "seconds": round(seconds, 1),
            "output": str(where), "error": error}


def _run_here(job: Job) -> dict:
    t0 = time.perf_counter()
    try:
        run_job(job)
        return _job_row(job, "done", time.perf_counter() - t0, job.output)
    except KeyboardInterrupt:
        raise
    except Exception as err:  # the rest of the plan goes on; the failed notebook is kept
        first = str(err).splitlines()[0] if str(err) else ""
        return _job_row(job, "failed", time.perf_counter() - t0, failed_path(job), f"{type(err).__name__}: {first}")


def _run_apart(job: Job, plan: Plan, root: Path, threads: int) -> dict:
    """One job in its own process (``--only``), with ``threads`` threads for its numerical work."""
    env = {**os.environ, "SPARED_BATCH_THREADS": str(threads), WORKER_ENV: "1"}
    for name in THREAD_VARIABLES:
        env[name] = str(threads)
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "spared_utils.batch", str(plan.source), "--only", str(job.output),
           "--results-dir", str(root), "--quiet"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode == 0 and finished(job):
        return _job_row(job, "done", seconds, job.output)
    # the worker's last line on stdout is its row (JSON); anything else: its last words
    try:
        error = json.loads(done.stdout.strip().splitlines()[-1])["error"]
    except (IndexError, ValueError, KeyError, TypeError):
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        error = lines[-1] if lines else f"exit code {done.returncode}"
    return _job_row(job, "failed", seconds, failed_path(job), error)


#: Set in the process of a parallel job: it reports its row to the driver instead of logging it.
WORKER_ENV = "SPARED_BATCH_WORKER"


def _success_path(output: str) -> Path:
    """The notebook a ``.failed.ipynb`` stands for."""
    return Path(output.replace(".failed.ipynb", ".ipynb"))


#: Environment variables that set the thread count of the numerical libraries a chapter uses.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def run_plan(plan: Plan, results_dir: str | Path | None = None, only: Sequence[str | Path] = (),
             progress: bool = True, n_jobs: int = 1, threads: int | None = None,
             published: str | Path | None = None) -> pd.DataFrame:
    """Run every job of ``plan`` not yet finished; one row per job: status (``done``,
    ``skipped``, ``failed``, ``published``), runs it holds, seconds, output and the error of a
    failed one.

    ``n_jobs`` > 1 runs that many notebooks at once, each in its own process with ``threads``
    threads (default: the machine's cores shared out); jobs that need the same dataset
    preparation or completion wait for each other (:func:`spared_utils.utils.file_lock`).

    ``published``: a folder :func:`publish` wrote for this plan. Its notebooks count as finished
    (``published``: its ``notebooks.csv`` lists them with their parameters) and its rows are
    merged into the local store first, so a plan run in parts on machines that keep nothing but
    the repository resumes where its last publication ended.
    """
    from tqdm.auto import tqdm

    root = Path(results_dir) if results_dir else paths.results_dir()
    todo = jobs(plan, root)
    done_before = {}
    if published is not None:
        done_before = receipts(published)
        _merge_published(Path(published), root)
    if only:
        wanted = {Path(p).resolve() for p in only}
        todo = [j for j in todo if j.output.resolve() in wanted]
        missing = wanted - {j.output.resolve() for j in todo}
        if missing:
            raise ValueError(f"--only names output(s) the plan does not make: {sorted(map(str, missing))}")
    order = {j.output: k for k, j in enumerate(todo)}
    rows = [_job_row(j, "skipped", 0.0, j.output) for j in todo if finished(j)]
    rows += [_job_row(j, "published", 0.0, j.output) for j in todo
             if not finished(j) and _receipted(j, done_before)]
    todo = [j for j in todo if not finished(j) and not _receipted(j, done_before)]
    bar = tqdm(total=sum(runs_of(j) for j in todo), desc="plan", unit="run", disable=not progress)
    used = threads if n_jobs > 1 and len(todo) > 1 else os.environ.get("OMP_NUM_THREADS", "")
    if n_jobs <= 1 or len(todo) <= 1:
        for job in todo:
            bar.set_postfix_str(job.name)
            rows.append(_run_here(job))
            _log(rows[-1], root, plan, used)
            bar.update(runs_of(job))
    else:
        if plan.source is None:
            raise ValueError("parallel jobs re-read the plan from its file: load it with load_plan")
        threads = threads or max(1, (os.cpu_count() or 1) // n_jobs)
        with ThreadPoolExecutor(max_workers=n_jobs) as pool:
            futures = {pool.submit(_run_apart, job, plan, root, threads): job for job in todo}
            for future in as_completed(futures):
                row = future.result()
                rows.append(row)
                _log(row, root, plan, threads)
                bar.set_postfix_str(f"{row['job']} {row['status']}")
                bar.update(row["runs"])
    bar.close()
    rows.sort(key=lambda row: order.get(Path(row["output"]), order.get(_success_path(row["output"]), 0)))
    table = pd.DataFrame(rows, columns=["job", "status", "runs", "seconds", "output", "error"])
    return table


def log_path(root: Path, plan: Plan) -> Path:
    """``<results>/batch-<plan name>.csv``: every notebook the driver ran for the plan, when,
    how long and how it ended (what :func:`publish` sums into the plan's wall time)."""
    name = plan.source.stem if plan.source is not None else "plan"
    return root / f"batch-{name}.csv"


def _log(row: dict, root: Path, plan: Plan, threads) -> None:
    """Add one finished notebook's row to :func:`log_path` (as it finishes: an interrupted plan
    keeps the log of what it did)."""
    if os.environ.get(WORKER_ENV):
        return
    path = log_path(root, plan)
    line = pd.DataFrame([{k: v for k, v in row.items() if k != "output"}]).assign(
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"), threads=threads)
    with file_lock(path):
        table = pd.concat([pd.read_csv(path), line], ignore_index=True) if path.is_file() else line
        with atomic_path(path) as tmp:
            table.to_csv(tmp, index=False)


#: The stages of the results store a published benchmark keeps.
PUBLISHED_STAGES = ("predict", "predict_baseline", "predict_reference", "completion")


#: The file of a publication that lists its finished notebooks (what a later part of the plan skips).
RECEIPTS = "notebooks.csv"


def _notebook_key(job: Job) -> str:
    return f"{job.dataset}/{job.output.name}"


def receipts(folder: str | Path) -> dict[str, dict]:
    """The notebooks a publication lists as finished: ``"<dataset>/<notebook>"`` → its parameters
    (a dict) and ``seconds``; empty when the folder has none."""
    path = Path(folder) / RECEIPTS
    if not path.is_file():
        return {}
    table = pd.read_csv(path)
    return {row.notebook: {"parameters": json.loads(row.parameters), "seconds": float(row.seconds)}
            for row in table.itertuples()}


def _receipted(job: Job, done: Mapping[str, dict]) -> bool:
    found = done.get(_notebook_key(job))
    return found is not None and found["parameters"] == json.loads(json.dumps(dict(job.parameters)))


def _merge_published(folder: Path, root: Path) -> None:
    """Add the published rows the local store lacks (the same row: its time, stage, run and split)."""
    pub = results.read(folder / results.STORE_NAME)
    if pub.empty:
        return
    local = results.read(root / results.STORE_NAME)
    key = [c for c in ("timestamp", "stage", "dataset", "model", "scenario", "seed", "split", "config_hash",
                       "completion", "masking") if c in pub]
    if len(local):
        have = set(map(tuple, local.reindex(columns=key).astype(str).to_numpy()))
        pub = pub[[tuple(r) not in have for r in pub.reindex(columns=key).astype(str).to_numpy()]]
    if len(pub):
        results.append(pub.to_dict("records"), path=root / results.STORE_NAME)


def publish(plan: Plan, results_dir: str | Path | None = None, target: str | Path | None = None,
            partial: bool = False) -> Path:
    """Write the plan's rows of the results store under ``target`` (default :func:`published_dir`)
    with their provenance, each file in one atomic step.

    ``results.csv``: the rows of :data:`PUBLISHED_STAGES` on the plan's datasets.
    Each result once: the newest row of a run made again (:func:`newest_rows`).
    ``provenance.yml``: the plan (file and SHA-256), the commit (and whether the work tree had
    changes), the date, the machine, the threads per run, the budgets, the package versions, how
    many notebooks and runs of the plan are finished and the driver's time on them. ``notebooks.csv``
    (:data:`RECEIPTS`): the finished notebooks with their parameters and seconds, those of earlier
    publications of the plan included (:func:`run_plan` with ``published`` skips them). An
    unfinished plan is refused unless ``partial`` (its provenance then says ``complete: false``).
    """
    root = Path(results_dir) if results_dir else paths.results_dir()
    target = Path(target) if target else results.published_dir()
    planned = jobs(plan, root)
    before = receipts(target)  # notebooks an earlier part of the plan published
    done = [j for j in planned if finished(j) or _receipted(j, before)]
    if len(done) < len(planned) and not partial:
        raise ValueError(f"{len(planned) - len(done)} of {len(planned)} notebooks of {plan.source} are not finished; "
                         "run the plan first (or publish with --partial)")
    store = results.read(root / results.STORE_NAME)
    rows = newest_rows(store[store["stage"].isin(PUBLISHED_STAGES) & store["dataset"].isin(plan.datasets)])
    if rows.empty:
        raise ValueError(f"the results store under {root} holds no row of the plan's datasets: nothing to publish")
    seconds = [notebook_seconds(j.output) if finished(j) else before[_notebook_key(j)]["seconds"] for j in done]
    provenance = {
        "plan": str(plan.source.relative_to(paths.project_root())) if plan.source and plan.source.is_relative_to(
            paths.project_root()) else str(plan.source),
        "plan_sha256": hashlib.sha256(plan.source.read_bytes()).hexdigest() if plan.source else None,
        "complete": len(done) == len(planned),
        "notebooks": {"planned": len(planned), "finished": len(done)},
        "runs": {"planned": sum(runs_of(j) for j in planned), "finished": sum(runs_of(j) for j in done)},
        "rows": int(len(rows)),
        "datasets": sorted(rows["dataset"].unique().tolist()),
        # papermill's time in the finished notebooks, one after another (parallel jobs overlap)
        "notebook_seconds": round(float(sum(v for v in seconds if v is not None)), 1),
        **_provenance_common(rows),
        "parameters": dict(plan.parameters),
        "budgets": _budgets(plan),
    }
    target.mkdir(parents=True, exist_ok=True)
    with atomic_path(target / "results.csv") as tmp:
        rows.to_csv(tmp, index=False)
    with atomic_path(target / "provenance.yml") as tmp:
        tmp.write_text(yaml.safe_dump(provenance, sort_keys=False, allow_unicode=True))
    listed = pd.DataFrame([{"notebook": _notebook_key(j), "chapter": j.chapter, "runs": runs_of(j), "seconds": sec,
                            "parameters": json.dumps(dict(j.parameters), sort_keys=True)}
                           for j, sec in zip(done, seconds)], columns=["notebook", "chapter", "runs", "seconds",
                                                                      "parameters"])
    with atomic_path(target / RECEIPTS) as tmp:
        listed.to_csv(tmp, index=False)
    return target


#: What makes two rows of the store the same result: a notebook run again (after a fix, or each
#: chapter's baseline rows of a dataset and seed) writes rows with these values again. The
#: baselines and references have no configuration hash: the spots they are scored on
#: (``eval_spots``, each predictor's own) tell theirs apart.
ROW_IDENTITY = ("stage", "dataset", "model", "scenario", "seed", "split", "config_hash", "completion", "masking",
                "eval_spots")


def newest_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The newest row (by ``timestamp``) of each result (:data:`ROW_IDENTITY`), in the store's
    order: a publication holds each result once, as the code last made it."""
    return results.newest(rows, [c for c in ROW_IDENTITY if c in rows])


def _provenance_common(rows: pd.DataFrame) -> dict:
    """Commit, date, machine, threads, devices and package versions of a publication."""
    import platform

    def git(*args) -> str:
        try:
            return subprocess.run(["git", *args], cwd=paths.project_root(), capture_output=True, text=True,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        memory = float("nan")
    threads = sorted(int(t) for t in rows["threads"].dropna().unique()) if "threads" in rows else []
    commits = sorted(rows["commit"].dropna().astype(str).unique().tolist()) if "commit" in rows else []
    versions = sorted(rows["versions"].dropna().unique().tolist()) if "versions" in rows else []
    return {
        "commit": git("rev-parse", "HEAD") or None,
        "work_tree_changed": bool(git("status", "--porcelain", "--untracked-files=no")),
        "row_commits": commits,
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpus": os.cpu_count(), "memory_gib": round(memory, 1), "platform": platform.platform(),
                    "python": platform.python_version(), "cpu_kernels": results.cpu_kernels()},
        "row_cpu_kernels": sorted(rows["cpu"].dropna().astype(str).unique().tolist()) if "cpu" in rows else [],
        "devices": sorted(rows["device"].dropna().astype(str).unique().tolist()) if "device" in rows else [],
        "threads_per_run": threads,
        "versions": versions,
    }


def _budgets(plan: Plan) -> dict:
    """Each planned predictor's budget (its record's, with the plan's overrides) as plain values."""
    budget = str(plan.parameters.get("budget", "cpu"))
    out = {}
    for chapter in plan.chapters:
        record = next((r for r in models.RECORDS.values() if r.chapter == chapter), None)
        if record is None:
            continue
        costs = asdict(record.budget(budget))
        own = {k: v for k, v in {**plan.parameters, **plan.chapter_parameters.get(chapter, {})}.items() if k in costs}
        out[record.name] = {"budget": budget, **costs, **own,
                            **({"options": dict(record.cpu_options)} if budget == "cpu" and record.cpu_options else {})}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spared_utils.batch", description=__doc__.split("\n\n")[0])
    parser.add_argument("plan", nargs="?", default=str(default_plan()),
                        help="plan file (YAML; default: workflow/plan.yml, the benchmark on the embedded data)")
    parser.add_argument("--dry-run", action="store_true", help="print one line per notebook run and stop")
    parser.add_argument("--only", nargs="+", default=(), help="run only these output notebooks of the plan")
    parser.add_argument("--results-dir", default=None,
                        help="where the notebooks, the results store and the checkpoints go "
                             "(default: results/, or SPARED_RESULTS_DIR)")
    parser.add_argument("--jobs", type=int, default=1, help="notebooks run at once (each in its own process)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads of each notebook when --jobs > 1 (default: the cores shared out)")
    parser.add_argument("--publish", nargs="?", const=str(results.published_dir()), default=None, metavar="DIR",
                        help="after the plan, write its rows and their provenance to DIR (default: "
                             "data/benchmark); the notebooks an earlier publication there lists are not run again")
    parser.add_argument("--partial", action="store_true", help="with --publish: publish an unfinished plan too")
    parser.add_argument("--publish-only", action="store_true",
                        help="run nothing: publish what the plan has finished (with --publish; see --partial)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.results_dir:  # the chapters' rows and checkpoints go where the notebooks go
        os.environ["SPARED_RESULTS_DIR"] = str(Path(args.results_dir).resolve())
    try:
        plan = load_plan(args.plan)
        planned = jobs(plan, args.results_dir)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        for job in planned:
            state = "finished" if finished(job) else "to run"
            print(f"{job.describe()}  [{state}]")
        # the estimate goes to stderr: stdout stays one line per run (Snakemake's plan is compared with it)
        table = estimate(planned, args.results_dir)
        if table["to_run"].sum():
            known = table[table["timed"] > 0]
            print(f"\nestimated from finished notebooks: {known['hours'].sum():.1f} h for {int(known['to_run'].sum())} "
                  f"of {int(table['to_run'].sum())} notebooks still to do (one after another, this machine)",
                  file=sys.stderr)
            print(table.to_string(index=False), file=sys.stderr)
            unknown = table.loc[table["timed"] == 0, "chapter"].tolist()
            if unknown:
                print(f"no finished notebook to time for: {', '.join(unknown)}", file=sys.stderr)
        return 0
    if args.publish_only:
        try:
            where = publish(plan, args.results_dir, args.publish or results.published_dir(), partial=args.partial)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(f"published {where / 'results.csv'} with {where / 'provenance.yml'}")
        return 0
    try:
        table = run_plan(plan, args.results_dir, only=args.only, progress=not args.quiet, n_jobs=args.jobs,
                         threads=args.threads, published=args.publish)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    counts = table["status"].value_counts()
    if os.environ.get(WORKER_ENV):  # a parallel job: its row, for the driver
        for row in table.to_dict("records"):
            print(json.dumps(row))
        return 1 if counts.get("failed", 0) else 0
    if not args.quiet:
        print(table.drop(columns=["output"]).to_string(index=False))
        print(", ".join(f"{counts.get(s, 0)} {s}" for s in ("done", "skipped", "published", "failed")))
    for row in table[table["status"] == "failed"].itertuples():
        print(f"failed: {row.job}: {row.error} (notebook with the traceback: {row.output})", file=sys.stderr)
    if args.publish and (args.partial or not counts.get("failed", 0)):
        try:
            where = publish(plan, args.results_dir, args.publish, partial=args.partial)
            print(f"published {where / 'results.csv'} with {where / 'provenance.yml'}")
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    return 1 if counts.get("failed", 0) else 0


if __name__ == "__main__":
    sys.exit(main())
