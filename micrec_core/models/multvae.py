"""Mult-VAE (Liang, Krishnan, Hoffman, Jebara: *Variational Autoencoders for Collaborative Filtering*, WWW 2018), a
baseline of the paper's Table 2: a single-domain method, so each domain of the pair trains on its own (paper §5.1).

Per domain, over the seen items I_s (equations numbered as in the Mult-VAE paper):

- generative model (Eq. 1): z_u ~ N(0, I_K), π(z_u) = softmax(f_θ(z_u)), x_u ~ Mult(N_u, π(z_u)), with f_θ the
  decoder [K -> 600 -> |I_s|] (tanh between the layers);
- multinomial log-likelihood (Eq. 2): log p_θ(x_u | z_u) = Σ_i x_ui log π_i(z_u);
- inference model: q_φ(z_u | x_u) = N(μ_φ(x_u), diag σ²_φ(x_u)), the encoder [|I_s| -> 600 -> 2K] (tanh between
  the layers) reading the user's L2-normalised history x_u / ||x_u|| under dropout;
- the annealed objective (Eq. 6): L_β(x_u; θ, φ) = E_q[log p_θ(x_u | z_u)] - β KL(q_φ(z_u | x_u) || p(z_u)), with
  one reparameterised sample z_u = μ + ε ⊙ σ, ε ~ N(0, I_K), per user and step, and the KL in closed form,
  KL = ½ Σ_k (μ_k² + σ_k² - log σ_k² - 1). The terms are nll/d = -Σ_i x_ui log π_i(z_u) and kl/d, summed over the
  batch's users (or averaged, `Config.loss_reduction`), weighted 1 and β.

Hyperparameters (the Mult-VAE paper §4.3 and its authors' code):

- `hidden` = 600 and `latent` K = 200, the paper's architecture [I -> 600 -> 200 -> 600 -> I] (its own dimension,
  so `Config.dim` is not read);
- `dropout` = 0.5 on the input units (the draws' keep mask, scaled by 1/(1 - p));
- KL annealing: β = min(`anneal_cap`, t / `total_anneal_steps`) at the step after t gradient updates, with the
  authors' anneal_cap 0.2 and total_anneal_steps 200,000 (β reaches the cap after 40,000 updates, epoch 400 at 100
  steps per epoch; total_anneal_steps = 0 fixes β at the cap); t is the buffer `steps` less one, saved with the
  model so that a resumed run continues the schedule;
- Adam at `Config.lr` (1e-3, the paper's); weights Xavier-uniform, biases N(0, 0.001²) (the authors' code);
- `Config.l2` (default 0, as the authors' Mult-VAE): l2 Σ ||W||² over the weight matrices, one term for both domains.

A step draws per domain ceil(|U_tr| / batches_per_epoch) distinct users among the seen users with an E_tr item (so
an epoch sees about every user once), their dropout masks and their ε, all from the run's generator.

Users and items not seen in training. An unseen user has no parameter in any VAE: at inference it is folded in from
its history in E_tr + E_new, encoded without dropout and without sampling (z_u = μ_φ(x_u), the paper's prediction
rule), so no retraining. The encoder has input units for the seen items only, so an interaction with an unseen item
does not enter x_u. An unseen item has no decoder row: it follows INMO's protocol for transductive baselines, the
mean of the trained output rows (weights and bias), so its logit is the mean of the seen items' logits for that user.
(The INMO authors' dropui script for Mult-VAE instead scores unseen items -inf, never recommending them.) Validation
encodes each seen user's E_tr history the same way.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from micrec_core.config import Config
from micrec_core.data.dataset import DomainData, PairData
from micrec_core.models.losses import reduce
from micrec_core.models.recommender import Recommender

CHUNK = 2048  # users encoded at once when scoring every user


@dataclasses.dataclass(frozen=True)
class Params:
    """Mult-VAE's own hyperparameters (`micrec train --param KEY=VALUE`); see the module docstring."""

    hidden: int = 600
    latent: int = 200
    dropout: float = 0.5
    anneal_cap: float = 0.2
    total_anneal_steps: int = 200_000

    def __post_init__(self) -> None:
        for name, low in (("hidden", 1), ("latent", 1), ("total_anneal_steps", 0)):
            value = getattr(self, name)
            if type(value) is not int or value < low:
                raise ValueError(f"--param {name} must be an integer >= {low}, got {value!r}")
        for name, ok, expected in (("dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
                                   ("anneal_cap", lambda v: v >= 0, ">= 0")):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and ok(value)):
                raise ValueError(f"--param {name} must be a number {expected}, got {value!r}")


