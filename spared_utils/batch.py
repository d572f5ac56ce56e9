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
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from . import paths
from .models.data import SCENARIOS
from .run import (
    ChapterError,
    chapter_parameters,
    chapter_source,
    check_parameters,
    execute,
    known_datasets,
)
from .run import failed_path as run_failed_path

PLAN_KEYS = ("datasets", "chapters", "scenarios", "seeds", "parameters", "chapter_parameters")


@dataclass(frozen=True)
class Plan:
    """What a plan file says (:func:`load_plan` checks it)."""

    datasets: tuple[str, ...]
    chapters: tuple[str, ...]
    scenarios: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()
    parameters: Mapping[str, Any] = field(default_factory=dict)
    chapter_parameters: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


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
        parameters=dict(raw.get("parameters") or {}),
        chapter_parameters={str(k): dict(v or {}) for k, v in (raw.get("chapter_parameters") or {}).items()},
    )
    if not plan.chapters:
        raise ValueError(f"{path}: the plan names no chapter ('chapters: [10_shufflenet, ...]')")
    known = known_datasets()
    for d in plan.datasets:
        if d not in known:
            raise ValueError(f"{path}: unknown dataset {d!r} (not in data/datasets.yml)")
    for c in plan.chapter_parameters:
        if c not in plan.chapters:
            raise ValueError(f"{path}: chapter_parameters names {c!r}, which is not in chapters {list(plan.chapters)}")
    try:
        for c in plan.chapters:
            check_parameters(chapter_source(c), plan.chapter_parameters.get(c, {}))
    except ChapterError as err:
        raise ValueError(f"{path}: {err}") from err
    if plan.scenarios:
        bad = [s for s in plan.scenarios if s not in SCENARIOS]
        if bad:
            raise ValueError(f"{path}: unknown scenario(s) {bad}; one of {list(SCENARIOS)}")
    return plan


def jobs(plan: Plan, results_dir: str | Path | None = None) -> list[Job]:
    """Every papermill run of ``plan``, in plan order (dataset, chapter, scenario, seed).

    A chapter runs once per scenario only if it declares ``scenario`` (the predictor chapters),
    once per seed only if it declares ``seed``; plan-wide ``parameters`` reach only the chapters
    that declare them, ``chapter_parameters`` are checked against the chapter.
    """
    root = Path(results_dir) if results_dir else paths.results_dir()
    out = []
    for dataset in plan.datasets:
        for chapter in plan.chapters:
            source = chapter_source(chapter)
            declared = chapter_parameters(source)
            base = {k: v for k, v in plan.parameters.items() if k in declared}
            base.update(plan.chapter_parameters.get(chapter, {}))
            scenarios = plan.scenarios if plan.scenarios and "scenario" in declared else (None,)
            seeds = plan.seeds if plan.seeds and "seed" in declared else (None,)
            for scenario in scenarios:
                for seed in seeds:
                    params = {**base, "dataset": dataset}
                    stem = source.stem
                    if scenario is not None:
                        params["scenario"], stem = scenario, f"{stem}-{scenario}"
                    if seed is not None:
                        params["seed"], stem = seed, f"{stem}-{seed}"
                    out.append(Job(dataset, source.stem, params, root / dataset / f"{stem}.ipynb"))
    names = [j.output for j in out]
    if len(set(names)) != len(names):
        raise ValueError("the plan gives two runs the same output notebook (a chapter listed twice?)")
    return out


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
    """What the runs of a plan still to do would take, from the notebooks already finished.

    For each chapter, the median papermill duration of its finished notebooks under
    ``results_dir`` (any dataset; batch runs of the same scenario first, then any run of the
    chapter) times its runs still to do. One row per chapter: ``to_run``, ``timed`` (notebooks
    the median comes from, 0 = unknown), ``s_per_run`` and ``hours``; largest first.
    """
    root = Path(results_dir) if results_dir else paths.results_dir()
    rows = []
    for chapter in dict.fromkeys(j.chapter for j in planned):
        todo = [j for j in planned if j.chapter == chapter and not finished(j)]
        found = sorted(root.glob(f"*/{chapter}*.ipynb")) if root.is_dir() else []
        timed = {nb.stem: notebook_seconds(nb) for nb in found
                 if not nb.name.startswith(".") and not nb.name.endswith(".failed.ipynb")}
        timed = {stem: sec for stem, sec in timed.items() if sec is not None}
        per_job = []
        for job in todo:
            tag = f"{chapter}-{job.parameters.get('scenario')}"
            same = [sec for stem, sec in timed.items() if stem == tag or stem.startswith(tag + "-")]
            pool = same or list(timed.values())
            per_job.append(float(pd.Series(pool).median()) if pool else float("nan"))
        known = pd.Series(per_job, dtype=float)
        rows.append({"chapter": chapter, "to_run": len(todo), "timed": len(timed),
                     "s_per_run": round(float(known.median()), 1) if known.notna().any() else float("nan"),
                     "hours": round(float(known.sum()) / 3600, 2) if known.notna().any() else float("nan")})
    table = pd.DataFrame(rows, columns=["chapter", "to_run", "timed", "s_per_run", "hours"])
    return table.sort_values("hours", ascending=False, na_position="last").reset_index(drop=True)


