"""Training objectives (paper §4.3): BPR, INMO's self-enhanced loss, and the cross-domain contrastive loss.

Losses are averaged over the sampled batch (the paper writes sums over all triples; a mean over a uniform sample
is the usual unbiased, scale-free estimate, as in INMO's code). Every loss also takes a leading run dimension
([K, n, d] inputs, [K] losses), which is how `micrec_core.batched` evaluates K runs' losses at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def bpr_loss(users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """Eq. 6: -mean ln σ(r_u·r_i - r_u·r_i') over sampled (u, i, i') triples."""
    diff = (users * positives).sum(-1) - (users * negatives).sum(-1)
    return -F.logsigmoid(diff).mean(-1)


def se_loss(
    users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """Eq. 7: BPR on template embeddings scored s(e_u, W e_i); `weight` is W ([K,] d x d) or INMO's diagonal."""
    if weight.dim() == positives.dim() - 1:
        diagonal = weight.unsqueeze(-2)
        pos, neg = positives * diagonal, negatives * diagonal
    else:
        pos, neg = positives @ weight.transpose(-1, -2), negatives @ weight.transpose(-1, -2)
    return bpr_loss(users, pos, neg)


def contrastive_loss(za: torch.Tensor, zb: torch.Tensor, tau: float, variant: str = "paper") -> torch.Tensor:
    """Eq. 8-9: L_CL = L1 + L2 over matched rows of za = f^A(r^A), zb = f^B(r^B).

    variant "paper": the denominator sums over the other users u' != u only, as the paper writes it;
    variant "infonce": the standard InfoNCE denominator, which includes the positive pair.
    """
    if variant not in ("paper", "infonce"):
        raise ValueError(f"cl_loss must be 'paper' or 'infonce', got {variant!r}")
    logits = za @ zb.transpose(-1, -2) / tau
    positive = logits.diagonal(dim1=-2, dim2=-1)
    if variant == "paper":
        n = logits.shape[-1]
        logits = logits.masked_fill(torch.eye(n, dtype=torch.bool, device=logits.device), float("-inf"))
    l1 = (torch.logsumexp(logits, dim=-1) - positive).mean(-1)
    l2 = (torch.logsumexp(logits, dim=-2) - positive).mean(-1)
    return l1 + l2


class Projector(nn.Module):
    """f^A / f^B: a 2-layer feed-forward network into the shared space, L2-normalised output."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project and normalise."""
        return F.normalize(self.net(x), dim=-1)