@dataclasses.dataclass
class Histories:
    """Users' interacted seen items as sorted (user, column) pairs: user u's columns are cols[start[u]:start[u+1]]."""

    start: torch.Tensor
    cols: torch.Tensor
    n_cols: int

    @classmethod
    def of(cls, edges: torch.Tensor, columns: torch.Tensor, n_users: int, n_cols: int) -> Histories:
        """From [2, E] (user, item) edges; `columns` maps an item to its input column, -1 (dropped) for none."""
        users, cols = edges[0], columns[edges[1]]
        keep = cols >= 0
        users, cols = users[keep], cols[keep]
        order = torch.argsort(users * n_cols + cols)
        start = torch.zeros(n_users + 1, dtype=torch.long)
        start[1:] = torch.cumsum(torch.bincount(users, minlength=n_users), 0)
        return cls(start, cols[order], n_cols)

    def to(self, device: torch.device) -> Histories:
        """A copy on `device`."""
        return Histories(self.start.to(device), self.cols.to(device), self.n_cols)

    def rows(self, users: torch.Tensor) -> torch.Tensor:
        """The users' binary histories x_u as a dense [len(users), n_cols] matrix."""
        counts = self.start[users + 1] - self.start[users]
        row = torch.repeat_interleave(torch.arange(len(users), device=users.device), counts)
        offset = torch.cumsum(counts, 0) - counts
        pos = torch.arange(len(row), device=users.device) - offset[row] + self.start[users][row]
        out = torch.zeros(len(users), self.n_cols, device=users.device)
        out[row, self.cols[pos]] = 1.0
        return out


def multinomial_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p_θ(x_u | z_u) = -Σ_i x_ui log π_i(z_u), π = softmax(logits) (Eq. 2), per row."""
    return -(F.log_softmax(logits, dim=-1) * x).sum(-1)


def gaussian_kl(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, diag σ²) || N(0, I)) = ½ Σ_k (μ_k² + σ_k² - log σ_k² - 1), per row."""
    return 0.5 * (mu.pow(2) + log_var.exp() - log_var - 1).sum(-1)


def seen_columns(seen: torch.Tensor) -> torch.Tensor:
    """Each item's input/output unit (its rank among the seen items), -1 for an unseen item."""
    cols = torch.full((len(seen),), -1, dtype=torch.long)
    cols[seen] = torch.arange(int(seen.sum()))
    return cols


