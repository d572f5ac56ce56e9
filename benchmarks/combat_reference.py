"""Which ComBat follows Johnson et al. 2007: a NumPy reference beside scanpy's and pyComBat.

Our curation corrects batches with :func:`scanpy.pp.combat`; the authors' SpaRED pipeline with
pyComBat (``from combat.pycombat import pycombat``, combat 0.3.3). On the same input they differ,
so this script writes the method down once more, from the paper and from the R implementation:

* W. E. Johnson, C. Li, A. Rabinovic (2007). Adjusting batch effects in microarray expression
  data using empirical Bayes methods. Biostatistics 8(1):118–127. doi:10.1093/biostatistics/kxj037
* sva's ``ComBat`` (https://github.com/jtleek/sva-devel, ``R/ComBat.R`` and the helpers ``aprior``,
  ``bprior``, ``postmean``, ``postvar``, ``it.sol`` in ``R/helper.R``), with ``par.prior=TRUE``,
  ``mean.only=FALSE``, ``mod=NULL``, ``ref.batch=NULL``.

:func:`combat_reference` is that parametric ComBat without covariates. :func:`main` runs it,
scanpy's and pyComBat on the log2(TPM + 1) layer (``log1p``) of the fixture the authors' code made
(``tests/data/authors_tiny/adata.h5ad``, batches = ``obs["slide_id"]``, the ``combat_key`` of its
``made_with.json``) and prints how far each library lies from the reference. pyComBat is only
installed in the side environment (``benchmarks/.env-spared``); it runs there in a subprocess and
the arrays travel through temporary ``.npy`` files.

To name the cause of a difference, :func:`main` also runs the reference with the library's own
departures from sva switched on (:func:`_combat`'s keyword arguments); when that variant matches a
library to rounding, those departures are the whole difference.

Usage (light: one thread, a 861 × 16 matrix)::

    .venv/bin/python benchmarks/combat_reference.py
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "data" / "authors_tiny" / "adata.h5ad"
SIDE_PYTHON = ROOT / "benchmarks" / ".env-spared" / "bin" / "python"


def _combat(X, batch, *, t2_ddof: int = 1, delta_ddof: int = 1, prior_ddof: int = 1,
            first_gene_gamma: bool = False, skip_constant: bool = True, conv: float = 1e-4,
            max_iter: int = 100_000) -> np.ndarray:
    """Parametric ComBat (no covariates) of ``X`` (samples × genes); the defaults are sva's.

    The keyword arguments exist only to reproduce a library's departure from sva (see
    :func:`main`): ``t2_ddof`` (variance of gamma_hat over genes), ``delta_ddof`` (per-batch
    variance delta_hat), ``prior_ddof`` (variance of delta_hat over genes in a_prior / b_prior);
    ``first_gene_gamma`` uses the first gene's gamma for every gene in the delta update;
    ``skip_constant=False`` keeps genes constant within a batch in the fit.
    """
    X = np.asarray(X, dtype=np.float64)
    batch = np.asarray(batch).astype(str)
    if X.ndim != 2 or X.shape[0] != batch.shape[0]:
        raise ValueError(f"X must be samples × genes with one batch label per sample; got {X.shape}, {batch.shape}")
    levels = np.unique(batch)  # R's factor levels (sorted); the order does not change the result
    idx = [np.flatnonzero(batch == lev) for lev in levels]
    n_b = np.array([len(i) for i in idx])
    if len(levels) < 2:
        raise ValueError("ComBat needs at least two batches")
    if (n_b < 2).any():
        # sva switches to mean.only=TRUE here; that variant is outside this reference
        raise ValueError("a batch with a single sample: sva would use mean.only=TRUE, not implemented here")

    # --- sva: genes with zero variance within any batch (of > 1 sample) are left out of the whole
    # fit (they do not enter the hyperpriors either) and returned unadjusted.
    constant = np.zeros(X.shape[1], dtype=bool)
    if skip_constant:
        for i in idx:
            constant |= X[i].var(axis=0) == 0
    out = X.copy()
    Y = X[:, ~constant]
    n, G = Y.shape
    if G == 0:
        return out

    # --- 1. Standardise (paper §3.1, eq. 3.1; sva "Standardizing Data across genes").
    # Design = batch indicators only, so the least-squares fit B_hat is each batch's gene means.
    B_hat = np.stack([Y[i].mean(axis=0) for i in idx])            # batches × genes
    # alpha_hat_g: grand mean = batch means weighted by batch size (sva: n.batches/n.array).
    grand_mean = (n_b / n) @ B_hat                                 # genes
    # sigma_hat²_g: pooled variance of the residuals of the design fit, divided by N (not N - k),
    # exactly as sva's var.pooled (and the paper's 1/N).
    fitted = np.empty_like(Y)
    for b, i in enumerate(idx):
        fitted[i] = B_hat[b]
    var_pooled = ((Y - fitted) ** 2).mean(axis=0)                  # genes
    # Z_ijg = (Y_ijg - alpha_hat_g) / sigma_hat_g
    Z = (Y - grand_mean) / np.sqrt(var_pooled)

    # --- 2. Batch-effect estimates per batch i and gene g (paper §3.2, the L/S model on Z).
    gamma_hat = np.stack([Z[i].mean(axis=0) for i in idx])                   # additive
    delta_hat = np.stack([Z[i].var(axis=0, ddof=delta_ddof) for i in idx])   # multiplicative (sva: rowVars, n - 1)

    # --- 3. Empirical-Bayes hyperpriors by the method of moments (paper §3.2; sva "Find Priors").
    # gamma_ig ~ N(gamma_bar_i, tau²_i); delta²_ig ~ InverseGamma(lambda_i = a_prior, theta_i = b_prior).
    gamma_bar = gamma_hat.mean(axis=1)
    t2 = gamma_hat.var(axis=1, ddof=t2_ddof)                       # sva: rowVars (n - 1)
    m = delta_hat.mean(axis=1)
    s2 = delta_hat.var(axis=1, ddof=prior_ddof)                    # sva's aprior/bprior: var() (n - 1)
    a_prior = (2 * s2 + m ** 2) / s2                               # inverse-gamma shape: mean m, variance s2
    b_prior = (m * s2 + m ** 3) / s2                               # inverse-gamma scale

    # --- 4. Conditional posterior means, iterated together to convergence (paper eqs. 3.3–3.4;
    # sva's it.sol, conv = 1e-4, with sva's own stopping rule max(|new - old| / old)).
    gamma_star = np.empty_like(gamma_hat)
    delta_star = np.empty_like(delta_hat)
    for b, i in enumerate(idx):
        z = Z[i]
        nb = z.shape[0]
        g_old, d_old = gamma_hat[b].copy(), delta_hat[b].copy()
        for _ in range(max_iter):
            # gamma*_ig = (n_i tau²_i gamma_hat_ig + delta²*_ig gamma_bar_i) / (n_i tau²_i + delta²*_ig)
            g_new = (t2[b] * nb * gamma_hat[b] + d_old * gamma_bar[b]) / (t2[b] * nb + d_old)
            # delta²*_ig = (theta_i + ½ Σ_j (Z_ijg - gamma*_ig)²) / (n_i/2 + lambda_i - 1)
            centre = g_new[0] if first_gene_gamma else g_new
            sum2 = ((z - centre) ** 2).sum(axis=0)
            d_new = (0.5 * sum2 + b_prior[b]) / (nb / 2 + a_prior[b] - 1)
            with np.errstate(divide="ignore", invalid="ignore"):
                change = max(np.max(np.abs(g_new - g_old) / g_old), np.max(np.abs(d_new - d_old) / d_old))
            g_old, d_old = g_new, d_new
            if not change > conv:   # as R's while (change > conv): a NaN change also stops
                break
        else:
            raise RuntimeError(f"no convergence in {max_iter} iterations for batch {levels[b]!r}")
        gamma_star[b], delta_star[b] = g_new, d_new

    # --- 5. Adjust and un-standardise (paper eq. 3.5):
    # Y*_ijg = sigma_hat_g / sqrt(delta²*_ig) · (Z_ijg - gamma*_ig) + alpha_hat_g
    adjusted = np.empty_like(Z)
    for b, i in enumerate(idx):
        adjusted[i] = (Z[i] - gamma_star[b]) / np.sqrt(delta_star[b])
    out[:, ~constant] = adjusted * np.sqrt(var_pooled) + grand_mean
    return out


def combat_reference(X, batch) -> np.ndarray:
    """Parametric ComBat of Johnson, Li & Rabinovic (2007) as sva's ``ComBat`` computes it.

    ``X`` is samples (spots) × genes, ``batch`` one label per sample. Equivalent to
    ``t(sva::ComBat(t(X), batch, mod=NULL, par.prior=TRUE, mean.only=FALSE))``: genes constant
    within a batch are returned unadjusted and left out of the fit, as sva does.
    """
    return _combat(X, batch)


# ---------------------------------------------------------------------------------------------
# the two libraries


def run_scanpy(X, batch) -> np.ndarray:
    """:func:`scanpy.pp.combat` on ``X`` (samples × genes) with ``obs["batch"]``, as our curation calls it."""
    import anndata as ad
    import pandas as pd
    import scanpy as sc

    obs = pd.DataFrame({"batch": pd.Categorical(np.asarray(batch).astype(str))},
                       index=[f"s{i}" for i in range(len(batch))])
    tmp = ad.AnnData(X=np.asarray(X, dtype=np.float64), obs=obs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(sc.pp.combat(tmp, key="batch", inplace=False), dtype=np.float64)


_PYCOMBAT = """
import sys, numpy as np, pandas as pd
from combat.pycombat import pycombat
X = np.load(sys.argv[1]); batch = np.load(sys.argv[2]).tolist()
# pyComBat takes genes x samples, as SpaRED's combat_transformation passes it (adata.to_df().T)
df = pd.DataFrame(X.T, index=[f"g{j}" for j in range(X.shape[1])], columns=[f"s{i}" for i in range(X.shape[0])])
out = pycombat(df, batch, par_prior=True)
np.save(sys.argv[3], np.asarray(out.values, dtype=np.float64).T)
"""


def run_pycombat(X, batch) -> np.ndarray:
    """pyComBat 0.3.3 on ``X`` (samples × genes), run by the side environment's Python."""
    with tempfile.TemporaryDirectory() as tmp:
        x_in, b_in, x_out = (str(Path(tmp) / f) for f in ("x.npy", "batch.npy", "out.npy"))
        np.save(x_in, np.asarray(X, dtype=np.float64))
        np.save(b_in, np.asarray(batch).astype(str))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        done = subprocess.run([str(SIDE_PYTHON), "-c", _PYCOMBAT, x_in, b_in, x_out], env=env,
                              capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"pyComBat failed:\n{done.stderr}")
        return np.load(x_out)


