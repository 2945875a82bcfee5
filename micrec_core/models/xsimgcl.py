"""XSimGCL (Yu et al., TKDE 2024, "XSimGCL: Towards Extremely Simple Graph Contrastive Learning for Recommendation"):
a transductive baseline of Table 2, trained on each domain of the pair on its own.

LightGCN without graph augmentation: during training every layer's output gets SimGCL's random noise,

    E^(l) = Â E^(l-1) + Δ^(l),   Δ = Δ̄ ⊙ sign(E^(l)') row by row,  Δ̄ ~ U(0, 1)^d rescaled to ||Δ||₂ = ε,

(E^(l)' = Â E^(l-1): the noise keeps each coordinate's sign and moves every row by ε in a direction within its own
orthant), and the final representation is the mean of the layers 1..L (layer 0 left out, as in SimGCL and the
authors' code). One forward pass gives both views of the cross-layer contrast: the final representation and the
layer-l* one,

    L_cl = Σ_i -log [ exp(cos(e_i, e_i^(l*)) / τ) / Σ_j exp(cos(e_i, e_j^(l*)) / τ) ],

over the batch's distinct users and, separately, its distinct positive items (anchors and negatives within the batch,
as in the authors' code), and L = L_rec + λ L_cl with BPR as L_rec on the same noisy representations. Each term is
summed or averaged over its triples or anchors (Config.loss_reduction; the authors' code averages both). No noise at
validation and inference.

Hyperparameters (`Params`, set with `--param KEY=VALUE`) and their sources:
- eps ε = 0.2, cl_weight λ = 0.2, layer_cl l* = 1: inside the ranges the paper recommends, and the authors'
  configuration (Coder-Yu/SELFRec, conf/XSimGCL.yaml: eps 0.2, lambda 0.2, l_star 1);
- cl_temp τ = 0.2: the temperature of SimGCL's and XSimGCL's experiments (that configuration file uses 0.15 for
  Yelp2018);
- d = 64, L = 3 (Config.dim, Config.layers; the authors' Yelp2018 file has 2 layers); Xavier-uniform initialisation
  (the authors' code);
- lr, loss_reduction, batches per epoch and l2 are the shared Config's (the regulariser is `--l2`, 0 by default here
  and applied to the batch's final representations, as for every model of this project).

Transductive: only seen users and items have an embedding; training sees E_tr only and its contrast involves the
batch's (seen) users and items only. At inference LightGCN propagates over E_tr + E_new, and an unseen user or item
enters layer 0 with the mean of the trained embeddings of its side (`unseen_init=mean`, the default: XSimGCL specifies
no initialisation for new entities, so INMO's protocol for transductive baselines applies) or a random row
(`unseen_init=random`: N(0, σ²) with σ = sqrt(2 / (rows + d)), the standard deviation of its table's Xavier
initialisation, from a generator seeded by the run's seed), the other reading of the paper's low XSimGCL row. Since
layer 0 is left out, an entity with no interaction in E_tr + E_new gets the zero representation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from micrec_core.config import Config
from micrec_core.data.dataset import DomainData, PairData
from micrec_core.models.losses import bpr_loss, gather, info_nce, reduce
from micrec_core.models.micrec import UNSEEN_INITS, DomainModel, Phase, build_phase, id_rows, xavier_std
from micrec_core.models.recommender import GraphDotScores, Recommender
from micrec_core.models.sampling import Triple, TripletSampler


@dataclass
class Params:
    """XSimGCL's own hyperparameters (see the module docstring for their sources)."""

    eps: float = 0.2
    cl_weight: float = 0.2
    cl_temp: float = 0.2
    layer_cl: int = 1
    unseen_init: str = "mean"

    def __post_init__(self) -> None:
        checks = [("eps", self.eps >= 0.0, ">= 0"), ("cl_weight", self.cl_weight >= 0.0, ">= 0"),
                  ("cl_temp", self.cl_temp > 0.0, "> 0")]
        for name, ok, expected in checks:
            value = getattr(self, name)
            if not (isinstance(value, int | float) and ok and math.isfinite(value)):
                raise ValueError(f"--param {name} must be {expected}, got {value!r}")
        if not (isinstance(self.layer_cl, int) and self.layer_cl >= 1):
            raise ValueError(f"--param layer_cl must be an integer >= 1, got {self.layer_cl!r}")
        if self.unseen_init not in UNSEEN_INITS:
            raise ValueError(f"--param unseen_init must be one of {', '.join(UNSEEN_INITS)}, got {self.unseen_init!r}")


@dataclass
class Draws:
    """One step's randomness per domain: the BPR batch and the uniform noise Δ̄ of every layer ([L, N, d])."""

    bpr: list[Triple]
    noise: list[torch.Tensor]


def perturb(e: torch.Tensor, uniform: torch.Tensor, eps: float) -> torch.Tensor:
    """e + Δ with Δ = ε · normalize(Δ̄) ⊙ sign(e) row by row: SimGCL's noise, of norm ε and e's signs."""
    return e + eps * F.normalize(uniform, dim=-1) * torch.sign(e)


