"""Every chapter of the book on the authors' processed fixture (prints a table; not a test).

``tests/test_authors_processed.py`` runs four chapters on ``authors_tiny`` in CI (curation,
completion, a patch predictor, a slide predictor) with :func:`tiny_parameters`; CI's time budget
leaves no room for all of them. This script runs
every chapter of ``_toc.yml`` there with papermill, at the tiny parameters of
``tests/chapter_params.yml`` and with ``completion="authors"`` wherever a chapter takes a
completion (their SpaCKLE layer, :mod:`spared_utils.readers.authors`) and their 32 px patch size
wherever a chapter takes a ``patch_size``, and prints one row per
chapter: whether it ran, its seconds, and the first line of its error. Exit code 1 if any failed.

Usage::

    python benchmarks/authors_chapters.py [--out DIR] [--only 15_hist2st,16_egn]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import pandas as pd
import yaml

from spared_utils import book, datasets, paths, run

ROOT = paths.project_root()


def own_slide(out: Path) -> Path:
    """A new section from the generator the fixture was made from (``made_with.json``), in the
    Space Ranger layout: chapter 95's slide (the fixture itself is not generated, so the chapter
    cannot write one of it)."""
    import json

    from spared_utils import synthetic

    made = json.loads((ROOT / "tests" / "data" / "authors_tiny" / "made_with.json").read_text())
    generator = dict(made["generator"])
    return synthetic.write_new_slide(out / "own_slide", seed=int(generator.pop("seed")), **generator)


def tiny_parameters(chapter: str) -> dict:
    """The CI parameters of ``chapter`` (without its dataset), plus their completion where it takes one."""
    tiny = yaml.safe_load((ROOT / "tests" / "chapter_params.yml").read_text())
    params = {k: v for k, v in {**tiny["all"], **(tiny.get(chapter) or {})}.items() if k != "dataset"}
    declared = run.chapter_parameters(run.chapter_source(chapter))
    if "completion" in declared:
        params["completion"] = "authors"
    if "patch_size" in declared:  # a slide model reads patches no larger than the fixture's 32 px
        params["patch_size"] = datasets.get_spec("authors_tiny").patch_size
    return params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="folder for the executed notebooks (default: a temporary one)")
    parser.add_argument("--only", help="comma-separated chapters (default: every chapter of _toc.yml)")
    args = parser.parse_args(argv)
    chapters = args.only.split(",") if args.only else book.chapters_in_toc(ROOT)
    out = Path(args.out or tempfile.mkdtemp(prefix="authors-chapters-"))
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for chapter in chapters:
        params = tiny_parameters(chapter)
        if "slide" in run.chapter_parameters(run.chapter_source(chapter)):
            params["slide"] = str(own_slide(out))
        t0 = time.perf_counter()
        try:
            nb_path = run.execute(chapter, "authors_tiny", params, output=out / f"{chapter}.ipynb", progress=False)
            nb = nbformat.read(nb_path, as_version=4)
            errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
            error = f"{errors[0]['ename']}: {errors[0]['evalue']}" if errors else ""
        except Exception as exc:  # noqa: BLE001 - a row per chapter, whatever failed
            error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
        rows.append({"chapter": chapter, "ran": not error, "seconds": round(time.perf_counter() - t0, 1),
                     "completion": params.get("completion", ""), "error": error[:120]})
        print(f"{chapter}: {'ok' if not error else 'FAILED ' + error[:200]}", flush=True)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    print(f"authors_tiny_chapters_ran: {int(table['ran'].sum())} of {len(table)}  (notebooks in {out})")
    return 0 if table["ran"].all() else 1


if __name__ == "__main__":
    sys.exit(main())
