"""MICRec and the baselines it is built from, as one model family: templates (§4.1) -> modality aggregation (§4.2) ->
LightGCN -> the joint loss (§4.3).

A *phase* fixes what the model may see. Training sees E_tr and the seen users and items only; inference sees
E_tr + E_new and every user and item. Template maps are chosen once from the training data and frozen, so an
unseen user or item is represented at inference from its template neighbours without any new parameter.

Variants (Config): MICRec; ablations no-mm (no aggregation), no-cd (no contrastive loss), no-vis / no-txt (one
modality in the similarity); INMO (no aggregation, no contrastive loss); LightGCN (transductive id embeddings,
unseen users/items get the mean of the trained embeddings, INMO's protocol for transductive baselines).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from micrec_core.config import Config
from micrec_core.data.dataset import DomainData, PairData
from micrec_core.models.aggregation import aggregate
from micrec_core.models.losses import TERMS, LossInputs, Projector, gather, loss_terms, term_weights
from micrec_core.models.propagation import normalized_adjacency, propagate
from micrec_core.models.recommender import Factors, Recommender
from micrec_core.models.sampling import Triple, TripletSampler
from micrec_core.models.similarity import top_k_similar, user_features
from micrec_core.models.sparse import SparseMatrix
from micrec_core.models.templates import Templates, connections, edge_keep, select_templates, template_representation


@dataclass
class ItemModalities:
    """Item features of one domain as tensors; a dropped modality has an all-False mask."""

    text: torch.Tensor
    text_mask: torch.Tensor
    image: torch.Tensor
    image_mask: torch.Tensor


@dataclass
class Phase:
    """Everything a forward pass of one domain needs for one phase (training or inference)."""

    n_users: int
    n_items: int
    adjacency: SparseMatrix
    user_conn: SparseMatrix | None
    item_conn: SparseMatrix | None
    user_neighbours: tuple[torch.Tensor, torch.Tensor] | None
    item_neighbours: tuple[torch.Tensor, torch.Tensor] | None

    def to(self, device: torch.device) -> Phase:
        """A copy on `device`."""
        return Phase(
            self.n_users, self.n_items, self.adjacency.to(device),
            None if self.user_conn is None else self.user_conn.to(device),
            None if self.item_conn is None else self.item_conn.to(device),
            _pair_to(self.user_neighbours, device), _pair_to(self.item_neighbours, device),
        )


def _pair_to(
    pair: tuple[torch.Tensor, torch.Tensor] | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A (neighbour indices, validity) pair on `device`."""
    return None if pair is None else (pair[0].to(device), pair[1].to(device))


