"""spared_utils."""

import warnings as _warnings

# squidpy's docstring helper (docrep) warns about its own docstrings at import time; the warning
# says nothing to our users and clutters every chapter's first output.
_warnings.filterwarnings("ignore", message=".*is not a valid key", category=SyntaxWarning)
