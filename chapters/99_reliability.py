# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Appendix: the reliability matrix
#
# **What it shows:** what every public entry point does with the inputs users actually produce —
# corrupt and truncated files, missing images, inconsistent barcodes, empty slides, bad counts, unknown
# names, failed downloads, full and read-only disks, runs killed half-way, two processes writing the
# results store at once — and whether anything half-written is left behind.
# **What it needs:** the repository's `tests/` folder; no data (the matrix builds its own tiny slides and
# checkpoints); a CPU, about a minute.
# **What it writes:** `results/reliability.json`, the outcome of each row of this run.
# **Measured runtime:** about a minute on a CPU for the rows that need no trained checkpoint (the
# whole notebook in `make book`, dated, on the {doc}`Measurements </measurements>` page); GPU not needed.
#
# The table is not typed: this page runs `tests/test_reliability.py` when the book is built and shows
# the rows it recorded, so it cannot drift from the code. A row passes when the call refuses the input
# with a message naming the file (or the slide, dataset, chapter) **and** what to do about it, and no
# new file is left in the folders it writes to; a killed run passes when its resumption reaches the same
# numbers, bit for bit, as an uninterrupted run with the same seed.

# %% tags=["setup", "hide-cell"]
# Colab, Binder or a fresh kernel: install the project when it is missing.
import importlib.util
import os
import sys

if importlib.util.find_spec("spared_utils") is None:
    _url = "https://github.com/spared-book/spared-book"  # repository.url in _config.yml
    _repo = os.environ.get("SPARED_BOOK_REPO", _url)  # or a local clone
    _dir = _repo if os.path.isdir(_repo) else os.path.abspath("spared-book")
    if not os.path.isdir(_dir):
        get_ipython().system(f"git clone -q --depth 1 {_repo} {_dir}")  # noqa: F821
    get_ipython().run_line_magic("pip", f"install -q -e {_dir}")  # noqa: F821
    sys.path.insert(0, _dir)
    import torch

    _gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    print(f"installed spared_utils from {_repo}; GPU: {_gpu}")

# %% tags=["parameters"]
dataset = "synthetic"  # unused: the matrix makes its own tiny data
select = ""  # a pytest -k expression to run some rows only ("": every row)
out_dir = "results"  # "results": results/ (or $SPARED_RESULTS_DIR); else a folder

# %%
import pandas as pd
from IPython.display import Markdown, display

import spared_utils as su
from spared_utils import reliability

rows, ran = reliability.run_matrix(
    su.io.output_dir(out_dir) / "reliability.json", select=select
)
counts = reliability.summary(rows)
print(
    f"pytest exit code {ran['exit_code']} in {ran['seconds']:.0f} s: "
    f"{' '.join(ran['tail'])}"
)
pd.Series(counts, name="count").to_frame()

# %% [markdown]
# ## The matrix
#
# One row per input tried, grouped by kind; `outcome` is the exception raised (or what happened).
# Folded below it: whether the message names the file and the fix, the partial outputs found and
# the start of the message a user reads.

# %%
shown = rows.assign(message=rows["message"].fillna("").str.slice(0, 160))
shown[["group", "entry", "case", "outcome", "passed"]]

# %%
every = "Every column (names the file, names the fix, partial outputs, message)"
su.pl.folded(shown, every)

# %% mystnb={"figure": {"caption": "Inputs tried per kind of failure, and how many rows passed.", "name": "fig-reliability-counts"}}
per_group = rows.groupby("group", sort=False)["passed"].agg(tried="size", passed="sum")
ax = per_group.plot.barh(color=su.pl.PALETTE[:2], figsize=(7, 3.2))
ax.set(xlabel="inputs", ylabel="", title="Reliability matrix: inputs tried and passed")
ax.invert_yaxis()

# %% [markdown]
# ## What we saw

# %%
failed = rows.loc[~rows["passed"].eq(True), "case"].tolist()
selected = f" (rows selected by `{select}`)" if select else ""
failures = ": failed " + ", ".join(failed) if failed else ""
saw = [
    f"- {counts['inputs tried']} inputs tried{selected}; "
    f"{counts['inputs refused or warned about']} were refused (or warned about), "
    f"{counts['messages naming the file and the fix']} of them with a message naming "
    f"the file and the fix; {counts['partial outputs found']} partial outputs found.",
    f"- {counts['resumed to identical numbers']} of {counts['interrupted runs']} "
    f"runs killed half-way resumed to identical numbers.",
    f"- {counts['rows passed']} of {counts['inputs tried']} rows passed{failures}; "
    f"the matrix ran in {ran['seconds']:.0f} s.",
]
display(Markdown("## What we saw\n\n" + "\n".join(saw) + "\n"))
