"""Inductive inference without retraining (paper §3) and test evaluation (paper §5.2).

After training, E_new arrives: template connections, modality neighbours, user features and the graph are rebuilt
over E_tr + E_new for every user and item, with the frozen template maps and trained parameters. Each user's
E_tr, E_new and E_val items are masked and all items of the domain ranked by r_u · r_i.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch

from micrec_core.dataset import DomainData
from micrec_core.metrics import group_metrics, low_degree_mask, topk_items
from micrec_core.model import ItemModalities, Phase, build_phase
from micrec_core.train import Setup


def inference_phase(
    s: Setup, d: int, data: DomainData | None = None, feats: ItemModalities | None = None
) -> Phase:
    """The phase over E_tr + E_new with every user and item visible (optionally for an extended domain)."""
    data = data or s.pair.domains[d]
    edges = data.edges_of("train", "new")
    everyone_u = torch.ones(data.n_users, dtype=torch.bool)
    everyone_i = torch.ones(data.n_items, dtype=torch.bool)
    feats = feats if feats is not None else s.features[d]
    phase = build_phase(data, edges, s.model.domains[d].templates, feats, s.config, everyone_u, everyone_i)
    return phase.to(s.device)


@torch.no_grad()
def representations(
    s: Setup, d: int, alpha: float, data: DomainData | None = None, feats: ItemModalities | None = None,
    phase: Phase | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """r_u, r_i of every user and item of domain d at inference (over `phase` when it is already built)."""
    s.model.eval()
    return s.model.domains[d](phase or inference_phase(s, d, data, feats), s.config.layers, alpha)


def _finite(values: dict[str, Any]) -> dict[str, Any]:
    """Replace NaN (a group with no user) by None so the JSON stays standard."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in values.items()}


def observed_degree(data: DomainData) -> torch.Tensor:
    """Each item's number of observed interactions at inference, |E_tr + E_new| per item."""
    return torch.bincount(data.edges_of("train", "new")[1], minlength=data.n_items)


def test_metrics(data: DomainData, scores: torch.Tensor, ns: list[int]) -> dict[str, dict[str, Any]]:
    """Rank all items by `scores` [U, I] with E_tr, E_new and E_val masked; metrics on E_test for every group.

    Low-degree items are the bottom 25% of items by E_tr + E_new frequency (ties by item index), paper Table 4.
    """
    device = scores.device
    known = data.edges_of("train", "new", "val").to(device)
    top = topk_items(scores, known[0], known[1], min(max(ns), data.n_items), inplace=True)
    test = data.edges["test"].to(device)
    groups = group_metrics(
        top, test[0], test[1], data.n_items, [n for n in ns if n <= top.shape[1]],
        data.user_seen.to(device), data.item_seen.to(device), low_degree_mask(observed_degree(data)).to(device),
    )
    return {group: _finite(values) for group, values in groups.items()}


@torch.no_grad()
def inference_scores(s: Setup, alphas: list[float], phases: list[Phase] | None = None) -> list[torch.Tensor]:
    """r_u · r_i of every user and item at inference, per domain ([U, I] each); `phases` when already built."""
    out = []
    for d in range(len(s.pair.domains)):
        r_users, r_items = representations(s, d, alphas[d], phase=None if phases is None else phases[d])
        out.append(r_users @ r_items.T)
    return out


@torch.no_grad()
def evaluate_test(
    s: Setup, alphas: list[float], phases: list[Phase] | None = None
) -> dict[str, dict[str, dict[str, Any]]]:
    """Test metrics per domain and group (all, seen/unseen users, seen/unseen items, low-degree items).

    `phases`: the inference phases when already built (`inference_phase`), else they are built here.
    """
    return {
        data.name: test_metrics(data, scores, s.config.eval_ns)
        for data, scores in zip(s.pair.domains, inference_scores(s, alphas, phases), strict=True)
    }


def most_popular(data: DomainData, ns: list[int]) -> dict[str, dict[str, Any]]:
    """The most-popular baseline: every user gets items ranked by their E_tr + E_new frequency."""
    degree = observed_degree(data).float()
    return test_metrics(data, degree.expand(data.n_users, -1).clone(), ns)


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


def _extend_features(feats: ItemModalities | None) -> ItemModalities | None:
    """Item features with one featureless row appended (a brand-new item has no encoded content here)."""
    if feats is None:
        return None
    padded = [torch.cat([t, t.new_zeros(1, *t.shape[1:])]) for t in (feats.text, feats.text_mask, feats.image,
                                                                        feats.image_mask)]
    return ItemModalities(*padded)


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
    feats = _extend_features(s.features[d]) if items is None else None
    r_users, r_items = representations(s, d, alphas[d], data, feats)
    if items is not None:
        scores, ids, exclude = r_items @ r_users[-1], data.item_ids, set(items)
    else:
        scores, ids, exclude = r_users @ r_items[-1], data.user_ids, set(users or [])
    order = torch.argsort(scores, descending=True, stable=True).tolist()
    return [(ids[k], float(scores[k])) for k in order if ids[k] not in exclude][:n]
