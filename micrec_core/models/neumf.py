"""NeuMF (He, Liao, Zhang, Nie, Hu, Chua: *Neural Collaborative Filtering*, WWW 2017), a baseline of the paper's
Table 2: a single-domain, transductive method, so each domain of the pair trains on its own (paper §5.1).

Per domain, with equations numbered as in the NCF paper:

- GMF (Eq. 8): φ^GMF = p_u^G ⊙ q_i^G;
- MLP (Eq. 10): z_1 = [p_u^M; q_i^M], z_l = ReLU(W_l^T z_{l-1} + b_l) for l = 2..L, φ^MLP = z_L;
- NeuMF (Eq. 12): ŷ_ui = σ(h^T [φ^GMF; φ^MLP]), the two towers with separate embeddings fused by one linear layer
  (no bias); the model ranks by the logit h^T [φ^GMF; φ^MLP] (σ is monotone);
- the log loss (Eq. 7): L = -Σ_{(u,i) ∈ Y ∪ Y^-} y_ui log ŷ_ui + (1 - y_ui) log(1 - ŷ_ui), over each sampled positive
  of E_tr (y = 1) and its sampled negatives (y = 0), summed over the batch (or averaged, `Config.loss_reduction`).

Hyperparameters (NCF §4.1, at predictive factors = `Config.dim` = 64):

- GMF embeddings of size dim (64); an MLP tower of `mlp_layers` = 3 ReLU layers halving in width, 256 -> 128 -> 64,
  the last one the predictive factor, fed by MLP embeddings of half the first width (128) per side: NCF's own example
  (factor 8: layers 32 -> 16 -> 8, embeddings of size 16) scaled to 64;
- `negatives` = 4 sampled negatives per positive (NCF §4.1), uniform over the seen items the user has no E_tr
  interaction with;
- every embedding and weight drawn from N(0, `init_std`^2), init_std = 0.01 (NCF §4.1), biases 0;
- Adam at `Config.lr` (1e-3, within NCF's grid), trained from scratch: NCF's best variant pre-trains GMF and MLP and
  then fine-tunes NeuMF with SGD (the INMO authors' code pre-trains each tower 100 epochs), a three-stage schedule
  left out here; NCF also reports NeuMF without pre-training, which this is;
- `Config.l2` (default 0; NCF uses none): l2 ||Θ||² over every embedding table and weight (not the MLP biases),
  one term for both domains.

A batch holds ceil(|E_tr| / batches_per_epoch) positives per domain, each a uniform seen user with an E_tr item and
one of its E_tr items (`sampling.TripletSampler`, as INMO's code samples), so an epoch draws |E_tr| positives as an
NCF epoch does.

Unseen users and items: NeuMF has no parameter for them (it is transductive) and specifies no initialisation, so
they follow INMO's protocol for transductive baselines: in each of the four embedding tables an unseen user or item
takes the mean of the trained rows. NeuMF reads no interaction of E_new, so every unseen user scores as the mean
user and every unseen item as the mean item. Scoring all users x all items runs the MLP over every pair: it runs
once per distinct row (the seen users and the mean user against the seen items and the mean item), in chunks of at
most CHUNK pairs so that memory stays bounded, and is spread to every user and item.
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
from micrec_core.models.sampling import Triple, TripletSampler

CHUNK = 1 << 16  # (user, item) pairs the MLP scores at once when scoring every pair


@dataclasses.dataclass(frozen=True)
class Params:
    """NeuMF's own hyperparameters (`micrec train --param KEY=VALUE`); see the module docstring."""

    negatives: int = 4
    mlp_layers: int = 3
    init_std: float = 0.01

    def __post_init__(self) -> None:
        for name in ("negatives", "mlp_layers"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"--param {name} must be an integer >= 1, got {value!r}")
        if not (isinstance(self.init_std, int | float) and math.isfinite(self.init_std) and self.init_std > 0):
            raise ValueError(f"--param init_std must be a number > 0, got {self.init_std!r}")


