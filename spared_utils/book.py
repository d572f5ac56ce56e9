"""Build the book: run every chapter with papermill, then render the executed notebooks to HTML.

``python -m spared_utils.book [--dataset synthetic] [--params FILE] [--render-only]``

1. Each chapter listed in ``_toc.yml`` is executed (:func:`spared_utils.run.execute`) on the
   dataset, with the per-chapter overrides of ``--params`` (a YAML file mapping chapter name to
   parameters; key ``all`` applies to every chapter). A chapter whose source, parameters,
   dataset and package are unchanged since its last successful run is not executed again: a
   stamp beside the executed notebook records them (:func:`chapter_stamp`; ``--force`` re-runs).
   ``--jobs N`` runs up to N chapters at once, each in its own process with the cores shared out.
   A chapter waits only for the parts of the table of contents it reads (:data:`PART_NEEDS`: the
   predictors read chapter 02's completion, the benchmark reads the predictors' rows); the others
   start as soon as a worker is free, those that others wait for first (:func:`chapter_needs`).
2. A staging folder ``_build/src`` receives ``_config.yml``, ``_toc.yml``, the markdown pages and
   the *executed* notebooks; Jupyter Book 1.x renders it with execution turned off (our papermill
   runs play the role of a pre-executed cache), into ``_build/html``.
3. Notebooks the batch driver wrote (``results/<dataset>/<chapter>-<scenario>-<seed>.ipynb``,
   :mod:`spared_utils.batch`) become a "Results" part: one page per dataset listing its runs,
   each run a page of its own (:func:`batch_notebooks`, :func:`add_results_part`).
"""

from __future__ import annotations

import argparse
import os
import hashlib
import json
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import matplotlib
import yaml
from matplotlib.figure import Figure

from . import analysis, paths, plots, results
from .registry import is_known
from .run import ChapterError, execute, known_datasets, output_path, typed_parameters
from .utils import atomic_path


def toc_files(root: Path) -> list[str]:
    """Every ``file:`` entry of ``_toc.yml`` (root first), without suffix."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    out = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                out.append(node["file"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk({k: v for k, v in toc.items() if k != "root"})
    return out


def chapters_in_toc(root: Path) -> list[str]:
    return [Path(f).name for f in toc_files(root) if f.startswith("chapters/")]


#: The first code cell of every chapter (:func:`setup_cell`): in Colab, Binder or any kernel
#: without the project it clones the repository (``$SPARED_BOOK_REPO``: a URL or a local folder
#: in its place), installs it with ``%pip install -e`` (an editable install keeps ``data/`` and
#: the chapters beside the package) and says which GPU it found; where ``spared_utils`` imports,
#: it does nothing.
SETUP_CELL = """\
# Colab, Binder or a fresh kernel: install the project when it is missing.
import importlib.util
import os
import sys

if importlib.util.find_spec("spared_utils") is None:
    _url = "{url}"  # repository.url in _config.yml
    _repo = os.environ.get("SPARED_BOOK_REPO", _url)  # or a local clone
    _dir = _repo if os.path.isdir(_repo) else os.path.abspath("spared-book")
    if not os.path.isdir(_dir):
        get_ipython().system(f"git clone -q --depth 1 {{_repo}} {{_dir}}")  # noqa: F821
    get_ipython().run_line_magic("pip", f"install -q -e {{_dir}}")  # noqa: F821
    sys.path.insert(0, _dir)
    import torch

    _gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    print(f"installed spared_utils from {{_repo}}; GPU: {{_gpu}}")"""

#: Tags of the setup cell: folded away in the HTML (a reader of the book needs no install).
SETUP_TAGS = ["setup", "hide-cell"]


def repository_url(root: Path) -> str:
    """``repository.url`` of the book's ``_config.yml`` (the one place the URL is set)."""
    config = yaml.safe_load((root / "_config.yml").read_text())
    try:
        return config["repository"]["url"]
    except (KeyError, TypeError):
        raise ValueError(f"{root / '_config.yml'} has no repository.url: add it under 'repository:'") from None


