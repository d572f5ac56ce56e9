"""Run one chapter with papermill: ``python -m spared_utils.run CHAPTER --dataset ID [-p name value]...``.

The chapter's jupytext source (``chapters/<CHAPTER>.py``) is executed through papermill into
``<results_dir>/<dataset>/<CHAPTER>.ipynb``; its ``parameters`` cell receives ``dataset`` and every
``-p`` pair. Values are read as YAML literals (``-p iterations 20`` is an int, ``-p pretrained
true`` a bool, ``-p learning_rate 1e-4`` a float). Unknown datasets and parameters are refused
before anything runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from . import paths
from .registry import registry


class ChapterError(ValueError):
    """A chapter, dataset or parameter that cannot be run (message says what to do)."""


def chapter_dir() -> Path:
    return paths.project_root() / "chapters"


def list_chapters() -> list[str]:
    """Chapter names (``00_tour``, ...) in file order."""
    return sorted(p.stem for p in chapter_dir().glob("[0-9][0-9]_*.py"))


def chapter_source(chapter: str) -> Path:
    """The ``.py`` source of a chapter given as ``00_tour``, ``00_tour.ipynb`` or a path."""
    name = Path(chapter).name
    for suffix in (".py", ".ipynb"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    src = chapter_dir() / f"{name}.py"
    if not src.is_file():
        raise ChapterError(f"no chapter {chapter!r}: expected {src}; known chapters: {', '.join(list_chapters())}")
    return src


def known_datasets() -> list[str]:
    return sorted(registry())


def read_notebook(source: Path):
    """The chapter as an nbformat notebook (read from its jupytext percent source)."""
    import jupytext

    return jupytext.read(source)


def chapter_parameters(source: Path) -> dict[str, Any]:
    """Names and default values of the chapter's ``parameters`` cell."""
    nb = read_notebook(source)
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ChapterError(f"{source} must have exactly one code cell tagged 'parameters', found {len(cells)}")
    scope: dict[str, Any] = {}
    exec(compile(cells[0].source, str(source), "exec"), {}, scope)  # plain literals by convention
    return {k: v for k, v in scope.items() if not k.startswith("_")}


def parse_value(text: str) -> Any:
    """A command-line value as a YAML literal (int, float, bool, null, list) or a string."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
        try:
            return float(value)
        except ValueError:
            return value
    return value


def check_parameters(source: Path, params: Mapping[str, Any]) -> dict[str, Any]:
    """Refuse parameters the chapter does not declare (naming the valid ones)."""
    declared = chapter_parameters(source)
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise ChapterError(
            f"{source.name} has no parameter {', '.join(map(repr, unknown))}; "
            f"its parameters cell declares: {', '.join(declared)}"
        )
    for name, value in params.items():
        problem = _type_problem(declared[name], value)
        if problem:
            raise ChapterError(f"{source.name}: parameter {name!r} got {value!r} ({type(value).__name__}) but its default "
                               f"is {declared[name]!r}: {problem}")
    return declared


def _type_problem(default: Any, value: Any) -> str:
    """Why ``value`` cannot stand in for a parameter whose default is ``default`` ('' if it can).

    Numbers, booleans and lists must stay numbers, booleans and lists (an int for a float is
    fine); a parameter whose default is ``None`` or a string takes anything (``"search"`` or a
    number, ``"all"`` or a count), one whose default is a list of strings also takes a string
    (``scenario``: ``"raw"``, ``"both"``, ``"all"``).
    """
    if default is None or isinstance(default, str) or value is None:
        return ""
    if isinstance(default, bool):
        return "" if isinstance(value, bool) else "give true or false (-p NAME true)"
    if isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "give a number (-p NAME 20)"
        if isinstance(default, int) and isinstance(value, float) and not value.is_integer():
            return "give a whole number"
        return ""
    if isinstance(default, list) and not isinstance(value, list):
        if isinstance(value, str) and default and all(isinstance(v, str) for v in default):
            return ""  # a list of names also takes one name or a keyword (scenario "raw", "both")
        return "give a list (-p NAME '[0.1, 0.5]')"
    return ""


def output_path(chapter: str, dataset: str) -> Path:
    return paths.results_dir() / dataset / f"{Path(chapter).stem}.ipynb"


def execute(
    chapter: str,
    dataset: str = "synthetic",
    parameters: Mapping[str, Any] | None = None,
    output: str | os.PathLike | None = None,
    kernel: str = "python3",
    progress: bool = True,
) -> Path:
    """Execute a chapter with papermill and return the executed notebook's path.

    Raises
    ------
    ChapterError
        Unknown chapter, dataset or parameter (before anything runs).
    papermill.PapermillExecutionError
        A cell failed; the partially executed notebook is still written to ``output``.
    """
    import papermill as pm

    source = chapter_source(chapter)
    params = dict(parameters or {})
    params["dataset"] = dataset
    datasets = known_datasets()
    if dataset not in datasets:
        raise ChapterError(f"unknown dataset {dataset!r}: it is not in data/datasets.yml; known: {', '.join(datasets)}")
    check_parameters(source, params)
    out = Path(output) if output else output_path(source.stem, dataset)
    out.parent.mkdir(parents=True, exist_ok=True)
    import jupytext

    # A non-interactive MPLBACKEND (e.g. "agg", common in scripts and CI) would stop the kernel's
    # figures from reaching the notebook: the kernel must use its inline backend.
    saved_backend = os.environ.pop("MPLBACKEND", None)
    # explorers show their static view in a batch run (no one is there to use the widgets)
    saved_static = os.environ.get(paths.STATIC_VIEWS_ENV)
    os.environ[paths.STATIC_VIEWS_ENV] = "1"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            nb_in = Path(tmp) / f"{source.stem}.ipynb"
            jupytext.write(read_notebook(source), nb_in)
            pm.execute_notebook(
                str(nb_in),
                str(out),
                parameters=params,
                kernel_name=kernel,
                cwd=str(paths.project_root()),
                progress_bar=progress,
                report_mode=False,
            )
    finally:
        if saved_backend is not None:
            os.environ["MPLBACKEND"] = saved_backend
        if saved_static is None:
            os.environ.pop(paths.STATIC_VIEWS_ENV, None)
        else:
            os.environ[paths.STATIC_VIEWS_ENV] = saved_static
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spared_utils.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("chapter", help="chapter name, e.g. 00_tour")
    parser.add_argument("--dataset", default="synthetic", help="dataset id from data/datasets.yml (default: synthetic)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="set a parameter of the chapter's parameters cell (repeatable)")
    parser.add_argument("-o", "--output", help="executed notebook path (default: results/<dataset>/<chapter>.ipynb)")
    parser.add_argument("--kernel", default="python3")
    args = parser.parse_args(argv)
    params = {name: parse_value(value) for name, value in args.parameter}
    try:
        out = execute(args.chapter, args.dataset, params, args.output, args.kernel)
    except ChapterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # papermill execution errors: point at the executed notebook
        name = type(err).__name__
        print(f"error: chapter {args.chapter} failed ({name}): {err}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