def seen_rows(seen: torch.Tensor) -> torch.Tensor:
    """Each entity's row in a table of the seen entities, -1 for an unseen one."""
    rows = torch.full((len(seen),), -1, dtype=torch.long)
    rows[seen] = torch.arange(int(seen.sum()))
    return rows


def mean_row_index(rows: torch.Tensor, n: int) -> torch.Tensor:
    """Indices into a table of the seen rows followed by their mean: `rows` (-1 for unseen) extended to n entities
    (those added after training are unseen), an unseen entity pointing at the mean row."""
    rows = torch.cat([rows, rows.new_full((n - len(rows),), -1)])
    return torch.where(rows >= 0, rows, int((rows >= 0).sum()))


def with_mean(table: torch.Tensor) -> torch.Tensor:
    """The table with the mean of its rows appended (INMO's protocol for an unseen entity)."""
    return torch.cat([table, table.mean(0, keepdim=True)])


class Towers(nn.Module):
    """One domain's NeuMF: GMF and MLP embeddings of its seen users and items, the MLP tower and h (Eq. 12)."""

    def __init__(self, data: DomainData, dim: int, layers: int, std: float) -> None:
        super().__init__()
        n_users, n_items = int(data.user_seen.sum()), int(data.item_seen.sum())
        widths = [dim * 2 ** (layers - 1 - k) for k in range(layers)]
        size = max(1, widths[0] // 2)
        self.gmf_users = nn.Parameter(torch.randn(n_users, dim) * std)
        self.gmf_items = nn.Parameter(torch.randn(n_items, dim) * std)
        self.mlp_users = nn.Parameter(torch.randn(n_users, size) * std)
        self.mlp_items = nn.Parameter(torch.randn(n_items, size) * std)
        self.mlp = nn.ModuleList(nn.Linear(a, b) for a, b in zip([2 * size, *widths[:-1]], widths, strict=True))
        for layer in self.mlp:
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)
        self.h = nn.Parameter(torch.randn(dim + widths[-1]) * std)
        self.register_buffer("user_rows", seen_rows(data.user_seen), persistent=False)
        self.register_buffer("item_rows", seen_rows(data.item_seen), persistent=False)

    def tower(self, first: torch.Tensor) -> torch.Tensor:
        """φ^MLP (Eq. 10) from the first layer's pre-activation W_2^T z_1 + b_2."""
        z = torch.relu(first)
        for layer in self.mlp[1:]:
            z = torch.relu(layer(z))
        return z

    def logits(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """h^T [φ^GMF; φ^MLP] (Eq. 12 before σ) of (user, item) pairs given as seen rows, of any equal shape."""
        gmf = self.gmf_users[users] * self.gmf_items[items]
        mlp = self.tower(self.mlp[0](torch.cat([self.mlp_users[users], self.mlp_items[items]], -1)))
        dim = gmf.shape[-1]
        return gmf @ self.h[:dim] + mlp @ self.h[dim:]

    def all_logits(self, n_users: int, n_items: int) -> torch.Tensor:
        """[n_users, n_items] logits of every user for every item; entities past the trained ones are unseen, and
        unseen users and items take the mean rows."""
        gmf_users, gmf_items = with_mean(self.gmf_users), with_mean(self.gmf_items)
        mlp_users, mlp_items = with_mean(self.mlp_users), with_mean(self.mlp_items)
        first, size = self.mlp[0], mlp_users.shape[1]
        # W_2^T [p; q] + b_2 = W_2^T[:, :size] p + b_2 + W_2^T[:, size:] q: each side once, then added per pair
        user_part = F.linear(mlp_users, first.weight[:, :size], first.bias)
        item_part = F.linear(mlp_items, first.weight[:, size:])
        dim = gmf_users.shape[1]
        block = (gmf_users * self.h[:dim]) @ gmf_items.T
        step = max(1, CHUNK // len(item_part))
        # added into the one [U, I] block in place: results kept between the chunks' freed intermediates fragmented
        # the CPU heap (19 GB resident for a 9,484 x 6,791 domain; 1.0 GB so)
        for k in range(0, len(user_part), step):
            block[k : k + step] += self.tower(user_part[k : k + step, None] + item_part) @ self.h[dim:]
        return block[mean_row_index(self.user_rows, n_users)][:, mean_row_index(self.item_rows, n_items)]


class NeuMF(Recommender):
    """NeuMF per domain (module docstring): two `Towers`, each trained on its domain's E_tr with the log loss."""

    terms = ("logloss/0", "logloss/1", "l2")
    Params = Params

    def __init__(self, pair: PairData, config: Config, device: torch.device, features: Any = None) -> None:
        super().__init__(pair, config, device)
        p = self.params
        self.domains = nn.ModuleList(Towers(data, config.dim, p.mlp_layers, p.init_std) for data in pair.domains)
        self.samplers, self.batch_sizes = [], []
        for data, towers in zip(pair.domains, self.domains, strict=True):
            train = data.edges["train"]
            rows = torch.stack([towers.user_rows[train[0]], towers.item_rows[train[1]]])
            n_items = int(data.item_seen.sum())
            self.samplers.append(TripletSampler(rows, n_items, torch.arange(n_items)).to(device))
            self.batch_sizes.append(math.ceil(train.shape[1] / config.batches_per_epoch))
        self.weights = torch.tensor([1.0, 1.0, config.l2], device=device)

    def term_weights(self) -> torch.Tensor:
        """Both domains' log losses, and l2."""
        return self.weights

    def draw(self, generator: torch.Generator) -> list[Triple]:
        """Per domain: the positives' user picks and positive uniforms [n], and `negatives` uniforms per positive."""
        k = self.params.negatives
        draws = []
        for sampler, n in zip(self.samplers, self.batch_sizes, strict=True):
            pick, u_pos, u_neg = sampler.draw(n, generator)
            more = torch.rand(n, k - 1, generator=generator, device=u_neg.device)
            draws.append((pick, u_pos, torch.cat([u_neg[:, None], more], 1)))
        return draws

    def loss_terms(self, draws: list[Triple], alpha: float | torch.Tensor) -> torch.Tensor:
        """Eq. 7 per domain over the batch's positives and their negatives, then l2 ||Θ||² (0 when l2 is off)."""
        terms = []
        for towers, sampler, (pick, u_pos, u_neg) in zip(self.domains, self.samplers, draws, strict=True):
            k = u_neg.shape[1]
            users, positives, negatives = sampler.triples(
                (pick[:, None].expand(-1, k), u_pos[:, None].expand(-1, k), u_neg))
            positive = towers.logits(users[:, 0], positives[:, 0])
            negative = towers.logits(users, negatives)
            values = torch.cat([F.softplus(-positive), F.softplus(negative).flatten()])  # -log σ(x), -log(1 - σ(x))
            terms.append(reduce(values, self.config.loss_reduction))
        l2 = self.weights.new_zeros(())
        if self.config.l2 > 0:
            l2 = sum((p.pow(2).sum() for name, p in self.named_parameters() if not name.endswith("bias")), l2)
        return torch.stack([*terms, l2])

    def validation_scores(self, d: int, alpha: float) -> torch.Tensor:
        """Every user's logits for every item (NeuMF reads no graph: the same as at inference)."""
        data = self.pair.domains[d]
        return self.domains[d].all_logits(data.n_users, data.n_items)

    def inference_scores(self, d: int, alpha: float, prepared: DomainData) -> torch.Tensor:
        """Every user's logits for every item, unseen users and items through the mean rows."""
        return self.domains[d].all_logits(prepared.n_users, prepared.n_items)
