"""IDCF (Wu, Zhang, Gao, Yan, Zha: *Towards Open-World Recommendation: An Inductive Model-Based Collaborative Filtering
Approach*, ICML 2021), an inductive baseline of the paper's Table 2 (§5.1), trained on each domain on its own.

IDCF factorises the interactions of a set of *key* users, then learns an attention-based relation model that
expresses any other (*query*) user through the key users' embeddings from its interaction history, so that a new
user needs no parameter of its own and no gradient step.

**Key users** are the seen users with the most E_tr interactions (IDCF's choice; ties: lower index): a share
`--param key_users` of them (default 0.5). The authors' Amazon-Beauty split makes users with >= 30 interactions key
users; on our 10-core domains that is 0.4-2 % of the seen users (measured on the synthetic pair, Toys x Video Games
and Food x Kitchen), too few to span d = 64, so we keep the rule and choose the share; the top half of the seen users
hold 65-74 % of E_tr there.

**Items, the INMO protocol.** IDCF itself handles new users only; INMO's evaluation also needs unseen items, and the
INMO authors' IDCF run (`WuYunfan/igcn_cf`, `IDCF_LGCN`) treats items exactly as users. So do we: *key items* are the
seen items with the most E_tr interactions, a share `--param key_items` (default 1.0: the factorisation covers every
seen item, as IDCF's covers all items), and every item gets a relation model estimate from the key users it
interacted with, through its own relation model over the key items.

**Stage 1, the factorisation** (IDCF's first model, its MF variant: the inner product), p_u for u in K_U and q_i for
i in K_I:

    s(u, i) = p_u^T q_i,   trained with BPR on E_tr ∩ (K_U x K_I)        (the key users' part of the rating matrix)

**Stage 2, the relation model** (IDCF's second model), the factorisation frozen (its embeddings are the "meta
latents"). A user's history summary is the mean of its key items' embeddings over its observed interactions (the
authors' code: the mean of the history's item embeddings), then H heads of attention over the key users, and an
output map:

    m_u       = mean_{i in N(u) ∩ K_I} q_i                                   (0 for a user without a key item)
    a^h_{u,k} = softmax_{k in K_U, k != u} ( (W_q^h m_u)^T (W_k^h p_k) )
    p~_u      = W_o [ Σ_k a^h_{u,k} W_v^h p_k ]_{h = 1..H}

and symmetrically q~_i from m_i = mean_{u in N(i) ∩ K_U} p_u and attention over the key items. Every user and item,
key or not, seen or not, is represented by its estimate, and s(u, i) = p~_u^T q~_i. A key never attends to itself
(leave-one-out): its estimate is made as a new entity's would be, from its history and the other keys (the INMO
authors draw 50 random keys per head, so an entity rarely meets itself; the exclusion is the deterministic form).
Stage 2 minimises, over the relation models only,

    BPR over E_tr on p~_u^T q~_i  +  λ (L_C^users + L_C^items),
    L_C^users = Σ (or mean, by `--loss-reduction`) over sampled key users u of
                [ log Σ_{k in K_U} exp(p~_u^T p_k) - p~_u^T p_u ]

(IDCF's contrastive regulariser: a key user's estimate from its history should single out its own factorised
embedding among the key users'; items alike), BPR and L_C reduced alike, so λ weighs one sampled key against one
triple: λ = 1e-3, the INMO authors' value for IDCF (their BPR and L_C are both batch means; the IDCF authors'
Amazon script adds 10 x a batch-mean L_C to a summed loss over 2,048 samples, ~5e-3 a sample).

**Why every entity goes through the relation model** (IDCF scores a key user by p_u): we measured IDCF's mixed
scoring, keys by their factorised embedding and query entities by their estimate, on the synthetic default (60 or
50 epochs): the unseen items' estimates were on another scale than the frozen q's and filled every top-20 (test
NDCG@20 0.047-0.049 against most popular's 0.097 on Synthetic_Gadgets, seen-item NDCG 0.003-0.008), and with half
of the seen items as queries stage 2 learnt "query item => low score" from the rarest seen items and carried it to
the (random) unseen ones (unseen-item NDCG 0.0). Scoring everyone through one function, as the INMO authors' run
does, is what lets seen and unseen entities be compared; the keys' embeddings remain the relation model's memory.

**Stages inside the trainer's loop (our decision).** The first `--param pretrain_epochs` epochs (default 30) train
stage 1 only, the rest stage 2 only; the number of steps taken is a registered buffer of each domain (`steps`), so a
checkpoint resumes in the right stage. Each step computes both stages' terms and back-propagates the active one; the
other is recorded without a gradient, so every history key has a value from the first epoch on (the trainer's
divergence check compares each term with its first epoch) and the history's total adds the frozen stage's terms.
Validation and inference score with the same representation in either stage, so a per-domain best epoch is the model
it was validated as (during stage 1 the relation model is untrained and validation is low). `pretrain_epochs` must
stay below `--patience`, so that early stopping cannot end a run before its second stage starts. We do not reuse a
finished LightGCN run of this project as the pretrained part, although the INMO authors' IDCF does (`lgcn_path`):
IDCF factorises the key users' interactions only, while our LightGCN run embeds every seen user and item and adds
graph propagation IDCF does not have; and a run that needs another run's folder could not be trained, resumed or
tested on its own. `--layers` and `--dropout` are therefore unused (IDCF's MF variant has neither), and so is alpha.

**Unseen users and items**: at inference the summaries m are taken over E_tr + E_new (an unseen user's key items in
E_new; an unseen item's key users), and the trained relation models map them to p~ and q~, with no gradient step and
no parameter of their own; they were isolated during training, so nothing about them shaped a parameter. Attention
always covers all keys (the IDCF authors sample 500 keys per query while training, for speed only; our domains are
small enough for the exact softmax, computed 1,024 query rows at a time when scoring everyone).

**Hyperparameters** (d = `--dim`, 64): H = `--param heads` 4 (the IDCF authors' `head_num`, INMO's `n_headers`);
λ = `--param contrast_weight` 1e-3 (INMO's config); `pretrain_epochs` 30 (ours: by then the factorisation's BPR
is down to a fifth of its first epoch's on the synthetic default, still falling slowly; the authors pretrain to
convergence in a separate script, which our trainer's single early-stopping loop cannot mirror); key shares
0.5 / 1.0 (above); Adam with `--lr` 1e-3 (INMO's config for IDCF; the authors' Amazon script uses 1e-4 with weight
decay); `--l2` 0 (INMO used 1e-4: the squared norms of the active stage's sampled representations, set it to
follow). Embeddings ~ N(0, 0.1) (this project's and INMO's init), attention and output maps Xavier-normal (the IDCF
authors' init). Nothing is tuned on test.
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
from micrec_core.models.micrec import _padded
from micrec_core.models.recommender import Factors, Recommender
from micrec_core.models.sampling import Triple, TripletSampler
from micrec_core.models.sparse import SparseMatrix
from micrec_core.models.templates import _pick

CHUNK = 1024  # query rows per attention pass when scoring everyone (bounds the [H, rows, K] weights in memory)


def _number(value: object) -> bool:
    """An int or float that is not a bool, and finite."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class Params:
    """IDCF's own hyperparameters (`--param KEY=VALUE`), see the module docstring."""

    key_users: float = 0.5
    key_items: float = 1.0
    heads: int = 4
    contrast_weight: float = 1e-3
    pretrain_epochs: int = 30

    def __post_init__(self) -> None:
        checks = [
            ("key_users", _number(self.key_users) and 0.0 < self.key_users <= 1.0, "in (0, 1]"),
            ("key_items", _number(self.key_items) and 0.0 < self.key_items <= 1.0, "in (0, 1]"),
            ("heads", isinstance(self.heads, int) and not isinstance(self.heads, bool) and self.heads >= 1,
             "an integer >= 1"),
            ("contrast_weight", _number(self.contrast_weight) and self.contrast_weight >= 0.0, ">= 0"),
            ("pretrain_epochs", isinstance(self.pretrain_epochs, int) and not isinstance(self.pretrain_epochs, bool)
             and self.pretrain_epochs >= 1, "an integer >= 1"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"--param {name} must be {expected}, got {getattr(self, name)!r}")


class Relation(nn.Module):
    """IDCF's multi-head attention from history summaries m to key embeddings: W_o [Σ_k a^h_k W_v^h e_k]_h."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.empty(heads, dim, dim))
        self.key = nn.Parameter(torch.empty(heads, dim, dim))
        self.value = nn.Parameter(torch.empty(heads, dim, dim))
        with torch.no_grad():
            for weight in (self.query, self.key, self.value):
                for head in weight:
                    nn.init.xavier_normal_(head)
        self.out = nn.Linear(heads * dim, dim, bias=False)
        nn.init.xavier_normal_(self.out.weight)

    def attention(self, m: torch.Tensor, keys: torch.Tensor, own: torch.Tensor | None = None) -> torch.Tensor:
        """[H, n, K] a^h_{u,k} = softmax_{k != own(u)}((W_q^h m_u)^T (W_k^h e_k)); `own`: each row's own key index
        (-1 for a row that is not a key), left out of its attention."""
        q = torch.einsum("nd,hed->hne", m, self.query)
        k = torch.einsum("kd,hed->hke", keys, self.key)
        logits = q @ k.transpose(1, 2)
        if own is not None:
            itself = own.unsqueeze(1) == torch.arange(keys.shape[0], device=own.device)
            logits = logits.masked_fill(itself, float("-inf"))
        return torch.softmax(logits, dim=-1)

    def forward(self, m: torch.Tensor, keys: torch.Tensor, own: torch.Tensor | None = None) -> torch.Tensor:
        """[n, d] estimates W_o [Σ_k a^h_{u,k} W_v^h e_k]_h of the rows of m (own keys left out).

        The weights are `attention`'s, fused with the values by `scaled_dot_product_attention` (scale 1: the logits
        are plain inner products), which never holds the [H, n, K] weights: 2-2.5x faster forward and backward on
        a CPU for a 4,750-key domain, equal to the explicit form within float rounding (bench/RESULTS.md).
        """
        q = torch.einsum("nd,hed->hne", m, self.query)
        k = torch.einsum("kd,hed->hke", keys, self.key)
        values = torch.einsum("kd,hed->hke", keys, self.value)
        others = None if own is None else own.unsqueeze(1) != torch.arange(keys.shape[0], device=own.device)
        mixed = F.scaled_dot_product_attention(q[None], k[None], values[None], attn_mask=others, scale=1.0)[0]
        return self.out(mixed.transpose(0, 1).reshape(m.shape[0], -1))


@dataclass
class Phase:
    """What the relation model reads in one phase (E_tr, or E_tr + E_new): each user's mean over its key items
    ([U, |K_I|] row-normalised) and each item's mean over its key users ([I, |K_U|])."""

    n_users: int
    n_items: int
    user_history: SparseMatrix
    item_history: SparseMatrix


