"""Full-ranking top-N metrics (Precision, Recall, NDCG) for several user/item groups, in pure torch.

The protocol follows INMO's evaluation code: every user is ranked against *all* items of the domain, the
user's known interactions are set to -inf first, and users with no target in a group are skipped for that
group. One masked top-k at k = max N is computed once; every group and every N is then read off that single
top-k with gathers and cumulative sums, so the whole evaluation runs on the GPU with one host sync at the end.

Each user's top-k depends on its own row of scores only, so `topk_blocked` computes the rows of a block of users at a
time and concatenates their top-k: the same ranking as `topk_items` over the full matrix, with peak memory bounded by
one block of scores instead of |U| x |I|.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

DEFAULT_NS: tuple[int, ...] = (5, 10, 20, 50, 100)
GROUPS: tuple[str, ...] = (
    "all",
    "seen_users",
    "unseen_users",
    "seen_items",
    "unseen_items",
    "low_degree_items",
)
_INDEX_DTYPES = (torch.int64, torch.int32)
BLOCK_ELEMENTS = 1 << 24  # scores held at once by `topk_blocked` callers: 16 M floats (64 MB in float32)
Rows = Callable[[int, int], Tensor]


def _check_index_vector(name: str, t: Tensor, device: torch.device) -> None:
    """Require `t` to be a 1-D integer tensor on `device`."""
    if not isinstance(t, Tensor) or t.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor, got {_describe(t)}")
    if t.dtype not in _INDEX_DTYPES:
        raise ValueError(f"{name} must be int64 or int32, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device}")


def _check_pairs(prefix: str, users: Tensor, items: Tensor, device: torch.device) -> None:
    """Require `<prefix>_users` and `<prefix>_items` to be index vectors of equal length on `device`."""
    _check_index_vector(f"{prefix}_users", users, device)
    _check_index_vector(f"{prefix}_items", items, device)
    if users.shape != items.shape:
        raise ValueError(
            f"{prefix}_users and {prefix}_items must have the same length, got {users.numel()} and {items.numel()}"
        )


def _check_mask(name: str, t: Tensor, length: int, device: torch.device) -> None:
    """Require `t` to be a 1-D bool tensor of `length` entries on `device`."""
    if not isinstance(t, Tensor) or t.dtype != torch.bool or t.shape != (length,):
        raise ValueError(f"{name} must be a bool tensor of shape ({length},), got {_describe(t)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device}")


def _describe(t: object) -> str:
    """Short description of a tensor (shape and dtype) or of any other object's type, for error messages."""
    if isinstance(t, Tensor):
        return f"shape {tuple(t.shape)} and dtype {t.dtype}"
    return type(t).__name__


def _check_range(checks: Sequence[tuple[str, Tensor, int]]) -> None:
    """Require every tensor to lie in [0, bound), with one host sync for all of them together."""
    present = [(name, t, bound) for name, t, bound in checks if t.numel() > 0]
    if not present:
        return
    extremes = torch.stack([v for _, t, _ in present for v in (t.min(), t.max())]).tolist()
    for j, (name, _, bound) in enumerate(present):
        low, high = extremes[2 * j], extremes[2 * j + 1]
        if low < 0 or high >= bound:
            raise ValueError(f"{name} must lie in [0, {bound}), got values in [{low}, {high}]")


def _check_ns(ns: Sequence[int], k: int) -> list[int]:
    """Validate the cut-offs `ns` against the top-k width and return them sorted and de-duplicated."""
    values = list(ns)
    if not values or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in values):
        raise ValueError(f"ns must be a non-empty sequence of positive ints, got {ns!r}")
    if max(values) > k:
        raise ValueError(f"ns has max {max(values)} but `top` holds only k={k} items per user")
    return sorted(set(values))


def topk_items(
    scores: Tensor, exclude_users: Tensor, exclude_items: Tensor, k: int, inplace: bool = False
) -> Tensor:
    """Indices of each user's k best items, best first, after setting scores[u, i] = -inf for excluded (u, i).

    `scores` is left untouched unless `inplace` is True. Ties in score are broken however `torch.topk` breaks
    them. A user with fewer than k non-excluded items gets excluded items (at -inf) at the tail of its row.
    """
    if not isinstance(scores, Tensor) or scores.dim() != 2 or not scores.dtype.is_floating_point:
        raise ValueError(f"scores must be a 2-D floating-point tensor, got {_describe(scores)}")
    n_users, n_items = scores.shape
    _check_pairs("exclude", exclude_users, exclude_items, scores.device)
    return topk_blocked(score_rows(scores if inplace else scores.clone()), n_users, n_items, exclude_users,
                        exclude_items, k, max(1, n_users))


