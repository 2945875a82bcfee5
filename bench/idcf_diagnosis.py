"""Why an IDCF run falls below most popular on a domain: its two stages measured apart on the model a run saved.

Figures, not a test (bench/RESULTS.md, "IDCF on Electronics"). For each domain of the run's pair, with the model of
that domain's best epoch (micrec_core/models/idcf.py names the parts):
- validation NDCG@20 of the key users, every seen item ranked with E_tr masked, by IDCF's scores p~_u^T q~_i, by
  the frozen stage-1 factorisation p_u^T q_i alone, and by E_tr popularity (of the non-key seen users too);
- the fit to E_tr itself: recall@20 of each user's E_tr items, nothing masked (key users for the factorisation);
- the relation models' attention: mean entropy against the uniform ln K, and the mean largest weight;
- what stage 2's objective sees: the pairwise accuracy (AUC) of E_tr edges against a seen item drawn uniformly,
  with the edge inside both history summaries (as stage 2 trains: the summaries are over all of E_tr) and left out
  of both (as a held-out edge is scored), beside that of validation edges, for IDCF's scores and for popularity.

Usage: python bench/idcf_diagnosis.py --run runs/Beauty_Electronics/runs/Beauty_Electronics/idcf/seed0 \
       --dataset data/processed/Beauty_Electronics
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from micrec_core.evaluation.metrics import ranking_metrics, topk_blocked
from micrec_core.models.idcf import IDCF, DomainIDCF, Phase
from micrec_core.runs.experiment import load_run

N = 20
EDGES = 3000  # sampled E_tr and validation edges for the AUCs
BLOCK = 1024  # users ranked at once


def top_n(scores: torch.Tensor, mask: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Top-N items per user of `scores`, the (user, item) pairs of `mask` and the items not `allowed` excluded."""

    def rows(a: int, b: int) -> torch.Tensor:
        return scores[a:b].clone().masked_fill(~allowed, float("-inf"))

    return topk_blocked(rows, scores.shape[0], scores.shape[1], mask[0], mask[1], N, BLOCK)


def metric(scores: torch.Tensor, mask: torch.Tensor, target: torch.Tensor, allowed: torch.Tensor,
           groups: list[torch.Tensor], name: str) -> list[float]:
    """`name`@N of `scores` on `target`, averaged over the users of each group that have a target (one ranking)."""
    top = top_n(scores, mask, allowed)
    return [ranking_metrics(top, target[0], target[1], scores.shape[1], ns=(N,), user_mask=users)[f"{name}@{N}"]
            for users in groups]


def left_out(domain: DomainIDCF, train: torch.Tensor, m: torch.Tensor, rows: torch.Tensor,
             neighbours: torch.Tensor, side: str) -> torch.Tensor:
    """The summaries m ("user" or "item" side, over the edges `train`) of `rows` with the edge to `neighbours` taken
    out where the neighbour is a key: the mean over the row's other key neighbours (0 where none is left)."""
    own, other = (0, 1) if side == "user" else (1, 0)
    key_map, embeddings, _, _ = domain._side("item" if side == "user" else "user")
    count = torch.bincount(train[own][key_map[train[other]] >= 0], minlength=m.shape[0]).float()
    key = key_map[neighbours]
    out = m[rows].clone()
    is_key, c = key >= 0, count[rows].unsqueeze(1)
    removed = (out * c - embeddings[key.clamp(min=0)]) / (c - 1).clamp(min=1)
    out[is_key] = torch.where(c[is_key] > 1, removed[is_key], torch.zeros_like(removed[is_key]))
    return out


def auc(p: torch.Tensor, q_pos: torch.Tensor, q_neg: torch.Tensor) -> float:
    """Share of triples whose positive outscores the negative."""
    return ((p * q_pos).sum(-1) > (p * q_neg).sum(-1)).float().mean().item()


