"""NGCF (Wang et al., SIGIR 2019, "Neural Graph Collaborative Filtering"), a transductive baseline of Table 2, trained
on each domain of the pair on its own.

Embedding propagation, layer l (Eq. 5-6; matrix form Eq. 7, with L = D^-1/2 A D^-1/2 of the user-item graph, Eq. 8):

    E^(l) = LeakyReLU( (L + I) E^(l-1) W1^(l) + (L E^(l-1) ⊙ E^(l-1)) W2^(l) ),

i.e. a node u receives W1 e_u from itself and p_ui (W1 e_i + W2 (e_i ⊙ e_u)) from each neighbour i, with
p_ui = 1/sqrt(|N_u| |N_i|) (Eq. 3-4). The representation concatenates the layers, e* = e^(0) || ... || e^(L) (Eq. 9),
the score is e*_u · e*_i (Eq. 10) and the loss BPR with uniform negatives (Eq. 11). Two dropouts regularise training
(§2.4.2): message dropout on each layer's output, and node dropout, which blocks the messages a random set of nodes
sends in a layer (each node with probability node_dropout; survivors of both are scaled by 1/(1 - p)).

Hyperparameters (`Params`, set with `--param KEY=VALUE`) and their sources:
- d = 64 and L = 3 propagation layers of 64 (Config.dim, Config.layers): the paper's NGCF-3 and INMO's NGCF config
  (WuYunfan/igcn_cf, config.py: layer_sizes [64, 64, 64]);
- message_dropout = 0.1: the authors' default (NGCF/utility/parser.py) and INMO's config (dropout 0.1);
- node_dropout = 0 (off): the authors' code switches node dropout off by default (node_dropout_flag = 0);
- Xavier-uniform initialisation of the embeddings and transforms (the paper, §4.2.3; the authors' code), biases 0;
- a bias in each transform, LeakyReLU slope 0.2, and each propagated layer L2-normalised before the concatenation:
  the paper prints none of the three; the authors' code (NGCF/NGCF.py) and INMO's (model.py, class NGCF) do all three;
- lr, loss_reduction, batches per epoch and l2 are the shared Config's (the λ of Eq. 11 is `--l2`, 0 by default here
  and applied to the batch's final representations, as for every model of this project).
Both public codes propagate with the row-normalised D^-1 (A + I) instead of Eq. 7's L + I; the authors' also apply
LeakyReLU to each transform separately and drop entries of that matrix as "node dropout". We follow Eq. 7 and §2.4.2
as printed.

Transductive: only seen users and items have an embedding, and training sees E_tr only. At inference the layers
propagate over E_tr + E_new, and an unseen user or item enters layer 0 with the mean of the trained embeddings of its
side (`unseen_init=mean`, the default: NGCF specifies no initialisation for new entities, so INMO's protocol for
transductive baselines applies) or a random row (`unseen_init=random`: N(0, σ²) with σ = sqrt(2 / (rows + d)), the
standard deviation of its table's Xavier initialisation, from a generator seeded by the run's seed).
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
from micrec_core.models.losses import bpr_loss, gather, reduce
from micrec_core.models.micrec import UNSEEN_INITS, Phase, _seen_map, build_phase, id_rows, xavier_std
from micrec_core.models.recommender import Factors, Recommender
from micrec_core.models.sampling import Triple, TripletSampler
from micrec_core.models.sparse import SparseMatrix

NEGATIVE_SLOPE = 0.2  # LeakyReLU's slope in the authors' code (tf.nn.leaky_relu's default)


@dataclass
class Params:
    """NGCF's own hyperparameters (see the module docstring for their sources)."""

    message_dropout: float = 0.1
    node_dropout: float = 0.0
    unseen_init: str = "mean"

    def __post_init__(self) -> None:
        for name in ("message_dropout", "node_dropout"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0.0 <= value < 1.0):
                raise ValueError(f"--param {name} must be in [0, 1), got {value!r}")
        if self.unseen_init not in UNSEEN_INITS:
            raise ValueError(f"--param unseen_init must be one of {', '.join(UNSEEN_INITS)}, got {self.unseen_init!r}")


@dataclass
class Draws:
    """One step's randomness per domain: the BPR batch, and the scaled keep masks of node dropout ([L, N, 1]) and
    message dropout ([L, N, d]), None when that dropout is off."""

    bpr: list[Triple]
    node_keep: list[torch.Tensor | None]
    message_keep: list[torch.Tensor | None]


def _transform(dim: int) -> nn.Linear:
    """W^(l) with its bias: Xavier-uniform weights, zero bias."""
    layer = nn.Linear(dim, dim)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class NGCFDomain(nn.Module):
    """One domain's parameters: embeddings of its seen users and items, and W1^(l), W2^(l) of every layer."""

    def __init__(self, data: DomainData, config: Config) -> None:
        super().__init__()
        d = config.dim
        self.register_buffer("user_map", _seen_map(data.user_seen))
        self.register_buffer("item_map", _seen_map(data.item_seen))
        self.user_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(int(data.user_seen.sum()), d)))
        self.item_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(int(data.item_seen.sum()), d)))
        self.w1 = nn.ModuleList(_transform(d) for _ in range(config.layers))
        self.w2 = nn.ModuleList(_transform(d) for _ in range(config.layers))

    def forward(self, x: torch.Tensor, laplacian: SparseMatrix, node_keep: torch.Tensor | None = None,
                message_keep: torch.Tensor | None = None) -> torch.Tensor:
        """e* of every node (Eq. 9) from the layer-0 rows x: Eq. 7 per layer over `laplacian` (L), with one step's
        scaled dropout masks when training."""
        outputs, e = [x], x
        for layer, (w1, w2) in enumerate(zip(self.w1, self.w2, strict=True)):
            side = laplacian @ (e if node_keep is None else e * node_keep[layer])  # L E^(l-1), blocked senders silent
            e = F.leaky_relu(w1(side + e) + w2(side * e), NEGATIVE_SLOPE)
            if message_keep is not None:
                e = e * message_keep[layer]
            outputs.append(F.normalize(e, dim=-1))
        return torch.cat(outputs, dim=-1)