def score_rows(scores: Tensor | tuple[Tensor, Tensor]) -> Rows:
    """Rows a..b of dense [U, I] scores (a view: masked in place) or of the product left @ right.T of factors
    (left [U, k], right [I, k]), computed a block at a time."""
    if isinstance(scores, Tensor):
        return lambda a, b: scores[a:b]
    left, right = scores
    return lambda a, b: left[a:b] @ right.T


def block_users(n_items: int, block_elements: int | None = None) -> int:
    """Users per block so that a block of scores holds at most `block_elements` (default `BLOCK_ELEMENTS`) values,
    at least one user."""
    return max(1, (block_elements or BLOCK_ELEMENTS) // max(1, n_items))


def topk_blocked(
    rows: Callable[[int, int], Tensor], n_users: int, n_items: int, exclude_users: Tensor, exclude_items: Tensor,
    k: int, block: int,
) -> Tensor:
    """`topk_items` over the scores whose rows a..b `rows(a, b)` computes ([b - a, n_items], free to modify), `block`
    users at a time: the concatenated per-block top-k, identical to one top-k over all rows."""
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive int (users scored at once), got {block!r}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n_items:
        raise ValueError(f"k must be an int in [1, {n_items}] (the number of items), got {k!r}")
    device = exclude_users.device
    _check_pairs("exclude", exclude_users, exclude_items, device)
    _check_range([("exclude_users", exclude_users, n_users), ("exclude_items", exclude_items, n_items)])
    order = torch.argsort(exclude_users, stable=True)
    users, items = exclude_users[order].long(), exclude_items[order].long()
    starts = torch.searchsorted(users, torch.arange(0, n_users + block, block, device=device)).tolist()
    tops = []
    for b, first in enumerate(range(0, n_users, block)):
        last = min(first + block, n_users)
        scores = rows(first, last)
        if scores.shape != (last - first, n_items):
            raise ValueError(f"rows({first}, {last}) gave shape {tuple(scores.shape)}, not {(last - first, n_items)}")
        lo, hi = starts[b], starts[b + 1]
        scores[users[lo:hi] - first, items[lo:hi]] = float("-inf")
        tops.append(torch.topk(scores, k, dim=1, largest=True, sorted=True).indices)
    return torch.cat(tops) if tops else torch.zeros(0, k, dtype=torch.long, device=device)


def _evaluate(
    top: Tensor,
    target_users: Tensor,
    target_items: Tensor,
    n_items: int,
    ns: Sequence[int],
    user_masks: Tensor,
    item_masks: Tensor,
) -> list[dict[str, float]]:
    """Mean P@N = hits/N, R@N = hits/|T|, NDCG@N = DCG/IDCG for G groups given by [G, U] and [G, I] masks.

    DCG@N = sum over hit ranks r <= N of 1/log2(r + 1); IDCG@N = sum_{r=1}^{min(|T|, N)} 1/log2(r + 1);
    T is the user's de-duplicated target set within the group; users with empty T are skipped.
    """
    n_users, k = top.shape
    cuts = _check_ns(ns, k)
    _check_range(
        [
            ("top", top, n_items),
            ("target_users", target_users, n_users),
            ("target_items", target_items, n_items),
        ]
    )
    device, top = top.device, top.long()
    keys = torch.unique(target_users.long() * n_items + target_items.long())  # sorted, duplicates dropped
    pair_users, pair_items = keys // n_items, keys % n_items
    query = torch.arange(n_users, device=device).unsqueeze(1) * n_items + top
    if keys.numel() == 0:
        hits_all = torch.zeros_like(query, dtype=torch.bool)
    else:
        pos = torch.searchsorted(keys, query).clamp_(max=keys.numel() - 1)
        hits_all = keys[pos] == query
    hits = (hits_all.unsqueeze(0) & item_masks[:, top]).double()  # [G, U, k]
    counts = torch.zeros(item_masks.shape[0], n_users, dtype=torch.float64, device=device)
    counts.index_add_(1, pair_users, item_masks[:, pair_items].double())  # [G, U] targets per user
    idx = torch.tensor([n - 1 for n in cuts], device=device)
    cut_sizes = idx.double() + 1
    discount = 1.0 / torch.log2(torch.arange(2, k + 2, device=device, dtype=torch.float64))
    hits_n = hits.cumsum(-1)[..., idx]  # [G, U, len(cuts)]
    dcg_n = (hits * discount).cumsum(-1)[..., idx]
    ideal_len = torch.minimum(counts.unsqueeze(-1), cut_sizes).long().clamp_(min=1)
    idcg_n = discount.cumsum(0)[ideal_len - 1]
    weight = (user_masks & (counts > 0)).double().unsqueeze(-1)  # [G, U, 1]
    sums = torch.stack(
        [
            (hits_n * weight).sum(1) / cut_sizes,
            (hits_n / counts.clamp(min=1).unsqueeze(-1) * weight).sum(1),
            (dcg_n / idcg_n * weight).sum(1),
        ],
        dim=1,
    )  # [G, 3, len(cuts)]
    counted = weight.sum(dim=(1, 2))
    table = torch.cat([(sums / counted[:, None, None]).flatten(1), counted[:, None]], dim=1).tolist()
    results = []
    for row in table:
        out: dict[str, float] = {}
        for m, metric in enumerate(("precision", "recall", "ndcg")):
            for c, n in enumerate(cuts):
                out[f"{metric}@{n}"] = row[m * len(cuts) + c]
        out["users"] = int(row[-1])
        results.append(out)
    return results


def _check_top(top: Tensor, target_users: Tensor, target_items: Tensor, n_items: int) -> None:
    """Validate the shared inputs of `ranking_metrics` and `group_metrics`."""
    if not isinstance(top, Tensor) or top.dim() != 2 or top.dtype not in _INDEX_DTYPES:
        raise ValueError(f"top must be a 2-D int64/int32 tensor of item indices, got {_describe(top)}")
    if isinstance(n_items, bool) or not isinstance(n_items, int) or n_items < 1:
        raise ValueError(f"n_items must be a positive int, got {n_items!r}")
    _check_pairs("target", target_users, target_items, top.device)


def ranking_metrics(
    top: Tensor,
    target_users: Tensor,
    target_items: Tensor,
    n_items: int,
    ns: Sequence[int] = DEFAULT_NS,
    user_mask: Tensor | None = None,
) -> dict[str, float]:
    """Mean precision@N (hits/N), recall@N (hits/|T|) and ndcg@N (DCG/IDCG) over users with targets.

    `top` comes from `topk_items`; the targets are the (user, item) pairs `target_users[j], target_items[j]`
    (duplicates count once). Only users in `user_mask` (all if None) that have a target are averaged; their
    number is under "users". With no such user every metric is NaN.
    """
    _check_top(top, target_users, target_items, n_items)
    n_users = top.shape[0]
    if user_mask is None:
        user_mask = torch.ones(n_users, dtype=torch.bool, device=top.device)
    _check_mask("user_mask", user_mask, n_users, top.device)
    item_mask = torch.ones(1, n_items, dtype=torch.bool, device=top.device)
    return _evaluate(top, target_users, target_items, n_items, ns, user_mask.unsqueeze(0), item_mask)[0]


def group_metrics(
    top: Tensor,
    target_users: Tensor,
    target_items: Tensor,
    n_items: int,
    ns: Sequence[int],
    user_seen: Tensor,
    item_seen: Tensor,
    low_degree: Tensor,
) -> dict[str, dict[str, float]]:
    """`ranking_metrics` for the six groups of `GROUPS`, all read off the same top-k ranking over all items.

    "all": every user and target; "seen_users"/"unseen_users": users in / not in `user_seen`, all their
    targets; "seen_items"/"unseen_items": every user, targets in / not in `item_seen`; "low_degree_items":
    every user, targets in `low_degree`.
    """
    _check_top(top, target_users, target_items, n_items)
    n_users = top.shape[0]
    _check_mask("user_seen", user_seen, n_users, top.device)
    _check_mask("item_seen", item_seen, n_items, top.device)
    _check_mask("low_degree", low_degree, n_items, top.device)
    every_user = torch.ones_like(user_seen)
    every_item = torch.ones_like(item_seen)
    user_masks = torch.stack([every_user, user_seen, ~user_seen, every_user, every_user, every_user])
    item_masks = torch.stack([every_item, every_item, every_item, item_seen, ~item_seen, low_degree])
    results = _evaluate(top, target_users, target_items, n_items, ns, user_masks, item_masks)
    return dict(zip(GROUPS, results, strict=True))


def low_degree_mask(item_degree: Tensor, fraction: float = 0.25) -> Tensor:
    """Bool mask of the first floor(fraction * I) items in ascending (degree, item index) order.

    Ties in degree are broken by the smaller item index, so the mask is deterministic. A product within 1e-9
    of an integer counts as that integer, so float noise does not drop an item (0.29 * 100 gives 29, not 28).
    """
    if not isinstance(item_degree, Tensor) or item_degree.dim() != 1 or item_degree.dtype == torch.bool:
        raise ValueError(f"item_degree must be a 1-D numeric tensor, got {_describe(item_degree)}")
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be a number in [0, 1], got {fraction!r}")
    n_items = item_degree.numel()
    n_low = math.floor(fraction * n_items + 1e-9)
    order = torch.sort(item_degree, stable=True).indices
    mask = torch.zeros(n_items, dtype=torch.bool, device=item_degree.device)
    mask[order[:n_low]] = True
    return mask
