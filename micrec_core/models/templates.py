"""Template-driven inductive representations (paper §4.1, after INMO).

A user is represented through the template items it interacted with, an item through its template users:

    x_u = (|N_u ∩ I_tem| + 1)^(-alpha) * ( sum_{i' in N_u ∩ I_tem} e_{i'} + b_user )        (Eq. 1)
    x_i = (|N_i ∩ U_tem| + 1)^(-alpha) * ( sum_{u' in N_i ∩ U_tem} e_{u'} + b_item )        (Eq. 2)

As in INMO's code, the bias is added once per row (the paper writes it inside the sum; with the bias inside,
a node would scale it by its degree). Both are computed as one sparse product: a row of the connection matrix
holds a 1 for every template neighbour plus a 1 in a last "bias" column, so x = diag(r^-alpha) C [E; b] with
r = the row's number of non-zeros. Unseen users and items get representations from the same formula with no
parameter of their own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from micrec_core.models.sparse import SparseMatrix


@dataclass
class Templates:
    """Which seen users / items are templates: index maps entity -> template row, -1 for non-templates."""

    user_map: torch.Tensor
    item_map: torch.Tensor

    @property
    def n_users(self) -> int:
        """Number of template users."""
        return int((self.user_map >= 0).sum())

    @property
    def n_items(self) -> int:
        """Number of template items."""
        return int((self.item_map >= 0).sum())


def error_sort_scores(edges: torch.Tensor, n_users: int, n_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """INMO's 'error sort' importance: a user's score is sum over its items of 1/deg(i) (items: 1/deg(u))."""
    users, items = edges
    user_deg = torch.bincount(users, minlength=n_users).clamp(min=1).double()
    item_deg = torch.bincount(items, minlength=n_items).clamp(min=1).double()
    user_score = torch.zeros(n_users, dtype=torch.double).index_add_(0, users, 1.0 / item_deg[items])
    item_score = torch.zeros(n_items, dtype=torch.double).index_add_(0, items, 1.0 / user_deg[users])
    return user_score, item_score


def _pick(seen: torch.Tensor, score: torch.Tensor, ratio: float) -> torch.Tensor:
    """Index map of the top `ratio` of seen entities by score (ties: lower index), -1 elsewhere."""
    candidates = torch.nonzero(seen).flatten()
    n_keep = round(ratio * len(candidates))
    order = torch.argsort(-score[candidates], stable=True)
    chosen = torch.sort(candidates[order[:n_keep]]).values
    mapping = torch.full((len(seen),), -1, dtype=torch.long)
    mapping[chosen] = torch.arange(len(chosen))
    return mapping


def select_templates(
    train_edges: torch.Tensor, user_seen: torch.Tensor, item_seen: torch.Tensor, ratio: float = 1.0
) -> Templates:
    """Template users/items: a `ratio` of the seen ones, ranked by error-sort score over E_tr (INMO)."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"template_ratio must be in (0, 1], got {ratio}")
    user_score, item_score = error_sort_scores(train_edges, len(user_seen), len(item_seen))
    return Templates(_pick(user_seen, user_score, ratio), _pick(item_seen, item_score, ratio))


def connections(rows: torch.Tensor, cols: torch.Tensor, n_rows: int, col_map: torch.Tensor) -> SparseMatrix:
    """Sparse [n_rows, n_templates + 1] 0/1 matrix C: edges to template columns, plus the bias column."""
    n_templates = int((col_map >= 0).sum())
    template_col = col_map[cols]
    keep = template_col >= 0
    pair_rows = torch.cat([rows[keep], torch.arange(n_rows)])
    pair_cols = torch.cat([template_col[keep], torch.full((n_rows,), n_templates, dtype=torch.long)])
    return SparseMatrix.from_coo(pair_rows, pair_cols, torch.ones(len(pair_rows)), (n_rows, n_templates + 1))


def edge_keep(conn: SparseMatrix, dropout: float, generator: torch.Generator | None) -> torch.Tensor | None:
    """Edge dropout on C's non-zeros: which survive (None when dropout is 0), one uniform draw per non-zero."""
    if dropout == 0.0:
        return None
    values = conn.values
    return torch.rand(values.shape, generator=generator, device=values.device) >= dropout


def template_product(
    conn: SparseMatrix, operand: torch.Tensor, alpha: float | torch.Tensor, dropout: float = 0.0,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. 1 / Eq. 2 with [templates; bias] given: r^(-alpha) * C @ operand, kept edges rescaled by 1/(1-dropout).

    alpha: a float, or a device scalar (a CUDA graph's input, `batched.Captured`).
    """
    rows, values = conn.pattern.rows, conn.values
    count = torch.zeros(conn.shape[0], device=values.device).index_add_(0, rows, values)
    values = values * count[rows].pow(-alpha)
    if keep is not None:
        values = values * keep.to(values.dtype) / (1.0 - dropout)
    return conn.pattern.matmul(values, operand)


def template_representation(
    conn: SparseMatrix,
    templates: torch.Tensor,
    bias: torch.Tensor,
    alpha: float,
    dropout: float = 0.0,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. 1 / Eq. 2: x = r^(-alpha) * C @ [templates; bias]; `keep` is the edge-dropout mask from `edge_keep`."""
    return template_product(conn, torch.cat([templates, bias.unsqueeze(0)]), alpha, dropout, keep)
