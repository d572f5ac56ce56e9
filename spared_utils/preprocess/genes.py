"""Gene annotation: Ensembl ids for gene symbols, and GENCODE gene lengths for TPM.

Both come from tables vendored in ``data/annotations/`` (see its ``SOURCES.md``): HGNC
(human) and Ensembl (mouse) symbol tables, and GENCODE v43 / vM33 merged-exon lengths.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .. import paths

log = logging.getLogger(__name__)

ANNOTATION_FILES = {
    "human": ("hgnc_symbol_to_ensembl_human.tsv.gz", "Approved symbol", "Ensembl gene ID"),
    "mouse": ("ensembl_to_symbol_mouse.tsv.gz", "Gene name", "Gene stable ID"),
}
ENSEMBL_ID = re.compile(r"^(ENS[A-Z]*G\d{11})(\.\d+)?$")

GENE_LENGTH_FILES = {
    "human": "gene_length_human_gencode_v43.tsv.gz",
    "mouse": "gene_length_mouse_gencode_vM33.tsv.gz",
}


def gene_length_file(organism: str) -> Path:
    """Path of the vendored GENCODE gene-length table for ``organism``."""
    if organism not in GENE_LENGTH_FILES:
        raise ValueError(
            f"no gene-length table for organism {organism!r} (known: {sorted(GENE_LENGTH_FILES)}); "
            "put gene lengths in var['gene_length'] or set the dataset's organism in data/datasets.yml"
        )
    return paths.data_dir() / "annotations" / GENE_LENGTH_FILES[organism]


@lru_cache(maxsize=4)
def load_gene_lengths(organism: str) -> pd.Series:
    """Merged-exon length (bp) per Ensembl gene id (version suffix removed; first row wins)."""
    path = gene_length_file(organism)
    if not path.is_file():
        raise FileNotFoundError(
            f"gene-length table {path} not found; it is vendored in the repository's data/annotations/ "
            "(or set SPARED_BOOK_ROOT to the repository root)"
        )
    table = pd.read_csv(path, sep="\t", usecols=["gene", "merged"])
    table["gene"] = table["gene"].str.split(".").str[0]
    table = table.drop_duplicates("gene")
    return table.set_index("gene")["merged"].astype(np.float64)


def strip_version(gene_id: str) -> str:
    """``ENSG00000223972.6`` → ``ENSG00000223972``; other names unchanged."""
    match = ENSEMBL_ID.match(gene_id)
    return match.group(1) if match else gene_id


@lru_cache(maxsize=4)
def symbol_to_ensembl(organism: str) -> dict[str, str]:
    """Gene symbol → Ensembl gene id from the vendored HGNC (human) / Ensembl (mouse) tables.

    A symbol listed with several ids keeps the one that has a GENCODE gene length (so TPM can
    use it), then the smallest id, so the choice is deterministic.
    """
    if organism not in ANNOTATION_FILES:
        raise ValueError(f"no symbol table for organism {organism!r}; known: {sorted(ANNOTATION_FILES)}")
    name, symbol_col, id_col = ANNOTATION_FILES[organism]
    path = paths.data_dir() / "annotations" / name
    if not path.is_file():
        raise FileNotFoundError(f"annotation table {path} not found; it is vendored in the repository's "
                                "data/annotations/ (set SPARED_BOOK_ROOT to the repository root)")
    table = pd.read_csv(path, sep="\t", usecols=[symbol_col, id_col], dtype=str).dropna()
    table[id_col] = table[id_col].map(strip_version)
    try:
        known = set(load_gene_lengths(organism).index)
    except (FileNotFoundError, ValueError):
        known = set()
    table["has_length"] = table[id_col].isin(known)
    table = table.sort_values([symbol_col, "has_length", id_col], ascending=[True, False, True])
    table = table.drop_duplicates(symbol_col)
    return dict(zip(table[symbol_col], table[id_col]))


def harmonise_gene_ids(adata: ad.AnnData, organism: str) -> ad.AnnData:
    """Ensembl gene ids as ``var_names``: map symbols, strip versions, merge duplicates.

    Curation step 1 (called by :func:`spared_utils.preprocess.collect`).

    * Ensembl ids (``ENSG…``, ``ENSMUSG…``) lose their version suffix.
    * Other names are gene symbols, mapped with the vendored tables (:func:`symbol_to_ensembl`);
      symbols without a mapping are dropped.
    * Genes that end up with the same id (a symbol and its id both present, two versions of one
      id, a repeated symbol) are merged by summing their values in ``X`` and every layer (the
      collection holds counts at this step); other ``var`` columns keep the first gene's value.
    * ``var["gene_symbol"]`` is kept (or filled from the table when absent).

    For an organism without tables (``"synthetic"``) only versions are stripped and duplicates
    merged.

    Parameters
    ----------
    adata
        A collection with raw counts (any ``var_names``).
    organism
        ``"human"``, ``"mouse"`` or another value (no symbol mapping).

    Returns
    -------
    AnnData
        A new object; ``uns["gene_id_harmonisation"]`` counts mapped, dropped and merged genes.
    """
    names = pd.Index(adata.var_names.astype(str))
    symbols = (adata.var["gene_symbol"].astype(str).to_numpy() if "gene_symbol" in adata.var
               else names.to_numpy())
    is_ensembl = np.array([bool(ENSEMBL_ID.match(n)) for n in names])
    new_ids = np.array([strip_version(n) for n in names], dtype=object)
    mapping = symbol_to_ensembl(organism) if organism in ANNOTATION_FILES else {}
    n_mapped = 0
    if mapping:
        for i in np.flatnonzero(~is_ensembl):
            target = mapping.get(names[i])
            new_ids[i] = target
            n_mapped += target is not None
    keep = np.array([v is not None for v in new_ids])
    out_ids = pd.Index(new_ids[keep].astype(str))
    codes, uniques = pd.factorize(out_ids)
    n_out = len(uniques)
    # Sum genes sharing an id: (n_in_kept × n_out) indicator matrix.
    kept_idx = np.flatnonzero(keep)
    merge = sp.csr_matrix((np.ones(len(kept_idx), dtype=np.float32), (np.arange(len(kept_idx)), codes)),
                          shape=(len(kept_idx), n_out))

    def combine(matrix):
        if matrix is None:
            return None
        part = matrix[:, kept_idx]
        if n_out == len(kept_idx):  # no duplicates: factorize numbered the genes in order
            return part
        if sp.issparse(part):
            return sp.csr_matrix(sp.csr_matrix(part) @ merge, dtype=part.dtype)
        return np.asarray((merge.T @ np.asarray(part).T).T, dtype=part.dtype)

    first = pd.Series(np.arange(len(kept_idx))).groupby(codes).first().to_numpy()
    var = adata.var.iloc[kept_idx[first]].copy()
    var.index = pd.Index(uniques.astype(str))
    filled = symbols[kept_idx[first]]
    if "gene_symbol" not in adata.var and mapping:
        reverse = {v: k for k, v in mapping.items()}
        filled = np.array([reverse.get(i, s) if ENSEMBL_ID.match(s) else s for i, s in zip(var.index, filled)])
    var["gene_symbol"] = filled
    # uns is shared, not copied: it may hold large images that this step does not touch
    out = ad.AnnData(X=combine(adata.X), obs=adata.obs.copy(), var=var, uns=dict(adata.uns),
                     obsm={k: v.copy() for k, v in adata.obsm.items()})
    for key, layer in adata.layers.items():
        out.layers[key] = combine(layer)
    out.uns["gene_id_harmonisation"] = {
        "organism": str(organism), "n_input": int(adata.n_vars), "n_ensembl_input": int(is_ensembl.sum()),
        "n_symbols_mapped": int(n_mapped), "n_dropped_unmapped": int((~keep).sum()),
        "n_merged_duplicates": int(len(kept_idx) - n_out), "n_output": int(n_out),
    }
    if (~keep).any():
        log.info("harmonise_gene_ids: %d of %d gene symbols have no %s Ensembl id and were dropped",
                 int((~keep).sum()), int((~is_ensembl).sum()), organism)
    return out