def failed_path(job: Job) -> Path:
    return run_failed_path(job.output)


def run_job(job: Job, progress: bool = False) -> None:
    """Execute one job (:func:`spared_utils.run.execute`: a temporary notebook renamed to
    ``job.output`` on success, to :func:`failed_path` on failure, then the error is raised)."""
    job.output.parent.mkdir(parents=True, exist_ok=True)
    params = {k: v for k, v in job.parameters.items() if k != "dataset"}
    execute(job.chapter, job.dataset, params, output=job.output, progress=progress)


def run_plan(plan: Plan, results_dir: str | Path | None = None, only: Sequence[str | Path] = (),
             progress: bool = True) -> pd.DataFrame:
    """Run every job of ``plan`` not yet finished; one row per job: status (``done``,
    ``skipped``, ``failed``), seconds, output and the error of a failed one."""
    from tqdm.auto import tqdm

    todo = jobs(plan, results_dir)
    if only:
        wanted = {Path(p).resolve() for p in only}
        todo = [j for j in todo if j.output.resolve() in wanted]
        missing = wanted - {j.output.resolve() for j in todo}
        if missing:
            raise ValueError(f"--only names output(s) the plan does not make: {sorted(map(str, missing))}")
    rows = []
    bar = tqdm(todo, desc="plan", unit="notebook", disable=not progress)
    for job in bar:
        bar.set_postfix_str(job.name)
        t0 = time.perf_counter()
        if finished(job):
            rows.append({"job": job.name, "status": "skipped", "seconds": 0.0, "output": str(job.output), "error": ""})
            continue
        try:
            run_job(job)
            status, error, where = "done", "", job.output
        except KeyboardInterrupt:
            raise
        except Exception as err:  # the rest of the plan goes on; the failed notebook is kept
            status, error, where = "failed", f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}", failed_path(job)
        rows.append({"job": job.name, "status": status, "seconds": round(time.perf_counter() - t0, 1),
                     "output": str(where), "error": error})
    return pd.DataFrame(rows, columns=["job", "status", "seconds", "output", "error"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spared_utils.batch", description=__doc__.split("\n\n")[0])
    parser.add_argument("plan", nargs="?", default=str(default_plan()),
                        help="plan file (YAML; default: workflow/plan.yml, the benchmark on the embedded data)")
    parser.add_argument("--dry-run", action="store_true", help="print one line per notebook run and stop")
    parser.add_argument("--only", nargs="+", default=(), help="run only these output notebooks of the plan")
    parser.add_argument("--results-dir", default=None, help="default: results/ (SPARED_RESULTS_DIR)")
    args = parser.parse_args(argv)
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
                  f"of {int(table['to_run'].sum())} runs still to do (one after another, this machine)", file=sys.stderr)
            print(table.to_string(index=False), file=sys.stderr)
            unknown = table.loc[table["timed"] == 0, "chapter"].tolist()
            if unknown:
                print(f"no finished notebook to time for: {', '.join(unknown)}", file=sys.stderr)
        return 0
    try:
        table = run_plan(plan, args.results_dir, only=args.only)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    counts = table["status"].value_counts()
    print(table.drop(columns=["output"]).to_string(index=False))
    print(", ".join(f"{counts.get(s, 0)} {s}" for s in ("done", "skipped", "failed")))
    for row in table[table["status"] == "failed"].itertuples():
        print(f"failed: {row.job}: {row.error} (notebook with the traceback: {row.output})", file=sys.stderr)
    return 1 if counts.get("failed", 0) else 0


if __name__ == "__main__":
    sys.exit(main())