class VAE(nn.Module):
    """One domain's Mult-VAE: encoder [|I_s| -> hidden -> 2 latent] and decoder [latent -> hidden -> |I_s|]."""

    def __init__(self, data: DomainData, hidden: int, latent: int) -> None:
        super().__init__()
        self.n_units = n_items = int(data.item_seen.sum())
        self.encoder = nn.ModuleList([nn.Linear(n_items, hidden), nn.Linear(hidden, 2 * latent)])
        self.decoder = nn.ModuleList([nn.Linear(latent, hidden), nn.Linear(hidden, n_items)])
        for layer in (*self.encoder, *self.decoder):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.normal_(layer.bias, std=0.001)
        self.register_buffer("columns", seen_columns(data.item_seen), persistent=False)

    def encode(self, x: torch.Tensor, keep: torch.Tensor | None = None,
               dropout: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """μ_φ(x_u) and log σ²_φ(x_u) of histories x [n, |I_s|], dropout by a keep mask when given."""
        h = F.normalize(x, dim=-1)
        if keep is not None:
            h = h * keep / (1.0 - dropout)
        mu, log_var = self.encoder[1](torch.tanh(self.encoder[0](h))).chunk(2, dim=-1)
        return mu, log_var

    def hidden(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's hidden layer tanh(W z + b)."""
        return torch.tanh(self.decoder[0](z))

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """f_θ(z) over the seen items."""
        return self.decoder[1](self.hidden(z))

    def all_logits(self, histories: Histories, n_items: int) -> torch.Tensor:
        """[users, n_items] logits f_θ(μ_φ(x_u)) of every user with a history; items past the trained ones or
        without a unit take the mean output row (weights and bias)."""
        out = self.decoder[1]
        weight = torch.cat([out.weight, out.weight.mean(0, keepdim=True)])
        bias = torch.cat([out.bias, out.bias.mean(0, keepdim=True)])
        cols = torch.cat([self.columns, self.columns.new_full((n_items - len(self.columns),), -1)])
        index = torch.where(cols >= 0, cols, self.n_units)
        n_users = len(histories.start) - 1
        users = torch.arange(n_users, device=histories.start.device)
        chunks = []
        for k in range(0, n_users, CHUNK):
            mu, _ = self.encode(histories.rows(users[k : k + CHUNK]))
            chunks.append(F.linear(self.hidden(mu), weight, bias)[:, index])
        return torch.cat(chunks)


@dataclasses.dataclass
class Draws:
    """One step's randomness per domain: the users (rows of the E_tr histories), input keep masks, and ε."""

    users: list[torch.Tensor]
    keep: list[torch.Tensor]
    eps: list[torch.Tensor]


class MultVAE(Recommender):
    """Mult-VAE per domain (module docstring): two `VAE`s, each trained on its domain's E_tr histories."""

    terms = ("nll/0", "nll/1", "kl/0", "kl/1", "l2")
    Params = Params

    def __init__(self, pair: PairData, config: Config, device: torch.device, features: Any = None) -> None:
        super().__init__(pair, config, device)
        p = self.params
        self.domains = nn.ModuleList(VAE(data, p.hidden, p.latent) for data in pair.domains)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.train_histories, self.train_users, self.batch_sizes = [], [], []
        for data, vae in zip(pair.domains, self.domains, strict=True):
            train = data.edges["train"]
            histories = Histories.of(train, vae.columns, data.n_users, vae.n_units)
            self.train_histories.append(histories.to(device))
            users = torch.unique(train[0])
            self.train_users.append(users.to(device))
            self.batch_sizes.append(math.ceil(len(users) / config.batches_per_epoch))

    def beta(self) -> torch.Tensor:
        """β = min(anneal_cap, t / total_anneal_steps) after t = steps - 1 updates (the cap when not annealing)."""
        p = self.params
        if p.total_anneal_steps == 0:
            return torch.tensor(float(p.anneal_cap), device=self.steps.device)
        return ((self.steps - 1).clamp(min=0) / p.total_anneal_steps).clamp(max=p.anneal_cap).float()

    def term_weights(self) -> torch.Tensor:
        """1 for each nll, β for each kl, l2."""
        beta = self.beta()
        one = torch.ones((), device=beta.device)
        return torch.stack([one, one, beta, beta, one * self.config.l2])

    def used_terms(self) -> list[bool]:
        """nll and kl always (β starts at 0), l2 when on."""
        return [True, True, True, True, self.config.l2 > 0]

    def bounded_terms(self) -> list[int]:
        """The KL terms: KL >= 0, and it grows by design while β is small (the NLL is still watched)."""
        return [2, 3]

    def draw(self, generator: torch.Generator) -> Draws:
        """Per domain a batch of distinct users, their keep masks and ε; counts the step (the β schedule)."""
        self.steps += 1
        p, users, keep, eps = self.params, [], [], []
        for vae, pool, n in zip(self.domains, self.train_users, self.batch_sizes, strict=True):
            device = pool.device
            users.append(pool[torch.randperm(len(pool), generator=generator, device=device)[:n]])
            keep.append(torch.rand(n, vae.n_units, generator=generator, device=device) >= p.dropout)
            eps.append(torch.randn(n, p.latent, generator=generator, device=device))
        return Draws(users, keep, eps)

    def loss_terms(self, draws: Draws, alpha: float | torch.Tensor) -> torch.Tensor:
        """Per domain -Σ_i x_ui log π_i(z_u) (Eq. 2) and KL(q || p) over the batch, then l2 Σ ||W||²."""
        nll, kl = [], []
        for vae, histories, users, keep, eps in zip(
            self.domains, self.train_histories, draws.users, draws.keep, draws.eps, strict=True
        ):
            x = histories.rows(users)
            mu, log_var = vae.encode(x, keep, self.params.dropout)
            z = mu + eps * torch.exp(0.5 * log_var)
            nll.append(reduce(multinomial_nll(vae.logits(z), x), self.config.loss_reduction))
            kl.append(reduce(gaussian_kl(mu, log_var), self.config.loss_reduction))
        l2 = nll[0].new_zeros(())
        if self.config.l2 > 0:
            l2 = sum((p.pow(2).sum() for name, p in self.named_parameters() if name.endswith("weight")), l2)
        return torch.stack([*nll, *kl, l2])

    def validation_scores(self, d: int, alpha: float) -> torch.Tensor:
        """Every user's E_tr history encoded (μ) and decoded over every item (unseen items: the mean output row)."""
        return self.domains[d].all_logits(self.train_histories[d], self.pair.domains[d].n_items)

    def prepare_inference(self, d: int, data: DomainData | None = None,
                          features: Any = None) -> tuple[Histories, int]:
        """Every user's history over E_tr + E_new, restricted to the items with an input unit, and the item count."""
        data, vae = data or self.pair.domains[d], self.domains[d]
        columns = vae.columns.cpu()
        columns = torch.cat([columns, columns.new_full((data.n_items - len(columns),), -1)])
        histories = Histories.of(data.edges_of("train", "new"), columns, data.n_users, vae.n_units)
        return histories.to(self.device), data.n_items

    def inference_scores(self, d: int, alpha: float, prepared: tuple[Histories, int]) -> torch.Tensor:
        """Every user folded in from its E_tr + E_new history, scored for every item (unseen: the mean row)."""
        return self.domains[d].all_logits(*prepared)