# ---------------------------------------------------------------------------------------------
# checks and the comparison


def _diff(a, b, cols=None) -> str:
    a, b = np.asarray(a), np.asarray(b)
    if cols is not None:
        a, b = a[:, cols], b[:, cols]
    d = np.abs(a - b)
    if not np.isfinite(d).all():
        return f"non-finite entries: {int((~np.isfinite(d)).sum())} of {d.size}"
    return f"max abs {d.max():.3e}   mean abs {d.mean():.3e}"


def sanity_check(seed: int = 0) -> None:
    """Two batches, the second = the first + 3 in every gene, plus noise: the corrected means agree."""
    rng = np.random.default_rng(seed)
    n1, n2, G = 40, 50, 20
    mu = rng.uniform(2, 8, G)   # gene means differ; the noise (sd 0.5) and the shift (+3) are common
    X = np.vstack([mu + 0.5 * rng.standard_normal((n1, G)), mu + 3 + 0.5 * rng.standard_normal((n2, G))])
    batch = np.array(["b1"] * n1 + ["b2"] * n2)
    Y = combat_reference(X, batch)
    before = X[n1:].mean(0) - X[:n1].mean(0)
    after = Y[n1:].mean(0) - Y[:n1].mean(0)
    print("Sanity check: 2 batches (40 + 50 samples, 20 genes), batch b2 = b1 + 3 + N(0, 0.5²) noise")
    print(f"  batch-mean difference b2 - b1 per gene, before: mean {before.mean():.3f}, "
          f"range [{before.min():.3f}, {before.max():.3f}]")
    # the batch means are estimated from n1 and n2 noisy samples: their difference has a standard
    # error of 0.5·sqrt(1/n1 + 1/n2); after correction it must be zero up to that noise (the EB
    # shrinkage pulls every gene's shift towards the common one, so the rest is sampling noise)
    se = 0.5 * np.sqrt(1 / n1 + 1 / n2)
    print(f"  after the reference: mean {after.mean():.2e}, max |.| {np.abs(after).max():.3f} "
          f"(standard error of a batch-mean difference: {se:.3f})")
    assert np.abs(before - 3).max() < 4 * se + 0.1, "the example is not what it says"
    assert abs(after.mean()) < 1e-2 and np.abs(after).max() < 3 * se, "reference failed the shift check"
    # both batches are moved to each gene's grand mean alpha_hat_g (up to the same noise)
    moved = np.abs(Y.mean(0) - X.mean(0)).max()
    print(f"  corrected overall mean vs the input's, max |.| per gene: {moved:.3f}\n")
    assert moved < 3 * se, "reference moved the grand mean"


