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
from .registry import is_known, registry


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


def declared_types(source: Path) -> dict[str, str | None]:
    """The type each parameter of the chapter declares with a ``# type:`` comment (papermill's
    convention: ``iterations = None  # type: int``), ``None`` where it declares none.

    A declared type is ``int``, ``float``, ``bool``, ``str`` or ``list``, or several of them and
    quoted words joined by ``|``: ``int|'all'`` takes a whole number or the word ``all``.
    """
    from papermill.translators import PythonTranslator

    nb = read_notebook(source)
    cell = next(c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", []))
    found = {p.name: p.inferred_type_name for p in PythonTranslator.inspect(cell)}
    return {name: (None if kind in ("None", "") else kind) for name, kind in found.items()}


def check_parameters(source: Path, params: Mapping[str, Any]) -> dict[str, Any]:
    """Refuse parameters the chapter does not declare (naming the valid ones) or whose value does
    not fit the parameter's declared type or default (naming the parameter, the type expected,
    the value given and an example), before anything runs. Returns the declared defaults."""
    return _checked(source, params)[0]


def _checked(source: Path, params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str | None]]:
    """:func:`check_parameters`'s work: the declared defaults and types, once the values passed."""
    declared = chapter_parameters(source)
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise ChapterError(
            f"{source.name} has no parameter {', '.join(map(repr, unknown))}; "
            f"its parameters cell declares: {', '.join(declared)}"
        )
    types = declared_types(source)
    for name, value in params.items():
        problem = _type_problem(declared[name], value, types.get(name), name)
        if problem:
            raise ChapterError(f"{source.name}: parameter {name!r} got {value!r} ({type(value).__name__}): {problem}")
    return declared, types


def typed_parameters(source: Path, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` checked (:func:`check_parameters`), whole numbers given as floats (``1e3``) made
    ``int`` where the parameter is a whole number."""
    declared, types = _checked(source, params)
    out = dict(params)
    for name, value in params.items():
        whole = isinstance(declared[name], int) and not isinstance(declared[name], bool) \
            or "int" in _alternatives(types.get(name))
        if whole and isinstance(value, float) and value.is_integer() and "float" not in _alternatives(types.get(name)):
            out[name] = int(value)
    return out


def _alternatives(declared_type: str | None) -> list[str]:
    return [] if not declared_type else [t.strip() for t in declared_type.split("|")]


#: How the error messages name each declared type, and an example value of it.
_WORDS = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "a text", "list": "a list"}
_EXAMPLES = {"int": "500", "float": "0.001", "bool": "true", "str": "name", "list": "'[0.1, 0.5]'"}


def _fits(value: Any, kind: str) -> bool:
    if kind.startswith(("'", '"')):
        return value == kind.strip("'\"")
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float) and value.is_integer()
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, {"bool": bool, "str": str, "list": list}.get(kind, object))


def _type_problem(default: Any, value: Any, declared_type: str | None = None, name: str = "NAME") -> str:
    """Why ``value`` cannot stand in for a parameter whose default is ``default`` and whose declared
    type is ``declared_type`` ('' if it can).

    With a declared type, the value must fit one of its alternatives (``None`` always fits a
    parameter whose default is ``None``). Without one, numbers, booleans and lists must stay
    numbers, booleans and lists (an int for a float is fine); a parameter whose default is
    ``None`` or a string takes anything (``"search"`` or a number, ``"all"`` or a count), one
    whose default is a list of strings also takes a string (``scenario``: ``"raw"``, ``"both"``,
    ``"all"``).
    """
    if declared_type:
        kinds = _alternatives(declared_type)
        if (value is None and default is None) or any(_fits(value, k) for k in kinds):
            return ""
        words = " or ".join(k if k.startswith(("'", '"')) else _WORDS.get(k, k) for k in kinds)
        example = next((_EXAMPLES[k] for k in kinds if k in _EXAMPLES), kinds[0].strip("'\""))
        return f"give {words}{' (or None)' if default is None else ''}, e.g. -p {name} {example}"
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
        A cell failed; the partially executed notebook is kept as :func:`failed_path` of
        ``output`` (never at ``output``, where a finished notebook goes).
    """
    import papermill as pm

    source = chapter_source(chapter)
    params = dict(parameters or {})
    params["dataset"] = dataset
    if not is_known(dataset):
        raise ChapterError(f"unknown dataset {dataset!r}: it is not in data/datasets.yml; known: "
                           f"{', '.join(known_datasets())} (and <id>_authors for a dataset of the paper)")
    params = typed_parameters(source, params)
    out = Path(output) if output else output_path(source.stem, dataset)
    out.parent.mkdir(parents=True, exist_ok=True)
    running = out.with_name(f".{out.stem}.running.ipynb")
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
                str(running),
                parameters=params,
                kernel_name=kernel,
                cwd=str(paths.project_root()),
                progress_bar=progress,
                report_mode=False,
            )
    except BaseException:
        if running.exists():  # the executed part, with its traceback, beside where the result goes
            running.replace(failed_path(out))
        raise
    finally:
        if saved_backend is not None:
            os.environ["MPLBACKEND"] = saved_backend
        if saved_static is None:
            os.environ.pop(paths.STATIC_VIEWS_ENV, None)
        else:
            os.environ[paths.STATIC_VIEWS_ENV] = saved_static
    running.replace(out)
    failed_path(out).unlink(missing_ok=True)
    return out


def failed_path(output: str | os.PathLike) -> Path:
    """Where :func:`execute` keeps a chapter that failed: ``<output stem>.failed.ipynb`` beside ``output``."""
    output = Path(output)
    return output.with_name(f"{output.stem}.failed.ipynb")


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
