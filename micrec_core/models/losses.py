"""Training objectives (paper §4.3): BPR, INMO's self-enhanced loss, and the cross-domain contrastive loss.

The paper writes BPR (eq-bpr) and SE (eq-se) as sums over triples and L_CL (eq-cl) as a mean over U_o. On a
sampled batch, `reduction="sum"` reads that literally (sum over the batch's triples; L_CL a mean over the sampled
overlapping users); `reduction="mean"` averages BPR and SE over the batch as INMO's code does, which shrinks them
by the batch size against L_CL. Every loss also takes a leading run dimension ([K, n, d] inputs, [K] losses),
which is how `micrec_core.training.batched` evaluates K runs' losses at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from micrec_core.config import Config
from micrec_core.models.sampling import Triple

# The terms of the joint loss (eq-joint), unweighted, in the order `loss_terms` returns them; `term_weights` gives
# the factor of each in L. l2 is INMO's optional penalty on the sampled final representations (off by default).
TERMS = ("bpr/0", "bpr/1", "se/0", "se/1", "cl", "l2")


def reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    """Sum or mean over the last (triple) dimension."""
    if reduction == "sum":
        return values.sum(-1)
    if reduction == "mean":
        return values.mean(-1)
    raise ValueError(f"loss_reduction must be 'sum' or 'mean', got {reduction!r}")


def bpr_loss(
    users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """eq-bpr: -ln σ(r_u·r_i - r_u·r_i') over sampled (u, i, i') triples, summed or averaged."""
    diff = (users * positives).sum(-1) - (users * negatives).sum(-1)
    return reduce(-F.logsigmoid(diff), reduction)


def se_loss(
    users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, weight: torch.Tensor,
    reduction: str = "mean",
) -> torch.Tensor:
    """eq-se: BPR on template embeddings scored s(e_u, W e_i); `weight` is W ([K,] d x d) or INMO's diagonal."""
    if weight.dim() == positives.dim() - 1:
        diagonal = weight.unsqueeze(-2)
        pos, neg = positives * diagonal, negatives * diagonal
    else:
        pos, neg = positives @ weight.transpose(-1, -2), negatives @ weight.transpose(-1, -2)
    return bpr_loss(users, pos, neg, reduction)


def contrastive_loss(za: torch.Tensor, zb: torch.Tensor, tau: float, variant: str = "paper") -> torch.Tensor:
    """eq-cl: L_CL = L1 + L2 over matched rows of za = f^A(r^A), zb = f^B(r^B), each a mean over the rows.

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


def info_nce(anchors: torch.Tensor, candidates: torch.Tensor, positives: torch.Tensor, tau: float) -> torch.Tensor:
    """InfoNCE of each anchor on cosine similarities at temperature tau: -log of the softmax, over every row of
    `candidates`, of its positive row `candidates[positives]` ([n] losses for n anchors; the self-supervised losses of
    SGL and XSimGCL)."""
    logits = F.normalize(anchors, dim=-1) @ F.normalize(candidates, dim=-1).transpose(-1, -2) / tau
    return torch.logsumexp(logits, dim=-1) - logits.gather(-1, positives.unsqueeze(-1)).squeeze(-1)


class Projector(nn.Module):
    """f^A / f^B: a 2-layer feed-forward network into the shared space, its output L2-normalised by default.

    Without the normalisation the paper's L_CL has no lower bound (scores grow with the norms); the paper does not
    say which it used, so `normalize` is a setting (`--cl-normalize/--no-cl-normalize`).
    """

    def __init__(self, dim: int, normalize: bool = True) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project (and normalise)."""
        z = self.net(x)
        return F.normalize(z, dim=-1) if self.normalize else z


@dataclass
class LossInputs:
    """What the joint loss reads of one domain: the rows it gathers from and the sampled indices into them.

    Indices are [n] for one run, or [K, n] for K runs trained together (then every term is [K]).
    """

    r_users: torch.Tensor
    r_items: torch.Tensor
    bpr: Triple
    template_rows: tuple[torch.Tensor, torch.Tensor] | None = None
    se_weight: torch.Tensor | None = None
    se: Triple | None = None


def gather(rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """rows[index] for an index of any shape (index_select: a cheaper backward than advanced indexing)."""
    return rows.index_select(0, index.flatten()).view(*index.shape, rows.shape[-1])


def term_weights(c: Config) -> torch.Tensor:
    """The factor of each of `TERMS` in eq-joint: L = L_BPR^A + L_BPR^B + beta (L_SE^A + L_SE^B) + gamma L_CL."""
    return torch.tensor([1.0, 1.0, c.beta_se, c.beta_se, c.gamma_cl, c.l2])


def loss_terms(
    c: Config, tau: float, domains: list[LossInputs], cl_users: tuple[torch.Tensor, torch.Tensor] | None,
    project: Callable[[int, torch.Tensor], torch.Tensor], cl_runs: torch.Tensor | None = None,
) -> torch.Tensor:
    """The unweighted terms of eq-joint, [..., len(TERMS)] (a leading run dimension for K runs): BPR and SE per
    domain (eq-bpr, eq-se, reduced over the batch by `c.loss_reduction`), L_CL (eq-cl) and the l2 penalty.

    `cl_users` are the sampled overlapping users' representations in domain A and B, `project(d, r)` applies f^A or
    f^B; with K runs, `cl_runs` says which runs have L_CL (the others get 0). A term a run does not use is 0.
    """
    device = domains[0].r_users.device
    shape = domains[0].bpr[0].shape[:-1]
    zero = torch.zeros(shape, device=device)
    bpr, se, l2 = [], [], zero
    for x in domains:
        users, pos, neg = x.bpr
        ru, ri, rj = gather(x.r_users, users), gather(x.r_items, pos), gather(x.r_items, neg)
        bpr.append(bpr_loss(ru, ri, rj, c.loss_reduction))
        if c.l2 > 0:
            l2 = l2 + reduce(ru.pow(2).sum(-1) + ri.pow(2).sum(-1) + rj.pow(2).sum(-1), c.loss_reduction)
        if x.se is not None and x.template_rows is not None and x.se_weight is not None:
            (tu, ti, tj), (user_rows, item_rows) = x.se, x.template_rows
            se.append(se_loss(gather(user_rows, tu), gather(item_rows, ti), gather(item_rows, tj), x.se_weight,
                              c.loss_reduction))
        else:
            se.append(zero)
    cl = zero
    if cl_users is not None:
        value = contrastive_loss(project(0, cl_users[0]), project(1, cl_users[1]), tau, c.cl_loss)
        cl = value if cl_runs is None else zero.index_add(0, cl_runs, value)
    return torch.stack([*bpr, *se, cl, l2], dim=-1)
