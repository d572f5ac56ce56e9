"""The chapters' setup cell makes a chapter run where the project is not installed (Colab, Binder).

A fresh virtual environment sees the test environment's packages through a ``.pth`` file, but
not the project: a folder added by a ``.pth`` is not scanned for further ``.pth`` files, so the
editable install's hook is not processed, and the kernel runs in a temporary folder. The setup
cell then installs a copy of the project (``$SPARED_BOOK_REPO``, a local folder in place of the
repository URL) into that environment, offline (``PIP_NO_INDEX``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import nbformat
import pytest

from spared_utils.book import SETUP_TAGS

from .conftest import skip_or_fail_in_ci

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_chapter_runs_in_an_environment_without_the_project(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path / "work"
    work.mkdir()
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SPARED_BOOK_ROOT", "MPLBACKEND")}
    probe = subprocess.run([str(python), "-c", "import importlib.util as u; print(u.find_spec('spared_utils'))"],
                           cwd=work, env=clean, capture_output=True, text=True, check=True)
    if probe.stdout.strip() != "None":
        skip_or_fail_in_ci(f"spared_utils is importable without its editable hook here ({probe.stdout.strip()}), "
                           "so a fresh environment cannot be without it: install the project editable "
                           "(pip install -e '.[dev]') rather than into site-packages")

    repo = tmp_path / "repo"  # the project as a clone has it (only what installing and running need)
    repo.mkdir()
    for name in ("pyproject.toml", "README.md", "_toc.yml", "_config.yml"):
        shutil.copy2(ROOT / name, repo / name)
    for name in ("spared_utils", "data"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    env = {**clean, "SPARED_BOOK_REPO": str(repo), "PIP_NO_INDEX": "1", "PIP_NO_DEPS": "1",
           "PIP_IGNORE_INSTALLED": "1", "PIP_NO_BUILD_ISOLATION": "0"}
    out = tmp_path / "00_tour.out.ipynb"
    proc = subprocess.run(
        [str(python), "-m", "papermill", str(ROOT / "chapters" / "00_tour.ipynb"), str(out),
         "-p", "dataset", "synthetic_tiny", "--cwd", str(work), "-k", "python3", "--no-progress-bar"],
        cwd=work, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    nb = nbformat.read(out, as_version=4)
    setup = next(c for c in nb.cells if c.cell_type == "code")
    assert setup.metadata.get("tags") == SETUP_TAGS
    printed = "".join(o.get("text", "") for o in setup.outputs)
    assert f"installed spared_utils from {repo}" in printed and "GPU:" in printed, printed
    assert list(site.glob("__editable__*spared_utils*")), "the project was not installed into the new environment"
    assert "What we saw" in str(nb.cells[-1].outputs), "the chapter did not run to its end"