def setup_cell(root: Path) -> str:
    """The source of every chapter's first code cell (:data:`SETUP_CELL` with the book's URL)."""
    return SETUP_CELL.format(url=repository_url(root))


def load_params(path: str | None) -> dict[str, dict]:
    if not path:
        return {}
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of chapter name → parameters")
    return data


#: Modules no chapter runs (the book and batch tooling): editing them re-runs no chapter.
TOOLING = frozenset({"book.py", "browser.py", "batch.py"})


def package_digest() -> str:
    """The package's version and a digest of its sources and ``data/datasets.yml``: a change to
    any of them can change what a chapter computes (the :data:`TOOLING` modules aside)."""
    h = hashlib.sha256(f"spared-utils {_version()}".encode())
    files = [f for f in sorted(paths.PACKAGE_DIR.rglob("*.py"))
             if not (f.parent == paths.PACKAGE_DIR and f.name in TOOLING)]
    for f in files + [paths.data_dir() / "datasets.yml"]:
        if f.is_file():
            h.update(f.relative_to(f.parents[1]).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def _version() -> str:
    try:
        return metadata.version("spared-utils")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def chapter_stamp(root: Path, chapter: str, dataset: str, parameters: dict, package: str) -> str:
    """The hash that decides whether an executed chapter can be reused.

    Parameters
    ----------
    root
        The book's root (holds ``chapters/<chapter>.py``).
    chapter, dataset, parameters
        What the run executes: the chapter's source, the dataset and its parameter overrides.
    package
        :func:`package_digest` (passed in so that it is computed once per build).

    Returns
    -------
    str
        A SHA-256 hex digest; equal digests mean the same source, parameters and package.
    """
    h = hashlib.sha256((root / "chapters" / f"{chapter}.py").read_bytes())
    h.update(json.dumps({"dataset": dataset, "parameters": parameters, "package": package},
                        sort_keys=True, default=str).encode())
    return h.hexdigest()


def stamp_path(notebook: Path) -> Path:
    """The stamp file beside an executed notebook (``.<name>.stamp``)."""
    return notebook.with_name(f".{notebook.name}.stamp")


def chapter_parts(root: Path) -> list[tuple[str, list[str]]]:
    """The chapters of ``_toc.yml`` grouped by part, in order, each part with its caption (a table
    of contents without parts is one part captioned ``""``; parts without chapters are left out)."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    parts = []
    for part in toc.get("parts", [{"chapters": toc.get("chapters", [])}]):
        names = [Path(c["file"]).name for c in part.get("chapters", []) if str(c.get("file", "")).startswith("chapters/")]
        if names:
            parts.append((str(part.get("caption", "")), names))
    return parts


#: What each part of the book's table of contents reads from the others (by caption). Its
#: chapters start once every chapter of those parts has finished; a part not named here waits for
#: all the parts before it. Curation and completions are made under file locks, so two chapters
#: that need the same one never both write it; these waits are for what a chapter *reads*.
PART_NEEDS: dict[str, tuple[str, ...]] = {
    "Data": (),
    # chapter 02 trains the SpaCKLE whose stored completion every predictor's `completed` reads
    "Completion": (),
    "Prediction": ("Completion",),
    # chapters 90 and 91 aggregate the rows the predictor chapters wrote
    "Benchmark": ("Prediction",),
    # chapter 95 reads checkpoints (CHAPTER_NEEDS names which)
    "Your data": ("Completion", "Prediction"),
    # the reliability matrix builds its own slides and checkpoints
    "Appendix": (),
}
#: Chapters that read fewer chapters than their part's :data:`PART_NEEDS`: chapter 95 applies
#: chapter 02's SpaCKLE and chapter 10's predictor (its default) and waits for nothing else.
CHAPTER_NEEDS: dict[str, tuple[str, ...]] = {"95_your_slide": ("02_completion", "10_shufflenet")}


def chapter_needs(root: Path) -> dict[str, set[str]]:
    """Each chapter of the table of contents → the chapters it waits for (:data:`PART_NEEDS`,
    narrowed by :data:`CHAPTER_NEEDS`), in the order of the table of contents."""
    parts = chapter_parts(root)
    needs: dict[str, set[str]] = {}
    for i, (caption, names) in enumerate(parts):
        read = PART_NEEDS.get(caption)
        earlier = parts[:i] if read is None else [p for p in parts[:i] if p[0] in read]
        for name in names:
            needs[name] = {c for _, chapters in earlier for c in chapters}
            if name in CHAPTER_NEEDS:
                needs[name] &= set(CHAPTER_NEEDS[name])
    return needs


def waited_for(needs: dict[str, set[str]]) -> dict[str, int]:
    """How many chapters wait, directly or not, for each chapter: the build starts those with the
    most first, so that a long chapter others need (02) does not run last."""
    def after(chapter: str, seen: set[str]) -> set[str]:
        direct = {c for c, n in needs.items() if chapter in n} - seen
        return direct.union(*(after(c, seen | direct) for c in direct)) if direct else set()
    return {chapter: len(after(chapter, {chapter})) for chapter in needs}


#: Environment variables that set the thread count of the numerical libraries a chapter uses.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def default_jobs() -> int:
    """Chapters run at once by default: two where there are two cores or more (a chapter's small
    models use a second thread poorly, a second chapter fully), else one."""
    return 2 if (os.cpu_count() or 1) >= 2 else 1


#: What a worker process of a parallel build runs: :func:`spared_utils.run.execute` on one chapter.
#: It imports the runner only, not this module (whose rendering side imports the analysis, seconds
#: that every chapter's worker would pay again).
_WORKER = ("import json, sys; from spared_utils.run import execute; "
           "execute(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), progress=False)")


def _execute_apart(chapter: str, dataset: str, parameters: dict, threads: int) -> tuple[int, str]:
    """One chapter in its own process (:data:`_WORKER`) with ``threads`` threads; its exit code
    and its last lines of output."""
    env = {**os.environ, **{name: str(threads) for name in THREAD_VARIABLES}}
    cmd = [sys.executable, "-c", _WORKER, chapter, dataset, json.dumps(parameters)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return done.returncode, "\n".join(lines[-6:])


def check_all(dataset: str, params: dict[str, dict], root: Path) -> None:
    """Refuse, before any chapter runs, an unknown dataset or a parameter that a chapter does not
    declare or whose value does not fit its declared type (:func:`spared_utils.run.typed_parameters`)."""
    for chapter in chapters_in_toc(root):
        chosen = {**params.get("all", {}), **params.get(chapter, {})}
        ds = chosen.pop("dataset", dataset)
        if not is_known(ds):
            raise ChapterError(f"unknown dataset {ds!r}: it is not in data/datasets.yml; known: "
                               f"{', '.join(known_datasets())} (and <id>_authors for a dataset of the paper)")
        typed_parameters(root / "chapters" / f"{chapter}.py", {**chosen, "dataset": ds})


def execute_all(dataset: str, params: dict[str, dict], root: Path, force: bool = False,
                jobs: int = 1) -> dict[str, Path]:
    """Run every chapter of the table of contents; returns chapter → executed notebook.

    A chapter whose executed notebook exists with a stamp (:func:`chapter_stamp`) equal to this
    run's is reused, not executed again, unless ``force``: a second build with nothing changed
    only renders. The stamp is written after a successful run, so a failed chapter re-runs.

    ``jobs`` > 1 runs that many chapters at once, each in its own process with the machine's cores
    shared out, except the one chapter that more chapters wait for than any other, which runs
    first and alone on all of them (most of the book waits for it). A chapter starts when a worker
    is free and the chapters it waits for (:func:`chapter_needs`) have succeeded, those that most
    chapters wait for first, then in the order of the table of contents. A chapter that fails does
    not stop the others; those that wait for it are not run, and the build raises at the end,
    naming every failure.
    """
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    executed: dict[str, Path] = {}
    package = package_digest()
    check_all(dataset, params, root)
    needs = chapter_needs(root)
    pending = {}
    for chapter in needs:
        chosen = {**params.get("all", {}), **params.get(chapter, {})}
        ds = chosen.pop("dataset", dataset)
        stamp = chapter_stamp(root, chapter, ds, chosen, package)
        out = output_path(chapter, ds)
        if not force and out.is_file() and stamp_path(out).is_file() and stamp_path(out).read_text() == stamp:
            print(f"[book] {chapter} on {ds} unchanged: reusing {out}", flush=True)
            executed[chapter] = out
            continue
        stamp_path(out).unlink(missing_ok=True)
        pending[chapter] = (chapter, ds, chosen, stamp, out)
    at_once = max(1, min(jobs, len(pending)))
    cores = os.cpu_count() or 1
    first = waited_for(needs)
    # the chapter most others wait for (02) gates the rest: it runs alone on every core (beside
    # others on one thread each it took as long as alone on one thread); the others get their share
    most = max((first[c] for c in pending), default=0)
    leaders = [c for c in pending if first[c] == most]
    gate = leaders[0] if most > 0 and len(leaders) == 1 else None

    def run_one(item) -> tuple[str, Path]:
        chapter, ds, chosen, stamp, out = item
        t0 = time.perf_counter()
        print(f"[book] running {chapter} on {ds} {chosen or ''}", flush=True)
        if at_once > 1:
            code, tail = _execute_apart(chapter, ds, chosen, cores if chapter == gate else max(1, cores // at_once))
            if code != 0:
                raise RuntimeError(f"chapter {chapter} failed on {ds}:\n{tail}")
            path = out
        else:
            path = execute(chapter, ds, chosen, progress=False)
        with atomic_path(stamp_path(path)) as tmp:
            tmp.write_text(stamp)
        print(f"[book] {chapter} done in {time.perf_counter() - t0:.0f} s", flush=True)
        return chapter, path

    if at_once == 1:  # in this process, in the order of the table of contents
        executed.update(run_one(pending.pop(c)) for c in list(pending))
    order = sorted(pending, key=lambda c: (-first[c], list(needs).index(c)))
    errors = []
    with ThreadPoolExecutor(max_workers=at_once) as pool:
        running: dict = {}
        while True:
            for chapter in order:
                if gate in running.values():  # the gate runs alone on every core
                    break
                if chapter in pending and len(running) < at_once and needs[chapter] <= executed.keys():
                    running[pool.submit(run_one, pending.pop(chapter))] = chapter
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                running.pop(future)
                try:
                    executed.__setitem__(*future.result())
                except RuntimeError as error:
                    errors.append(str(error))
    for chapter in pending:  # left because a chapter it waits for did not succeed
        missing = ", ".join(sorted(needs[chapter] - executed.keys()))
        errors.append(f"chapter {chapter} was not run: it waits for {missing}, which did not succeed")
    if errors:
        raise RuntimeError("\n".join(errors))
    return {c: executed[c] for c in needs if c in executed}


def hide_injected_parameters(notebook: Path) -> bool:
    """Tag papermill's ``injected-parameters`` cell of ``notebook`` ``remove-cell`` (Jupyter Book
    leaves it out of the HTML; the chapter's own ``parameters`` cell stays). True if it changed."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    changed = False
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            cell.metadata["tags"] = [*tags, "remove-cell"]
            changed = True
    if changed:
        nbformat.write(nb, notebook)
    return changed


def batch_notebooks(results_root: Path) -> dict[str, list[Path]]:
    """Dataset → the finished batch notebooks under ``results_root/<dataset>/`` (names with a
    scenario or seed suffix; failed and running ones left out), sorted by name."""
    found: dict[str, list[Path]] = {}
    if not results_root.is_dir():
        return found
    for folder in sorted(p for p in results_root.iterdir() if p.is_dir() and p.name != "checkpoints"):
        nbs = sorted(nb for nb in folder.glob("[0-9][0-9]_*-*.ipynb")
                     if not nb.name.endswith(".failed.ipynb") and not nb.name.startswith("."))
        if nbs:
            found[folder.name] = nbs
    return found


def add_results_part(src: Path, runs: dict[str, list[Path]]) -> list[str]:
    """Copy the batch notebooks into the staged book, write a page per dataset and append a
    "Results" part to the staged ``_toc.yml``; returns the added pages."""
    if not runs:
        return []
    toc_path = src / "_toc.yml"
    toc = yaml.safe_load(toc_path.read_text())
    part = {"caption": "Results", "chapters": []}
    added = []
    for dataset, nbs in runs.items():
        folder = src / "results" / dataset
        folder.mkdir(parents=True, exist_ok=True)
        lines = [f"# Results: `{dataset}`", "",
                 f"The {len(nbs)} notebooks the batch driver (`python -m spared_utils.batch`) ran on this dataset, "
                 "each executed with its own parameters (chapter, scenario, seed in the name).", "",
                 "| run | chapter | scenario / seed |", "|---|---|---|"]
        sections = []
        for nb in nbs:
            chapter, _, rest = nb.stem.partition("-")
            shutil.copy2(nb, folder / nb.name)
            hide_injected_parameters(folder / nb.name)
            sections.append({"file": f"results/{dataset}/{nb.stem}"})
            lines.append(f"| [{nb.stem}]({nb.stem}.ipynb) | {chapter} | {rest.replace('-', ' / ')} |")
            added.append(f"results/{dataset}/{nb.stem}")
        (folder / "index.md").write_text("\n".join(lines) + "\n")
        part["chapters"].append({"file": f"results/{dataset}/index", "sections": sections})
        added.append(f"results/{dataset}/index")
    parts = toc.setdefault("parts", [])
    # before the back matter (the bibliography stays the last page)
    at = next((i for i, p in enumerate(parts) if p.get("caption") == "References"), len(parts))
    parts.insert(at, part)
    toc_path.write_text(yaml.safe_dump(toc, sort_keys=False))
    return added


#: The measured times and scores the Measurements page shows, relative to the book's root.
MEASUREMENTS = Path("data") / "measurements"

#: The intro's pipeline figure, relative to the book's root (drawn again at every build).
OVERVIEW_FIGURE = Path("figures") / "pipeline.svg"


def write_overview_figure(target: Path) -> Path:
    """Draw :func:`spared_utils.plots.pipeline_overview` into the SVG ``target`` (text kept as
    text, no date: the same code gives the same file)."""
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "spared-book"}):
        fig = Figure(figsize=(3 * len(plots.PIPELINE_STAGES), 3.2))  # no pyplot: no backend needed
        plots.pipeline_overview(ax=fig.add_subplot())
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format="svg", bbox_inches="tight", metadata={"Date": None})
    return target