class XSimGCL(GraphDotScores, Recommender):
    """XSimGCL per domain (module docstring): BPR and L_cl per domain, and the l2 penalty when Config.l2 > 0."""

    terms = ("bpr/0", "bpr/1", "cl/0", "cl/1", "l2")
    Params = Params
    inference_only = frozenset({"unseen_init"})  # training never meets an unseen row

    def __init__(self, pair: PairData, config: Config, device: torch.device, features: list[Any] | None = None) -> None:
        super().__init__(pair, config, device)
        if not 1 <= self.params.layer_cl <= config.layers:
            raise ValueError(f"--param layer_cl must be in [1, --layers = {config.layers}], got {self.params.layer_cl}")
        self.domains = nn.ModuleList(DomainModel(data, None, config) for data in pair.domains)
        for domain in self.domains:  # LightGCN's id tables, initialised as in the authors' code
            nn.init.xavier_uniform_(domain.user_emb)
            nn.init.xavier_uniform_(domain.item_emb)
        self.train_phases = [self._phase(data, data.edges["train"]).to(device) for data in pair.domains]
        self.samplers = [
            TripletSampler(data.edges["train"], data.n_items, torch.nonzero(data.item_seen).flatten()).to(device)
            for data in pair.domains
        ]
        self.batch_sizes = [math.ceil(data.edges["train"].shape[1] / config.batches_per_epoch) for data in pair.domains]
        weight = self.params.cl_weight
        self.weights = torch.tensor([1.0, 1.0, weight, weight, config.l2], device=device)

    def term_weights(self) -> torch.Tensor:
        """BPR with weight 1, L_cl with λ = cl_weight, l2 with Config.l2."""
        return self.weights

    def auxiliary_terms(self) -> list[int]:
        """L_cl of both domains, whose gradient the history compares with BPR's."""
        return [2, 3] if self.params.cl_weight > 0 else []

    def draw(self, generator: torch.Generator) -> Draws:
        """Per domain: the BPR batch, then Δ̄ ~ U(0, 1) for every layer, node and coordinate."""
        bpr, noise = [], []
        for d, phase in enumerate(self.train_phases):
            bpr.append(self.samplers[d].draw(self.batch_sizes[d], generator))
            shape = (self.config.layers, phase.n_users + phase.n_items, self.config.dim)
            noise.append(torch.rand(shape, generator=generator, device=self.device))
        return Draws(bpr, noise)

    def loss_terms(self, draws: Draws, alpha: float | torch.Tensor) -> torch.Tensor:
        """BPR per domain on the noisy final representations, L_cl per domain against layer l*, and l2."""
        c, p = self.config, self.params
        bpr, cl, l2 = [], [], torch.zeros((), device=self.device)
        for d in range(len(self.domains)):
            phase = self.train_phases[d]
            final, layer_cl = self.encode(d, phase, draws.noise[d])
            r_users, r_items = final[: phase.n_users], final[phase.n_users :]
            users, positives, negatives = self.samplers[d].triples(draws.bpr[d])
            ru, ri, rj = gather(r_users, users), gather(r_items, positives), gather(r_items, negatives)
            bpr.append(bpr_loss(ru, ri, rj, c.loss_reduction))
            if c.l2 > 0:
                l2 = l2 + reduce(ru.pow(2).sum(-1) + ri.pow(2).sum(-1) + rj.pow(2).sum(-1), c.loss_reduction)
            term = torch.zeros((), device=self.device)
            for nodes in (torch.unique(users), torch.unique(positives) + phase.n_users):
                own = torch.arange(len(nodes), device=self.device)
                term = term + reduce(info_nce(final[nodes], layer_cl[nodes], own, p.cl_temp), c.loss_reduction)
            cl.append(term)
        return torch.stack([*bpr, *cl, l2])

    def encode(self, d: int, phase: Phase, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The final representation (mean of layers 1..L) and layer l*'s, of every node of domain d over `phase`'s
        graph; every layer perturbed by `noise` when training."""
        domain, p = self.domains[d], self.params
        generator = torch.Generator().manual_seed(self.config.seed)
        e = torch.cat([
            id_rows(domain.user_emb, domain.user_map, phase.n_users, p.unseen_init, xavier_std(domain.user_emb),
                    generator),
            id_rows(domain.item_emb, domain.item_map, phase.n_items, p.unseen_init, xavier_std(domain.item_emb),
                    generator),
        ])
        layers = []
        for layer in range(self.config.layers):
            e = phase.adjacency @ e
            if noise is not None:
                e = perturb(e, noise[layer], p.eps)
            layers.append(e)
        return torch.stack(layers).mean(0), layers[p.layer_cl - 1]

    def _phase(self, data: DomainData, edges: torch.Tensor) -> Phase:
        """LightGCN's normalised graph over `edges` with every user and item of the domain as a node."""
        return build_phase(data, edges, None, None, self.config, data.user_seen, data.item_seen)

    def representations(self, d: int, alpha: float, phase: Phase) -> tuple[torch.Tensor, torch.Tensor]:
        """e_u, e_i of every user and item of domain d over `phase` (no noise)."""
        final, _ = self.encode(d, phase)
        return final[: phase.n_users], final[phase.n_users :]
