"""AlphaRec (Sheng, Zhang, Zhang, Chen, Wang, Chua: *Language Representations Can be What Recommenders Need:
Findings and Potentials*, ICLR 2025), the language-model baseline of the MICRec paper's Table 2 (§5.1; §5.2 notes
that its text encodings let it represent unseen items).

AlphaRec has no id embedding: every representation is a function of frozen language-model embeddings of the items'
text. With z_i the language embedding of item i and N_u the items user u interacted with (labels ours, as in
`book/equations.md`; the AlphaRec paper's equation numbers are not reproduced here):

- eq-alpha-user (user input): z_u = 1/|N_u| Σ_{i ∈ N_u} z_i, the mean of the user's items' language embeddings;
- eq-alpha-mlp (nonlinear projection, one MLP shared by users and items):
  e^(0) = W_2 LeakyReLU(W_1 z + b_1) + b_2, from the language space (d_lm) through a hidden layer to d = 64;
- eq-alpha-gcn (LightGCN propagation, `propagation.propagate`): E = 1/(L+1) Σ_{l=0..L} Â^l E^(0),
  Â = D^{-1/2} A D^{-1/2} over the user-item graph;
- eq-alpha-score: s(u, i) = cos(e_u, e_i), in training ("train_norm") and for ranking ("pred_norm");
- eq-alpha-infonce (the training loss, with sampled negatives S_u of size K per positive pair):
  L = -mean_{(u,i)} log [ exp(s(u,i)/τ) / (exp(s(u,i)/τ) + Σ_{j ∈ S_u} exp(s(u,j)/τ)) ].
  `losses.contrastive_loss` is the symmetric in-batch form over matched pairs (MICRec's L_CL), so it does not fit
  sampled negatives; `infonce_loss` below is this one.

Only the MLP is trained (plus, where items lack text, the fallback rows below); the language embeddings are frozen.

**Substitution.** AlphaRec's language model is text-embedding-3-large (3072-d; the paper also tries others). Here z_i
is the item text embedding of all-MiniLM-L6-v2 (384-d, normalised), the same features MICRec's §4.2 aggregation uses
(`micrec features`), so the two models see the same text. The book states this substitution.

**Hyperparameters** (`Params`, `--param KEY=VALUE`; source in brackets):
- tau = 0.15: the InfoNCE temperature [the authors' run commands for Amazon Books and Movies & TV; 0.2 for Games];
- negatives = 256: sampled negatives per positive pair, uniform over the seen items the user has no training
  interaction with, with replacement [the authors' commands, `--neg_sample 256 --infonce 1`];
- hidden_ratio = 0.5: the MLP's hidden width as a fraction of d_lm [the authors' main configuration,
  3072 -> 1536 -> 64; their code keeps the first layer's parameter count fixed across language models, which for
  384-d inputs would be a 12,288-wide hidden layer (hidden_ratio = 32), about 60x the compute per step, not the
  default here]; LeakyReLU with PyTorch's default slope 0.01, PyTorch's default Linear initialisation [their code].
Shared settings (`Config`): dim = 64 (the MLP's output, the paper's d) [both papers]; layers (default 3, the MICRec
paper's setting for every model; AlphaRec's commands use 2: `--layers 2`); lr (default 1e-3; AlphaRec's code uses
5e-4: `--lr 5e-4`); batches_per_epoch (an epoch draws |E_tr| (user, positive) pairs, as AlphaRec's loader; the batch
is |E_tr| / batches_per_epoch instead of its 4096); l2 (the shared optional penalty on the sampled final
representations, off by default; AlphaRec has none); Adam without weight decay [their code]. The loss is a mean over
the batch, as in AlphaRec's code (`loss_reduction` is MICRec's knob and is not read). MICRec's own settings
(templates, dropout, neighbours, SE, L_CL, `--tau`) do not apply. Nothing is tuned on test.

**Single-domain.** Each domain is its own AlphaRec (`self.domains[d]`, no shared parameter, `coupled` False: each
keeps its own best epoch); the two domains' losses are only summed into one optimizer step.

**Inductive by construction.** Training sees E_tr only: the graph Â and the user means z_u are built over E_tr, and
an unseen item's text is not read (its input row is zero and it has no training edge, so it shapes nothing). After
training, with E_new: an unseen item with text is represented from its text through the trained MLP; an unseen user
from the mean of its E_tr + E_new items' inputs; propagation runs over E_tr + E_new. No test or validation
interaction is read at inference. A user with no observed item has z_u = 0 (so e_u^(0) = MLP(0)).

**Items without text (a recorded fallback).** AlphaRec assumes every item has text; Electronics in the shared 2014
copy has none, and other domains miss some. An item without text gets, in place of z_i, a learned embedding in the
language space (one row of `fallback` per *seen* item without text, initialised N(0, 1/d_lm) so that its norm is
about that of the normalised text embeddings), which then goes through the same MLP and into the user means like
any z_i: an id embedding exactly where the method has no input, and nothing else changes. An unseen item without
text (or an item added after training) gets the mean of the trained fallback rows (INMO's protocol for transductive
embeddings); where every seen item has text and there are no such rows, it gets the mean of the seen items' text
embeddings. In a domain with no text at all (Electronics) the model thus becomes an MLP over item id embeddings with
users as the mean of their items' embeddings, still inductive for users. Each domain with items without text logs a
warning naming it and its share, and `notes()` reports the fallback per domain, written into the run's metrics.json
as `model_notes.text_fallback`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from micrec_core.config import Config
from micrec_core.data.dataset import DomainData, PairData
from micrec_core.models.micrec import ItemModalities, item_modalities
from micrec_core.models.propagation import normalized_adjacency, propagate
from micrec_core.models.recommender import Factors, Recommender
from micrec_core.models.sampling import TripletSampler
from micrec_core.models.sparse import SparseMatrix

log = logging.getLogger("micrec.alpharec")

TERMS = ("infonce/0", "infonce/1", "l2")
FALLBACK_RULE = (
    "items without text: a learned embedding in the language space per seen item, through the same MLP; unseen "
    "items without text: the mean of those learned rows (or, where none exist, of the seen items' text embeddings)"
)


@dataclass
class Params:
    """AlphaRec's own hyperparameters (sources in the module docstring)."""

    tau: float = 0.15
    negatives: int = 256
    hidden_ratio: float = 0.5

    def __post_init__(self) -> None:
        checks = [
            ("tau", _number(self.tau) and self.tau > 0, "a number > 0"),
            ("negatives", isinstance(self.negatives, int) and not isinstance(self.negatives, bool)
             and self.negatives >= 1, "an integer >= 1"),
            ("hidden_ratio", _number(self.hidden_ratio) and self.hidden_ratio > 0, "a number > 0"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"--param {name} must be {expected}, got {getattr(self, name)!r}")


def _number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class AlphaPhase:
    """What one domain's forward pass needs in one phase (training over E_tr, or inference over E_tr + E_new).

    text: [I, d_lm] language embeddings, zero where an item has no text or the phase does not read it;
    learned: [I] the item's row of `fallback`, -1 for none; mean: [I] items that take the fallback mean;
    user_mean: [U, I] row-normalised interactions of the phase (eq-alpha-user); adjacency: Â (eq-alpha-gcn).
    """

    n_users: int
    n_items: int
    text: torch.Tensor
    learned: torch.Tensor
    mean: torch.Tensor
    user_mean: SparseMatrix
    adjacency: SparseMatrix

    def to(self, device: torch.device) -> AlphaPhase:
        """A copy on `device`."""
        return AlphaPhase(self.n_users, self.n_items, self.text.to(device), self.learned.to(device),
                          self.mean.to(device), self.user_mean.to(device), self.adjacency.to(device))


def mean_matrix(edges: torch.Tensor, n_users: int, n_items: int) -> SparseMatrix:
    """The [U, I] matrix with 1/|N_u| at each (u, i) edge: M z_items = the users' mean inputs (eq-alpha-user);
    a user without an edge gets a zero row."""
    users, items = edges
    degree = torch.bincount(users, minlength=n_users).clamp(min=1).float()
    return SparseMatrix.from_coo(users, items, 1.0 / degree[users], (n_users, n_items))


def build_phase(edges: torch.Tensor, n_users: int, n_items: int, text: torch.Tensor, has_text: torch.Tensor,
                learned: torch.Tensor, visible: torch.Tensor | None = None) -> AlphaPhase:
    """A phase over `edges`. A visible item with text uses its text, one with a `learned` row (>= 0) that row, any
    other visible item the fallback mean; an item the phase does not see (`visible` False: unseen items in
    training) gets a zero row, its text never read (it has no edge in that phase either). Items beyond the given
    rows (added after the features were encoded or after training) have no text and no learned row."""
    def pad(x: torch.Tensor, fill: float | int | bool) -> torch.Tensor:
        return torch.cat([x, x.new_full((n_items - len(x), *x.shape[1:]), fill)])

    learned, text, has_text = pad(learned, -1), pad(text, 0.0), pad(has_text, False)
    visible = torch.ones(n_items, dtype=torch.bool) if visible is None else pad(visible, True)
    readable = has_text & visible
    return AlphaPhase(
        n_users, n_items, torch.where(readable.unsqueeze(1), text, torch.zeros_like(text)), learned,
        visible & ~readable & (learned < 0), mean_matrix(edges, n_users, n_items),
        normalized_adjacency(edges, n_users, n_items),
    )


class DomainAlpha(nn.Module):
    """One domain's AlphaRec: the MLP (eq-alpha-mlp) and, where seen items lack text, their fallback rows."""

    def __init__(self, lm_dim: int, hidden: int, dim: int, n_fallback: int, text_mean: torch.Tensor) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(lm_dim, hidden), nn.LeakyReLU(), nn.Linear(hidden, dim))
        self.fallback = nn.Parameter(torch.randn(n_fallback, lm_dim) / math.sqrt(lm_dim)) if n_fallback else None
        self.register_buffer("text_mean", text_mean, persistent=False)  # seen items' mean text, for unseen textless

    def item_inputs(self, phase: AlphaPhase) -> torch.Tensor:
        """z_i of the phase: the text, the item's fallback row, or the fallback mean."""
        z_items = phase.text
        if self.fallback is not None:
            rows = self.fallback.index_select(0, phase.learned.clamp(min=0))
            z_items = torch.where((phase.learned >= 0).unsqueeze(1), rows, z_items)
            mean = self.fallback.mean(0)
        else:
            mean = self.text_mean
        return torch.where(phase.mean.unsqueeze(1), mean, z_items)

    def inputs(self, phase: AlphaPhase) -> tuple[torch.Tensor, torch.Tensor]:
        """z_u, z_i of the phase (eq-alpha-user: a user's input is the mean of its items')."""
        z_items = self.item_inputs(phase)
        return phase.user_mean @ z_items, z_items

    def forward(self, phase: AlphaPhase, layers: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Final representations e_u, e_i (before the cosine): inputs -> MLP -> LightGCN propagation.

        The MLP's first layer is linear, so W_1 z_u = mean of W_1 z_i over the user's items: it is applied to the
        items only and averaged for the users (a user without items gets W_1 0 = 0 either way), the same function
        at a fraction of the cost (users outnumber items)."""
        first = self.mlp[0]
        projected = self.item_inputs(phase) @ first.weight.T
        hidden = torch.cat([phase.user_mean @ projected, projected]) + first.bias
        reps = propagate(self.mlp[2](self.mlp[1](hidden)), phase.adjacency, layers)
        return reps[: phase.n_users], reps[phase.n_users :]


def cosine_factors(r_users: torch.Tensor, r_items: torch.Tensor) -> Factors:
    """eq-alpha-score for every user and item, cos(e_u, e_i), as the factors of a dot product: the unit vectors."""
    return F.normalize(r_users, dim=-1), F.normalize(r_items, dim=-1)


def infonce(positive: torch.Tensor, negative: torch.Tensor, tau: float) -> torch.Tensor:
    """eq-alpha-infonce from the scores: positive [n] = s(u, i), negative [n, K] = s(u, j) for j in S_u; the
    denominator holds the positive and the K negatives; the mean over the n pairs."""
    logits = torch.cat([positive.unsqueeze(1), negative], dim=1) / tau
    return (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()


def infonce_loss(users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, tau: float) -> torch.Tensor:
    """eq-alpha-infonce from representations: users, positives [n, d], negatives [n, K, d], cosine scores."""
    u, p, n = (F.normalize(x, dim=-1) for x in (users, positives, negatives))
    return infonce((u * p).sum(-1), torch.einsum("nd,nkd->nk", u, n), tau)


@dataclass
class Draws:
    """One step's randomness per domain: user picks [n], positive uniforms [n], negative uniforms [n, K]."""

    domains: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


class AlphaRec(Recommender):
    """AlphaRec per domain over our item text embeddings (see the module docstring)."""

    terms = TERMS
    union = False
    Params = Params

    def __init__(self, pair: PairData, config: Config, device: torch.device,
                 features: list[ItemModalities] | None = None) -> None:
        super().__init__(pair, config, device)
        p = self.params
        given = features or [item_modalities(pair.path, d.name) for d in pair.domains]
        self.text = [f.text.float() for f in given]
        self.text_mask = [f.text_mask.bool() for f in given]
        models, self.learned, self.fallback_notes = [], [], {}
        self.train_phases, self.samplers, self.batch_sizes = [], [], []
        for data, text, mask in zip(pair.domains, self.text, self.text_mask, strict=True):
            lm_dim = text.shape[1] or config.dim  # features always carry the encoder's width; guard a 0-wide one
            text = text if text.shape[1] else text.new_zeros(len(text), lm_dim)
            without = data.item_seen & ~mask
            learned = torch.full((data.n_items,), -1, dtype=torch.long)
            learned[without] = torch.arange(int(without.sum()))
            seen_text = data.item_seen & mask
            text_mean = text[seen_text].mean(0) if bool(seen_text.any()) else text.new_zeros(lm_dim)
            hidden = max(1, round(p.hidden_ratio * lm_dim))
            models.append(DomainAlpha(lm_dim, hidden, config.dim, int(without.sum()), text_mean))
            self.learned.append(learned)
            self.fallback_notes[data.name] = self._note(data, mask)
            train = data.edges["train"]
            self.train_phases.append(
                build_phase(train, data.n_users, data.n_items, text, mask, learned, data.item_seen).to(device))
            pool = torch.nonzero(data.item_seen).flatten()
            self.samplers.append(TripletSampler(train, data.n_items, pool).to(device))
            self.batch_sizes.append(math.ceil(train.shape[1] / config.batches_per_epoch))
        self.domains = nn.ModuleList(models)
        self.weights = torch.tensor([1.0, 1.0, config.l2], device=device)

    @staticmethod
    def _note(data: DomainData, mask: torch.Tensor) -> dict[str, Any]:
        """The fallback of one domain, for `notes()`; logs a warning when the domain has items without text."""
        without = ~mask[: data.n_items]
        n = int(without.sum())
        share = n / data.n_items if data.n_items else 0.0
        if n:
            log.warning("alpharec: domain %s: %d of %d items (%.2f%%) have no text; %s", data.name, n, data.n_items,
                        100 * share, FALLBACK_RULE)
        return {
            "items": data.n_items, "items_without_text": n, "share_without_text": share,
            "learned_rows": int((without & data.item_seen).sum()),
            "unseen_items_without_text": int((without & ~data.item_seen).sum()), "fallback_used": n > 0,
        }

    def notes(self) -> dict[str, Any]:
        """How this run met items without text, per domain (metrics.json `model_notes`)."""
        return {"text_fallback": self.fallback_notes, "text_fallback_rule": FALLBACK_RULE}

    def term_weights(self) -> torch.Tensor:
        """InfoNCE of each domain, then l2 (0 unless set)."""
        return self.weights

    def draw(self, generator: torch.Generator) -> Draws:
        """Per domain: users (uniform over users with a training edge), positives, K negatives per pair."""
        k = self.params.negatives
        out = []
        for sampler, n in zip(self.samplers, self.batch_sizes, strict=True):
            device = sampler.items.device
            out.append((torch.randint(len(sampler.users), (n,), generator=generator, device=device),
                        torch.rand(n, generator=generator, device=device),
                        torch.rand(n, k, generator=generator, device=device)))
        return Draws(out)

    def loss_terms(self, draws: Draws, alpha: float | torch.Tensor) -> torch.Tensor:
        """[InfoNCE domain 0, InfoNCE domain 1, l2] for one step's draws (alpha is not used)."""
        c, tau = self.config, self.params.tau
        terms, l2 = [], torch.zeros((), device=self.device)
        for d, (pick, u_pos, u_neg) in enumerate(draws.domains):
            r_users, r_items = self.domains[d](self.train_phases[d], c.layers)
            k = u_neg.shape[1]
            users, positives, negatives = self.samplers[d].triples(
                (pick.unsqueeze(1).expand(-1, k), u_pos.unsqueeze(1).expand(-1, k), u_neg))
            users, positives = users[:, 0], positives[:, 0]
            # the same as infonce_loss on the gathered rows, without materialising [n, K, d]: normalise each row
            # once, score the batch's users against every item, then pick the positive and negative columns
            cosines = F.normalize(r_users, dim=-1)[users] @ F.normalize(r_items, dim=-1).T
            picked = cosines.gather(1, torch.cat([positives.unsqueeze(1), negatives], dim=1))
            terms.append(infonce(picked[:, 0], picked[:, 1:], tau))
            if c.l2 > 0:
                ru, rp, rn = r_users[users], r_items[positives], r_items[negatives]
                l2 = l2 + (ru.pow(2).sum(-1) + rp.pow(2).sum(-1) + rn.pow(2).sum(-1).mean(-1)).mean()
        return torch.stack([*terms, l2])

    def validation_factors(self, d: int, alpha: float) -> Factors:
        """Cosine scores over the training phase (E_tr)."""
        return cosine_factors(*self.domains[d](self.train_phases[d], self.config.layers))

    def prepare_inference(self, d: int, data: DomainData | None = None,
                          features: ItemModalities | None = None) -> AlphaPhase:
        """The phase over E_tr + E_new where every item's text is read (an item added after the features were
        encoded, or after training, has none and takes the fallback mean)."""
        data = data or self.pair.domains[d]
        text, mask = (self.text[d], self.text_mask[d]) if features is None else (features.text, features.text_mask)
        lm_dim = self.domains[d].mlp[0].in_features
        if text.shape[1] != lm_dim:
            text = text.new_zeros(len(text), lm_dim)
        phase = build_phase(data.edges_of("train", "new"), data.n_users, data.n_items, text.float(), mask.bool(),
                            self.learned[d])
        return phase.to(self.device)

    def representations(self, d: int, alpha: float, phase: AlphaPhase) -> tuple[torch.Tensor, torch.Tensor]:
        """e_u, e_i of every user and item of domain d over `phase`."""
        return self.domains[d](phase, self.config.layers)

    def inference_factors(self, d: int, alpha: float, prepared: AlphaPhase) -> Factors:
        """Cosine scores over E_tr + E_new."""
        return cosine_factors(*self.representations(d, alpha, prepared))
