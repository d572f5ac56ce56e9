"""spared_utils: the helper package of spared-book, as stages that data flows down.

``import spared_utils as su`` gives a scanpy-like face:

==============  =====================================================================
``su.datasets``  the registry (``data/datasets.yml``) and ``load(id, stage=...)``
``su.pp``        curation verbs on AnnData (SpaRED's preprocessing) and patch extraction
``su.tl``        completion (``complete``, the masking protocol) and prediction verbs
``su.pl``        figures: ``ax=`` in, Axes out (a Figure for several panels)
``su.io``        stores: curated datasets, patch stores, checkpoints, the results store
``su.models``    the predictor registry (one record per predictor) and ``build``
``su.apply``     a new slide completed and predicted with the book's checkpoints (callable)
==============  =====================================================================

The stages, each importing only those before it (``pyproject.toml`` holds the import-linter
contract that the tests check): registry → sources → curation → completion → datasets (a
stage's artefact by id) → prediction → analysis → book tooling (``run``, ``book``).
The faces are loaded on first use, so ``python -m spared_utils.run`` starts quickly, and each face
loads a name's module on first use of that name (:func:`_lazy_face`): ``su.tl.complete`` needs
torch, not matplotlib nor the graph predictors.
"""

import ast as _ast
import importlib
import importlib.util
import sys as _sys
import warnings as _warnings
from pathlib import Path as _Path

# squidpy's docstring helper (docrep) warns about squidpy's own docstrings when squidpy is imported
# (on first use: Moran's I, the authors' median graph); the warning says nothing to our users and
# would clutter the chapter's output. Only docrep's warning of that text is ignored.
_warnings.filterwarnings("ignore", message=r"'.*' is not a valid key!", category=SyntaxWarning, module=r"docrep\.")

__all__ = ["apply", "datasets", "io", "models", "pl", "pp", "tl"]


def __getattr__(name: str):
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def _lazy_face(face: str):
    """``__getattr__`` and ``__dir__`` of a face whose names are imported under ``if TYPE_CHECKING:``.

    The face's source lists its re-exports as ordinary imports inside that block (so
    import-linter, type checkers and readers see them); at run time each name is imported from
    its module on first use and kept in the face, as scientific Python's ``lazy_loader`` does with
    a stub file. ``from .module import *`` re-exports ``module.__all__``; a face without an
    ``__all__`` of its own gets the union of what it lists.
    """
    module = _sys.modules[face]
    names: dict[str, tuple[str, str]] = {}
    stars: list[str] = []
    for node in _ast.parse(_Path(module.__file__).read_text()).body:
        if isinstance(node, _ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for imp in node.body:
                if isinstance(imp, _ast.ImportFrom):
                    source = importlib.util.resolve_name("." * imp.level + (imp.module or ""), module.__package__)
                    for alias in imp.names:
                        if alias.name == "*":
                            stars.append(source)
                        else:
                            names[alias.asname or alias.name] = (source, alias.name)

    def __getattr__(name: str):
        if name in names:
            source, attr = names[name]
            value = getattr(importlib.import_module(source), attr)
        elif name == "__all__":
            value = [*names, *(n for s in stars for n in importlib.import_module(s).__all__)]
        else:
            found = [s for s in stars if name in importlib.import_module(s).__all__]
            if not found:
                raise AttributeError(f"module {face!r} has no attribute {name!r}")
            value = getattr(importlib.import_module(found[0]), name)
        setattr(module, name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(module), *module.__all__})

    return __getattr__, __dir__