def constant_gene_check(seed: int = 1) -> None:
    """What each implementation does with a gene constant within one batch (sva: left unadjusted)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(5, 1, (30, 6))
    X[15:] += 2
    batch = np.array(["b1"] * 15 + ["b2"] * 15)
    X[:15, 0] = 0.0  # gene 0 is constant (all zeros, as an unexpressed gene after log1p) in batch b1
    print("Gene constant within one batch (gene 0 = 0 in every sample of b1; 2 × 15 samples, 6 genes):")
    ref = combat_reference(X, batch)
    # each library beside the reference with that library's departures from sva (see main) and
    # the constant gene kept in the fit: a match says the library fits and adjusts that gene
    like = {"scanpy.pp.combat": _combat(X, batch, t2_ddof=0, skip_constant=False),
            "pyComBat 0.3.3": _combat(X, batch, t2_ddof=0, delta_ddof=0, prior_ddof=0, first_gene_gamma=True,
                                      skip_constant=False)}
    results = {"reference (sva)": ref}
    for name, fn in (("scanpy.pp.combat", run_scanpy), ("pyComBat 0.3.3", run_pycombat)):
        try:
            results[name] = fn(X, batch)
        except Exception as exc:  # noqa: BLE001 - report, do not stop
            results[name] = exc
    for name, Y in results.items():
        if isinstance(Y, Exception):
            print(f"  {name:18s} raised {type(Y).__name__}: {str(Y).strip().splitlines()[-1]}")
            continue
        g0 = Y[:, 0]
        line = (f"  {name:18s} gene 0 finite: {bool(np.isfinite(g0).all())!s:5s} unchanged: "
                f"{bool(np.array_equal(g0, X[:, 0]))!s:5s} its b1 values: {np.unique(np.round(g0[:15], 4))[:3]}")
        if name in like:
            line += f"; vs the reference with its departures and gene 0 kept in the fit: {_diff(Y, like[name])}"
        print(line)
    print()


def main() -> None:
    import anndata as ad
    import json

    sanity_check()
    constant_gene_check()

    adata = ad.read_h5ad(FIXTURE)
    key = json.loads((FIXTURE.parent / "made_with.json").read_text())["param_dict"]["combat_key"]
    X = adata.layers["log1p"]
    X = np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=np.float64)
    batch = adata.obs[key].astype(str).to_numpy()
    levels, counts = np.unique(batch, return_counts=True)
    print(f"Fixture {FIXTURE.relative_to(ROOT)}: layer log1p, {X.shape[0]} spots × {X.shape[1]} genes, "
          f"batches obs[{key!r}] = {dict(zip(levels.tolist(), counts.tolist()))}")
    constant = np.zeros(X.shape[1], dtype=bool)
    for lev in levels:
        constant |= X[batch == lev].var(axis=0) == 0
    keep = np.flatnonzero(~constant)
    print(f"genes constant within some batch: {int(constant.sum())} (these sva leaves unadjusted)\n")

    ref = combat_reference(X, batch)
    sc_out = run_scanpy(X, batch)
    py_out = run_pycombat(X, batch)
    theirs = adata.layers["c_log1p"]
    theirs = np.asarray(theirs.toarray() if hasattr(theirs, "toarray") else theirs, dtype=np.float64)

    print("Differences on the fixture (all genes | genes not constant in any batch):")
    for name, a, b in (("scanpy.pp.combat  vs reference", sc_out, ref),
                       ("pyComBat 0.3.3    vs reference", py_out, ref),
                       ("scanpy.pp.combat  vs pyComBat  ", sc_out, py_out),
                       ("pyComBat (here)   vs fixture c_log1p", py_out, theirs)):
        print(f"  {name}: {_diff(a, b)}  |  {_diff(a, b, keep)}")

    # the cause: the reference with each library's departures from sva switched on
    sc_like = _combat(X, batch, t2_ddof=0, skip_constant=False)
    py_like = _combat(X, batch, t2_ddof=0, delta_ddof=0, prior_ddof=0, first_gene_gamma=True, skip_constant=False)
    py_no_bug = _combat(X, batch, t2_ddof=0, delta_ddof=0, prior_ddof=0, skip_constant=False)
    print("\nThe reference with a library's departures from sva switched on:")
    print(f"  scanpy.pp.combat vs reference with tau² over genes divided by G (not G - 1): {_diff(sc_out, sc_like)}")
    print(f"  pyComBat 0.3.3   vs reference with all variances divided by n and the first gene's "
          f"gamma* in every gene's delta* update: {_diff(py_out, py_like)}")
    print(f"  reference vs reference with pyComBat's divisors only (no first-gene gamma*): {_diff(py_no_bug, ref)}")
    print(f"  reference vs reference with scanpy's divisor (tau², G):                     {_diff(sc_like, ref)}")
    # a consequence of the first-gene gamma*: pyComBat's output depends on the order of the genes
    rev = slice(None, None, -1)
    py_rev = run_pycombat(X[:, rev], batch)[:, rev]
    ref_rev = combat_reference(X[:, rev], batch)[:, rev]
    print(f"  genes in reversed order, vs in file order: pyComBat {_diff(py_rev, py_out)}; "
          f"reference {_diff(ref_rev, ref)}")


if __name__ == "__main__":
    sys.exit(main())