#: The intro's answers to the benchmark's two questions, written into the staged book from the
#: published benchmark (``intro.md`` includes it), so the front page states them from data.
ANSWERS_INCLUDE = "_benchmark_answers.md"


def benchmark_answers(published: str | os.PathLike | None = None) -> str:
    """The published benchmark's answers (:func:`spared_utils.analysis.completion_answers` on its
    test split, as chapter 90 opens with) as markdown, with where they come from; only the
    published store (``data/benchmark/``, or ``published``) is read, never the local one."""
    folder = Path(published) if published is not None else results.published_dir()
    store = results.read(folder / results.STORE_NAME)
    if store.empty:
        return ("The published benchmark (`data/benchmark/`) holds no runs yet: `make benchmark` writes it, and "
                "[chapter 90](chapters/90_benchmark) answers from it.")
    prov = results.benchmark_provenance(folder)
    answers = analysis.completion_answers(analysis.scenario_differences(store, split="test"),
                                          analysis.completion_by_dataset(store, "test"))
    where = (f"From the published benchmark ({store['dataset'].nunique()} datasets, "
             f"{prov.get('runs', {}).get('finished', '?')} runs, {prov.get('date', 'undated')}, commit "
             f"`{str(prov.get('commit', '?'))[:7]}`; the figures and intervals are in "
             "[chapter 90](chapters/90_benchmark)):")
    return "\n\n".join([where, *(f"**{q}**\n\n" + "\n".join(lines) for q, lines in answers.items())]) + "\n"


