"""SGL (Wu et al., SIGIR 2021, "Self-supervised Graph Learning for Recommendation"), its SGL-ED variant: a transductive
baseline of Table 2, trained on each domain of the pair on its own.

LightGCN (`propagation.propagate`) is the encoder of three graphs at every step: the training graph, whose
representations z feed BPR (the main task, L_main), and two views s1(G), s2(G) = (V, M ⊙ E) of it, each keeping a
random (1 - ρ) share of the interactions (edge dropout, M ∈ {0, 1}^|E|, §3.1), renormalised like the full graph
(`propagation.subgraph_adjacency`) and shared by every layer. The self-supervised task contrasts the two views of a
node against the other nodes of its side (§3.2),

    L_ssl^user = Σ_u -log [ exp(s(z'_u, z''_u) / τ) / Σ_{v ∈ U} exp(s(z'_u, z''_v) / τ) ],  s = cosine,

and L_ssl^item likewise, L_ssl = L_ssl^user + L_ssl^item, and the loss is L = L_main + λ1 L_ssl + λ2 ||Θ||² (§3.3).
The anchors u are the batch's users (and its positive items for L_ssl^item), as in the authors' code; the
denominator runs over every seen user (item) of the domain, the paper's SGL-ED (it reports the in-batch variant,
SGL-ED-batch, slightly weaker).
Each term is summed or averaged over the anchors like BPR over its triples (Config.loss_reduction: the authors' code
sums both).

Hyperparameters (`Params`, set with `--param KEY=VALUE`) and their sources:
- ssl_ratio ρ = 0.1, ssl_temp τ = 0.2, ssl_reg λ1 = 0.1: the authors' configuration (wujcan/SGL-Torch,
  conf/SGL.ini, aug_type ED), inside the ranges the paper tunes (its study of τ finds 0.2 best);
- d = 64, L = 3 (Config.dim, Config.layers): the paper's setting; Xavier-uniform initialisation (SGL.ini param_init);
- lr, loss_reduction, batches per epoch and l2 are the shared Config's (λ2 is `--l2`, 0 by default here and applied
  to the batch's final representations, as for every model of this project).
The views are redrawn at every optimizer step, where the authors draw them once per epoch: a step's randomness comes
from the run's generator in `draw` (so a resumed run replays the same stream), and each view is distributed alike
either way; per step only gives each batch a fresh pair.

Transductive: only seen users and items have an embedding; training sees E_tr only and its contrast never involves an
unseen entity. At inference LightGCN propagates over E_tr + E_new, and an unseen user or item enters layer 0 with the
mean of the trained embeddings of its side (`unseen_init=mean`, the default: SGL specifies no initialisation for new
entities, so INMO's protocol for transductive baselines applies) or a random row (`unseen_init=random`: N(0, σ²) with
σ = sqrt(2 / (rows + d)), the standard deviation of its table's Xavier initialisation, from a generator seeded by the
run's seed), the other reading of the paper's low SGL row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from micrec_core.config import Config
from micrec_core.data.dataset import DomainData, PairData
from micrec_core.models.losses import bpr_loss, gather, info_nce, reduce
from micrec_core.models.micrec import UNSEEN_INITS, DomainModel, Phase, build_phase, id_rows, xavier_std
from micrec_core.models.propagation import entry_edges, propagate, subgraph_adjacency
from micrec_core.models.recommender import GraphDotScores, Recommender
from micrec_core.models.sampling import Triple, TripletSampler


@dataclass
class Params:
    """SGL's own hyperparameters (see the module docstring for their sources)."""

    ssl_ratio: float = 0.1
    ssl_temp: float = 0.2
    ssl_reg: float = 0.1
    unseen_init: str = "mean"

    def __post_init__(self) -> None:
        checks = [("ssl_ratio", 0.0 <= self.ssl_ratio < 1.0, "in [0, 1)"), ("ssl_temp", self.ssl_temp > 0.0, "> 0"),
                  ("ssl_reg", self.ssl_reg >= 0.0, ">= 0")]
        for name, ok, expected in checks:
            value = getattr(self, name)
            if not (isinstance(value, int | float) and ok and math.isfinite(value)):
                raise ValueError(f"--param {name} must be {expected}, got {value!r}")
        if self.unseen_init not in UNSEEN_INITS:
            raise ValueError(f"--param unseen_init must be one of {', '.join(UNSEEN_INITS)}, got {self.unseen_init!r}")


@dataclass
class Draws:
    """One step's randomness per domain: the BPR batch, and the kept interactions of the two views ([|E_tr|] each)."""

    bpr: list[Triple]
    views: list[tuple[torch.Tensor, torch.Tensor]]



