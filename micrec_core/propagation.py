"""LightGCN propagation (paper §4.2, last paragraph; He et al. 2020).

    R = 1/(L+1) * sum_{l=0..L} Â^l X,   Â = D^{-1/2} A D^{-1/2}   over the bipartite user-item graph,

with degrees clamped at 1, so an isolated node (e.g. an unseen entity during training) receives and sends nothing
and ends with X / (L+1).
"""

from __future__ import annotations

import torch

from micrec_core.sparse import SparseMatrix


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
