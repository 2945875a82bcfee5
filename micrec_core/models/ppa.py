r"""PPA (Zhang et al.: *Preference Prototype-Aware Learning for Universal Cross-Domain Recommendation*, CIKM 2024)
on a domain pair: UniCDR's model (`micrec_core.models.unicdr`, imported, not copied) with PPA's mix-encoder and
preference-prototype-aware decoder, evaluated inductively with this project's full-ranking protocol.

PPA keeps UniCDR's embeddings (domain-specific and domain-shared user embeddings, the overlapping users' shared
embedding common to both domains), its interaction and domain masking, its prediction r_u = h_u + g_u, score
r_u · v_i and prediction loss L_pred (see `micrec_core.models.unicdr`). It changes two things:

- **Mix-encoder.** The user views are h_u = λ_a e_u + (1 - λ_a) Mix({v_j}) and g_u likewise. For a pair of domains
  the authors' code (Canyizl/PPA-for-CDR, read for facts) reduces the mix-network to mean pooling of the item
  vectors with no projection, Mix(C) = (1/|C|) Σ_{j∈C} v_j; its hypernetwork over item-similarity (EASE) scores is
  used only in their multi-domain scenarios and is not implemented here.
- **Preference-prototype-aware decoder**, one per domain, with 2M learnable prototypes p_k ∈ R^d, M for each of
  two classes (class 1: a user's own pair (h_u, g_u); class 0: a mismatched pair (h_u', g_u), u' another user of
  the batch by a random cyclic shift, as UniCDR's negative). With the squared distance δ_k(h) = ||h - p_k||² and
  the prototype activation a_k(h) = log((δ_k + 1) / (δ_k + ε)) (ProtoPNet's), the class logits are
  z(h) = W_c a(h) with W_c [2 x 2M] initialised to 1 for a prototype's own class and -0.5 for the other
  (trainable). The prototype loss of a pair set (h, y) is

      L_pp = CE(z(h), y) + (α/B) min_{k ∈ y} δ_k(h) - (β/B) min_{k ∉ y} δ_k(h) + (γ/B) L_div,
      L_div = Σ_classes Σ_{k≠k' in the class} max(0, cos(p_k, p_k') - m)

  (cross-entropy, cluster, separation and diversity terms; B the batch size, the authors' code divides the last
  three by it), summed over the matched set (y = 1) and the mismatched set (y = 0). Their code writes the
  cross-entropy against the all-ones target for the matched call and the all-zeros target (which contributes 0)
  for the mismatched one; since the mismatched set is a permutation of the matched one, the standard
  cross-entropy with labels used here has the same value summed over the batch. The matched preference prototype
  of a pair is its nearest prototype of the pair's class, p*(h) = argmin_{k ∈ y} δ_k(h); where the critic is
  weighted (λ < 1) it replaces h in UniCDR's critic, D(p*(h_u), g_u) against D(p*(h_u'), g_u) (a bilinear
  "matcher"; the gradient reaches the chosen prototype, not h).
- **Loss** per domain: λ L_pred + (1 - λ) L_critic + λ_pp L_pp. The authors' code sets λ = 1.0 (UniCDR's is 0.4),
  so by default the critic has no weight and no matcher is built; `--param lambda_loss=0.4` turns the
  prototype-matched critic on.

Hyperparameters (d = 64; the rest the defaults of the authors' public code, `train_rec.py`, `model/UniCDR.py`,
`model/transformer_decoder.py`): M = 24 prototypes per class (`prototypes_per_class`), λ = 1.0 (`lambda_loss`),
λ_pp = 1.0 (`lambda_pp`), α = 0.10 (`cluster_weight`), β = 0.05 (`separation_weight`), γ = 0.001
(`diversity_weight`), m = 0.3 (`diversity_margin`), ε = 1e-4 (`epsilon`), incorrect-class connection -0.5
(`incorrect_strength`), and UniCDR's λ_a = 0.5, ρ = 0.1, L = 10, K = 10 negatives. Embeddings and prototypes are
initialised N(0, 0.1²) (`init_std`; their code uses N(0, 1) for both, see `micrec_core.models.unicdr` for why the
default differs here). Shared Config fields honoured as for UniCDR (`--dropout`, theirs 0.3; `--batches-per-epoch`,
`--loss-reduction`, `--l2`, `--seed`, `--lr` 1e-3 as theirs); not reproduced: their weight decay, learning-rate decay
and sampled-negative evaluation (here: full ranking over all items, so numbers are not comparable with the paper's).
Their code applies the diversity term to domain 0's prototypes in both domains; here each domain's own.

**Unseen users and items**: as UniCDR (`micrec_core.models.unicdr`): the prototypes only shape training; at inference
r_u = h_u + g_u from the user's E_tr + E_new items, an unseen user's specific id embedding the mean trained row
(INMO's protocol), its shared id embedding the one trained in the other domain where it is seen there (UniCDR's
strategy for users cold in a domain), else the mean shared row; an unseen item the mean trained item row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from micrec_core.models.unicdr import Aggregator, CommonParams, UniCDR, refuse


@dataclass
class Params(CommonParams):
    """PPA's hyperparameters: UniCDR's shared ones (with PPA's λ = 1.0) and the decoder's."""

    lambda_loss: float = 1.0
    prototypes_per_class: int = 24
    lambda_pp: float = 1.0
    cluster_weight: float = 0.10
    separation_weight: float = 0.05
    diversity_weight: float = 0.001
    diversity_margin: float = 0.3
    incorrect_strength: float = -0.5
    epsilon: float = 1e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        refuse(self, [
            ("prototypes_per_class", isinstance(self.prototypes_per_class, int) and self.prototypes_per_class >= 1,
             "an integer >= 1"),
            ("lambda_pp", self.lambda_pp >= 0.0, ">= 0"),
            ("cluster_weight", self.cluster_weight >= 0.0, ">= 0"),
            ("separation_weight", self.separation_weight >= 0.0, ">= 0"),
            ("diversity_weight", self.diversity_weight >= 0.0, ">= 0"),
            ("diversity_margin", -1.0 <= self.diversity_margin <= 1.0, "in [-1, 1]"),
            ("incorrect_strength", True, "a finite number"),
            ("epsilon", self.epsilon > 0.0, "> 0"),
        ])


class PrototypeDecoder(nn.Module):
    """One domain's preference prototypes (class 0 rows first, then class 1), the prototype classifier W_c, and
    (when the critic is weighted) the bilinear matcher of a chosen prototype and a shared view."""

    classes = 2

    def __init__(self, dim: int, per_class: int, incorrect: float, epsilon: float, std: float,
                 matcher: bool) -> None:
        super().__init__()
        self.per_class, self.epsilon = per_class, epsilon
        n = self.classes * per_class
        self.prototypes = nn.Parameter(torch.randn(n, dim) * std)
        self.classifier = nn.Linear(n, self.classes, bias=False)
        own = F.one_hot(torch.arange(n) // per_class, self.classes).T.float()
        with torch.no_grad():
            self.classifier.weight.copy_(own + incorrect * (1.0 - own))
        self.matcher = nn.Bilinear(dim, dim, 1) if matcher else None

    def distances(self, h: torch.Tensor) -> torch.Tensor:
        """δ [B, 2M]: squared distance of each row to each prototype."""
        return (h.unsqueeze(1) - self.prototypes.unsqueeze(0)).pow(2).sum(-1)

    def logits(self, distances: torch.Tensor) -> torch.Tensor:
        """z = W_c a with the activations a = log((δ + 1) / (δ + ε)) [B, 2]."""
        return self.classifier(torch.log((distances + 1.0) / (distances + self.epsilon)))

    def columns(self, label: int) -> slice:
        """The prototypes of class `label`."""
        return slice(label * self.per_class, (label + 1) * self.per_class)

    def chosen(self, distances: torch.Tensor, label: int) -> torch.Tensor:
        """p*(h): each row's nearest prototype of class `label` [B, d]."""
        nearest = distances[:, self.columns(label)].argmin(-1)
        return self.prototypes[self.columns(label)][nearest]

    def diversity(self, margin: float) -> torch.Tensor:
        """L_div: per class, Σ over ordered pairs k ≠ k' of max(0, cos(p_k, p_k') - m)."""
        total = self.prototypes.new_zeros(())
        for label in range(self.classes):
            p = F.normalize(self.prototypes[self.columns(label)], dim=1)
            cosine = p @ p.T - torch.eye(len(p), device=p.device) - margin
            total = total + cosine.clamp(min=0).sum()
        return total

    def rows(self, distances: torch.Tensor, label: int, cluster: float, separation: float) -> torch.Tensor:
        """Per row: CE(z, y) + (α min_{k∈y} δ_k - β min_{k∉y} δ_k) / B, y = `label` (diversity added by the caller)."""
        n = distances.shape[0]
        target = torch.full((n,), label, dtype=torch.long, device=distances.device)
        ce = F.cross_entropy(self.logits(distances), target, reduction="none")
        own = distances[:, self.columns(label)].min(-1).values
        other = distances[:, self.columns(1 - label)].min(-1).values
        return ce + (cluster * own - separation * other) / n


class PPA(UniCDR):
    """PPA on a pair (see the module docstring): UniCDR with the mix-encoder and one prototype decoder per
    domain in the place of UniCDR's critic."""

    terms = ("pred/0", "pred/1", "critic/0", "critic/1", "proto/0", "proto/1", "l2")
    Params = Params

    def make_aggregator(self) -> Aggregator:
        """The mix-encoder of a pair of domains: mean pooling, no projection."""
        return Aggregator(self.config.dim, "mean", project=False)

    def make_critic(self) -> nn.Module:
        """The domain's prototype decoder (with a matcher only where the critic is weighted)."""
        p = self.params
        return PrototypeDecoder(self.config.dim, p.prototypes_per_class, p.incorrect_strength, p.epsilon,
                                p.init_std, matcher=p.lambda_loss < 1.0)

    def make_weights(self) -> torch.Tensor:
        """λ per prediction loss, 1 - λ per critic loss, λ_pp per prototype loss, l2."""
        p = self.params
        lam = p.lambda_loss
        return torch.tensor([lam, lam, 1.0 - lam, 1.0 - lam, p.lambda_pp, p.lambda_pp, self.config.l2])

    def critic_rows(self, d: int, specific: torch.Tensor, shared: torch.Tensor, shift: int) -> dict[str, torch.Tensor]:
        """Per row: the prototype-matched critic (0 when unweighted) and L_pp of the matched (y = 1) and the
        mismatched (y = 0, the row `shift` further's h) pairs, with the diversity term spread over the rows."""
        p, decoder = self.params, self.domains[d].critic
        n = specific.shape[0]
        matched, mismatched = decoder.distances(specific), decoder.distances(torch.roll(specific, -shift, dims=0))
        proto = (decoder.rows(matched, 1, p.cluster_weight, p.separation_weight)
                 + decoder.rows(mismatched, 0, p.cluster_weight, p.separation_weight)
                 + 2.0 * p.diversity_weight * decoder.diversity(p.diversity_margin) / n)
        critic = torch.zeros_like(proto)
        if decoder.matcher is not None:
            positive = decoder.matcher(decoder.chosen(matched, 1), shared).squeeze(-1)
            negative = decoder.matcher(decoder.chosen(mismatched, 0), shared).squeeze(-1)
            critic = F.softplus(-positive) + F.softplus(negative)
        return {"critic": critic, "proto": proto}
