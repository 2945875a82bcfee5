"""LightGCN propagation (paper §4.2, last paragraph; He et al. 2020).

    R = 1/(L+1) * sum_{l=0..L} Â^l X,   Â = D^{-1/2} A D^{-1/2}   over the bipartite user-item graph,

with degrees clamped at 1, so an isolated node (e.g. an unseen entity during training) receives and sends nothing
and ends with X / (L+1).
"""

from __future__ import annotations

import torch

from micrec_core.models.sparse import SparseMatrix


def normalized_adjacency(edges: torch.Tensor, n_users: int, n_items: int) -> SparseMatrix:
    """Â = D^{-1/2} A D^{-1/2} of the symmetric (U+I) x (U+I) graph with the given unique (user, item) edges."""
    users, items = edges
    rows = torch.cat([users, items + n_users])
    cols = torch.cat([items + n_users, users])
    n = n_users + n_items
    degree = torch.bincount(rows, minlength=n).clamp(min=1).float()
    values = degree[rows].rsqrt() * degree[cols].rsqrt()
    return SparseMatrix.from_coo(rows, cols, values, (n, n))


def propagate(x: torch.Tensor, adjacency: SparseMatrix, layers: int = 3) -> torch.Tensor:
    """Mean of the layer outputs Â^l X for l = 0..layers."""
    total, current = x, x
    for _ in range(layers):
        current = adjacency @ current
        total = total + current
    return total / (layers + 1)


def entry_edges(adjacency: SparseMatrix, edges: torch.Tensor, n_users: int) -> torch.Tensor:
    """For each stored entry of `normalized_adjacency(edges, ...)`, in the pattern's order, the column of `edges` it
    comes from: the two entries of an interaction (user -> item and item -> user) share it."""
    rows, cols = adjacency.pattern.rows, adjacency.pattern.cols
    n_items = adjacency.shape[0] - n_users
    keys, order = torch.sort(edges[0] * n_items + edges[1])
    entry_keys = torch.minimum(rows, cols) * n_items + torch.maximum(rows, cols) - n_users
    return order[torch.searchsorted(keys, entry_keys)]


def subgraph_adjacency(adjacency: SparseMatrix, keep: torch.Tensor) -> SparseMatrix:
    """Â of the subgraph that keeps the stored entries where `keep` (0 or 1 per entry, equal for an edge's two
    entries) is 1, renormalised by the kept degrees (clamped at 1): normalized_adjacency of the kept edges, on the
    full graph's pattern with the dropped edges stored as zeros, so no new pattern is built."""
    rows, cols = adjacency.pattern.rows, adjacency.pattern.cols
    degree = torch.zeros(adjacency.shape[0], device=keep.device).index_add_(0, rows, keep).clamp(min=1)
    return SparseMatrix(adjacency.pattern, keep * degree[rows].rsqrt() * degree[cols].rsqrt())