def history(rows: torch.Tensor, cols: torch.Tensor, n_rows: int, key_map: torch.Tensor) -> SparseMatrix:
    """[n_rows, n_keys] matrix averaging, per row, its neighbours that are keys (rows without one stay empty)."""
    n_keys = int((key_map >= 0).sum())
    key_col = key_map[cols]
    keep = key_col >= 0
    rows, key_col = rows[keep], key_col[keep]
    count = torch.bincount(rows, minlength=n_rows).clamp(min=1).float()
    return SparseMatrix.from_coo(rows, key_col, 1.0 / count[rows], (n_rows, n_keys))


def build_phase(edges: torch.Tensor, n_users: int, n_items: int, user_key: torch.Tensor, item_key: torch.Tensor,
                device: torch.device) -> Phase:
    """The history matrices over `edges`, key maps padded with -1 for entities added after training."""
    users, items = edges
    return Phase(
        n_users, n_items,
        history(users, items, n_users, _padded(item_key.cpu(), n_items)).to(device),
        history(items, users, n_items, _padded(user_key.cpu(), n_users)).to(device),
    )


class DomainIDCF(nn.Module):
    """One domain's IDCF: key maps, the factorisation (p for key users, q for key items), a relation model per side,
    and the number of training steps taken (which decides the stage)."""

    def __init__(self, data: DomainData, config: Config, params: Params) -> None:
        super().__init__()
        train = data.edges["train"]
        user_degree = torch.bincount(train[0], minlength=data.n_users).double()
        item_degree = torch.bincount(train[1], minlength=data.n_items).double()
        self.register_buffer("user_key", _pick(data.user_seen, user_degree, params.key_users))
        self.register_buffer("item_key", _pick(data.item_seen, item_degree, params.key_items))
        n_key_users, n_key_items = int((self.user_key >= 0).sum()), int((self.item_key >= 0).sum())
        if n_key_users < 2 or n_key_items < 2:
            raise ValueError(f"{data.name}: --param key_users={params.key_users} and key_items={params.key_items} "
                             f"leave {n_key_users} key users and {n_key_items} key items; IDCF needs at least two of "
                             "each (a key attends to the others)")
        d = config.dim
        self.user_emb = nn.Parameter(torch.randn(n_key_users, d) * 0.1)
        self.item_emb = nn.Parameter(torch.randn(n_key_items, d) * 0.1)
        self.user_relation = Relation(d, params.heads)
        self.item_relation = Relation(d, params.heads)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def _side(self, side: str) -> tuple[torch.Tensor, torch.Tensor, Relation, torch.Tensor]:
        """(key map, own factorised embeddings, relation model, the other side's embeddings) of "user" or "item"."""
        if side == "user":
            return self.user_key, self.user_emb, self.user_relation, self.item_emb
        return self.item_key, self.item_emb, self.item_relation, self.user_emb

    def summaries(self, phase: Phase, side: str) -> torch.Tensor:
        """m of every user (or item) of the phase: the mean of its key neighbours' (frozen) embeddings."""
        _, _, _, other = self._side(side)
        return (phase.user_history if side == "user" else phase.item_history) @ other.detach()

    def estimates(self, m: torch.Tensor, side: str, own: torch.Tensor) -> torch.Tensor:
        """p~ (or q~) of the rows of m: the relation model over the (frozen) key embeddings, each row's own key
        (`own`, -1 for none) left out."""
        _, embeddings, relation, _ = self._side(side)
        return relation(m, embeddings.detach(), own)

    def representations(self, phase: Phase, side: str, rows: torch.Tensor,
                        m: torch.Tensor | None = None) -> torch.Tensor:
        """r of `rows`: the relation model's estimate from the row's history summary, over the keys but itself."""
        key_map = self._side(side)[0]
        n = phase.n_users if side == "user" else phase.n_items
        m = self.summaries(phase, side) if m is None else m
        return self.estimates(m.index_select(0, rows), side, _padded(key_map, n)[rows])

    def everyone(self, phase: Phase, side: str) -> torch.Tensor:
        """r of every user (or item) of the phase, the attention computed CHUNK rows at a time."""
        n = phase.n_users if side == "user" else phase.n_items
        m = self.summaries(phase, side)
        rows = torch.arange(n, device=m.device)
        return torch.cat([self.representations(phase, side, part, m) for part in rows.split(CHUNK)])

    def factors(self, phase: Phase) -> Factors:
        """p~_u^T q~_i as the factors (p~_u, q~_i) of a dot product."""
        return self.everyone(phase, "user"), self.everyone(phase, "item")


