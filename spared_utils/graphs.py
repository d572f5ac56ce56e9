"""Spot neighbourhoods on the Visium hexagonal grid (or the legacy ST square grid).

Neighbours are found from the array coordinates (``obs["array_row"]``, ``obs["array_col"]``),
which is exact and needs no distance threshold. On Visium, spot ``(r, c)`` has the six
neighbours ``(r, c±2)`` and ``(r±1, c±1)`` (10x Genomics' array convention, where ``r + c`` is
even); on a legacy ST grid the four neighbours ``(r±1, c)`` and ``(r, c±1)``. The resulting graph
is the one ``squidpy.gr.spatial_neighbors(coord_type="grid", n_neighs=6)`` builds from pixel
coordinates (tested in ``tests/test_graphs.py``).

Two views of the same graph are offered:

* :func:`adjacency` – a sparse ``(n_spots, n_spots)`` matrix, block-diagonal over slides;
* :func:`neighbour_index` – a dense ``(n_spots, k)`` integer array (``-1`` = no neighbour),
  which is what SpaCKLE gathers from: 18 columns for the 2-hop hexagonal neighbourhood, memory
  ``O(n_spots)`` instead of the ``O(n_spots²)`` dense adjacency of the authors' code.
"""

from __future__ import annotations

from collections.abc import Sequence

import math

import numpy as np
import scipy.sparse as sp
import torch
from anndata import AnnData
from torch import Tensor

HEX_OFFSETS: tuple[tuple[int, int], ...] = ((0, -2), (0, 2), (-1, -1), (-1, 1), (1, -1), (1, 1))
GRID_OFFSETS: tuple[tuple[int, int], ...] = ((0, -1), (0, 1), (-1, 0), (1, 0))