def _keep(shape: tuple[int, ...], p: float, generator: torch.Generator, device: torch.device) -> torch.Tensor | None:
    """A dropout keep mask with each entry kept with probability 1 - p, survivors scaled by 1/(1 - p); None if p = 0."""
    if p == 0:
        return None
    return (torch.rand(shape, generator=generator, device=device) >= p).float() / (1.0 - p)


class NGCF(Recommender):
    """NGCF per domain (module docstring): BPR per domain, and the l2 penalty when Config.l2 > 0."""

    terms = ("bpr/0", "bpr/1", "l2")
    Params = Params
    inference_only = frozenset({"unseen_init"})  # training never meets an unseen row

    def __init__(self, pair: PairData, config: Config, device: torch.device, features: list[Any] | None = None) -> None:
        super().__init__(pair, config, device)
        self.domains = nn.ModuleList(NGCFDomain(data, config) for data in pair.domains)
        self.train_phases = [self._phase(data, data.edges["train"]).to(device) for data in pair.domains]
        self.samplers = [
            TripletSampler(data.edges["train"], data.n_items, torch.nonzero(data.item_seen).flatten()).to(device)
            for data in pair.domains
        ]
        self.batch_sizes = [math.ceil(data.edges["train"].shape[1] / config.batches_per_epoch) for data in pair.domains]
        self.weights = torch.tensor([1.0, 1.0, config.l2], device=device)

    def term_weights(self) -> torch.Tensor:
        """BPR of each domain with weight 1, l2 with Config.l2."""
        return self.weights

    def draw(self, generator: torch.Generator) -> Draws:
        """Per domain: the BPR batch, then the node-dropout and the message-dropout masks of every layer."""
        p, layers, dim = self.params, self.config.layers, self.config.dim
        bpr, nodes, messages = [], [], []
        for d, phase in enumerate(self.train_phases):
            n = phase.n_users + phase.n_items
            bpr.append(self.samplers[d].draw(self.batch_sizes[d], generator))
            nodes.append(_keep((layers, n, 1), p.node_dropout, generator, self.device))
            messages.append(_keep((layers, n, dim), p.message_dropout, generator, self.device))
        return Draws(bpr, nodes, messages)

    def loss_terms(self, draws: Draws, alpha: float | torch.Tensor) -> torch.Tensor:
        """BPR (Eq. 11) per domain on the dropped-out representations, and the l2 penalty on them."""
        c = self.config
        bpr, l2 = [], torch.zeros((), device=self.device)
        for d in range(len(self.domains)):
            r_users, r_items = self.encode(d, self.train_phases[d], draws.node_keep[d], draws.message_keep[d])
            users, positives, negatives = self.samplers[d].triples(draws.bpr[d])
            ru, ri, rj = gather(r_users, users), gather(r_items, positives), gather(r_items, negatives)
            bpr.append(bpr_loss(ru, ri, rj, c.loss_reduction))
            if c.l2 > 0:
                l2 = l2 + reduce(ru.pow(2).sum(-1) + ri.pow(2).sum(-1) + rj.pow(2).sum(-1), c.loss_reduction)
        return torch.stack([*bpr, l2])

    def encode(self, d: int, phase: Phase, node_keep: torch.Tensor | None = None,
               message_keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """e*_u, e*_i of every user and item of domain d over `phase`'s graph (with dropout masks when training)."""
        domain = self.domains[d]
        generator = torch.Generator().manual_seed(self.config.seed)
        init = self.params.unseen_init
        x = torch.cat([
            id_rows(domain.user_emb, domain.user_map, phase.n_users, init, xavier_std(domain.user_emb), generator),
            id_rows(domain.item_emb, domain.item_map, phase.n_items, init, xavier_std(domain.item_emb), generator),
        ])
        reps = domain(x, phase.adjacency, node_keep, message_keep)
        return reps[: phase.n_users], reps[phase.n_users :]

    def _phase(self, data: DomainData, edges: torch.Tensor) -> Phase:
        """The normalised graph over `edges` with every user and item of the domain as a node."""
        return build_phase(data, edges, None, None, self.config, data.user_seen, data.item_seen)

    def validation_factors(self, d: int, alpha: float) -> Factors:
        """e*_u · e*_i over E_tr (no dropout)."""
        return self.encode(d, self.train_phases[d])

    def prepare_inference(self, d: int, data: DomainData | None = None, features: Any = None) -> Phase:
        """The graph over E_tr + E_new with every user and item."""
        data = data or self.pair.domains[d]
        return self._phase(data, data.edges_of("train", "new")).to(self.device)

    def representations(self, d: int, alpha: float, phase: Phase) -> tuple[torch.Tensor, torch.Tensor]:
        """e*_u, e*_i of every user and item of domain d over `phase` (no dropout)."""
        return self.encode(d, phase)

    def inference_factors(self, d: int, alpha: float, prepared: Phase) -> Factors:
        """e*_u · e*_i over E_tr + E_new (Eq. 10)."""
        return self.representations(d, alpha, prepared)

