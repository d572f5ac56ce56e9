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


def test_the_faces_leave_squidpy_and_scanpy_for_the_functions_that_need_them():
    proc = _python(FACES + "; import sys; print(sorted({'squidpy', 'scanpy'} & set(sys.modules)))")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_torch_geometric_is_imported_quietly_and_the_same_warning_still_shows_afterwards():
    """The filter covers PyG's import only: torch's warning raised later (a reader calling
    ``torch.jit.script``) still reaches stderr."""
    proc = _python("import sys, warnings, spared_utils.models; "
                   "print('torch_geometric' in sys.modules, file=sys.stdout); "
                   "warnings.warn_explicit('`torch.jit.script` is deprecated. Please switch', FutureWarning, "
                   "'_script.py', 1, module='torch.jit._script')")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"
    assert proc.stderr.count("FutureWarning") == 1 and "`torch.jit.script` is deprecated" in proc.stderr