def _coords(adata: AnnData, slide_key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    missing = [k for k in ("array_row", "array_col") if k not in adata.obs]
    if missing:
        raise KeyError(
            f"obs is missing {missing}: neighbourhoods need the array coordinates of each spot "
            "(Space Ranger's tissue_positions columns array_row/array_col)"
        )
    rows = adata.obs["array_row"].to_numpy(dtype=np.int64)
    cols = adata.obs["array_col"].to_numpy(dtype=np.int64)
    if slide_key in adata.obs:
        slides = adata.obs[slide_key].astype("category").cat.codes.to_numpy(dtype=np.int64)
    else:
        slides = np.zeros(adata.n_obs, dtype=np.int64)
    return slides, rows, cols


def _lookup(slides: np.ndarray, rows: np.ndarray, cols: np.ndarray):
    """Return ``find(slide, row, col) -> index or -1`` over the given spots."""
    off = 4  # room for negative offsets
    n_r = int(rows.max()) + 2 * off + 1
    n_c = int(cols.max()) + 2 * off + 1
    keys = (slides * n_r + rows + off) * n_c + cols + off
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    if np.any(sorted_keys[1:] == sorted_keys[:-1]):
        dup = sorted_keys[1:][sorted_keys[1:] == sorted_keys[:-1]][0]
        raise ValueError(
            f"two spots share the array position key {dup}: each (slide, array_row, array_col) "
            "must be unique; check that obs['slide_id'] separates the slides"
        )

    def find(s: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        inside = (r + off >= 0) & (c + off >= 0) & (r + off < n_r) & (c + off < n_c)
        q = (s * n_r + r + off) * n_c + c + off
        pos = np.clip(np.searchsorted(sorted_keys, q), 0, len(sorted_keys) - 1)
        hit = inside & (sorted_keys[pos] == q)
        return np.where(hit, order[pos], -1)

    return find


def neighbour_offsets(hex_geometry: bool = True) -> tuple[tuple[int, int], ...]:
    """Array-coordinate offsets of the first ring (6 on Visium, 4 on a square grid)."""
    return HEX_OFFSETS if hex_geometry else GRID_OFFSETS


def adjacency(adata: AnnData, hex_geometry: bool = True, slide_key: str = "slide_id") -> sp.csr_matrix:
    """First-ring spot adjacency as a symmetric boolean sparse matrix (no self loops).

    Parameters
    ----------
    adata
        Spots with ``obs["array_row"]``, ``obs["array_col"]`` and (optionally) ``obs[slide_key]``.
    hex_geometry
        ``True`` for Visium (6 neighbours), ``False`` for the legacy ST square grid (4).
    slide_key
        Spots on different slides are never neighbours.
    """
    slides, rows, cols = _coords(adata, slide_key)
    return grid_adjacency(slides, rows, cols, hex_geometry)


def grid_adjacency(slides: np.ndarray, rows: np.ndarray, cols: np.ndarray, hex_geometry: bool = True) -> sp.csr_matrix:
    """:func:`adjacency` from arrays: each spot's slide (any labels), array row and array column."""
    slides = np.unique(np.asarray(slides), return_inverse=True)[1].astype(np.int64).ravel()
    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    n = len(rows)
    if n == 0:
        return sp.csr_matrix((0, 0), dtype=bool)
    find = _lookup(slides, rows, cols)
    src, dst = [], []
    for dr, dc in neighbour_offsets(hex_geometry):
        j = find(slides, rows + dr, cols + dc)
        ok = j >= 0
        src.append(np.flatnonzero(ok))
        dst.append(j[ok])
    i = np.concatenate(src)
    j = np.concatenate(dst)
    return sp.csr_matrix((np.ones(len(i), dtype=bool), (i, j)), shape=(n, n))


def ring_neighbourhoods(adj: sp.csr_matrix, n_rings: int) -> list[sp.csr_matrix]:
    """Cumulative neighbourhoods: element ``k-1`` holds the spots within ``k`` rings (no self).

    Ring ``k`` is reached in exactly ``k`` steps on the first-ring graph, so the ``k``-th
    cumulative neighbourhood is the boolean ``(A + I)^k`` with the diagonal removed.
    """
    if n_rings < 1:
        raise ValueError(f"n_rings must be >= 1, got {n_rings}")
    n = adj.shape[0]
    step = (adj.astype(np.int32) + sp.identity(n, dtype=np.int32, format="csr")).tocsr()
    reach = step.copy()
    out = []
    for k in range(n_rings):
        if k:
            reach = (reach @ step).tocsr()
            reach.data[:] = 1
        within = reach.copy()
        within.setdiag(0)
        within.eliminate_zeros()
        out.append(within.astype(bool).tocsr())
    return out


#: How far :func:`ring_mean` widens a spot's neighbourhood unless told otherwise (rings of the
#: array grid: on Visium 6, 18 and 36 spots within one, two and three rings).
RING_MEAN_RINGS = 3


def ring_mean(values: np.ndarray, observed: np.ndarray, rings: Sequence[sp.csr_matrix],
              rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each gene's mean over its observed values in the nearest ring of a spot that holds one.

    For spot ``i`` and gene ``g``: the first ``k`` (1, 2, …, ``len(rings)``) for which some spot
    within ``k`` rings of ``i`` (``i`` itself excluded) has ``observed[:, g]`` True, and the mean
    of ``values[:, g]`` over those observed spots. Since nothing closer was observed, they all lie
    on ring ``k``: the ring is widened only until one exists.

    Parameters
    ----------
    values, observed
        ``(n_spots, n_genes)`` expression and its mask (True = a value that may be averaged).
    rings
        The cumulative neighbourhoods of :func:`ring_neighbourhoods` (``len(rings)`` is the widest
        ring tried); built on :func:`adjacency`, so spots of other slides never count.
    rows
        Integer positions of the spots to fill (all spots when ``None``).

    Returns
    -------
    means
        ``(len(rows), n_genes)`` float64, NaN where no ring up to ``len(rings)`` has an observed
        value of the gene (the caller chooses the fallback).
    ring
        ``(len(rows), n_genes)`` int, the ring each mean came from (0 where NaN).
    """
    observed = np.asarray(observed, dtype=bool)
    values = np.where(observed, np.asarray(values, dtype=np.float64), 0.0)
    counts = observed.astype(np.float64)
    rows = np.arange(observed.shape[0]) if rows is None else np.asarray(rows)
    means = np.full((len(rows), observed.shape[1]), np.nan)
    ring = np.zeros(means.shape, dtype=np.int64)
    for k, within in enumerate(rings, start=1):
        near = within[rows].astype(np.float64)
        total, n = near @ values, near @ counts
        fill = np.isnan(means) & (n > 0)
        means[fill] = total[fill] / n[fill]
        ring[fill] = k
        if not np.isnan(means).any():
            break
    return means, ring


def neighbour_index(
    adata: AnnData, n_hops: int = 2, hex_geometry: bool = True, slide_key: str = "slide_id"
) -> np.ndarray:
    """Indices of each spot's neighbours within ``n_hops`` rings, ``-1`` where absent.

    Columns are ordered by ring, then by position within the ring, so column ``k`` always
    means the same relative position. On Visium, ``n_hops=2`` gives 18 columns (6 + 12), the
    neighbourhood SpaCKLE attends over; spots at the tissue edge get ``-1`` for missing
    neighbours (to be padded and masked by the caller).
    """
    if n_hops < 1:
        raise ValueError(f"n_hops must be >= 1, got {n_hops}")
    slides, rows, cols = _coords(adata, slide_key)
    find = _lookup(slides, rows, cols)
    offsets = hop_offsets(n_hops, hex_geometry)
    out = np.full((adata.n_obs, len(offsets)), -1, dtype=np.int64)
    for k, (dr, dc) in enumerate(offsets):
        out[:, k] = find(slides, rows + dr, cols + dc)
    return out


def hop_offsets(n_hops: int, hex_geometry: bool = True) -> list[tuple[int, int]]:
    """Array offsets of every position within ``n_hops`` rings, ordered by ring (breadth first)."""
    first = neighbour_offsets(hex_geometry)
    seen = {(0, 0)}
    frontier = [(0, 0)]
    ordered: list[tuple[int, int]] = []
    for _ in range(n_hops):
        nxt = []
        for r, c in frontier:
            for dr, dc in first:
                p = (r + dr, c + dc)
                if p not in seen:
                    seen.add(p)
                    nxt.append(p)
        nxt.sort(key=lambda p: (np.arctan2(p[0], p[1]),))
        ordered.extend(nxt)
        frontier = nxt
    return ordered


def n_neighbours(index: np.ndarray) -> np.ndarray:
    """Number of present neighbours per spot in a :func:`neighbour_index` array."""
    return (index >= 0).sum(axis=1)


def slide_groups(adata: AnnData, slide_key: str = "slide_id") -> dict[str, np.ndarray]:
    """Integer positions of the spots of each slide, in order of appearance."""
    if slide_key not in adata.obs:
        return {"all": np.arange(adata.n_obs)}
    labels = adata.obs[slide_key].astype(str).to_numpy()
    return {s: np.flatnonzero(labels == s) for s in dict.fromkeys(labels)}


def slides_containing(adata: AnnData, rows: np.ndarray, slide_key: str = "slide_id") -> dict[str, np.ndarray]:
    """Whole slides containing ``rows`` (integer positions of all their spots), by slide id."""
    groups = slide_groups(adata, slide_key)
    wanted = np.zeros(adata.n_obs, dtype=bool)
    wanted[rows] = True
    return {s: idx for s, idx in groups.items() if wanted[idx].any()}


__all__: Sequence[str] = (
    "adjacency",
    "ring_neighbourhoods",
    "RING_MEAN_RINGS",
    "ring_mean",
    "neighbour_index",
    "hop_offsets",
    "neighbour_offsets",
    "n_neighbours",
    "slide_groups",
    "slides_containing",
)


# ---------------------------------------------------------------------------------------------
# Edges between tensors of positions or features (EGGN's graphs, exemplar retrieval)
# ---------------------------------------------------------------------------------------------


def chunked_knn(
    queries: Tensor,
    reference: Tensor,
    k: int,
    p: float = 2.0,
    chunk_size: int = 1024,
    forbidden=None,
) -> tuple[Tensor, Tensor]:
    """Exact ``k`` nearest ``reference`` rows of every query row, ``chunk_size`` queries at a time.

    Parameters
    ----------
    queries, reference
        (Q, F) and (R, F) float tensors on the same device.
    k
        Neighbours per query.
    p
        Minkowski exponent of ``torch.cdist`` (2: Euclidean, 1: L1).
    chunk_size
        Queries per ``cdist`` call: memory is ``chunk_size × R`` distances, so e.g. 43,804 training
        spots query a 43,804-spot bank in ~180 MB chunks instead of a 7.7 GB matrix.
    forbidden
        Optional ``forbidden(start, stop) -> (stop − start, R) bool`` mask of pairs that must not
        be returned (e.g. a spot and itself).

    Returns
    -------
    distances, indices
        (Q, k) each, nearest first. Raises ``ValueError`` if a query has fewer than ``k`` allowed
        reference rows.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    n_ref = reference.shape[0]
    if k > n_ref:
        raise ValueError(f"asked for k={k} neighbours but the reference has only {n_ref} rows")
    dists, idxs = [], []
    for start in range(0, queries.shape[0], chunk_size):
        stop = min(start + chunk_size, queries.shape[0])
        d = torch.cdist(queries[start:stop], reference, p=p)
        if forbidden is not None:
            d = d.masked_fill(forbidden(start, stop), float("inf"))
        val, idx = torch.topk(d, k, dim=1, largest=False, sorted=True)
        if torch.isinf(val).any():
            row = start + int(torch.isinf(val).any(dim=1).nonzero()[0])
            raise ValueError(
                f"query {row} has fewer than k={k} allowed neighbours (after exclusions): "
                "lower k or give the bank more slides"
            )
        dists.append(val)
        idxs.append(idx)
    if not dists:
        return queries.new_zeros((0, k)), torch.zeros((0, k), dtype=torch.long, device=queries.device)
    return torch.cat(dists), torch.cat(idxs)


def grid_positions(rows: Tensor, cols: Tensor, hex_geometry: bool = True) -> Tensor:
    """Array coordinates → (N, 2) positions in units of the centre-to-centre spot distance.

    Visium (``hex_geometry=True``, ``row + col`` even): ``x = col / 2``, ``y = row · √3 / 2``, so
    all six first-ring neighbours are at distance 1 and the second ring at √3 and 2. Square ST grid:
    ``(col, row)``.
    """
    rows, cols = torch.as_tensor(rows).double(), torch.as_tensor(cols).double()
    if hex_geometry:
        return torch.stack((cols / 2.0, rows * math.sqrt(3.0) / 2.0), 1)
    return torch.stack((cols, rows), 1)


def radius_edges(pos: Tensor, radius: float, batch: Tensor | None = None, chunk_size: int = 4096) -> Tensor:
    """(2, E) edges between distinct nodes of the same ``batch`` within ``radius`` (both directions).

    Distances ≤ ``radius`` (1e-6 tolerance) count; computed slide by slide with chunked ``cdist``.
    """
    n = len(pos)
    batch = torch.zeros(n, dtype=torch.long, device=pos.device) if batch is None else batch
    edges = []
    for b in torch.unique(batch):
        members = torch.nonzero(batch == b).flatten()
        p = pos[members]
        for start in range(0, len(p), chunk_size):
            d = torch.cdist(p[start:start + chunk_size], p)
            near = d <= radius + 1e-6
            rows = torch.arange(len(d), device=pos.device)
            near[rows, rows + start] = False
            dst, src = torch.nonzero(near, as_tuple=True)
            edges.append(torch.stack((members[src], members[dst + start])))
    return torch.cat(edges, 1) if edges else torch.zeros((2, 0), dtype=torch.long, device=pos.device)


def knn_edges(x: Tensor, k: int, batch: Tensor | None = None, chunk_size: int = 1024) -> Tensor:
    """(2, E) edges ``neighbour → node`` from each node's ``k`` nearest (L2) of the same batch.

    No self loops; a batch with ``m ≤ k`` nodes links each node to the other ``m − 1``.
    """
    n = len(x)
    batch = torch.zeros(n, dtype=torch.long, device=x.device) if batch is None else batch
    edges = []
    for b in torch.unique(batch):
        members = torch.nonzero(batch == b).flatten()
        kk = min(k, len(members) - 1)
        if kk < 1:
            continue
        local = torch.arange(len(members), device=x.device)
        _, idx = chunked_knn(x[members], x[members], kk, p=2.0, chunk_size=chunk_size,
                             forbidden=lambda s, e: local[s:e, None] == local[None, :])
        centre = members.repeat_interleave(kk)
        edges.append(torch.stack((members[idx.flatten()], centre)))
    return torch.cat(edges, 1) if edges else torch.zeros((2, 0), dtype=torch.long, device=x.device)