def neighbours(
    feats: ItemModalities, candidates: torch.Tensor, k: int, w: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-K most similar entities among `candidates` by the §4.2 similarity, never the entity itself."""
    n = len(feats.text_mask)
    if not (feats.text_mask.any() or feats.image_mask.any()):  # no usable modality at all: no neighbours
        return torch.zeros(n, k, dtype=torch.long), torch.zeros(n, k, dtype=torch.bool)
    return top_k_similar(feats.text, feats.text_mask, feats.image, feats.image_mask, k, candidates, w=w)


def user_modalities(edges: torch.Tensor, n_users: int, items: ItemModalities) -> ItemModalities:
    """§4.2: user features = mean features of the items the user interacted with in the visible edges."""
    text, text_mask = user_features(edges[0], edges[1], n_users, items.text, items.text_mask)
    image, image_mask = user_features(edges[0], edges[1], n_users, items.image, items.image_mask)
    return ItemModalities(text, text_mask, image, image_mask)


def build_phase(
    data: DomainData,
    edges: torch.Tensor,
    templates: Templates | None,
    items: ItemModalities | None,
    config: Config,
    user_candidates: torch.Tensor,
    item_candidates: torch.Tensor,
) -> Phase:
    """The graph, template connections and modality neighbours over `edges` (E_tr, or E_tr + E_new)."""
    n_users, n_items = data.n_users, data.n_items
    user_conn = item_conn = user_nbrs = item_nbrs = None
    if templates is not None:
        user_conn = connections(edges[0], edges[1], n_users, _padded(templates.item_map, n_items))
        item_conn = connections(edges[1], edges[0], n_items, _padded(templates.user_map, n_users))
    if config.aggregate and items is not None:
        users = user_modalities(edges, n_users, items)
        user_nbrs = neighbours(users, user_candidates, config.k_neighbours, config.w_text)
        item_nbrs = neighbours(items, item_candidates, config.k_neighbours, config.w_text)
    return Phase(
        n_users, n_items, normalized_adjacency(edges, n_users, n_items), user_conn, item_conn, user_nbrs, item_nbrs
    )


class DomainModel(nn.Module):
    """The learnable parameters of one domain: template embeddings and biases (or LightGCN's id table)."""

    def __init__(self, data: DomainData, templates: Templates | None, config: Config) -> None:
        super().__init__()
        d = config.dim
        self.templates = templates
        if templates is None:
            self.register_buffer("user_map", _seen_map(data.user_seen))
            self.register_buffer("item_map", _seen_map(data.item_seen))
            self.user_emb = nn.Parameter(torch.randn(int(data.user_seen.sum()), d) * 0.1)
            self.item_emb = nn.Parameter(torch.randn(int(data.item_seen.sum()), d) * 0.1)
        else:
            self.user_templates = nn.Parameter(torch.randn(templates.n_users, d) * 0.1)
            self.item_templates = nn.Parameter(torch.randn(templates.n_items, d) * 0.1)
            self.user_bias = nn.Parameter(torch.randn(d) * 0.1)
            self.item_bias = nn.Parameter(torch.randn(d) * 0.1)
            self.se_weight = nn.Parameter(torch.ones(d) if config.se_weight == "diagonal" else torch.eye(d))

    def dropout_masks(
        self, phase: Phase, dropout: float, generator: torch.Generator | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Edge-dropout masks of C_users then C_items for one training step (none for id-embedding models)."""
        if self.templates is None:
            return None, None
        return edge_keep(phase.user_conn, dropout, generator), edge_keep(phase.item_conn, dropout, generator)

    def initial(
        self, phase: Phase, alpha: float | torch.Tensor, dropout: float = 0.0,
        keeps: tuple[torch.Tensor | None, ...] = (None, None),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x_u, x_i before aggregation: Eq. 1-2 for template models, id embeddings (mean for unseen) otherwise."""
        if self.templates is None:
            return (
                _with_mean(self.user_emb, self.user_map, phase.n_users),
                _with_mean(self.item_emb, self.item_map, phase.n_items),
            )
        return (
            template_representation(phase.user_conn, self.item_templates, self.user_bias, alpha, dropout, keeps[0]),
            template_representation(phase.item_conn, self.user_templates, self.item_bias, alpha, dropout, keeps[1]),
        )

    def forward(
        self, phase: Phase, layers: int, alpha: float, dropout: float = 0.0,
        keeps: tuple[torch.Tensor | None, ...] = (None, None),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Final representations r_u, r_i: initial -> Eq. 5 aggregation (when the phase has neighbours) -> LightGCN."""
        x_users, x_items = self.initial(phase, alpha, dropout, keeps)
        return finish(phase, x_users, x_items, layers)


def finish(
    phase: Phase, x_users: torch.Tensor, x_items: torch.Tensor, layers: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """From x_u, x_i: Eq. 5 aggregation (when the phase has neighbours), then LightGCN propagation."""
    if phase.user_neighbours is not None:
        x_users = aggregate(x_users, *phase.user_neighbours)
    if phase.item_neighbours is not None:
        x_items = aggregate(x_items, *phase.item_neighbours)
    reps = propagate(torch.cat([x_users, x_items]), phase.adjacency, layers)
    return reps[: phase.n_users], reps[phase.n_users :]


def _padded(mapping: torch.Tensor, n: int) -> torch.Tensor:
    """An index map extended with -1 (not a template / no parameter) for entities added after training."""
    return torch.cat([mapping, mapping.new_full((n - len(mapping),), -1)])


def _seen_map(seen: torch.Tensor) -> torch.Tensor:
    """Index map entity -> embedding row for seen entities, -1 for unseen ones."""
    mapping = torch.full((len(seen),), -1, dtype=torch.long)
    mapping[seen] = torch.arange(int(seen.sum()))
    return mapping


def _with_mean(table: torch.Tensor, mapping: torch.Tensor, n: int) -> torch.Tensor:
    """Rows of `table` for mapped entities, the mean trained row for the others (unseen, or added after training)."""
    mapping = _padded(mapping, n)
    mean = table.mean(dim=0, keepdim=True)
    return torch.where((mapping >= 0).unsqueeze(1), table[mapping.clamp(min=0)], mean)


UNSEEN_INITS = ("mean", "random")  # how a transductive model meets an entity with no trained row


def xavier_std(table: torch.Tensor) -> float:
    """The standard deviation of a Xavier-uniform initialisation of a [rows, d] table, sqrt(2 / (rows + d))."""
    return math.sqrt(2.0 / sum(table.shape))


def id_rows(
    table: torch.Tensor, mapping: torch.Tensor, n: int, unseen_init: str, std: float, generator: torch.Generator
) -> torch.Tensor:
    """Rows of an id-embedding table for n entities: the trained row of a mapped entity; for the others (unseen, or
    added after training) the mean trained row ("mean", INMO's protocol) or a N(0, std²) row ("random", drawn from the
    CPU `generator` in entity order)."""
    if unseen_init == "mean":
        return _with_mean(table, mapping, n)
    if unseen_init != "random":
        raise ValueError(f"unseen_init must be one of {', '.join(UNSEEN_INITS)}, got {unseen_init!r}")
    mapping = _padded(mapping, n)
    noise = torch.randn(n, table.shape[1], generator=generator).to(table.device, table.dtype) * std
    return torch.where((mapping >= 0).unsqueeze(1), table[mapping.clamp(min=0)], noise)


def item_modalities(dataset: Path, domain: str) -> ItemModalities:
    """Load a domain's item features written by `micrec features`."""
    from micrec_core.data.features import load_features  # the encoders' libraries load only for models that need them

    feats = load_features(dataset, domain)
    return ItemModalities(
        torch.as_tensor(feats.text), torch.as_tensor(feats.text_mask),
        torch.as_tensor(feats.image), torch.as_tensor(feats.image_mask),
    )


def ablate(feats: ItemModalities, config: Config) -> ItemModalities:
    """Drop the modality an ablation removes (no-vis: images, no-txt: text) by clearing its mask."""
    return ItemModalities(
        feats.text, feats.text_mask & config.use_text, feats.image, feats.image_mask & config.use_image
    )


@dataclass
class Draws:
    """The randomness of one optimizer step, drawn before any arithmetic so a batched run can replay it.

    Per domain: edge-dropout masks and the raw draws of the BPR and SE batches (`TripletSampler.draw`); then the
    positions in U_o of the overlapping users for L_CL.
    """

    keeps: list[tuple[torch.Tensor | None, torch.Tensor | None]]
    bpr: list[Triple]
    se: list[Triple | None]
    cl_pick: torch.Tensor | None


class MICRecFamily(Recommender):
    """MICRec, INMO and LightGCN (`Config.model`, with MICRec's ablations): two domain models and the projectors
    f^A, f^B of the contrastive loss, with the training graphs, modality neighbours and samplers built from E_tr.

    Unseen users and items: template models represent them from their template neighbours in E_tr + E_new
    (eq-template-user, eq-template-item) with no parameter of their own; LightGCN gives them the mean of the
    trained embeddings (INMO's protocol for transductive baselines).
    """

    terms = TERMS
    union = True

    def __init__(self, pair: PairData, config: Config, device: torch.device,
                 features: list[ItemModalities] | None = None) -> None:
        super().__init__(pair, config, device)
        if config.contrastive and len(pair.overlap) < 2:
            raise ValueError(
                f"{pair.path}: the domains share {len(pair.overlap)} seen user(s), and the contrastive loss needs at "
                "least 2; train the no-cd ablation (--ablation no-cd) or --gamma-cl 0 to run without it"
            )
        models = []
        for data in pair.domains:
            templates = None
            if config.model != "lightgcn":
                templates = select_templates(data.edges["train"], data.user_seen, data.item_seen, config.template_ratio)
            models.append(DomainModel(data, templates, config))
        self.domains = nn.ModuleList(models)
        self.projectors = nn.ModuleList([Projector(config.dim, config.cl_normalize) for _ in range(2)])
        if not config.aggregate:
            self.features: list[ItemModalities | None] = [None, None]
        else:
            given = features or [item_modalities(pair.path, d.name) for d in pair.domains]
            self.features = [ablate(f, config) for f in given]
        self.train_phases, self.bpr_samplers, self.se_samplers, self.batch_sizes = [], [], [], []
        for data, domain_model, feats in zip(pair.domains, self.domains, self.features, strict=True):
            train = data.edges["train"]
            templates = domain_model.templates
            self.train_phases.append(
                build_phase(data, train, templates, feats, config, data.user_seen, data.item_seen).to(device))
            self.bpr_samplers.append(
                TripletSampler(train, data.n_items, torch.nonzero(data.item_seen).flatten()).to(device))
            self.batch_sizes.append(math.ceil(train.shape[1] / config.batches_per_epoch))
            if templates is None:
                self.se_samplers.append(None)
                continue
            tu, ti = templates.user_map[train[0]], templates.item_map[train[1]]
            keep = (tu >= 0) & (ti >= 0)
            self.se_samplers.append(TripletSampler(torch.stack([tu[keep], ti[keep]]), templates.n_items,
                                                   torch.arange(templates.n_items)).to(device))
        self.tau = config.temperature((pair.domains[0].name, pair.domains[1].name))
        self.overlap = pair.overlap.to(device)
        self.weights = term_weights(config).to(device)

    @property
    def coupled(self) -> bool:
        """L_CL is on and at least two overlapping users can be contrasted."""
        return self.config.contrastive and len(self.overlap) > 1

    def term_weights(self) -> torch.Tensor:
        """eq-joint's factors of `losses.TERMS`."""
        return self.weights

    def used_terms(self) -> list[bool]:
        """BPR always; SE for template models with beta > 0; L_CL when coupled; l2 when l2 > 0."""
        c = self.config
        se = [self.se_samplers[d] is not None and c.beta_se > 0 for d in range(2)]
        return [True, True, *se, self.coupled, c.l2 > 0]

    def auxiliary_terms(self) -> list[int]:
        """L_CL, whose gradient the history compares with BPR + SE's."""
        return [TERMS.index("cl")] if self.coupled else []

    def bounded_terms(self) -> list[int]:
        """L_CL when its projections are normalised (then L_CL >= 2 ln(n-1) - 4/tau)."""
        return [TERMS.index("cl")] if self.config.cl_normalize else []

    def draw(self, generator: torch.Generator) -> Draws:
        """Edge-dropout masks, BPR and SE batches per domain, then the overlapping users for L_CL."""
        c = self.config
        keeps, bpr, se = [], [], []
        for d, domain in enumerate(self.domains):
            keeps.append(domain.dropout_masks(self.train_phases[d], c.dropout, generator))
            bpr.append(self.bpr_samplers[d].draw(self.batch_sizes[d], generator))
            sampler = self.se_samplers[d]
            se.append(sampler.draw(self.batch_sizes[d], generator) if sampler is not None and c.beta_se > 0 else None)
        cl_pick = None
        if self.coupled:
            cl_pick = torch.randperm(len(self.overlap), generator=generator, device=self.device)[: c.cl_users]
        return Draws(keeps, bpr, se, cl_pick)

    def loss_terms(self, draws: Draws, alpha: float | torch.Tensor) -> torch.Tensor:
        """The unweighted terms of eq-joint (`losses.TERMS`) for one step's draws."""
        c = self.config
        inputs = []
        for d, domain in enumerate(self.domains):
            r_users, r_items = domain(self.train_phases[d], c.layers, alpha, c.dropout, draws.keeps[d])
            templates = None if domain.templates is None else (domain.user_templates, domain.item_templates)
            weight = None if domain.templates is None else domain.se_weight
            se = draws.se[d]
            inputs.append(LossInputs(
                r_users, r_items, self.bpr_samplers[d].triples(draws.bpr[d]), templates, weight,
                None if se is None else self.se_samplers[d].triples(se),  # type: ignore[union-attr]
            ))
        cl_users = None
        if draws.cl_pick is not None:
            chosen = self.overlap[draws.cl_pick]
            cl_users = (gather(inputs[0].r_users, chosen[:, 0]), gather(inputs[1].r_users, chosen[:, 1]))
        return loss_terms(c, self.tau, inputs, cl_users, lambda d, r: self.projectors[d](r))

    def validation_factors(self, d: int, alpha: float) -> Factors:
        """r_u · r_i over the training phase."""
        return self.domains[d](self.train_phases[d], self.config.layers, alpha)

    def prepare_inference(self, d: int, data: DomainData | None = None,
                          features: ItemModalities | None = None) -> Phase:
        """The phase over E_tr + E_new with every user and item visible (optionally for an extended domain: an item
        added after the features were encoded gets a featureless row, so it has no modality neighbour)."""
        data = data or self.pair.domains[d]
        everyone_u = torch.ones(data.n_users, dtype=torch.bool)
        everyone_i = torch.ones(data.n_items, dtype=torch.bool)
        feats = features if features is not None else self.features[d]
        if feats is not None and len(feats.text_mask) < data.n_items:
            extra = data.n_items - len(feats.text_mask)
            feats = ItemModalities(*(torch.cat([t, t.new_zeros(extra, *t.shape[1:])]) for t in (
                feats.text, feats.text_mask, feats.image, feats.image_mask)))
        phase = build_phase(data, data.edges_of("train", "new"), self.domains[d].templates, feats, self.config,
                            everyone_u, everyone_i)
        return phase.to(self.device)

    def representations(self, d: int, alpha: float, phase: Phase) -> tuple[torch.Tensor, torch.Tensor]:
        """r_u, r_i of every user and item of domain d over `phase`."""
        return self.domains[d](phase, self.config.layers, alpha)

    def inference_factors(self, d: int, alpha: float, prepared: Phase) -> Factors:
        """r_u · r_i over E_tr + E_new."""
        return self.representations(d, alpha, prepared)


def alpha_at(epoch: int) -> float:
    """INMO's schedule for the normalisation exponent: alpha = 1 - 0.99^epoch / 2 (0.5 -> 1.0)."""
    return 1.0 - 0.5 * 0.99**epoch
