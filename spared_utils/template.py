"""The predictor chapters (10–20), written from one template, each predictor's record and its prose.

``python -m spared_utils.template`` (``make chapters``) writes ``chapters/<record.chapter>.py``
and its paired ``.ipynb`` for every record of :data:`spared_utils.models.RECORDS` from

* ``chapters/templates/predictor.py`` – the shared part, the one file to edit for a change that
  concerns every predictor chapter (sections, figures, the explorer, "What we saw");
* the record – the predictor's name and display name, its budgets (the parameters cell's
  comments quote them, so no budget is typed twice), its builder options (parameters of their
  own) and whether it trains (the learning curves);
* ``chapters/predictors/<name>.md`` (the record's ``prose``) – a MyST Markdown notebook whose
  first cell is the chapter's opening (its ``# `` title, **What it shows** and **What it needs**;
  the template adds what it writes and where its runtime is) and whose other cells, Markdown or
  ``{code-cell}``, are the predictor's own sections, placed by their metadata ``place``:
  ``intro`` (after the opening: the model, its CPU defaults), ``after_run`` (after the training
  cell) or ``end`` (the default: before "What we saw"; a code cell there may append lines to
  ``notes``, which "What we saw" prints).

The generated chapters are committed (readers open them in JupyterLab or Colab, papermill runs
them by name); ``python -m spared_utils.template --check`` fails when one differs from what the
template makes (the tests run it).
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import textwrap
import sys
from dataclasses import asdict
from pathlib import Path
from string import Template

import jupytext
import nbformat

from . import models, paths
from .book import setup_cell

__all__ = ["TEMPLATE", "chapter_text", "main", "parameters_cell", "prose_cells", "write_chapters"]

#: The template, relative to the project root.
TEMPLATE = Path("chapters") / "templates" / "predictor.py"
#: The page width of a chapter's code (characters; tests/test_chapters.py holds chapters to it).
WIDTH = 88
#: Where a prose cell goes (its metadata ``place``; default ``end``).
PLACES = ("intro", "after_run", "end")

#: The parameters every predictor chapter takes: (name, default, comment) — the comment above
#: the line when it starts with "^", else on the line.
COMMON = (
    ("dataset", "synthetic", '^dataset id from data/datasets.yml ("synthetic": embedded, offline)'),
    ("device", "auto", '"auto": CUDA when available, else the CPU; or "cpu", "cuda"'),
    ("seed", 0, "^random seed of everything the run draws; a list: every scenario once per seed", "int|list"),
    ("out_dir", "results", '"results": results/ (or $SPARED_RESULTS_DIR); else a folder'),
    ("scenario", ["masked", "completed"],
     '^default: masked and completed; "both": the paper\'s raw and completed; "all"; or names, '
     'e.g. "completed:spackle_plus" (the completed scenario with another completion method)'),
    ("budget", "cpu", '^"cpu": this predictor\'s CPU default (its record); "paper": the paper\'s protocol'),
    ("learning_rate", None, 'None: the budget\'s; a number; or "search" (lr_grid on raw data, the paper\'s protocol)',
     "float|'search'"),
    ("lr_grid", [0.0001, 0.001, 0.01], 'learning rates tried when learning_rate is "search"'),
)
#: What each cost field means (the budget's values are added from the record), and its type.
COSTS = {
    "iterations": ("training steps", "int"),
    "batch_size": ("{unit} per training step", "int"),
    "eval_every": ("validate every this many iterations", "int"),
    "val_spots": ('validation spots scored at each validation; "all": every one', "int|'all'"),
    "eval_spots": ('held-out spots scored per split at the end; "all": every one', "int|'all'"),
    "train_spots": ('training spots read; "all": every one', "int|'all'"),
}
TAIL = (
    ("pretrained", False, "True loads ImageNet weights (needs internet or a timm cache)"),
    ("completion", "spackle", "^the completion behind the completed scenario (su.completion.METHODS)"),
    ("completion_iterations", None, "that completion's budget if it trains (None: the book's CPU budget)", "int"),
)


def _literal(value) -> str:
    """A plain literal as the chapters write it (double-quoted strings)."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return repr(value)


def _line(name: str, value, comment: str, kind: str | None = None) -> str:
    """``name = value`` with its comment on the line, or above it (wrapped) when it starts with
    "^" or the line would be wider than the page; a declared ``kind`` is papermill's ``# type:``
    comment on the line (:func:`spared_utils.run.declared_types` checks values against it)."""
    assignment = f"{name} = {_literal(value)}" + (f"  # type: {kind}" if kind else "")
    inline = f"{assignment}  # {comment}"
    if not kind and not comment.startswith("^") and len(inline) <= WIDTH:
        return inline
    above = textwrap.wrap(comment.lstrip("^"), WIDTH - 2)
    return "\n".join([*(f"# {line}" for line in above), assignment])


def _budget_value(value) -> str:
    return "all" if value is None else f"{value:g}" if isinstance(value, float) else f"{value:,}"


