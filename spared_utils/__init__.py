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
The faces are loaded on first use, so ``python -m spared_utils.run`` starts quickly.
"""

import importlib
import warnings as _warnings

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