class SGL(GraphDotScores, Recommender):
    """SGL-ED per domain (module docstring): BPR and L_ssl per domain, and the l2 penalty when Config.l2 > 0."""

    terms = ("bpr/0", "bpr/1", "ssl/0", "ssl/1", "l2")
    Params = Params
    inference_only = frozenset({"unseen_init"})  # training never meets an unseen row

    def __init__(self, pair: PairData, config: Config, device: torch.device, features: list[Any] | None = None) -> None:
        super().__init__(pair, config, device)
        self.domains = nn.ModuleList(DomainModel(data, None, config) for data in pair.domains)
        for domain in self.domains:  # LightGCN's id tables, initialised as in the authors' code
            nn.init.xavier_uniform_(domain.user_emb)
            nn.init.xavier_uniform_(domain.item_emb)
        self.train_phases, self.entry_edges, self.samplers, self.batch_sizes, self.seen = [], [], [], [], []
        self.n_edges = [data.edges["train"].shape[1] for data in pair.domains]
        for data in pair.domains:
            train = data.edges["train"]
            phase = self._phase(data, train)
            self.train_phases.append(phase.to(device))
            self.entry_edges.append(entry_edges(phase.adjacency, train, data.n_users).to(device))
            seen_users, seen_items = torch.nonzero(data.user_seen).flatten(), torch.nonzero(data.item_seen).flatten()
            self.seen.append((seen_users.to(device), seen_items.to(device)))
            self.samplers.append(TripletSampler(train, data.n_items, seen_items).to(device))
            self.batch_sizes.append(math.ceil(train.shape[1] / config.batches_per_epoch))
        reg = self.params.ssl_reg
        self.weights = torch.tensor([1.0, 1.0, reg, reg, config.l2], device=device)

    def term_weights(self) -> torch.Tensor:
        """BPR with weight 1, L_ssl with λ1 = ssl_reg, l2 with Config.l2."""
        return self.weights

    def auxiliary_terms(self) -> list[int]:
        """L_ssl of both domains, whose gradient the history compares with BPR's."""
        return [2, 3] if self.params.ssl_reg > 0 else []

    def draw(self, generator: torch.Generator) -> Draws:
        """Per domain: the BPR batch, then the interactions each view keeps (exactly ⌊(1 - ρ)|E_tr|⌋, as the authors'
        code draws them)."""
        bpr, views = [], []
        for d, n in enumerate(self.n_edges):
            bpr.append(self.samplers[d].draw(self.batch_sizes[d], generator))
            views.append((self._kept(n, generator), self._kept(n, generator)))
        return Draws(bpr, views)

    def _kept(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """A 0/1 float mask over n interactions keeping ⌊(1 - ρ) n⌋ of them, drawn without replacement."""
        chosen = torch.randperm(n, generator=generator, device=self.device)[: int(n * (1.0 - self.params.ssl_ratio))]
        return torch.zeros(n, device=self.device).index_fill_(0, chosen, 1.0)

    def loss_terms(self, draws: Draws, alpha: float | torch.Tensor) -> torch.Tensor:
        """BPR (L_main) per domain over the training graph, L_ssl per domain between the two views, and l2."""
        c, p = self.config, self.params
        bpr, ssl, l2 = [], [], torch.zeros((), device=self.device)
        for d in range(len(self.domains)):
            phase = self.train_phases[d]
            x = self.initial(d, phase)
            r_users, r_items = _split(propagate(x, phase.adjacency, c.layers), phase.n_users)
            users, positives, negatives = self.samplers[d].triples(draws.bpr[d])
            ru, ri, rj = gather(r_users, users), gather(r_items, positives), gather(r_items, negatives)
            bpr.append(bpr_loss(ru, ri, rj, c.loss_reduction))
            if c.l2 > 0:
                l2 = l2 + reduce(ru.pow(2).sum(-1) + ri.pow(2).sum(-1) + rj.pow(2).sum(-1), c.loss_reduction)
            (u1, i1), (u2, i2) = (
                _split(propagate(x, subgraph_adjacency(phase.adjacency, keep[self.entry_edges[d]]), c.layers),
                       phase.n_users)
                for keep in draws.views[d]
            )
            seen_users, seen_items = self.seen[d]
            domain = self.domains[d]
            user_term = info_nce(u1[users], u2[seen_users], domain.user_map[users], p.ssl_temp)
            item_term = info_nce(i1[positives], i2[seen_items], domain.item_map[positives], p.ssl_temp)
            ssl.append(reduce(user_term, c.loss_reduction) + reduce(item_term, c.loss_reduction))
        return torch.stack([*bpr, *ssl, l2])

    def initial(self, d: int, phase: Phase) -> torch.Tensor:
        """Layer 0 of every user then item of domain d: trained rows, unseen ones met by `unseen_init`."""
        domain = self.domains[d]
        generator = torch.Generator().manual_seed(self.config.seed)
        init = self.params.unseen_init
        return torch.cat([
            id_rows(domain.user_emb, domain.user_map, phase.n_users, init, xavier_std(domain.user_emb), generator),
            id_rows(domain.item_emb, domain.item_map, phase.n_items, init, xavier_std(domain.item_emb), generator),
        ])

    def representations(self, d: int, alpha: float, phase: Phase) -> tuple[torch.Tensor, torch.Tensor]:
        """z_u, z_i of every user and item of domain d: LightGCN over `phase`'s graph (no dropout)."""
        return _split(propagate(self.initial(d, phase), phase.adjacency, self.config.layers), phase.n_users)

    def _phase(self, data: DomainData, edges: torch.Tensor) -> Phase:
        """The normalised graph over `edges` with every user and item of the domain as a node."""
        return build_phase(data, edges, None, None, self.config, data.user_seen, data.item_seen)


def _split(reps: torch.Tensor, n_users: int) -> tuple[torch.Tensor, torch.Tensor]:
    """User rows, item rows."""
    return reps[:n_users], reps[n_users:]

