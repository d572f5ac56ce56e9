"""The package's layout: stages import only the stages before them, and the public face holds."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import grimp
import networkx as nx
import pytest

import spared_utils as su
from spared_utils import models, plots

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "spared_utils"


def test_import_linter_layers_contract_is_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 kept, 0 broken" in proc.stdout


def test_no_import_cycle_between_modules():
    graph = grimp.build_graph("spared_utils", cache_dir=None)
    g = nx.DiGraph()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            # a package's __init__ handing on its own submodules is not a cycle of the stages
            if not imported.startswith(module + ".") and not module.startswith(imported + "."):
                g.add_edge(module, imported)
    cycles = list(nx.simple_cycles(g))
    assert cycles == [], f"import cycles: {cycles[:5]}"


def _function_level_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and (inner.level > 0 or (inner.module or "").startswith("spared_utils")):
                    found.append(f"{path.relative_to(ROOT)}:{inner.lineno}")
                elif isinstance(inner, ast.Import) and any(a.name.startswith("spared_utils") for a in inner.names):
                    found.append(f"{path.relative_to(ROOT)}:{inner.lineno}")
    return found


def test_no_function_level_import_of_the_package_itself():
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) for hit in _function_level_imports(path)]
    assert found == [], f"import the package's modules at the top (the layers keep them acyclic): {found}"


@pytest.mark.parametrize("face", su.__all__)
def test_each_face_exports_what_it_lists(face):
    module = getattr(su, face)
    assert module.__all__, f"su.{face} has an empty __all__"
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == [], f"su.{face}.__all__ names {missing}, which it does not define"


def test_plots_take_ax_and_return_axes_or_draw_several_panels_into_a_figure():
    import matplotlib.pyplot as plt

    for name in plots.__all__:
        fn = getattr(plots, name)
        if not inspect.isfunction(fn) or name == "spot_size":
            continue
        sig = inspect.signature(fn)
        returns = sig.return_annotation
        if "ax" in sig.parameters:
            assert returns in ("plt.Axes", plt.Axes), f"{name} takes ax= and must return the Axes, not {returns}"
            assert sig.parameters["ax"].default is None, f"{name}: ax must default to None (make one)"
        else:
            assert returns in ("plt.Figure", plt.Figure), f"{name} draws several panels: it must return the Figure"


def test_predictor_chapters_write_no_budget_of_their_own():
    """Budgets live in the record: a chapter's parameters cell leaves them None (the record's)."""
    from spared_utils import run

    for name in models.NAMES:
        sources = sorted(p for p in (ROOT / "chapters").glob("[12][0-9]_*.py") if f'"{name}"' in p.read_text())
        assert sources, f"no chapter runs predictor {name!r}"
        params = run.chapter_parameters(sources[0])
        for key in ("iterations", "batch_size", "learning_rate", "eval_every", "val_spots", "eval_spots"):
            assert params[key] is None, f"{sources[0].name}: {key} = {params[key]!r}; leave it None (the record's)"
