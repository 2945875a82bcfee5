"""Negative sampling for BPR and SE (paper §4.3; INMO's sampler): uniform (user, positive, negative) triples."""

from __future__ import annotations

import torch

Triple = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class TripletSampler:
    """Uniform (user, positive, negative) triples: a user with >= 1 edge, one of its items, a non-interacted one.

    The negative is drawn uniformly from the pool minus the user's items in one pass, with no rejection loop (so no
    host synchronisation on a GPU): with the user's k items at sorted pool ranks p_0 < ... < p_{k-1}, a uniform
    j in [0, m - k) maps to the (j+1)-th free rank j + #{t : p_t - t <= j}.
    """

    def __init__(self, edges: torch.Tensor, n_items: int, negatives: torch.Tensor) -> None:
        users, items = edges
        order = torch.argsort(users * n_items + items)
        users, items = users[order], items[order]
        self.items = items
        self.users, self.counts = torch.unique_consecutive(users, return_counts=True)
        self.starts = torch.cumsum(self.counts, 0) - self.counts
        self.negatives = negatives
        m = len(negatives)
        if bool((self.counts >= m).any()):
            raise ValueError(f"a user interacted with all {m} items of the pool: it has no negative to sample")
        ranks = torch.searchsorted(negatives, items).clamp(max=m - 1)
        if not torch.equal(negatives[ranks], items):
            raise ValueError("every interacted item must be in the sorted negative pool")
        within = torch.arange(len(items)) - torch.repeat_interleave(self.starts, self.counts)
        self.free_before = users * (m + 1) + (ranks - within)

    def to(self, device: torch.device) -> TripletSampler:
        """Move the index tensors to `device`."""
        for name in ("items", "users", "counts", "starts", "negatives", "free_before"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def draw(self, n: int, generator: torch.Generator) -> Triple:
        """The random part of n triples: a user pick and two uniforms (positive, negative)."""
        device = self.items.device
        return (
            torch.randint(len(self.users), (n,), generator=generator, device=device),
            torch.rand(n, generator=generator, device=device),
            torch.rand(n, generator=generator, device=device),
        )

    def triples(self, raw: Triple) -> Triple:
        """(user, positive, negative) from `draw`'s output, of any leading shape (e.g. [K, n] for K runs)."""
        pick, u_pos, u_neg = raw
        m = len(self.negatives)
        count = self.counts[pick]
        users, positives = self.users[pick], self.items[self.starts[pick] + (u_pos * count).long()]
        j = (u_neg * (m - count)).long()
        before = torch.searchsorted(self.free_before, (users * (m + 1) + j).flatten(), right=True).view(j.shape)
        return users, positives, self.negatives[j + before - self.starts[pick]]

    def sample(self, n: int, generator: torch.Generator) -> Triple:
        """Draw n triples: three uniform draws, no loop."""
        return self.triples(self.draw(n, generator))
