"""Importing the package: quiet (nothing on stderr) and without the slow optional libraries."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FACES = "import spared_utils as su; su.tl; su.pl; su.pp; su.io; su.models"


def _python(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    return subprocess.run([sys.executable, "-W", "default", "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_importing_the_faces_writes_nothing_to_stderr():
    proc = _python(FACES)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_the_faces_leave_torch_geometric_and_squidpy_for_the_functions_that_need_them():
    proc = _python(FACES + "; import sys; print(sorted({'torch_geometric', 'squidpy', 'scanpy'} & set(sys.modules)))")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_a_graph_predictor_loads_torch_geometric_quietly_and_leaves_the_filters_as_they_were():
    proc = _python(FACES + "; import sys, warnings; before = list(warnings.filters); "
                   "su.models.build('sepal', 4); su.models.build('eggn', 4); "
                   "print('torch_geometric' in sys.modules, warnings.filters == before)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True True"
    assert proc.stderr == ""
