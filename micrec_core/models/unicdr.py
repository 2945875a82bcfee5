r"""UniCDR (Cao, Li, Yu, Guo, Liu, Wang: *Towards Universal Cross-Domain Recommendation*, WSDM 2023) on a domain
pair, trained on both domains at once and evaluated inductively with this project's full-ranking protocol.

The model (the paper's §3; the equation numbers are the paper's where its public code names them, e.g. "Eq. 13"):

- **Embeddings.** Per domain d: a domain-specific embedding e^d_u for every seen user and an embedding v^d_i for
  every seen item; a domain-shared embedding s_u for every seen user. The users U_o seen in both domains share
  ONE s_u across the two domains (the paper's shared user space; its public code keeps one table for the users the
  domains share and a table per domain for the others, as here), so an overlapping user's s_u is trained by both
  domains' losses.
- **Item-aggregated user representations** with an aggregator Agg and its projection W (one per domain for the
  specific part, one shared by the domains for the shared part):

      h^d_u = λ_a e^d_u + (1 - λ_a) W^d Agg(e^d_u, {v^d_j : j ∈ C^d_u})            (domain-specific)
      g^d_u = λ_a s_u   + (1 - λ_a) W^s Agg(s_u,   {v_j   : j ∈ G^d_u})            (domain-shared)

  Agg is the paper's user-attention pooling by default, Σ_j softmax_j(tanh(W_a v_j + b_a) · q) v_j with the
  query q the id embedding (the aggregator the authors run for the dual-domain intra-domain scenario, their
  README's `--aggregator user_attention`), or mean pooling (1/|C|) Σ_j v_j (`--param aggregator=mean`). An empty
  set aggregates to 0; the softmax runs over a user's items only (their code's masked softmax also gives each
  padding slot the weight e^0). The authors' item-similarity (EASE) pooling is not implemented.
- **Masking (training only).** Interaction masking: C^d_u is a random subset of the user's E_tr items in d of
  size min(L, ⌊|N^d_u| (1 - ρ)⌋) (ρ the mask rate, L the context length), with the target item of the row removed
  if drawn. Domain masking: the shared context G^d_u leaves out domain d's items altogether and holds a random
  subset (same rule) of the user's E_tr items in the OTHER domain; a user seen in d only has none, so g^d_u = λ_a
  s_u in training. At validation and inference nothing is masked: C^d_u is all the user's visible items in d and
  G^d_u all its visible items in both domains (E_tr for validation, E_tr + E_new at inference; a user's items in
  the other domain are found by its user id).
- **Prediction** (Eq. 13, equal weights): r^d_u = h^d_u + g^d_u, score ŷ_ui = r^d_u · v^d_i.
- **Losses**, per domain, on a batch of (u, i+) rows with K uniform negatives each:
  L_pred = BCE(ŷ_{u i+}, 1) + (1/K) Σ_k BCE(ŷ_{u i_k}, 0) (the public code's two averaged BCE terms), and the
  contrastive (mutual-information) term between the two views of a user, a bilinear critic D^d(h, g) = h^T M g
  + c with a negative formed by pairing g_u with the h of another user of the batch (a random cyclic shift):
  L_critic = BCE(D(h_u, g_u), 1) + BCE(D(h_{u'}, g_u), 0). L = Σ_d λ L^d_pred + (1 - λ) L^d_critic.
  Dropout (rate `--dropout`) on h, g and the scored item embeddings in training, and on the attention weights.
  `--loss-reduction` sums (the default) or averages the per-row losses over the batch; both reduce every term
  alike, so their ratio is the paper's. `--l2` adds the project's optional penalty on the batch's
  representations (off by default).

Hyperparameters (d = 64, the project's dimension; the others are the defaults of the authors' public code
cjx96/UniCDR `train_rec.py`, read for facts, which the paper's experiments use; own options by `--param`):
aggregator user_attention (README, dual-user-intra), λ_a = 0.5 (`lambda_a`), λ = 0.4 (`lambda_loss`), ρ = 0.1
(`mask_rate`), L = 10 (`max_context`, their `maxlen`), K = 10 negatives (`negatives`), Adam with lr 1e-3 (`--lr`,
theirs too). Embeddings are initialised N(0, 0.1²) (`init_std`; INMO's initialisation, every model's here): the
authors' code leaves PyTorch's N(0, 1), which at this project's step budget barely trains (synthetic pair, seed 0,
validation NDCG@20 0.049 / 0.044 after 60 epochs with N(0, 1), 0.130 / 0.106 after 40 with N(0, 0.1²); chosen on
validation only; `--param init_std=1.0` gives theirs). Shared Config fields
honoured: `--dropout` (theirs is 0.3; the project's shared default 0.1 applies unless set), `--batches-per-epoch`
(an epoch is 100 steps of ceil(|E_tr|/100) rows per domain; theirs is 500 steps of 512 rows per domain),
`--loss-reduction`, `--l2`, `--seed`. Not reproduced: their Adam weight decay 1e-5 and learning-rate decay on
plateaus (the trainer owns the optimizer), and their sampled-negative evaluation (1 positive among 999 sampled
items): here every model is evaluated by full ranking over all items of the domain (`inference.test_metrics`), so
numbers are not comparable with the paper's. Training rows are drawn as every model here draws them (a uniform
user with a training item, one of its items), where their loader runs over interactions.

**Unseen users and items** (scored from E_tr + E_new, no gradient step): an unseen user's domain-specific id
embedding is the mean of the trained e^d rows (INMO's protocol for transductive baselines; the paper has no
strategy for it). Its domain-shared id embedding follows UniCDR's own strategy for users cold in a domain (its
inter-domain setting): where the same user is seen in the other domain, the s_u trained there is used (the shared
space is common to the domains); otherwise the mean of domain d's trained shared rows. Its item aggregations come
from its E_tr + E_new items in both domains, as for every user at inference. An unseen item's embedding is the mean
of the trained v^d rows (INMO's protocol; the paper has no item-side strategy), both when it is scored and when it
enters a user's aggregation. Only seen users and items have parameters; the index maps are built from E_tr and the
seen flags alone.

All training randomness (rows, negatives, masking, dropout, the critic's shift) is drawn by `draw` from the run's
generator. `micrec_core.models.ppa` builds PPA on these pieces.
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
from micrec_core.models.losses import reduce
from micrec_core.models.recommender import Factors, Recommender
from micrec_core.models.sampling import TripletSampler

AGGREGATORS = ("user_attention", "mean")


@dataclass
class CommonParams:
    """The hyperparameters UniCDR and PPA share (defaults: the authors' public code, see the module docstring)."""

    lambda_a: float = 0.5
    lambda_loss: float = 0.4
    mask_rate: float = 0.1
    max_context: int = 10
    negatives: int = 10
    init_std: float = 0.1

    def __post_init__(self) -> None:
        checks = [
            ("lambda_a", 0.0 <= self.lambda_a <= 1.0, "in [0, 1]"),
            ("lambda_loss", 0.0 <= self.lambda_loss <= 1.0, "in [0, 1]"),
            ("mask_rate", 0.0 <= self.mask_rate < 1.0, "in [0, 1)"),
            ("max_context", isinstance(self.max_context, int) and self.max_context >= 1, "an integer >= 1"),
            ("negatives", isinstance(self.negatives, int) and self.negatives >= 1, "an integer >= 1"),
            ("init_std", self.init_std > 0.0, "> 0"),
        ]
        refuse(self, checks)


@dataclass
class Params(CommonParams):
    """UniCDR's own hyperparameters: the shared ones and the aggregator."""

    aggregator: str = "user_attention"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.aggregator not in AGGREGATORS:
            raise ValueError(f"--param aggregator must be one of {', '.join(AGGREGATORS)}, got {self.aggregator!r}")


def refuse(params: Any, checks: list[tuple[str, bool, str]]) -> None:
    """Raise naming the first `--param` whose value is outside its domain (or not finite)."""
    for name, ok, expected in checks:
        value = getattr(params, name)
        finite = not isinstance(value, float) or math.isfinite(value)
        if isinstance(value, bool) or not (ok and finite):
            raise ValueError(f"--param {name} must be {expected}, got {value!r}")


def segment_softmax(logits: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """softmax of `logits` [E] within each group of equal `rows` (E entries of n_rows groups)."""
    top = torch.full((n_rows,), -torch.inf, device=logits.device, dtype=logits.dtype)
    top = top.scatter_reduce(0, rows, logits.detach(), "amax", include_self=True)
    e = torch.exp(logits - top[rows])
    total = torch.zeros(n_rows, device=logits.device, dtype=logits.dtype).index_add(0, rows, e)
    return e / total[rows]


class Aggregator(nn.Module):
    """Agg followed by W: each row's set of item vectors pooled into one vector (0 for an empty set).

    The sets are given as an edge list: `items` [E, d] with `rows` [E] saying whose set each vector is in, so a
    batch's masked contexts and a whole domain's histories take the same path. kind "mean": (1/|C|) Σ_j v_j;
    "user_attention": Σ_j softmax_j(tanh(W_a v_j + b_a) · q_row) v_j, q the row's query (its id embedding), with
    dropout on the weights in training (`keep`, already scaled). project=False leaves out W (PPA's encoder).
    """

    def __init__(self, dim: int, kind: str, project: bool = True) -> None:
        super().__init__()
        if kind not in AGGREGATORS:
            raise ValueError(f"aggregator must be one of {', '.join(AGGREGATORS)}, got {kind!r}")
        self.kind = kind
        self.project = nn.Linear(dim, dim, bias=False) if project else None
        self.key = nn.Sequential(nn.Linear(dim, dim), nn.Tanh()) if kind == "user_attention" else None

    def forward(self, query: torch.Tensor, items: torch.Tensor, rows: torch.Tensor,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        """[R, d] pooled vectors of the R rows of `query` [R, d] from `items` [E, d] in rows `rows` [E]."""
        n_rows = query.shape[0]
        pooled = query.new_zeros(n_rows, query.shape[1])
        if self.key is None:
            count = query.new_zeros(n_rows).index_add(0, rows, torch.ones_like(rows, dtype=query.dtype))
            pooled = pooled.index_add(0, rows, items) / count.clamp(min=1.0).unsqueeze(1)
        else:
            weights = segment_softmax((self.key(items) * query[rows]).sum(-1), rows, n_rows)
            if keep is not None:
                weights = weights * keep
            pooled = pooled.index_add(0, rows, weights.unsqueeze(1) * items)
        return pooled if self.project is None else self.project(pooled)


def mix(lambda_a: float, ids: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """λ_a · id embedding + (1 - λ_a) · aggregated items (the paper's user representation, either view)."""
    return lambda_a * ids + (1.0 - lambda_a) * pooled


def seen_map(seen: torch.Tensor) -> torch.Tensor:
    """Entity -> parameter row for seen entities, -1 for unseen ones."""
    mapping = torch.full((len(seen),), -1, dtype=torch.long)
    mapping[seen] = torch.arange(int(seen.sum()))
    return mapping


def padded(mapping: torch.Tensor, n: int) -> torch.Tensor:
    """An index map extended with -1 for entities added after training (`inference.recommend_new`)."""
    return torch.cat([mapping, mapping.new_full((max(n - len(mapping), 0),), -1)])


def rows_or_mean(table: torch.Tensor, mapping: torch.Tensor, n: int) -> torch.Tensor:
    """[n, d]: the table's row for each mapped entity, the mean trained row for the others (INMO's protocol)."""
    mapping = padded(mapping, n)
    mean = table.mean(dim=0, keepdim=True)
    return torch.where((mapping >= 0).unsqueeze(1), table[mapping.clamp(min=0)], mean)


def item_lists(edges: torch.Tensor, n_users: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each user's items as a padded matrix [n_users, L] (-1 padding, L the largest degree, >= 1) and counts."""
    users, items = edges
    order = torch.argsort(users * (int(items.max()) + 1 if len(items) else 1) + items)
    users, items = users[order], items[order]
    counts = torch.bincount(users, minlength=n_users)
    starts = torch.cumsum(counts, 0) - counts
    width = max(int(counts.max()) if len(counts) else 0, 1)
    lists = torch.full((n_users, width), -1, dtype=torch.long)
    lists[users, torch.arange(len(users)) - starts[users]] = items
    return lists, counts


def cross_links(a_ids: list[str], b_ids: list[str]) -> torch.Tensor:
    """For each user of a (by index), its index in b by user id, or -1."""
    index = {key: k for k, key in enumerate(b_ids)}
    return torch.tensor([index.get(key, -1) for key in a_ids], dtype=torch.long)


@dataclass
class Context:
    """A batch's masked item sets as an edge list: items (domain indices), rows (batch positions), and the
    attention-dropout factor of each entry (None without dropout)."""

    items: torch.Tensor
    rows: torch.Tensor
    keep: torch.Tensor | None


def masked_context(lists: torch.Tensor, counts: torch.Tensor, keys: torch.Tensor, mask_rate: float, length: int,
                   exclude: torch.Tensor | None = None, keep: torch.Tensor | None = None) -> Context:
    """Interaction masking: per row, a uniform random subset of size min(length, ⌊n (1 - ρ)⌋) of its n items
    (`lists` [B, L] padded with -1, `counts` [B]), ranked by the row's uniform `keys` [B, L]; then the row's
    `exclude` item (its target) is dropped if drawn. `keep` [B, length]: attention-dropout factors."""
    width = lists.shape[1]
    columns = torch.arange(width, device=lists.device)
    keys = keys.masked_fill(columns.unsqueeze(0) >= counts.unsqueeze(1), 2.0)  # padding ranks last
    take = min(length, width)
    order = torch.argsort(keys, dim=1, stable=True)[:, :take]
    chosen = torch.gather(lists, 1, order)
    size = torch.clamp((counts.double() * (1.0 - mask_rate)).floor().long(), max=length)
    valid = torch.arange(take, device=lists.device).unsqueeze(0) < size.unsqueeze(1)
    if exclude is not None:
        valid &= chosen != exclude.unsqueeze(1)
    rows, cols = torch.nonzero(valid, as_tuple=True)
    return Context(chosen[rows, cols], rows, None if keep is None else keep[:, :take][rows, cols])


@dataclass
class DomainDraws:
    """One domain's randomness for one step (see `UniCDR.draw`)."""

    pick: torch.Tensor
    u_pos: torch.Tensor
    u_neg: torch.Tensor
    specific_keys: torch.Tensor
    shared_keys: torch.Tensor
    shift: int
    dropout: dict[str, torch.Tensor] | None


class UniCDRDomain(nn.Module):
    """One domain's own parameters: its seen users' domain-specific embeddings, the shared-space embeddings of its
    seen users that the other domain does not share, its seen items' embeddings, its specific aggregator, and
    the critic (`critic` is built by the model, so that PPA can put its decoder there)."""

    def __init__(self, n_users: int, n_local: int, n_items: int, aggregator: Aggregator, critic: nn.Module,
                 dim: int, std: float) -> None:
        super().__init__()
        self.users = nn.Parameter(torch.randn(n_users, dim) * std)
        self.local_shared = nn.Parameter(torch.randn(n_local, dim) * std)
        self.items = nn.Parameter(torch.randn(n_items, dim) * std)
        self.aggregator = aggregator
        self.critic = critic


class UniCDR(Recommender):
    """UniCDR on a pair (see the module docstring): both domains trained together, sharing the overlapping
    users' domain-shared embeddings and the shared aggregator."""

    terms = ("pred/0", "pred/1", "critic/0", "critic/1", "l2")
    shared_parameters = True
    Params = Params

    def __init__(self, pair: PairData, config: Config, device: torch.device, features: Any = None) -> None:
        super().__init__(pair, config, device)
        if config.best_epoch != "joint":
            raise ValueError(f"--best-epoch {config.best_epoch}: {type(self).__name__}'s domains share parameters "
                             "(the overlapping users' shared embeddings, the shared aggregator), so both domains "
                             "must keep one epoch; use --best-epoch joint (its default)")
        p, dim = self.params, config.dim
        self.lambda_a = p.lambda_a
        # index maps from the seen flags and E_tr only (non-persistent: nothing of them enters a checkpoint)
        overlap = pair.overlap
        self.shared_users = nn.Parameter(torch.randn(len(overlap), dim) * p.init_std)
        domains, self.user_maps, self.item_maps, self.shared_maps, self.samplers = [], [], [], [], []
        self.lists, self.counts, self.batch_sizes = [], [], []
        for d, data in enumerate(pair.domains):
            user_map, item_map = seen_map(data.user_seen), seen_map(data.item_seen)
            shared_map = torch.full((data.n_users,), -1, dtype=torch.long)
            shared_map[overlap[:, d]] = torch.arange(len(overlap))
            local = data.user_seen.clone()
            local[overlap[:, d]] = False
            shared_map[local] = len(overlap) + torch.arange(int(local.sum()))
            domains.append(UniCDRDomain(int(data.user_seen.sum()), int(local.sum()), int(data.item_seen.sum()),
                                        self.make_aggregator(), self.make_critic(), dim,
                                        p.init_std))
            train = data.edges["train"]
            lists, counts = item_lists(train, data.n_users)
            self.user_maps.append(user_map.to(device))
            self.item_maps.append(item_map.to(device))
            self.shared_maps.append(shared_map.to(device))
            self.lists.append(lists.to(device))
            self.counts.append(counts.to(device))
            pool = torch.nonzero(data.item_seen).flatten()
            self.samplers.append(TripletSampler(train, data.n_items, pool).to(device))
            self.batch_sizes.append(math.ceil(train.shape[1] / config.batches_per_epoch))
        self.domains = nn.ModuleList(domains)
        self.shared_aggregator = self.make_aggregator()
        a, b = pair.domains
        self.links = [cross_links(a.user_ids, b.user_ids).to(device), cross_links(b.user_ids, a.user_ids).to(device)]
        self.weights = self.make_weights().to(device)

    # --- the parts PPA replaces -------------------------------------------------------------------------------

    def make_aggregator(self) -> Aggregator:
        """A domain's specific aggregator, or the shared one: Agg and W of the chosen kind."""
        return Aggregator(self.config.dim, self.params.aggregator)

    def make_critic(self) -> nn.Module:
        """The bilinear critic D^d(h, g) of the contrastive term."""
        return nn.Bilinear(self.config.dim, self.config.dim, 1)

    def make_weights(self) -> torch.Tensor:
        """The factor of each of `terms`: λ per prediction loss, 1 - λ per critic loss, l2."""
        lam = self.params.lambda_loss
        return torch.tensor([lam, lam, 1.0 - lam, 1.0 - lam, self.config.l2])

    def critic_rows(self, d: int, specific: torch.Tensor, shared: torch.Tensor, shift: int) -> dict[str, torch.Tensor]:
        """Per-row contrastive loss: BCE(D(h_u, g_u), 1) + BCE(D(h_u', g_u), 0), u' = the row `shift` further."""
        critic = self.domains[d].critic
        other = torch.roll(specific, -shift, dims=0)
        positive = critic(specific, shared).squeeze(-1)
        negative = critic(other, shared).squeeze(-1)
        return {"critic": F.softplus(-positive) + F.softplus(negative)}

    # --- the interface ----------------------------------------------------------------------------------------

    @property
    def coupled(self) -> bool:
        """The overlapping users' shared embeddings and the shared aggregator tie the domains."""
        return True

    def term_weights(self) -> torch.Tensor:
        """The loss's factor of each of `terms`."""
        return self.weights

    def auxiliary_terms(self) -> list[int]:
        """The terms besides the prediction losses (the critic; PPA's prototype terms), when weighted."""
        return [k for k, name in enumerate(self.terms)
                if not name.startswith(("pred", "l2")) and float(self.weights[k]) > 0]

    def draw(self, generator: torch.Generator) -> list[DomainDraws]:
        """Per domain: B rows (user pick, positive and K negative uniforms), the uniform keys that mask the
        specific and the shared context, the critic's cyclic shift in [1, B), and the dropout masks (on h, g, the
        scored items and, for user attention, the attention weights)."""
        p, rate, dim = self.params, self.config.dropout, self.config.dim
        out = []
        for d in range(2):
            n, o, dev = self.batch_sizes[d], 1 - d, self.device
            pick = torch.randint(len(self.samplers[d].users), (n,), generator=generator, device=dev)
            u_pos = torch.rand(n, generator=generator, device=dev)
            u_neg = torch.rand(n, p.negatives, generator=generator, device=dev)
            specific_keys = torch.rand(n, self.lists[d].shape[1], generator=generator, device=dev)
            shared_keys = torch.rand(n, self.lists[o].shape[1], generator=generator, device=dev)
            shift = int(torch.randint(1, n, (1,), generator=generator, device=dev)) if n > 1 else 0
            masks = None
            if rate > 0:
                shapes = {"specific": (n, dim), "shared": (n, dim), "positive": (n, dim),
                          "negative": (n, p.negatives, dim)}
                if self.shared_aggregator.key is not None:  # dropout on the attention weights
                    shapes |= {"specific_attention": (n, p.max_context), "shared_attention": (n, p.max_context)}
                masks = {key: (torch.rand(shape, generator=generator, device=dev) >= rate).float() / (1.0 - rate)
                         for key, shape in shapes.items()}
            out.append(DomainDraws(pick, u_pos, u_neg, specific_keys, shared_keys, shift, masks))
        return out

    def shared_table(self, d: int) -> torch.Tensor:
        """Domain d's rows of the shared space: the overlapping users' (common to both domains), then its own."""
        return torch.cat([self.shared_users, self.domains[d].local_shared])

    def domain_rows(self, d: int, draws: DomainDraws) -> dict[str, torch.Tensor]:
        """Per-row losses of domain d for one step: prediction, critic (and PPA's), and the l2 penalty."""
        p, o, domain = self.params, 1 - d, self.domains[d]
        n, k = draws.u_neg.shape
        users, positives, negatives = self.samplers[d].triples((
            draws.pick.unsqueeze(1).expand(n, k), draws.u_pos.unsqueeze(1).expand(n, k), draws.u_neg))
        users, positives = users[:, 0], positives[:, 0]
        masks = draws.dropout or {}
        # domain-specific view: the user's own E_tr items in d, masked, the target removed
        specific_ctx = masked_context(self.lists[d][users], self.counts[d][users], draws.specific_keys, p.mask_rate,
                                      p.max_context, exclude=positives, keep=masks.get("specific_attention"))
        ids = domain.users[self.user_maps[d][users]]
        specific = mix(self.lambda_a, ids, domain.aggregator(
            ids, domain.items[self.item_maps[d][specific_ctx.items]], specific_ctx.rows, specific_ctx.keep))
        # domain-shared view, domain masking: only the user's E_tr items in the other domain, masked
        linked = self.links[d][users]
        has = linked >= 0
        other_users = linked.clamp(min=0)
        shared_ctx = masked_context(self.lists[o][other_users], torch.where(has, self.counts[o][other_users], 0),
                                    draws.shared_keys, p.mask_rate, p.max_context,
                                    keep=masks.get("shared_attention"))
        shared_ids = self.shared_table(d)[self.shared_maps[d][users]]
        shared = mix(self.lambda_a, shared_ids, self.shared_aggregator(
            shared_ids, self.domains[o].items[self.item_maps[o][shared_ctx.items]], shared_ctx.rows, shared_ctx.keep))
        if masks:
            specific, shared = specific * masks["specific"], shared * masks["shared"]
        r = specific + shared
        v_pos = domain.items[self.item_maps[d][positives]]
        v_neg = domain.items[self.item_maps[d][negatives]]
        if masks:
            v_pos, v_neg = v_pos * masks["positive"], v_neg * masks["negative"]
        s_pos = (r * v_pos).sum(-1)
        s_neg = (r.unsqueeze(1) * v_neg).sum(-1)
        rows = {"pred": F.softplus(-s_pos) + F.softplus(s_neg).mean(-1),
                "l2": r.pow(2).sum(-1) + v_pos.pow(2).sum(-1) + v_neg.pow(2).sum(-1).mean(-1)}
        return rows | self.critic_rows(d, specific, shared, draws.shift)

    def loss_terms(self, draws: list[DomainDraws], alpha: float | torch.Tensor) -> torch.Tensor:
        """The unweighted `terms` of one step (alpha, INMO's schedule, is not used)."""
        reduction = self.config.loss_reduction
        per_domain = [{key: reduce(value, reduction) for key, value in self.domain_rows(d, draws[d]).items()}
                      for d in range(2)]
        values = []
        for name in self.terms:
            if "/" in name:
                key, d = name.split("/")
                values.append(per_domain[int(d)][key])
            else:
                values.append(per_domain[0][name] + per_domain[1][name])
        return torch.stack(values)

    # --- validation and inference -----------------------------------------------------------------------------

    def user_representations(self, d: int, visible: list[torch.Tensor], n_users: int, n_items: list[int],
                             links: torch.Tensor) -> torch.Tensor:
        """r_u = h_u + g_u of every user of domain d, nothing masked: h from the user's visible items in d, g from
        its visible items in both domains (`visible`: each domain's edges; `links`: d's users in the other
        domain). Unseen users: the mean specific row, the shared row trained in the other domain where the user is
        seen there, else the mean shared row of d; unseen items enter as the mean item row."""
        o, domain = 1 - d, self.domains[d]
        items = [rows_or_mean(self.domains[e].items, self.item_maps[e], n_items[e]) for e in range(2)]
        ids = rows_or_mean(domain.users, self.user_maps[d], n_users)
        edges = visible[d]
        specific = mix(self.lambda_a, ids, domain.aggregator(ids, items[d][edges[1]], edges[0]))
        shared_map = padded(self.shared_maps[d], n_users)
        table = self.shared_table(d)
        shared_ids = rows_or_mean(table, shared_map, n_users)
        # a user cold in d but seen in the other domain keeps the shared embedding it has there
        linked = links.clamp(min=0)
        there = (shared_map < 0) & (links >= 0) & (self.shared_maps[o][linked] >= 0)
        shared_ids = torch.where(there.unsqueeze(1), self.shared_table(o)[self.shared_maps[o][linked].clamp(min=0)],
                                 shared_ids)
        other_edges = visible[o]
        rows_there = inverse(links, len(self.links[o]))[other_edges[0]]  # the other domain's edges' users in d
        keep = rows_there >= 0
        shared_items = torch.cat([items[d][edges[1]], items[o][other_edges[1][keep]]])
        shared_rows = torch.cat([edges[0], rows_there[keep]])
        shared = mix(self.lambda_a, shared_ids, self.shared_aggregator(shared_ids, shared_items, shared_rows))
        return specific + shared

    def factors(self, d: int, visible: list[torch.Tensor], n_users: int, n_items: list[int],
                links: torch.Tensor) -> Factors:
        """Scores r_u · v_i as the factors (r_u, v_i) (unseen items: the mean item row)."""
        r = self.user_representations(d, visible, n_users, n_items, links)
        return r, rows_or_mean(self.domains[d].items, self.item_maps[d], n_items[d])

    def validation_factors(self, d: int, alpha: float) -> Factors:
        """Scores over E_tr (both domains' training edges visible)."""
        data = self.pair.domains
        visible = [x.edges["train"].to(self.device) for x in data]
        return self.factors(d, visible, data[d].n_users, [x.n_items for x in data], self.links[d])

    def prepare_inference(self, d: int, data: DomainData | None = None, features: Any = None) -> dict[str, Any]:
        """Both domains' E_tr + E_new edges (domain d's from `data` when given, e.g. with a brand-new user), the
        sizes, and d's users' indices in the other domain by user id."""
        data = data or self.pair.domains[d]
        other = self.pair.domains[1 - d]
        visible = [None, None]
        visible[d] = data.edges_of("train", "new").to(self.device)
        visible[1 - d] = other.edges_of("train", "new").to(self.device)
        n_items = [0, 0]
        n_items[d], n_items[1 - d] = data.n_items, other.n_items
        return {"visible": visible, "n_users": data.n_users, "n_items": n_items,
                "links": cross_links(data.user_ids, other.user_ids).to(self.device)}

    def inference_factors(self, d: int, alpha: float, prepared: dict[str, Any]) -> Factors:
        """Scores of every user for every item of domain d from E_tr + E_new, without retraining."""
        return self.factors(d, prepared["visible"], prepared["n_users"], prepared["n_items"], prepared["links"])



def inverse(links: torch.Tensor, n_other: int) -> torch.Tensor:
    """The inverse of `links` (d's users -> the other domain's, -1 for none): the other domain's n_other users ->
    their index in d, or -1."""
    back = torch.full((n_other,), -1, dtype=torch.long, device=links.device)
    present = links >= 0
    back[links[present]] = torch.arange(len(links), device=links.device)[present]
    return back
