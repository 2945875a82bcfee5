"""Multimodal similarity for incomplete data (paper §4.2, first paragraph).

Items carry a text feature t_i and an image feature v_i, either of which may be missing (a boolean
mask per modality). Users have no attributes of their own: t_u and v_u are the means of the features
of the items they interacted with, over the items that have that modality. The similarity of two
entities is

    sim(a, b) = w * c(t_a, t_b) + (1 - w) * c(v_a, v_b)            (§4.2, sim^D(u, u') and sim^D(i, i'))

with c the cosine similarity. The paper assumes both modalities exist; here the weights are
renormalised over the modalities that *both* entities have (text only -> the text cosine alone, image
only -> the image cosine alone) and pairs that share no modality get -inf, so they are never chosen
as one of the top-K neighbours N~ of §4.2.

Ablations: "no-vis" (text only) and "no-txt" (image only) are expressed by passing an all-False mask
(or a width-0 tensor with an all-False mask) for the dropped modality; nothing else changes.
"""

from __future__ import annotations

import torch
from torch import Tensor

DEFAULT_CHUNK = 2048
SIMILARITY_BUDGET = 1 << 26  # similarities held at once by `top_k_similar` (256 MB in float32)


def _check_mask(mask: Tensor, rows: int, name: str) -> None:
    """Raise ValueError unless `mask` is a bool vector of length `rows`."""
    if mask.dtype != torch.bool or mask.dim() != 1 or mask.shape[0] != rows:
        raise ValueError(f"{name} must be a bool vector of length {rows}, got {mask.dtype} {tuple(mask.shape)}")


def _check_features(feat: Tensor, mask: Tensor, name: str) -> None:
    """Raise ValueError unless `feat` is a 2-D float matrix with a matching mask."""
    if feat.dim() != 2 or not feat.is_floating_point():
        raise ValueError(f"{name} must be a 2-D float tensor, got {feat.dtype} {tuple(feat.shape)}")
    _check_mask(mask, feat.shape[0], f"{name} mask")
    if feat.shape[1] == 0 and bool(mask.any()):
        raise ValueError(f"{name} has width 0 but its mask marks rows as having the modality")


def user_features(
    user_idx: Tensor, item_idx: Tensor, n_users: int, item_feat: Tensor, item_mask: Tensor
) -> tuple[Tensor, Tensor]:
    """Mean feature of each user's interacted items that have the modality (§4.2: t_u^D, v_u^D).

    The edges are the interactions visible in the current phase (training: E_tr; inference:
    E_tr + E_new); the caller chooses. N_u is a set, so a repeated (user, item) edge counts once.
    Returns (features [n_users, d], mask [n_users]); users with no such item get zeros and False.
    """
    if user_idx.dim() != 1 or item_idx.shape != user_idx.shape:
        raise ValueError(
            f"user_idx and item_idx must be 1-D of equal length, got {tuple(user_idx.shape)} "
            f"and {tuple(item_idx.shape)}"
        )
    if user_idx.dtype != torch.long or item_idx.dtype != torch.long:
        raise ValueError("user_idx and item_idx must be int64 (long) tensors")
    if n_users < 0:
        raise ValueError(f"n_users must be >= 0, got {n_users}")
    _check_features(item_feat, item_mask, "item_feat")
    n_items, dim = item_feat.shape
    if user_idx.numel() and (int(user_idx.min()) < 0 or int(user_idx.max()) >= n_users):
        raise ValueError(f"user_idx out of range [0, {n_users})")
    if item_idx.numel() and (int(item_idx.min()) < 0 or int(item_idx.max()) >= n_items):
        raise ValueError(f"item_idx out of range [0, {n_items})")

    device = item_feat.device
    stride = max(n_items, 1)
    pairs = torch.unique(user_idx.to(device) * stride + item_idx.to(device))
    users, items = pairs // stride, pairs % stride
    keep = item_mask.to(device)[items]
    users, items = users[keep], items[keep]
    counts = torch.zeros(n_users, dtype=item_feat.dtype, device=device)
    counts.index_add_(0, users, torch.ones_like(users, dtype=item_feat.dtype))
    adjacency = torch.sparse_coo_tensor(
        torch.stack([users, items]),
        torch.ones(users.shape[0], dtype=item_feat.dtype, device=device),
        (n_users, n_items),
        is_coalesced=True,
        check_invariants=False,
    )
    sums = torch.sparse.mm(adjacency, item_feat) if dim else item_feat.new_zeros(n_users, 0)
    mask = counts > 0
    return sums / counts.clamp(min=1).unsqueeze(1), mask


