"""Behaviour snapshot: the predictor chapters' numbers at tiny budgets, to compare two checkouts.

A refactor that claims "behaviour unchanged" runs this in the checkout before and after it and
compares the two snapshots:

    python benchmarks/behaviour_snapshot.py OUT_BEFORE          # in the old checkout
    python benchmarks/behaviour_snapshot.py OUT_AFTER           # in the new one
    python benchmarks/behaviour_snapshot.py --compare OUT_BEFORE OUT_AFTER

Each predictor chapter (10–20) runs with papermill on ``synthetic_tiny`` with the tiny parameters
of ``tests/chapter_params.yml`` and ``scenario="all"``, one thread (``OMP_NUM_THREADS`` and
``MKL_NUM_THREADS`` = 1: near-constant predictions make PCC-Gene sensitive to the summation order),
results and processed data under ``OUT``. It writes ``OUT/snapshot.csv`` (the results rows without
timings, configuration hashes or devices) and ``OUT/what_we_saw.txt``; ``--compare`` prints, per
stage, whether the rows are identical, and the lines of "What we saw" that differ.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
#: Columns that identify a run and those that are its numbers.
KEY = ["stage", "model", "scenario", "split"]
NUMBERS = ["mse", "pcc_gene", "mae", "pcc_global", "best_iteration", "n_params", "n_spots"]


def snapshot(out: Path, chapters: list[str] | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((ROOT / "tests" / "chapter_params.yml").read_text())
    env = {**os.environ, "SPARED_RESULTS_DIR": str(out / "results"), "SPARED_PROCESSED_DIR": str(out / "processed"),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    texts = []
    for source in sorted((ROOT / "chapters").glob("[12][0-9]_*.py")):
        name = source.stem
        if chapters and name not in chapters:
            continue
        p = {**params.get("all", {}), **params.get(name, {}), "scenario": "all"}
        args = [sys.executable, "-m", "spared_utils.run", name, "--dataset", p.pop("dataset"),
                "-o", str(out / f"{name}.ipynb")]
        for key, value in p.items():
            args += ["-p", key, value if isinstance(value, str) else json.dumps(value)]
        done = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True)
        print(f"{name}: {'ran' if done.returncode == 0 else 'FAILED'}", flush=True)
        if done.returncode:
            print(done.stderr[-3000:])
            continue
        for cell in json.loads((out / f"{name}.ipynb").read_text())["cells"]:
            for output in cell.get("outputs", []):
                text = "".join(output.get("data", {}).get("text/markdown", ""))
                if "What we saw" in text:
                    texts.append(f"### {name}\n" + re.sub(r"\(\d+ s for the whole chapter\)", "(N s)", text))
    rows = pd.read_csv(out / "results" / "results.csv")
    rows = rows[[c for c in rows if c in KEY or c in NUMBERS]].sort_values(KEY).reset_index(drop=True)
    rows.to_csv(out / "snapshot.csv", index=False)
    (out / "what_we_saw.txt").write_text("\n".join(texts))
    print(f"{len(rows)} rows in {out / 'snapshot.csv'}")


def compare(before: Path, after: Path) -> bool:
    """Print whether the two snapshots' rows are identical per stage, and the What-we-saw diff."""
    a, b = (pd.read_csv(p / "snapshot.csv") for p in (before, after))
    shared = [c for c in (*KEY, *NUMBERS) if c in a and c in b]
    a, b = a[shared], b[shared]
    same = True
    for stage in sorted(set(a["stage"]) | set(b["stage"])):
        rows = [sorted(map(tuple, d[d["stage"] == stage].round(12).astype(str).values.tolist())) for d in (a, b)]
        identical = rows[0] == rows[1]
        same &= identical
        print(f"{stage}: {len(rows[0])} rows before, {len(rows[1])} after, {'identical' if identical else 'DIFFERENT'}")
    lines = [(p / "what_we_saw.txt").read_text().splitlines() for p in (before, after)]
    diff = [d for d in difflib.unified_diff(*lines, lineterm="", n=0) if d[:1] in "+-" and d[:3] not in ("+++", "---")]
    print(f"What we saw: {len(diff)} lines differ" + ("".join(f"\n  {d}" for d in diff) if diff else ""))
    return same


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="+", help="snapshot folder (two with --compare: before, after)")
    parser.add_argument("--compare", action="store_true", help="compare two snapshot folders")
    parser.add_argument("--chapters", help="comma-separated chapter names (default: 10-20)")
    args = parser.parse_args(argv)
    if args.compare:
        if len(args.out) != 2:
            parser.error("--compare takes two folders: before, after")
        return 0 if compare(Path(args.out[0]), Path(args.out[1])) else 1
    snapshot(Path(args.out[0]), args.chapters.split(",") if args.chapters else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
