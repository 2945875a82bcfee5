"""The §5.4 study (Figure 3): do the users most similar by item content (eq-sim) share purchases?

For each user, its top-K most similar users by the §4.2 similarity over the user features of its observed items
(E_tr + E_new); then how often the k-th similar user shares at least one item with it, and the mean Jaccard overlap
of their histories, against a random other user and against the ceiling (some user shares an item). Chapters 10
and 11 read it from here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from micrec_core.data.dataset import DomainData
from micrec_core.models.micrec import ItemModalities, user_modalities
from micrec_core.models.similarity import modality_similarity, top_k_neighbours


def histories(edges: torch.Tensor, n_users: int) -> list[list[int]]:
    """Each user's distinct items in `edges`, sorted."""
    out: list[list[int]] = [[] for _ in range(n_users)]
    for u, i in sorted(set(zip(edges[0].tolist(), edges[1].tolist(), strict=True))):
        out[u].append(i)
    return out


def nearest_users(
    data: DomainData, items: ItemModalities, w: float, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Top-k similar users of every user (eq-sim over E_tr + E_new): indices, validity, their similarities (NaN where
    invalid), and the mean similarity of two different users (NaN when no pair has one)."""
    users = user_modalities(data.edges_of("train", "new"), data.n_users, items)
    sim = modality_similarity(users.text, users.text_mask, users.image, users.image_mask,
                              users.text, users.text_mask, users.image, users.image_mask, w=w)
    index, valid = top_k_neighbours(sim, k, torch.ones(data.n_users, dtype=torch.bool), exclude_self=True)
    scores = torch.where(valid, sim.gather(1, index), torch.nan)
    off_diagonal = torch.isfinite(sim) & ~torch.eye(data.n_users, dtype=torch.bool)
    random_pair = float(sim[off_diagonal].mean()) if bool(off_diagonal.any()) else float("nan")
    return index, valid, scores, random_pair


def overlap(
    history: list[list[int]], n_items: int, index: torch.Tensor, valid: torch.Tensor, chunk: int = 1024
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Item overlap of each user with its ranked similar users, with random other users, and the ceiling.

    Returns the summary (users; top-1 shares >= 1 item; random user shares >= 1 item; the ceiling; Jaccard top-1 and
    random) and per rank the share of users whose k-th similar user shares an item and the mean Jaccard.
    """
    n, top_k = index.shape
    rows = torch.tensor([u for u, h in enumerate(history) for _ in h], dtype=torch.long)
    cols = torch.tensor([i for h in history for i in h], dtype=torch.long)
    adjacency = torch.zeros(n, n_items)
    adjacency[rows, cols] = 1.0
    size = adjacency.sum(dim=1)
    share_random = jaccard_random = 0.0
    ceiling = np.zeros(n, dtype=bool)
    share_rank, jaccard_rank = np.zeros((n, top_k)), np.zeros((n, top_k))
    for start in range(0, n, chunk):
        block = slice(start, min(start + chunk, n))
        inter = adjacency[block] @ adjacency.T
        union = size[block, None] + size[None, :] - inter
        jaccard = torch.where(union > 0, inter / union.clamp(min=1), 0.0)
        own = torch.arange(block.start, block.stop)
        inter[own - start, own] = -1.0  # the user itself never counts
        jaccard[own - start, own] = 0.0
        share_random += float((inter > 0).sum())
        jaccard_random += float(jaccard.sum())
        ceiling[block] = (inter > 0).any(dim=1).numpy()
        share_rank[block] = (inter.gather(1, index[block]) > 0).numpy()
        jaccard_rank[block] = jaccard.gather(1, index[block]).numpy()
    pairs = n * (n - 1)
    ok = valid.numpy()
    summary = {
        "users": n,
        "top-1 shares >= 1 item": share_rank[ok[:, 0], 0].mean(),
        "random user shares >= 1 item": share_random / pairs,
        "some user shares >= 1 item (ceiling)": ceiling.mean(),
        "Jaccard, top-1": jaccard_rank[ok[:, 0], 0].mean(),
        "Jaccard, random user": jaccard_random / pairs,
    }
    by_rank = pd.DataFrame({
        "rank": np.arange(1, top_k + 1),
        "shares >= 1 item": [share_rank[ok[:, r], r].mean() for r in range(top_k)],
        "Jaccard": [jaccard_rank[ok[:, r], r].mean() for r in range(top_k)],
    })
    return summary, by_rank