@dataclass
class Draws:
    """One step's randomness per domain: the stage (1 or 2), the factorisation's BPR draws (stage 1, over the key
    core), the relation model's BPR draws (stage 2, over all of E_tr), and the key users and key
    items sampled for L_C. Both stages are drawn every step (the inactive one is recorded, not trained)."""

    stage: list[int]
    mf: list[Triple]
    relation: list[Triple]
    contrast_users: list[torch.Tensor]
    contrast_items: list[torch.Tensor]


def _distinct_representations(domain: DomainIDCF, phase: Phase, side: str,
                               rows: list[torch.Tensor]) -> list[torch.Tensor]:
    """The representations of each index tensor in `rows`, the relation model run once per distinct entity (a
    step's rows repeat: popular positives, keys sampled for L_C that are also BPR rows)."""
    distinct, inverse = torch.unique(torch.cat(rows), return_inverse=True)
    every = domain.representations(phase, side, distinct)[inverse]
    return list(every.split([len(r) for r in rows]))


class IDCF(Recommender):
    """IDCF on each domain of the pair on its own, in two stages (see the module docstring)."""

    terms = ("mf/0", "mf/1", "bpr/0", "bpr/1", "contrast/0", "contrast/1", "l2/0", "l2/1")
    Params = Params

    def __init__(self, pair: PairData, config: Config, device: torch.device,
                 features: list[object] | None = None) -> None:
        super().__init__(pair, config, device)
        params = self.params
        if params.pretrain_epochs >= config.patience:
            raise ValueError(f"--param pretrain_epochs ({params.pretrain_epochs}) must be below --patience "
                             f"({config.patience}): early stopping could end the run before its second stage")
        self.domains = nn.ModuleList(DomainIDCF(data, config, params) for data in pair.domains)
        self.pretrain_steps = params.pretrain_epochs * config.batches_per_epoch
        self.train_phases, self.mf_samplers, self.relation_samplers = [], [], []
        self.mf_batch, self.relation_batch, self.key_users, self.key_items = [], [], [], []
        for data, domain in zip(pair.domains, self.domains, strict=True):
            train = data.edges["train"]
            core = (domain.user_key[train[0]] >= 0) & (domain.item_key[train[1]] >= 0)
            key_items = torch.nonzero(domain.item_key >= 0).flatten()
            self.mf_samplers.append(TripletSampler(train[:, core], data.n_items, key_items).to(device))
            self.relation_samplers.append(
                TripletSampler(train, data.n_items, torch.nonzero(data.item_seen).flatten()).to(device))
            self.mf_batch.append(math.ceil(int(core.sum()) / config.batches_per_epoch))
            self.relation_batch.append(math.ceil(train.shape[1] / config.batches_per_epoch))
            self.key_users.append(torch.nonzero(domain.user_key >= 0).flatten().to(device))
            self.key_items.append(key_items.to(device))
            self.train_phases.append(build_phase(train, data.n_users, data.n_items, domain.user_key,
                                                 domain.item_key, device))
        l2, lam = config.l2, params.contrast_weight
        self.weights = torch.tensor([1.0, 1.0, 1.0, 1.0, lam, lam, l2, l2], device=device)

    def term_weights(self) -> torch.Tensor:
        """Stage 1's BPR, stage 2's BPR and λ L_C per domain, and `--l2` (each stage trains only its own terms)."""
        return self.weights

    def used_terms(self) -> list[bool]:
        """Both stages' terms every epoch (the inactive one recorded without a gradient), l2 when `--l2` > 0."""
        on = self.config.l2 > 0
        return [True] * 4 + [self.params.contrast_weight > 0] * 2 + [on, on]

    def stage(self, d: int) -> int:
        """1 while domain d has taken fewer than `pretrain_epochs` epochs of steps, then 2."""
        return 1 if int(self.domains[d].steps) < self.pretrain_steps else 2

    def draw(self, generator: torch.Generator) -> Draws:
        """Per domain: the stage, the factorisation's and the relation model's BPR draws, then the sampled keys."""
        draws = Draws([], [], [], [], [])
        for d in range(len(self.domains)):
            n = self.relation_batch[d]
            draws.stage.append(self.stage(d))
            draws.mf.append(self.mf_samplers[d].draw(self.mf_batch[d], generator))
            draws.relation.append(self.relation_samplers[d].draw(n, generator))
            draws.contrast_users.append(
                torch.randint(len(self.key_users[d]), (n,), generator=generator, device=self.device))
            draws.contrast_items.append(
                torch.randint(len(self.key_items[d]), (n,), generator=generator, device=self.device))
        return draws

    def _mf_terms(self, d: int, raw: Triple) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 1: BPR of p_u^T q_i over the key core, and the squared norms of the sampled embeddings."""
        domain, reduction = self.domains[d], self.config.loss_reduction
        u, i, j = self.mf_samplers[d].triples(raw)
        pu = gather(domain.user_emb, domain.user_key[u])
        qi, qj = gather(domain.item_emb, domain.item_key[i]), gather(domain.item_emb, domain.item_key[j])
        l2 = reduce(pu.pow(2).sum(-1) + qi.pow(2).sum(-1) + qj.pow(2).sum(-1), reduction)
        return bpr_loss(pu, qi, qj, reduction), l2

    def _relation_terms(self, d: int, raw: Triple, users: torch.Tensor,
                        items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stage 2: BPR of p~_u^T q~_i over E_tr (the factorisation frozen), L_C over the sampled key users and key
        items, and the squared norms of the sampled representations.

        A key's estimate in L_C is its representation (its history, the other keys), so each side's BPR rows and
        sampled keys are estimated once per distinct entity (`_distinct_representations`)."""
        domain, phase, reduction = self.domains[d], self.train_phases[d], self.config.loss_reduction
        u, i, j = self.relation_samplers[d].triples(raw)
        ru, key_users = _distinct_representations(domain, phase, "user", [u, self.key_users[d][users]])
        ri, rj, key_items = _distinct_representations(domain, phase, "item", [i, j, self.key_items[d][items]])
        l2 = reduce(ru.pow(2).sum(-1) + ri.pow(2).sum(-1) + rj.pow(2).sum(-1), reduction)
        contrast = ru.new_zeros(())
        for estimates, picks, own in ((key_users, users, domain.user_emb), (key_items, items, domain.item_emb)):
            logits = estimates @ own.detach().T
            own_logit = logits.gather(1, picks.unsqueeze(1)).squeeze(1)
            contrast = contrast + reduce(torch.logsumexp(logits, -1) - own_logit, reduction)
        return bpr_loss(ru, ri, rj, reduction), contrast, l2

    def loss_terms(self, draws: Draws, alpha: float | torch.Tensor) -> torch.Tensor:
        """Both stages' terms per domain; only the domain's active stage carries a gradient. A step taken with
        gradients enabled (a training step) advances the domain's step count."""
        mf, bpr, contrast, l2 = [], [], [], []
        for d, stage in enumerate(draws.stage):
            with torch.set_grad_enabled(torch.is_grad_enabled() and stage == 1):
                mf_term, mf_l2 = self._mf_terms(d, draws.mf[d])
            with torch.set_grad_enabled(torch.is_grad_enabled() and stage == 2):
                bpr_term, contrast_term, relation_l2 = self._relation_terms(
                    d, draws.relation[d], draws.contrast_users[d], draws.contrast_items[d])
            mf.append(mf_term)
            bpr.append(bpr_term)
            contrast.append(contrast_term)
            l2.append(mf_l2 if stage == 1 else relation_l2)
            if torch.is_grad_enabled():
                self.domains[d].steps += 1
        return torch.stack([*mf, *bpr, *contrast, *l2])

    def validation_factors(self, d: int, alpha: float) -> Factors:
        """p~_u^T q~_i over the training histories (E_tr)."""
        return self.domains[d].factors(self.train_phases[d])

    def prepare_inference(self, d: int, data: DomainData | None = None, features: object = None) -> Phase:
        """The histories over E_tr + E_new with every user and item."""
        data = data or self.pair.domains[d]
        domain = self.domains[d]
        return build_phase(data.edges_of("train", "new"), data.n_users, data.n_items, domain.user_key,
                           domain.item_key, self.device)

    def inference_factors(self, d: int, alpha: float, prepared: Phase) -> Factors:
        """p~_u^T q~_i over E_tr + E_new: every user and item (unseen ones included) through the relation models."""
        return self.domains[d].factors(prepared)