def diagnose(model: IDCF, d: int, generator: torch.Generator) -> list[str]:
    """The figures of the module docstring for domain d, one line each."""
    data, domain = model.pair.domains[d], model.domains[d]
    phase: Phase = model.train_phases[d]
    train, val = data.edges["train"], data.edges["val"]
    seen_items = data.item_seen
    key_user, key_item = domain.user_key >= 0, domain.item_key >= 0
    p, q = domain.factors(phase)
    mf_p = torch.zeros_like(p)
    mf_p[key_user] = domain.user_emb[domain.user_key[key_user]]
    mf_q = torch.zeros_like(q)
    mf_q[key_item] = domain.item_emb[domain.item_key[key_item]]
    popularity = torch.bincount(train[1], minlength=data.n_items).float()
    popular = popularity.expand(data.n_users, -1)
    idcf_scores, mf_scores = p @ q.T, mf_p @ mf_q.T
    lines = [f"{data.name}: {int(key_user.sum())} key users of {int(data.user_seen.sum())} seen, "
             f"{int(key_item.sum())} key items of {int(seen_items.sum())}"]
    non_key = data.user_seen & ~key_user
    idcf_key, idcf_other = metric(idcf_scores, train, val, seen_items, [key_user, non_key], "ndcg")
    (mf_key,) = metric(mf_scores, train, val, seen_items, [key_user], "ndcg")
    popular_key, popular_other = metric(popular, train, val, seen_items, [key_user, non_key], "ndcg")
    lines.append(
        f"  validation NDCG@{N}, key users: IDCF {idcf_key:.4f}, stage-1 factorisation alone {mf_key:.4f}, "
        f"popularity {popular_key:.4f}; other seen users: IDCF {idcf_other:.4f}, popularity {popular_other:.4f}")
    nothing = torch.zeros(2, 0, dtype=torch.long)
    idcf_seen, idcf_keys = metric(idcf_scores, nothing, train, seen_items, [data.user_seen, key_user], "recall")
    (mf_fit,) = metric(mf_scores, nothing, train, seen_items, [key_user], "recall")
    (popular_fit,) = metric(popular, nothing, train, seen_items, [data.user_seen], "recall")
    lines.append(
        f"  E_tr fit, recall@{N} (nothing masked): IDCF {idcf_seen:.4f} (seen users), {idcf_keys:.4f} (key users); "
        f"factorisation {mf_fit:.4f} (key users); popularity {popular_fit:.4f}")
    summaries = {side: domain.summaries(phase, side) for side in ("user", "item")}
    for side in ("user", "item"):
        key_map, keys, relation, _ = domain._side(side)
        rows = torch.randint(len(key_map), (500,), generator=generator)
        weights = relation.attention(summaries[side][rows], keys, key_map[rows])
        entropy = -(weights * weights.clamp(min=1e-30).log()).sum(-1).mean().item()
        lines.append(f"  {side} attention over {keys.shape[0]} keys: entropy {entropy:.2f} (uniform "
                     f"{math.log(keys.shape[0]):.2f}), largest weight {weights.max(-1).values.mean().item():.4f}")
    pick = torch.randint(train.shape[1], (EDGES,), generator=generator)
    users, items = train[0, pick], train[1, pick]
    seen = torch.nonzero(seen_items).flatten()
    negatives = seen[torch.randint(len(seen), (EDGES,), generator=generator)]
    user_out = domain.estimates(left_out(domain, train, summaries["user"], users, items, "user"), "user",
                                domain.user_key[users])
    item_out = domain.estimates(left_out(domain, train, summaries["item"], items, users, "item"), "item",
                                domain.item_key[items])
    val_pick = val[:, torch.randint(val.shape[1], (EDGES,), generator=generator)]
    held_out = auc(p[val_pick[0]], q[val_pick[1]], q[negatives])
    lines.append(
        f"  AUC of E_tr edges: edge in both summaries {auc(p[users], q[items], q[negatives]):.3f}, left out of both "
        f"{auc(user_out, item_out, q[negatives]):.3f}; validation edges {held_out:.3f}"
        f"; popularity: E_tr {(popularity[items] > popularity[negatives]).float().mean().item():.3f}, validation "
        f"{(popularity[val_pick[1]] > popularity[negatives]).float().mean().item():.3f}")
    return lines


def main() -> None:
    """Print the figures for every domain of the run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="an IDCF run folder with its model.pt")
    parser.add_argument("--dataset", required=True, help="the built dataset the run trained on")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampled rows and edges")
    args = parser.parse_args()
    torch.set_num_threads(1)
    s, _ = load_run(Path(args.run), Path(args.dataset))
    if not isinstance(s.model, IDCF):
        raise SystemExit(f"{args.run}: not an IDCF run ({type(s.model).__name__})")
    s.model.eval()
    generator = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for d in range(len(s.model.domains)):
            print("\n".join(diagnose(s.model, d, generator)), flush=True)


if __name__ == "__main__":
    main()
