"""Inductive inference without retraining (paper §3) and test evaluation (paper §5.2).

After training, E_new arrives: each model scores every user for every item of a domain from E_tr + E_new with its
trained parameters (`Recommender.prepare_inference`, `inference_scores`; MICRec rebuilds its template connections,
modality neighbours and graph over them with the frozen template maps). Each user's E_tr, E_new and E_val items are
masked and all items of the domain ranked by score, a block of users at a time when the model's score is a dot
product (`Recommender.inference_factors`), so memory is bounded by a block of scores, not by |U| x |I|.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch

from micrec_core.data.dataset import DomainData
from micrec_core.evaluation.metrics import block_users, group_metrics, low_degree_mask, score_rows, topk_blocked
from micrec_core.models.micrec import Phase
from micrec_core.models.recommender import Factors
from micrec_core.models.setup import Setup


@torch.no_grad()
def representations(s: Setup, d: int, alpha: float, phase: Phase | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """r_u, r_i of every user and item of domain d at inference (MICRec's family; over `phase` when already built)."""
    s.model.eval()
    return s.model.representations(d, alpha, phase or s.model.prepare_inference(d))  # type: ignore[attr-defined]


def _finite(values: dict[str, Any]) -> dict[str, Any]:
    """Replace NaN (a group with no user) by None so the JSON stays standard."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in values.items()}


def observed_degree(data: DomainData) -> torch.Tensor:
    """Each item's number of observed interactions at inference, |E_tr + E_new| per item."""
    return torch.bincount(data.edges_of("train", "new")[1], minlength=data.n_items)


def test_metrics(
    data: DomainData, scores: torch.Tensor | Factors, ns: list[int], block_elements: int | None = None
) -> dict[str, dict[str, Any]]:
    """Rank all items by `scores` ([U, I], masked in place, or factors) with E_tr, E_new and E_val masked, users in
    blocks of at most `block_elements` (default `metrics.BLOCK_ELEMENTS`) scores; metrics on E_test for every group.

    Low-degree items are the bottom 25% of items by E_tr + E_new frequency (ties by item index), paper Table 4.
    """
    device = (scores if isinstance(scores, torch.Tensor) else scores[0]).device
    known = data.edges_of("train", "new", "val").to(device)
    top = topk_blocked(score_rows(scores), data.n_users, data.n_items, known[0], known[1],
                       min(max(ns), data.n_items), block_users(data.n_items, block_elements))
    test = data.edges["test"].to(device)
    groups = group_metrics(
        top, test[0], test[1], data.n_items, [n for n in ns if n <= top.shape[1]],
        data.user_seen.to(device), data.item_seen.to(device), low_degree_mask(observed_degree(data)).to(device),
    )
    return {group: _finite(values) for group, values in groups.items()}


@torch.no_grad()
def inference_scores(s: Setup, alphas: list[float], prepared: list[Any] | None = None) -> list[torch.Tensor]:
    """Every user's scores for every item at inference, per domain ([U, I] each), without retraining; `prepared`:
    each domain's `model.prepare_inference(d)` when already built (e.g. the inference graphs of MICRec)."""
    s.model.eval()
    prepared = prepared or [s.model.prepare_inference(d) for d in range(len(s.pair.domains))]
    return [s.model.inference_scores(d, alphas[d], prepared[d]) for d in range(len(s.pair.domains))]


@torch.no_grad()
def evaluate_test(
    s: Setup, alphas: list[float], prepared: list[Any] | None = None, block_elements: int | None = None
) -> dict[str, dict[str, dict[str, Any]]]:
    """Test metrics per domain and group (all, seen/unseen users, seen/unseen items, low-degree items).

    `prepared`: each domain's `model.prepare_inference(d)` when already built, else it is built here. A model with
    factors is scored `block_elements` scores at a time; one without through its dense [U, I] scores.
    """
    s.model.eval()
    results = {}
    for d, data in enumerate(s.pair.domains):
        ready = prepared[d] if prepared else s.model.prepare_inference(d)
        factors = s.model.inference_factors(d, alphas[d], ready)
        scores = factors if factors is not None else s.model.inference_scores(d, alphas[d], ready)
        results[data.name] = test_metrics(data, scores, s.config.eval_ns, block_elements)
    return results


def most_popular(data: DomainData, ns: list[int]) -> dict[str, dict[str, Any]]:
    """The most-popular baseline: every user gets items ranked by their E_tr + E_new frequency (the factors
    1 x degree, so no [U, I] matrix is held)."""
    degree = observed_degree(data).float()
    return test_metrics(data, (torch.ones(data.n_users, 1), degree.unsqueeze(1)), ns)


def _extend(data: DomainData, side: str, neighbours: list[str]) -> DomainData:
    """A copy of the domain with one new unseen user (side='user') or item (side='item') and its edges."""
    other_ids = data.item_ids if side == "user" else data.user_ids
    index = {key: k for k, key in enumerate(other_ids)}
    unknown = [key for key in neighbours if key not in index]
    if unknown:
        raise ValueError(f"unknown {'items' if side == 'user' else 'users'} in domain {data.name}: {unknown[:5]}")
    others = torch.tensor([index[key] for key in neighbours], dtype=torch.long)
    if side == "user":
        new_edges = torch.stack([torch.full_like(others, data.n_users), others])
        return replace(
            data, user_ids=[*data.user_ids, "<new user>"], user_seen=torch.cat([data.user_seen, torch.tensor([False])]),
            edges={**data.edges, "new": torch.cat([data.edges["new"], new_edges], dim=1)},
        )
    new_edges = torch.stack([others, torch.full_like(others, data.n_items)])
    return replace(
        data, item_ids=[*data.item_ids, "<new item>"], item_seen=torch.cat([data.item_seen, torch.tensor([False])]),
        edges={**data.edges, "new": torch.cat([data.edges["new"], new_edges], dim=1)},
    )


@torch.no_grad()
def recommend_new(
    s: Setup, domain: str, alphas: list[float], items: list[str] | None = None, users: list[str] | None = None,
    n: int = 10,
) -> list[tuple[str, float]]:
    """Top-n for a brand-new user given its items (or users for a brand-new item), without retraining."""
    if (items is None) == (users is None):
        raise ValueError("pass exactly one of items= (a new user's history) or users= (a new item's users)")
    names = [d.name for d in s.pair.domains]
    if domain not in names:
        raise ValueError(f"domain must be one of {names}, got {domain!r}")
    d = names.index(domain)
    data = _extend(s.pair.domains[d], "user" if items is not None else "item", items or users or [])
    s.model.eval()
    everyone = s.model.inference_scores(d, alphas[d], s.model.prepare_inference(d, data))
    if items is not None:
        scores, ids, exclude = everyone[-1], data.item_ids, set(items)
    else:
        scores, ids, exclude = everyone[:, -1], data.user_ids, set(users or [])
    order = torch.argsort(scores, descending=True, stable=True).tolist()
    return [(ids[k], float(scores[k])) for k in order if ids[k] not in exclude][:n]