def stage(root: Path, executed: dict[str, Path], build_dir: Path) -> Path:
    """Copy the book's sources, with executed notebooks in place of the chapters, to a staging folder."""
    src = build_dir / "src"
    if src.exists():
        shutil.rmtree(src)
    (src / "chapters").mkdir(parents=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(root / name, src / name)
    if (root / "_static").is_dir():  # the book's own CSS (Jupyter Book loads _static/*.css)
        shutil.copytree(root / "_static", src / "_static")
    for f in root.glob("*.bib"):
        shutil.copy2(f, src / f.name)
    if (root / MEASUREMENTS).is_dir():  # the tables the Measurements page reads (csv-table)
        shutil.copytree(root / MEASUREMENTS, src / MEASUREMENTS)
    for entry in toc_files(root):
        if entry.startswith("chapters/"):
            continue
        for suffix in (".md", ".ipynb"):
            if (root / f"{entry}{suffix}").is_file():
                target = src / f"{entry}{suffix}"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(root / f"{entry}{suffix}", target)
    for chapter, nb in executed.items():
        shutil.copy2(nb, src / "chapters" / f"{chapter}.ipynb")
        hide_injected_parameters(src / "chapters" / f"{chapter}.ipynb")
    figures = root / "chapters" / "figures"
    if figures.is_dir():
        shutil.copytree(figures, src / "chapters" / "figures")
    write_overview_figure(src / OVERVIEW_FIGURE)
    (src / ANSWERS_INCLUDE).write_text(benchmark_answers())
    add_results_part(src, batch_notebooks(paths.results_dir()))
    return src


def render(src: Path, build_dir: Path) -> Path:
    """Render the staged book with Jupyter Book into ``<build_dir>/html``."""
    cmd = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(src), "--path-output", str(build_dir.parent), "--keep-going"]
    if build_dir.name != "_build":
        raise ValueError("the build folder must be called _build (Jupyter Book writes <path-output>/_build/html)")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log = build_dir / "jupyter-book.log"
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"jupyter-book build failed (exit {proc.returncode}); see {log}\n{proc.stderr[-3000:]}")
    return build_dir / "html"