def _unit_rows(feat: Tensor) -> Tensor:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    return torch.nn.functional.normalize(feat, dim=1)


def modality_similarity(
    text_a: Tensor,
    text_mask_a: Tensor,
    img_a: Tensor,
    img_mask_a: Tensor,
    text_b: Tensor,
    text_mask_b: Tensor,
    img_b: Tensor,
    img_mask_b: Tensor,
    w: float = 0.9,
    chunk_size: int = DEFAULT_CHUNK,
) -> Tensor:
    """Pairwise sim = w*c(t_a, t_b) + (1-w)*c(v_a, v_b) (§4.2), renormalised over shared modalities.

    A pair sharing no modality gets -inf. Drop a modality (ablations) by passing an all-False mask.
    Rows of A are processed `chunk_size` at a time so temporaries stay small; returns [A, B].
    """
    if not 0.0 < w < 1.0:
        raise ValueError(f"w must lie in (0, 1) as in §4.2, got {w}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    for feat, mask, name in (
        (text_a, text_mask_a, "text_a"),
        (img_a, img_mask_a, "img_a"),
        (text_b, text_mask_b, "text_b"),
        (img_b, img_mask_b, "img_b"),
    ):
        _check_features(feat, mask, name)
    n_a, n_b = text_a.shape[0], text_b.shape[0]
    if img_a.shape[0] != n_a or img_b.shape[0] != n_b:
        raise ValueError("text and image features of one side must have the same number of rows")
    if text_a.shape[1] != text_b.shape[1] or img_a.shape[1] != img_b.shape[1]:
        raise ValueError(
            f"feature widths differ between sides: text {text_a.shape[1]} vs {text_b.shape[1]}, "
            f"image {img_a.shape[1]} vs {img_b.shape[1]}"
        )

    dtype = torch.promote_types(text_a.dtype, img_a.dtype)
    ta, tb = _unit_rows(text_a.to(dtype)), _unit_rows(text_b.to(dtype))
    va, vb = _unit_rows(img_a.to(dtype)), _unit_rows(img_b.to(dtype))
    device = text_a.device
    text_mask_a, img_mask_a = text_mask_a.to(device), img_mask_a.to(device)
    text_mask_b, img_mask_b = text_mask_b.to(device), img_mask_b.to(device)
    out = torch.empty(n_a, n_b, dtype=dtype, device=device)
    for start in range(0, n_a, chunk_size):
        rows = slice(start, start + chunk_size)
        both_text = text_mask_a[rows].unsqueeze(1) & text_mask_b
        both_img = img_mask_a[rows].unsqueeze(1) & img_mask_b
        cos_text, cos_img = ta[rows] @ tb.T, va[rows] @ vb.T
        mixed = torch.add(cos_text * w, cos_img, alpha=1.0 - w)
        out[rows] = torch.where(
            both_text,
            torch.where(both_img, mixed, cos_text),
            torch.where(both_img, cos_img, -torch.inf),
        )
    return out


def _lowest_index_top_k(scores: Tensor, kth: Tensor, k: int) -> Tensor:
    """Column indices of the k best scores per row, taking tied k-th values lowest index first."""
    above = scores > kth
    tied = scores == kth
    room = k - above.sum(dim=1, keepdim=True, dtype=torch.int32)
    take = above | (tied & (tied.cumsum(dim=1, dtype=torch.int32) <= room))
    return take.nonzero()[:, 1].view(scores.shape[0], k)