def parameters_cell(record: models.PredictorRecord) -> str:
    """The parameters cell of ``record``'s chapter: the common ones, each cost field with the two
    budgets' values in its comment, and the record's builder options (``None``: the budget's)."""
    unit = "neighbouring spots of one slide" if record.task.per_slide else "patches"
    lines = [_line(*p) for p in COMMON]
    cpu, paper = asdict(record.cpu), asdict(record.paper)
    for name, (meaning, kind) in COSTS.items():
        budgets = f"CPU {_budget_value(cpu[name])}, paper {_budget_value(paper[name])}"
        lines.append(_line(name, None, f"None: the budget's ({budgets}); {meaning.format(unit=unit)}", kind))
    lines += [_line(*p) for p in TAIL]
    defaults = inspect.signature(record.builder).parameters
    for name, meaning in record.options.items():
        cpu_value = dict(record.cpu_options).get(name, defaults[name].default)
        lines.append(_line(name, None, f"^None: the budget's ({_literal(cpu_value)} on a CPU); {meaning}"))
    return "\n".join(lines)


def _comment(markdown: str) -> str:
    return "\n".join(f"# {line}".rstrip() for line in markdown.splitlines())


def _percent(cells: list) -> str:
    """``cells`` in jupytext's percent format, without a header."""
    if not cells:
        return ""
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["jupytext"] = {"notebook_metadata_filter": "-all", "cell_metadata_filter": "-all,tags,mystnb"}
    return "\n" + jupytext.writes(nb, fmt="py:percent").strip("\n") + "\n"


def prose_cells(record: models.PredictorRecord, root: Path | None = None) -> tuple[str, dict[str, list]]:
    """The opening (Markdown) and the predictor's own cells by place, from its prose file."""
    root = Path(root or paths.project_root())
    path = root / record.prose
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the prose of predictor {record.name!r} is missing; write its opening "
                                "(title, what it shows, needs and writes) there, as a MyST Markdown notebook")
    cells = jupytext.read(path, fmt="md:myst").cells
    if not cells or cells[0].cell_type != "markdown" or not cells[0].source.startswith("# "):
        raise ValueError(f"{path}: the first cell must be the chapter's opening, starting with its '# ' title")
    placed: dict[str, list] = {place: [] for place in PLACES}
    for cell in cells[1:]:
        place = cell.metadata.pop("place", "end")
        if place not in PLACES:
            raise ValueError(f"{path}: a cell's place must be one of {PLACES}, got {place!r}")
        placed[place].append(cell)
    return cells[0].source, placed


def chapter_text(record: models.PredictorRecord, root: Path | None = None) -> str:
    """The percent-format source (without jupytext's header) of ``record``'s chapter."""
    root = Path(root or paths.project_root())
    template = (root / TEMPLATE).read_text()
    body = template[template.index("# %%"):]
    if record.task.closed_form:
        body = re.sub(r"# \[if trains\].*?# \[end if\]\n", "", body, flags=re.S)
    else:
        body = re.sub(r"# \[if trains\].*\n|# \[end if\]\n", "", body)
    opening, placed = prose_cells(record, root)
    return Template(body).substitute(
        opening=_comment(opening), setup=setup_cell(root), parameters=parameters_cell(record), name=record.name,
        writes="" if record.task.closed_form else f" and\n# checkpoints under `results/checkpoints/<dataset>/{record.name}/`",
        display=record.display_name, intro=_percent(placed["intro"]), after_run=_percent(placed["after_run"]),
        end=_percent(placed["end"]))


def _notebook(record: models.PredictorRecord, root: Path):
    nb = jupytext.reads(chapter_text(record, root), fmt="py:percent")
    for i, cell in enumerate(nb.cells):  # ids by position: the same chapter is the same file
        cell["id"] = f"{record.name}-{i}"
    nb.metadata["jupytext"] = {"formats": "ipynb,py:percent"}
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    return nb


def _without_version(text: str) -> str:
    """A chapter's text without jupytext's version line (``#       jupytext_version: 1.19.6``):
    the version of jupytext that wrote a file is not part of what the template makes."""
    return re.sub(r"(?m)^#\s+jupytext_version:.*\n", "", text)


def write_chapters(root: Path | None = None, check: bool = False, names=None) -> list[Path]:
    """Write (or with ``check``, only compare) every predictor chapter's ``.py`` and ``.ipynb``.

    Returns the files that differ from what the template makes (with ``check``: left as they are).
    """
    root = Path(root or paths.project_root())
    changed = []
    for record in models.RECORDS.values():
        if names and record.name not in names:
            continue
        nb = _notebook(record, root)
        for suffix, fmt in ((".py", "py:percent"), (".ipynb", "ipynb")):
            target = root / "chapters" / f"{record.chapter}{suffix}"
            text = jupytext.writes(nb, fmt=fmt)
            if not target.is_file() or _without_version(target.read_text()) != _without_version(text):
                changed.append(target)
                if not check:
                    target.write_text(text)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spared_utils.template", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only say which chapters differ from the template")
    parser.add_argument("names", nargs="*", help="predictor names (default: every record)")
    args = parser.parse_args(argv)
    changed = write_chapters(check=args.check, names=args.names)
    root = paths.project_root()
    for path in changed:
        print(f"{'differs' if args.check else 'wrote'}: {path.relative_to(root)}")
    if args.check and changed:
        print("run `make chapters` (python -m spared_utils.template) and commit the chapters", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