def build(
    dataset: str = "synthetic",
    params_file: str | None = None,
    render_only: bool = False,
    build_dir: str | Path | None = None,
    force: bool = False,
    jobs: int = 1,
) -> Path:
    """Run the chapters (unless ``render_only``; unchanged ones are reused unless ``force``, see
    :func:`execute_all`) and render the book; returns the HTML folder."""
    root = paths.project_root()
    build_dir = Path(build_dir) if build_dir else root / "_build"
    build_dir.mkdir(parents=True, exist_ok=True)
    if render_only:
        executed = {}
        for chapter in chapters_in_toc(root):
            nb = paths.results_dir() / dataset / f"{chapter}.ipynb"
            if not nb.is_file():
                raise FileNotFoundError(f"{nb} is missing: run the chapters first (drop --render-only)")
            executed[chapter] = nb
    else:
        executed = execute_all(dataset, load_params(params_file), root, force=force, jobs=jobs)
    html = render(stage(root, executed, build_dir), build_dir)
    print(f"[book] HTML in {html}/index.html")
    return html


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spared_utils.book", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--params", help="YAML file: chapter name (or 'all') → parameter overrides")
    parser.add_argument("--render-only", action="store_true", help="render the already executed notebooks")
    parser.add_argument("--build-dir", help="output folder, named _build (default: <root>/_build)")
    parser.add_argument("--force", action="store_true",
                        help="re-run every chapter, even those whose source, parameters and package are unchanged")
    parser.add_argument("--jobs", type=int, default=default_jobs(),
                        help="chapters run at once, each in its own process (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        build(args.dataset, args.params, args.render_only, args.build_dir, args.force, jobs=args.jobs)
    except ChapterError as error:  # a wrong dataset or parameter: one line, before anything ran
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
