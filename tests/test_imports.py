"""Importing the package: quiet (nothing on stderr) and without the slow optional libraries."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_the_faces_load_a_names_module_on_first_use():
    loaded = "import sys; print(sorted({'torch', 'matplotlib', 'torch_geometric', 'squidpy', 'scanpy'} & set(sys.modules)))"
    faces = _python(f"import spared_utils as su; su.tl; su.pl; su.pp; su.io; {loaded}")
    complete = _python(f"import spared_utils as su; su.tl.complete; {loaded}")
    figure = _python(f"import spared_utils as su; su.pl.gene_maps; {loaded}")
    assert [p.returncode for p in (faces, complete, figure)] == [0, 0, 0], faces.stderr + complete.stderr + figure.stderr
    assert faces.stdout.strip() == "[]"
    assert complete.stdout.strip() == "['torch']"  # completion needs neither matplotlib nor the graph predictors
    assert figure.stdout.strip() == "['matplotlib']"


def test_a_face_lists_and_finds_the_names_of_its_modules():
    import spared_utils as su
    from spared_utils import plots, preprocess
    from spared_utils.completion import results_rows

    assert set(plots.__all__) <= set(su.pl.__all__) and set(preprocess.__all__) <= set(su.pp.__all__)
    assert su.pl.gene_maps is plots.gene_maps and su.tl.completion_rows is results_rows
    assert "gene_maps" in dir(su.pl)
    with pytest.raises(AttributeError, match="no attribute 'not_a_verb'"):
        su.tl.not_a_verb


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
