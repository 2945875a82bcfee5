"""SGL-ED: edge-dropout views renormalised on the full graph's pattern, InfoNCE between two views by hand, which
parameters its loss reaches, and how it meets unseen users and items."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from micrec_core.data.dataset import PairData
from micrec_core.models.losses import info_nce
from micrec_core.models.propagation import entry_edges, normalized_adjacency, propagate, subgraph_adjacency
from micrec_core.models.setup import setup
from micrec_core.models.sgl import Params
from micrec_core.training.train import train_step
from tests.test_registry import tiny

EDGES = torch.tensor([[0, 1, 0, 1, 2], [0, 0, 1, 2, 2]])  # 3 users x 3 items, in no particular order


def test_entry_edges_map_both_directions_of_an_interaction_to_its_column() -> None:
    adjacency = normalized_adjacency(EDGES, 3, 3)
    edge = entry_edges(adjacency, EDGES, 3)
    rows, cols = adjacency.pattern.rows, adjacency.pattern.cols
    users, items = torch.minimum(rows, cols), torch.maximum(rows, cols) - 3
    assert torch.equal(EDGES[0, edge], users) and torch.equal(EDGES[1, edge], items)
    assert torch.equal(torch.bincount(edge), torch.full((5,), 2))


@pytest.mark.parametrize("kept", [[0, 2, 3], [1, 4], [], [0, 1, 2, 3, 4]])
def test_a_view_is_the_normalised_graph_of_the_kept_edges(kept: list[int]) -> None:
    adjacency = normalized_adjacency(EDGES, 3, 3)
    keep = torch.zeros(5).index_fill_(0, torch.tensor(kept, dtype=torch.long), 1.0)
    view = subgraph_adjacency(adjacency, keep[entry_edges(adjacency, EDGES, 3)])
    torch.testing.assert_close(view.to_dense(), normalized_adjacency(EDGES[:, kept], 3, 3).to_dense())


def test_info_nce_by_hand() -> None:
    gen = torch.Generator().manual_seed(0)
    anchors, candidates = torch.randn(3, 4, generator=gen), torch.randn(5, 4, generator=gen)
    positives, tau = torch.tensor([4, 0, 4]), 0.2
    expected = []
    for a, p in zip(anchors, positives, strict=True):
        sims = [F.cosine_similarity(a, c, dim=0) / tau for c in candidates]
        expected.append(-math.log(math.exp(sims[p]) / sum(math.exp(s) for s in sims)))
    torch.testing.assert_close(info_nce(anchors, candidates, positives, tau), torch.tensor(expected))


def test_sgl_loss_is_bpr_and_infonce_between_two_edge_dropout_views_by_hand(tiny_pair: PairData) -> None:
    s = setup(tiny_pair, tiny("sgl", dim=8, layers=2))
    model, d, tau = s.model, 1, 0.2
    data, domain = tiny_pair.domains[d], s.model.domains[d]
    draws = model.draw(torch.Generator().manual_seed(5))
    terms = model.loss_terms(draws, 0.5)
    train = data.edges["train"]
    n_kept = int(train.shape[1] * 0.9)
    x = model.initial(d, model.train_phases[d]).detach()
    views = []
    for keep in draws.views[d]:
        assert int(keep.sum()) == n_kept  # exactly ⌊(1 - ρ)|E_tr|⌋ interactions, without replacement
        graph = normalized_adjacency(train[:, keep.bool()], data.n_users, data.n_items)
        views.append(propagate(x, graph, 2))
    assert not torch.equal(draws.views[d][0], draws.views[d][1])
    users, positives, negatives = model.samplers[d].triples(draws.bpr[d])
    seen_users, seen_items = torch.nonzero(data.user_seen).flatten(), torch.nonzero(data.item_seen).flatten()
    total = 0.0
    for anchors, pool, offset in ((users, seen_users, 0), (positives, seen_items, data.n_users)):
        for a in anchors.tolist():  # -log softmax over every seen node of the side, cosine / tau (the authors' SGL-ED)
            z1 = views[0][offset + a]
            sims = torch.stack([F.cosine_similarity(z1, views[1][offset + v], dim=0) for v in pool.tolist()]) / tau
            total += float(torch.logsumexp(sims, 0) - F.cosine_similarity(z1, views[1][offset + a], dim=0) / tau)
    assert math.isclose(float(terms[3].detach()), total, rel_tol=1e-4)
    main = propagate(x, normalized_adjacency(train, data.n_users, data.n_items), 2)
    r_users, r_items = main[: data.n_users], main[data.n_users :]
    scores = (r_users[users] * (r_items[positives] - r_items[negatives])).sum(-1)
    torch.testing.assert_close(terms[1], -F.logsigmoid(scores).sum())  # BPR over the full graph, summed
    assert model.term_weights().tolist() == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.0])
    assert model.auxiliary_terms() == [2, 3]
    assert domain.user_emb.shape[0] == int(data.user_seen.sum()) < data.n_users


def test_gradients_reach_exactly_sgl_s_parameters(tiny_pair: PairData) -> None:
    s = setup(tiny_pair, tiny("sgl"))
    optimizer = torch.optim.Adam(s.model.parameters())
    train_step(s, 0.5, torch.Generator().manual_seed(0), optimizer)
    grads = {name: p.grad for name, p in s.model.named_parameters()}
    assert set(grads) == {f"domains.{d}.{t}" for d in range(2) for t in ("user_emb", "item_emb")}
    assert all(g is not None and bool(g.abs().sum() > 0) for g in grads.values())
    terms = s.model.loss_terms(s.model.draw(torch.Generator().manual_seed(1)), 0.5)
    ssl_grads = torch.autograd.grad(terms[2], [s.model.domains[0].user_emb, s.model.domains[1].user_emb],
                                    allow_unused=True)
    assert ssl_grads[0] is not None and bool(ssl_grads[0].abs().sum() > 0)
    assert ssl_grads[1] is None or not ssl_grads[1].any()  # the contrast of domain A reaches domain A only


@pytest.mark.parametrize("unseen_init", ["mean", "random"])
def test_unseen_users_and_items_start_from_the_mean_or_a_seeded_random_row(tiny_pair: PairData,
                                                                         unseen_init: str) -> None:
    s = setup(tiny_pair, tiny("sgl", seed=4, params={"unseen_init": unseen_init}))
    data, domain = tiny_pair.domains[0], s.model.domains[0]
    phase = s.model.prepare_inference(0)
    x = s.model.initial(0, phase)
    x_users, x_items = x[: data.n_users], x[data.n_users :]
    torch.testing.assert_close(x_users[data.user_seen], domain.user_emb[domain.user_map[data.user_seen]])
    dim = s.config.dim
    if unseen_init == "mean":
        user_rows = domain.user_emb.mean(0).expand(data.n_users, -1)
        item_rows = domain.item_emb.mean(0).expand(data.n_items, -1)
    else:  # N(0, σ²) rows with σ the Xavier scale of the table, users then items from one generator seeded by seed
        generator = torch.Generator().manual_seed(4)
        std_users, std_items = (math.sqrt(2 / (t.shape[0] + dim)) for t in (domain.user_emb, domain.item_emb))
        user_rows = torch.randn(data.n_users, dim, generator=generator) * std_users
        item_rows = torch.randn(data.n_items, dim, generator=generator) * std_items
    torch.testing.assert_close(x_users[~data.user_seen], user_rows[~data.user_seen])
    torch.testing.assert_close(x_items[~data.item_seen], item_rows[~data.item_seen])
    r_users, r_items = s.model.representations(0, 0.5, phase)  # LightGCN over E_tr + E_new from those rows
    graph = normalized_adjacency(data.edges_of("train", "new"), data.n_users, data.n_items)
    reps = propagate(x, graph, s.config.layers)
    torch.testing.assert_close(torch.cat([r_users, r_items]), reps)


@pytest.mark.parametrize(("key", "value"), [("ssl_ratio", 1.0), ("ssl_temp", 0.0), ("ssl_reg", -1.0),
                                            ("ssl_temp", float("nan")), ("unseen_init", "zeros")])
def test_params_out_of_their_domain_are_refused_by_name(key: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"--param {key}"):
        Params(**{key: value})  # type: ignore[arg-type]
