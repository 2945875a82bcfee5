"""IMC-GAE (Shen, Zhang, Tian, Zeng, He, Dou, Xu: *Inductive Matrix Completion Using Graph Autoencoder*, CIKM 2021),
an inductive baseline of the paper's Table 2 (§5.1), trained on each domain of a pair on its own.

**Node features.** Every node v of the user-item graph carries three one-hot features: an *identical* feature that
all nodes share, a *role-aware* (general) feature shared by all users or by all items, and its *personal* one-hot
index. Through the first layer's weight a one-hot feature is a learnable embedding, so the input of node v is

    x_v = [ e_0 ; e_role(v) ; e_v ]  in R^{3d},      e_0, e_user, e_item, e_v in R^d

(the INMO authors' re-implementation, `WuYunfan/igcn_cf` class `IMCGAE`, concatenates the same three embeddings).

**Encoder** (the paper's GC-MC-style relational GCN; our implicit feedback has one relation, "interacted", so one
weight per layer, shared by users and items as in the authors' default `share_param`). Layer l = 1..L:

    h^(l)_i = W_o^(l) σ( Σ_{j ∈ N(i)} 1/sqrt(|N(i)| |N(j)|) · m^(l)_j / (1 - p_l) · W^(l) h^(l-1)_j ) + b_o^(l)

with h^(0) = x, σ = LeakyReLU (the authors' default activation "leaky"; slope 0.1 as in the DGL GC-MC example their
code builds on), W^(1) in R^{d x 3d}, W^(l>1), W_o^(l) in R^{d x d}, and m^(l)_j ~ Bernoulli(1 - p_l) the
*layer-wise node dropout* mask (a dropped node sends nothing in that layer). The authors' code and the INMO authors'
run both use p_l = p - 0.1 (l - 1) (the paper's Figure 1 caption says the rate increases with depth; we follow the
code that produced its numbers), floored at 0 here, with p = `--dropout`. **Layer weights**: the representation sums
the layer outputs,

    h_v = Σ_{l=1..L} h^(l)_v / l        (the authors' code; INMO's re-implementation, a LightGCN-style propagation
                                          without weight matrices, weighs x_v by 1 and layer l by 1/(l+1): our
                                          first layer changes the width from 3d to d, so x_v cannot be added)

**Decoder**: the paper's bilinear decoder u^T Q_r v has one relation here, s(u, i) = h_u^T Q h_i (Q in R^{d x d},
initialised to the identity: a choice, the authors initialise randomly). For implicit feedback we train it with BPR
on these scores (as the INMO authors ran it: `BPRTrainer`), -ln σ(s(u,i) - s(u,j)) over the trainer's sampled
triples, summed or averaged by `--loss-reduction`, plus `--l2` times the squared norms of the sampled h (INMO's l2;
0 by default). Left out: the authors' feature dropout after the activation (the paper's method is the node dropout)
and their basis decomposition of W_r and Q_r (one relation has nothing to decompose).

**Unseen users and items.** The method is inductive through its shared features: an unseen node has the identical
and role-aware embeddings of every node, and no personal embedding of its own (no parameter is ever created for it,
and nothing about it shapes a trained one). At inference the graph is rebuilt over E_tr + E_new and the encoder runs
once, without a gradient step. Its personal part is, by `--param unseen_personal`:

- `mean` (default, the INMO authors' "dropui" protocol, `run/dropui/imc_gae_dropui.py`): the mean of all trained
  personal embeddings, users' and items' together;
- `zero`: nothing (the paper's reading: an unseen node has no index feature).

During training the graph is E_tr over the seen users and items; unseen nodes are isolated, send and receive nothing.

**Hyperparameters** (d = `--dim`, 64): L = `--layers` (3, INMO's `n_layers` for IMC-GAE; the authors' script default
is 1); p = `--dropout` (the project's shared default 0.1; the INMO authors used 0.3 on Gowalla and Yelp and 0.9 on
Amazon-Book, the IMC-GAE script defaults to 0.7); Adam with `--lr` 1e-3 (INMO's config); `--l2` 0 (INMO's config);
embeddings ~ N(0, 0.1) (INMO's init), weights Xavier-uniform (the authors' init). Nothing is tuned on test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from micrec_core.config import Config
from micrec_core.data.dataset import DomainData, PairData
from micrec_core.models.losses import bpr_loss, gather, reduce
from micrec_core.models.micrec import _padded, _seen_map
from micrec_core.models.propagation import normalized_adjacency
from micrec_core.models.recommender import Factors, Recommender
from micrec_core.models.sampling import Triple, TripletSampler
from micrec_core.models.sparse import SparseMatrix

UNSEEN_PERSONAL = ("mean", "zero")
LEAKY_SLOPE = 0.1  # the authors' "leaky" activation
DROPOUT_STEP = 0.1  # p_l = p - 0.1 (l - 1), the authors' code


@dataclass
class Params:
    """IMC-GAE's own hyperparameters (`--param KEY=VALUE`).

    unseen_personal: the personal embedding of a node without one (an unseen user or item): "mean" of the trained
        ones (INMO's protocol) or "zero" (no index feature).
    """

    unseen_personal: str = "mean"

    def __post_init__(self) -> None:
        if self.unseen_personal not in UNSEEN_PERSONAL:
            raise ValueError(f"--param unseen_personal must be one of {', '.join(UNSEEN_PERSONAL)}, "
                             f"got {self.unseen_personal!r}")


def layer_dropouts(p: float, layers: int) -> list[float]:
    """Layer-wise node dropout rates p_l = max(p - 0.1 (l - 1), 0) for l = 1..layers."""
    return [max(p - DROPOUT_STEP * layer, 0.0) for layer in range(layers)]


@dataclass
class Graph:
    """What the encoder runs over: the normalised adjacency of one phase (E_tr, or E_tr + E_new)."""

    n_users: int
    n_items: int
    adjacency: SparseMatrix


def build_graph(edges: torch.Tensor, n_users: int, n_items: int, device: torch.device) -> Graph:
    """D^-1/2 A D^-1/2 over the (user, item) `edges` (users first, then items, as node ids)."""
    return Graph(n_users, n_items, normalized_adjacency(edges, n_users, n_items).to(device))


class DomainGAE(nn.Module):
    """One domain's IMC-GAE: identical, role-aware and personal embeddings, L encoder layers, the bilinear decoder.

    Personal embeddings exist for the seen users and items only (rows: seen users, then seen items).
    """

    def __init__(self, data: DomainData, config: Config, unseen_personal: str) -> None:
        super().__init__()
        d = config.dim
        self.unseen_personal = unseen_personal
        n_seen_users = int(data.user_seen.sum())
        self.register_buffer("user_map", _seen_map(data.user_seen))
        item_map = _seen_map(data.item_seen)
        self.register_buffer("item_map", torch.where(item_map >= 0, item_map + n_seen_users, item_map))
        self.identical = nn.Parameter(torch.randn(d) * 0.1)
        self.general = nn.Parameter(torch.randn(2, d) * 0.1)  # row 0: users, row 1: items
        self.personal = nn.Parameter(torch.randn(n_seen_users + int(data.item_seen.sum()), d) * 0.1)
        self.convs = nn.ModuleList(nn.Linear(3 * d if layer == 0 else d, d, bias=False)
                                   for layer in range(config.layers))
        self.outs = nn.ModuleList(nn.Linear(d, d) for _ in range(config.layers))
        for linear in [*self.convs, *self.outs]:
            nn.init.xavier_uniform_(linear.weight)
        for linear in self.outs:
            nn.init.zeros_(linear.bias)
        self.decoder = nn.Parameter(torch.eye(d))

    def features(self, n_users: int, n_items: int) -> torch.Tensor:
        """x_v = [e_0; e_role(v); e_v] for every node (users, then items); a node without a personal embedding gets
        the mean of the trained ones or zeros (`unseen_personal`)."""
        rows = torch.cat([_padded(self.user_map, n_users), _padded(self.item_map, n_items)])
        fallback = (self.personal.mean(0) if self.unseen_personal == "mean"
                    else self.personal.new_zeros(self.personal.shape[1]))
        personal = torch.where((rows >= 0).unsqueeze(1), self.personal[rows.clamp(min=0)], fallback)
        role = torch.cat([self.general[0].expand(n_users, -1), self.general[1].expand(n_items, -1)])
        return torch.cat([self.identical.expand(n_users + n_items, -1), role, personal], dim=1)

    def forward(self, graph: Graph, dropouts: list[float] | None = None,
                keeps: list[torch.Tensor | None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """h_u, h_i: the encoder over `graph`, each layer's nodes dropped by `keeps` (rate `dropouts`), layer
        outputs summed with weights 1/l."""
        h = self.features(graph.n_users, graph.n_items)
        total = h.new_zeros(h.shape[0], self.decoder.shape[0])
        for layer, (conv, out) in enumerate(zip(self.convs, self.outs, strict=True)):
            message = conv(h)
            if keeps is not None and keeps[layer] is not None and dropouts is not None:
                message = message * keeps[layer].to(message.dtype).unsqueeze(1) / (1.0 - dropouts[layer])
            h = out(F.leaky_relu(graph.adjacency @ message, LEAKY_SLOPE))
            total = total + h / (layer + 1)
        return total[: graph.n_users], total[graph.n_users :]

    def factors(self, graph: Graph) -> Factors:
        """s(u, i) = h_u^T Q h_i over `graph`, as the factors (h_u^T Q, h_i) of a dot product."""
        users, items = self(graph)
        return users @ self.decoder, items


@dataclass
class Draws:
    """One step's randomness per domain: the node-dropout keep masks of each layer, then the BPR triples' draws."""

    keeps: list[list[torch.Tensor | None]]
    bpr: list[Triple]


class IMCGAE(Recommender):
    """IMC-GAE on each domain of the pair on its own (see the module docstring)."""

    terms = ("bpr/0", "bpr/1", "l2/0", "l2/1")
    Params = Params

    def __init__(self, pair: PairData, config: Config, device: torch.device,
                 features: list[object] | None = None) -> None:
        super().__init__(pair, config, device)
        if config.layers < 1:
            raise ValueError(f"--layers must be >= 1 for imcgae (its representation sums the layer outputs), "
                             f"got {config.layers}")
        params = self.params
        self.domains = nn.ModuleList(DomainGAE(data, config, params.unseen_personal) for data in pair.domains)
        self.dropouts = layer_dropouts(config.dropout, config.layers)
        self.train_graphs, self.samplers, self.batch_sizes = [], [], []
        for data in pair.domains:
            train = data.edges["train"]
            self.train_graphs.append(build_graph(train, data.n_users, data.n_items, device))
            seen_items = torch.nonzero(data.item_seen).flatten()
            self.samplers.append(TripletSampler(train, data.n_items, seen_items).to(device))
            self.batch_sizes.append(math.ceil(train.shape[1] / config.batches_per_epoch))
        self.weights = torch.tensor([1.0, 1.0, config.l2, config.l2], device=device)

    def term_weights(self) -> torch.Tensor:
        """BPR per domain with factor 1, the l2 penalty per domain with `--l2`."""
        return self.weights

    def draw(self, generator: torch.Generator) -> Draws:
        """Per domain: a keep mask over all nodes for each layer with a dropout rate > 0, then the BPR draws."""
        keeps, bpr = [], []
        for d, graph in enumerate(self.train_graphs):
            n = graph.n_users + graph.n_items
            keeps.append([None if p == 0.0 else torch.rand(n, generator=generator, device=self.device) >= p
                          for p in self.dropouts])
            bpr.append(self.samplers[d].draw(self.batch_sizes[d], generator))
        return Draws(keeps, bpr)

    def loss_terms(self, draws: Draws, alpha: float | torch.Tensor) -> torch.Tensor:
        """BPR on s(u, i) - s(u, j) per domain, and the l2 penalty on the sampled representations."""
        reduction = self.config.loss_reduction
        bpr, l2 = [], []
        for d, domain in enumerate(self.domains):
            users, items = domain(self.train_graphs[d], self.dropouts, draws.keeps[d])
            u, i, j = self.samplers[d].triples(draws.bpr[d])
            hu, hi, hj = gather(users, u), gather(items, i), gather(items, j)
            bpr.append(bpr_loss(hu @ domain.decoder, hi, hj, reduction))
            l2.append(reduce(hu.pow(2).sum(-1) + hi.pow(2).sum(-1) + hj.pow(2).sum(-1), reduction))
        return torch.stack([*bpr, *l2])

    def used_terms(self) -> list[bool]:
        """BPR always, l2 when `--l2` > 0."""
        on = self.config.l2 > 0
        return [True, True, on, on]

    def validation_factors(self, d: int, alpha: float) -> Factors:
        """s(u, i) over the training graph (E_tr), no dropout."""
        return self.domains[d].factors(self.train_graphs[d])

    def prepare_inference(self, d: int, data: DomainData | None = None, features: object = None) -> Graph:
        """The graph over E_tr + E_new with every user and item."""
        data = data or self.pair.domains[d]
        return build_graph(data.edges_of("train", "new"), data.n_users, data.n_items, self.device)

    def inference_factors(self, d: int, alpha: float, prepared: Graph) -> Factors:
        """s(u, i) over E_tr + E_new: unseen nodes through their shared embeddings (module docstring)."""
        return self.domains[d].factors(prepared)