def top_k_neighbours(
    sim: Tensor, k: int, candidates: Tensor, exclude_self: bool, chunk_size: int = DEFAULT_CHUNK,
    row_offset: int = 0,
) -> tuple[Tensor, Tensor]:
    """Top-K most similar candidates per row (§4.2: the neighbour sets N~_u, N~_i).

    Only columns where `candidates` is True are eligible; with `exclude_self` (A == B, row r of `sim` being entity
    `row_offset + r`) the entity itself is excluded. Ties go to the lower column index. Returns (indices [A, k] long,
    valid [A, k] bool), sorted by decreasing similarity; a slot is invalid (index 0, valid False) when
    fewer than k eligible columns have a finite similarity. NaN counts as -inf.
    """
    if sim.dim() != 2 or not sim.is_floating_point():
        raise ValueError(f"sim must be a 2-D float tensor, got {sim.dtype} {tuple(sim.shape)}")
    n_a, n_b = sim.shape
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    _check_mask(candidates, n_b, "candidates")
    if exclude_self and (row_offset < 0 or row_offset + n_a > n_b):
        raise ValueError(f"exclude_self needs rows {row_offset}..{row_offset + n_a} of a square sim matrix, got "
                         f"{n_a} x {n_b}")

    k_eff = min(k, n_b)
    indices = torch.zeros(n_a, k, dtype=torch.long, device=sim.device)
    valid = torch.zeros(n_a, k, dtype=torch.bool, device=sim.device)
    if k_eff == 0:
        return indices, valid
    blocked = ~candidates.to(sim.device)
    for start in range(0, n_a, chunk_size):
        scores = sim[start : start + chunk_size].clone()
        rows = scores.shape[0]
        scores[scores.isnan()] = -torch.inf
        scores[:, blocked] = -torch.inf
        if exclude_self:
            own = torch.arange(row_offset + start, row_offset + start + rows, device=sim.device)
            scores[torch.arange(rows, device=sim.device), own] = -torch.inf
        top_scores, chosen = torch.topk(scores, k_eff, dim=1)
        kth = top_scores[:, -1:]
        ambiguous = (scores == kth).sum(dim=1) > (top_scores == kth).sum(dim=1)
        if bool(ambiguous.any()):
            chosen[ambiguous] = _lowest_index_top_k(scores[ambiguous], kth[ambiguous], k_eff)
        chosen = chosen.sort(dim=1).values
        chosen_scores = scores.gather(1, chosen)
        order = torch.sort(chosen_scores, dim=1, descending=True, stable=True).indices
        chosen, chosen_scores = chosen.gather(1, order), chosen_scores.gather(1, order)
        finite = chosen_scores > -torch.inf
        indices[start : start + rows, :k_eff] = torch.where(finite, chosen, 0)
        valid[start : start + rows, :k_eff] = finite
    return indices, valid


def top_k_similar(
    text: Tensor, text_mask: Tensor, img: Tensor, img_mask: Tensor, k: int, candidates: Tensor, w: float = 0.9,
    budget: int = SIMILARITY_BUDGET,
) -> tuple[Tensor, Tensor]:
    """`top_k_neighbours(modality_similarity(X, X), k, candidates, exclude_self=True)` of entities X, a block of rows
    at a time, so the [N, N] similarity is never held: each block of at most `budget` similarities is ranked and
    dropped. Blocks are `DEFAULT_CHUNK` rows up to N = budget / DEFAULT_CHUNK (the same rows, so the same values, as
    one `modality_similarity` call), fewer beyond."""
    n = text.shape[0]
    block = max(1, min(DEFAULT_CHUNK, budget // max(1, n)))
    parts = [
        top_k_neighbours(
            modality_similarity(text[start : start + block], text_mask[start : start + block],
                                img[start : start + block], img_mask[start : start + block],
                                text, text_mask, img, img_mask, w=w, chunk_size=block),
            k, candidates, exclude_self=True, chunk_size=block, row_offset=start,
        )
        for start in range(0, n, block)
    ]
    if not parts:
        return torch.zeros(0, k, dtype=torch.long), torch.zeros(0, k, dtype=torch.bool)
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
