"""UniCDR (micrec_core.models.unicdr): its defining equations by hand on tiny examples, where gradients go, and how
unseen users and items are met. The interface's generic tests (determinism, leakage, finite scores) run from
tests/test_registry.py by its registry line."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from micrec_core.config import Config
from micrec_core.data.dataset import PairData
from micrec_core.models.setup import setup
from micrec_core.models.unicdr import Aggregator, DomainDraws, UniCDR, item_lists, masked_context


def config(**kw: object) -> Config:
    """A small UniCDR config on the CPU."""
    values = {"model": "unicdr", "dim": 8, "batches_per_epoch": 4, "device": "cpu", "max_epochs": 1}
    return Config(**(values | kw))  # type: ignore[arg-type]


def model_of(pair: PairData, **kw: object) -> UniCDR:
    """A freshly initialised UniCDR of the tiny pair."""
    m = setup(pair, config(**kw)).model
    assert isinstance(m, UniCDR)
    return m


def test_mean_aggregation_by_hand() -> None:
    agg = Aggregator(2, "mean", project=False)
    items = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, -1.0]])
    rows = torch.tensor([0, 0, 2])
    out = agg(torch.zeros(3, 2), items, rows)
    torch.testing.assert_close(out, torch.tensor([[2.0, 3.0], [0.0, 0.0], [5.0, -1.0]]))  # row 1: empty set -> 0
    projected = Aggregator(2, "mean")
    with torch.no_grad():
        projected.project.weight.copy_(torch.tensor([[0.0, 1.0], [2.0, 0.0]]))  # type: ignore[union-attr]
    torch.testing.assert_close(projected(torch.zeros(3, 2), items, rows)[0], torch.tensor([3.0, 4.0]))


def test_user_attention_aggregation_by_hand() -> None:
    agg = Aggregator(2, "user_attention", project=False)
    with torch.no_grad():
        agg.key[0].weight.copy_(torch.eye(2))  # type: ignore[index]
        agg.key[0].bias.zero_()  # type: ignore[index]
    items = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    query = torch.tensor([[1.0, -1.0], [0.5, 0.5]])
    rows = torch.tensor([0, 0, 1])
    logits = [math.tanh(1.0) * 1.0, math.tanh(2.0) * -1.0]  # tanh(W_a v + b) · q
    w0 = math.exp(logits[0]) / (math.exp(logits[0]) + math.exp(logits[1]))
    expected = torch.tensor([[w0 * 1.0, (1 - w0) * 2.0], [1.0, 1.0]])  # a single item gets weight 1
    torch.testing.assert_close(agg(query, items, rows), expected)
    keep = torch.tensor([2.0, 0.0, 1.0])  # attention dropout: the second weight dropped, the first doubled
    torch.testing.assert_close(agg(query, items, rows, keep)[0], torch.tensor([2 * w0, 0.0]))


def test_interaction_masking_by_hand() -> None:
    lists = torch.tensor([[5, 6, 7, 8, -1], [9, -1, -1, -1, -1], [1, 2, 3, 4, 0]])
    counts = torch.tensor([4, 1, 5])
    keys = torch.tensor([[0.9, 0.1, 0.5, 0.3, 0.0], [0.2, 0.1, 0.0, 0.0, 0.0], [0.5, 0.4, 0.3, 0.2, 0.1]])
    # sizes: floor(4 * 0.9) = 3, floor(1 * 0.9) = 0, floor(5 * 0.9) = 4 capped at length 3; padding never drawn
    ctx = masked_context(lists, counts, keys, mask_rate=0.1, length=3, exclude=torch.tensor([8, 9, 3]))
    chosen = {r: sorted(ctx.items[ctx.rows == r].tolist()) for r in range(3)}
    assert chosen == {0: [6, 7], 1: [], 2: [0, 4]}  # row 0: {6, 8, 7} less its target 8; row 2: {0, 4, 3} less 3


def test_item_lists() -> None:
    lists, counts = item_lists(torch.tensor([[2, 0, 2, 2], [4, 1, 3, 0]]), 3)
    assert counts.tolist() == [1, 0, 3]
    assert lists.tolist() == [[1, -1, -1], [-1, -1, -1], [0, 3, 4]]


def mean_of(vectors: list[torch.Tensor]) -> torch.Tensor:
    """The mean of a list of vectors, 0 for none (an empty set aggregates to 0)."""
    return torch.stack(vectors).mean(0) if vectors else torch.zeros(8)


def _draws(m: UniCDR, d: int, picks: list[int], shift: int = 1) -> DomainDraws:
    """Hand-made draws for domain d: the given sampler positions, first positives, fixed keys, no dropout."""
    n, k = len(picks), m.params.negatives
    gen = torch.Generator().manual_seed(3)
    return DomainDraws(
        torch.tensor(picks), torch.zeros(n), torch.rand(n, k, generator=gen),
        torch.rand(n, m.lists[d].shape[1], generator=gen), torch.rand(n, m.lists[1 - d].shape[1], generator=gen),
        shift, None)


def test_prediction_loss_of_a_row_by_hand(tiny_pair: PairData) -> None:
    """h = λ e + (1-λ) W mean(masked own items), g = λ s + (1-λ) W_s mean(masked other-domain items), L_pred =
    BCE(r·v+, 1) + mean_k BCE(r·v_k, 0), recomputed element by element from the lists and keys."""
    m = model_of(tiny_pair, dropout=0.0, params={"aggregator": "mean"})
    d, o = 0, 1
    overlap_user = int(tiny_pair.overlap[0, 0])
    pick = int((m.samplers[d].users == overlap_user).nonzero())
    draws = _draws(m, d, [pick, (pick + 1) % len(m.samplers[d].users)])
    rows = m.domain_rows(d, draws)
    p, lam = m.params, m.params.lambda_a
    users, pos, neg = m.samplers[d].triples((draws.pick.unsqueeze(1).expand(2, 10), torch.zeros(2, 10), draws.u_neg))
    u, target = int(users[0, 0]), int(pos[0, 0])
    assert u == overlap_user

    def drawn(lists: torch.Tensor, count: int, keys: torch.Tensor) -> list[int]:
        size = min(p.max_context, math.floor(count * (1 - p.mask_rate)))
        order = sorted(range(count), key=lambda c: (float(keys[c]), c))
        return [int(lists[c]) for c in order[:size]]

    dom, other = m.domains[d], m.domains[o]
    own = [i for i in drawn(m.lists[d][u], int(m.counts[d][u]), draws.specific_keys[0]) if i != target]
    e = dom.users[m.user_maps[d][u]]
    pooled = mean_of([dom.items[m.item_maps[d][i]] for i in own])
    h = lam * e + (1 - lam) * dom.aggregator.project(pooled)
    u_other = int(tiny_pair.overlap[0, 1])
    theirs = drawn(m.lists[o][u_other], int(m.counts[o][u_other]), draws.shared_keys[0])
    s = m.shared_users[0]  # the first overlapping user's row of the common shared table
    pooled_s = mean_of([other.items[m.item_maps[o][i]] for i in theirs])
    g = lam * s + (1 - lam) * m.shared_aggregator.project(pooled_s)
    r = h + g
    score = float(r.detach() @ dom.items[m.item_maps[d][target]].detach())
    negatives = [float(r.detach() @ dom.items[m.item_maps[d][int(j)]].detach()) for j in neg[0]]

    def bce(logit: float, label: int) -> float:
        prob = 1 / (1 + math.exp(-logit))
        return -math.log(prob if label else 1 - prob)

    expected = bce(score, 1) + sum(bce(x, 0) for x in negatives) / len(negatives)
    assert float(rows["pred"][0].detach()) == pytest.approx(expected, rel=1e-5)


@torch.no_grad()
def test_critic_by_hand(tiny_pair: PairData) -> None:
    m = model_of(tiny_pair)
    gen = torch.Generator().manual_seed(0)
    h, g = torch.randn(3, 8, generator=gen), torch.randn(3, 8, generator=gen)
    bilinear = m.domains[0].critic

    def dis(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(a @ bilinear.weight[0] @ b + bilinear.bias[0])

    rows = m.critic_rows(0, h, g, shift=2)["critic"]
    for b in range(3):
        other = (b + 2) % 3
        expected = math.log1p(math.exp(-dis(h[b], g[b]))) + math.log1p(math.exp(dis(h[other], g[b])))
        assert float(rows[b]) == pytest.approx(expected, rel=1e-5)


def test_parameters_exist_for_seen_users_and_items_only(tiny_pair: PairData) -> None:
    m = model_of(tiny_pair)
    n_overlap = len(tiny_pair.overlap)
    assert m.shared_users.shape == (n_overlap, 8)
    for data, domain in zip(tiny_pair.domains, m.domains, strict=True):
        assert domain.users.shape[0] == int(data.user_seen.sum())
        assert domain.local_shared.shape[0] == int(data.user_seen.sum()) - n_overlap
        assert domain.items.shape[0] == int(data.item_seen.sum())
    assert not any("map" in key for key in m.state_dict())  # index maps are not parameters nor saved


def _grads(m: UniCDR, term: str, seed: int = 0) -> dict[str, torch.Tensor | None]:
    """Gradient of one unweighted term on one step's draws, by parameter name."""
    m.zero_grad(set_to_none=True)
    terms = m.loss_terms(m.draw(torch.Generator().manual_seed(seed)), 0.5)
    terms[m.terms.index(term)].backward()
    return {name: None if p.grad is None or not bool(p.grad.any()) else p.grad for name, p in m.named_parameters()}


def test_gradients_reach_exactly_the_right_parameters(tiny_pair: PairData) -> None:
    m = model_of(tiny_pair)
    names = {name for name, _ in m.named_parameters()}
    reached = {name for name, g in _grads(m, "pred/0").items() if g is not None}
    # domain 0's prediction: its own embeddings and aggregator, the shared rows and aggregator, and domain 1's
    # item embeddings (the overlapping users' shared view aggregates them); nothing else of domain 1, no critic
    assert reached == {n for n in names if n.startswith(("domains.0.users", "domains.0.local_shared",
                                                          "domains.0.items", "domains.0.aggregator", "shared_"))
                       } | {"domains.1.items"}
    critic = {name for name, g in _grads(m, "critic/1").items() if g is not None}
    assert {"domains.1.critic.weight", "domains.1.critic.bias", "shared_users", "domains.1.users"} <= critic
    assert not any(n.startswith("domains.0.") and "items" not in n for n in critic)
    total = m.loss_terms(m.draw(torch.Generator().manual_seed(1)), 0.5) @ m.term_weights()
    m.zero_grad(set_to_none=True)
    total.backward()
    assert all(p.grad is not None and bool(p.grad.any()) for p in m.parameters())  # nothing dead


def test_an_overlapping_user_s_shared_embedding_learns_from_both_domains(tiny_pair: PairData) -> None:
    m = model_of(tiny_pair, dropout=0.0)
    a_user, b_user = (int(x) for x in tiny_pair.overlap[0])
    grads = []
    for d, user in ((0, a_user), (1, b_user)):
        pick = int((m.samplers[d].users == user).nonzero())
        m.zero_grad(set_to_none=True)
        draws = [_draws(m, e, [pick if e == d else 0, pick if e == d else 1]) for e in range(2)]
        m.loss_terms(draws, 0.5)[m.terms.index(f"pred/{d}")].backward()
        grads.append(m.shared_users.grad[0].clone())  # type: ignore[index]
    assert all(bool(g.any()) for g in grads)


def _hand_inference(m: UniCDR, pair: PairData, d: int, user: int) -> torch.Tensor:
    """r_u of one user of domain d at inference, element by element from E_tr + E_new (mean pooling)."""
    o, lam = 1 - d, m.params.lambda_a
    data, other = pair.domains[d], pair.domains[o]
    dom = m.domains[d]

    def item_row(e: int, i: int) -> torch.Tensor:
        row = int(m.item_maps[e][i])
        return m.domains[e].items[row] if row >= 0 else m.domains[e].items.mean(0)

    visible = data.edges_of("train", "new")
    own = [int(i) for i in visible[1][visible[0] == user]]
    row = int(m.user_maps[d][user])
    e = dom.users[row] if row >= 0 else dom.users.mean(0)
    h = lam * e + (1 - lam) * dom.aggregator.project(mean_of([item_row(d, i) for i in own]))
    twin = other.user_ids.index(data.user_ids[user]) if data.user_ids[user] in other.user_ids else -1
    theirs = []
    if twin >= 0:
        seen_there = other.edges_of("train", "new")
        theirs = [int(i) for i in seen_there[1][seen_there[0] == twin]]
    table_d = torch.cat([m.shared_users, dom.local_shared])
    if int(m.shared_maps[d][user]) >= 0:
        s = table_d[m.shared_maps[d][user]]
    elif twin >= 0 and int(m.shared_maps[o][twin]) >= 0:
        s = torch.cat([m.shared_users, m.domains[o].local_shared])[m.shared_maps[o][twin]]
    else:
        s = table_d.mean(0)
    vectors = [item_row(d, i) for i in own] + [item_row(o, i) for i in theirs]
    g = lam * s + (1 - lam) * m.shared_aggregator.project(mean_of(vectors))
    return h + g


def test_unseen_users_and_items_are_met_from_e_tr_and_e_new(tiny_pair: PairData) -> None:
    m = model_of(tiny_pair, params={"aggregator": "mean"})
    m.eval()
    d, data, other = 0, tiny_pair.domains[0], tiny_pair.domains[1]
    with torch.no_grad():
        scores = m.inference_scores(d, 0.5, m.prepare_inference(d))
    unseen = [int(u) for u in (~data.user_seen).nonzero().flatten()]
    twin_seen = [u for u in unseen if data.user_ids[u] in other.user_ids
                 and bool(other.user_seen[other.user_ids.index(data.user_ids[u])])]
    alone = [u for u in unseen if u not in twin_seen]
    assert twin_seen and alone  # both of the documented cases occur on the tiny pair
    seen_user = int(tiny_pair.overlap[0, 0])
    item_mean = m.domains[d].items.mean(0)
    unseen_item = int((~data.item_seen).nonzero()[0])
    seen_item = int(data.item_seen.nonzero()[0])
    with torch.no_grad():
        for u in (twin_seen[0], alone[0], seen_user):
            r = _hand_inference(m, tiny_pair, d, u)
            assert float(scores[u, unseen_item]) == pytest.approx(float(r @ item_mean), rel=1e-4, abs=1e-5)
            v = m.domains[d].items[m.item_maps[d][seen_item]]
            assert float(scores[u, seen_item]) == pytest.approx(float(r @ v), rel=1e-4, abs=1e-5)
    # E_val and E_test never enter inference; E_new never enters validation
    gen = torch.Generator().manual_seed(5)
    noisy = []
    for x in tiny_pair.domains:
        edges = dict(x.edges)
        for split in ("val", "test"):
            edges[split] = torch.stack([torch.randint(x.n_users, (40,), generator=gen),
                                        torch.randint(x.n_items, (40,), generator=gen)])
        noisy.append(replace(x, edges=edges))
    perturbed = replace(tiny_pair, domains=tuple(noisy))
    m.pair = perturbed
    with torch.no_grad():
        torch.testing.assert_close(m.inference_scores(d, 0.5, m.prepare_inference(d)), scores, rtol=0, atol=0)
        before = m.validation_scores(d, 0.5)
        no_new = [replace(x, edges={**x.edges, "new": x.edges["new"][:, :0]}) for x in perturbed.domains]
        m.pair = replace(perturbed, domains=tuple(no_new))
        torch.testing.assert_close(m.validation_scores(d, 0.5), before, rtol=0, atol=0)


def test_own_parameters_are_checked_and_one_epoch_kept_for_both_domains(tiny_pair: PairData) -> None:
    assert config().best_epoch == "joint"
    for bad in ({"mask_rate": 1.0}, {"aggregator": "sum"}, {"lambda_loss": 1.5}, {"max_context": 0},
                {"init_std": float("nan")}):
        with pytest.raises(ValueError, match=f"--param {next(iter(bad))}"):
            config(params=bad)
    with pytest.raises(ValueError, match="--best-epoch"):
        setup(tiny_pair, config(best_epoch="per-domain"))


def test_bce_form_matches_torch(tiny_pair: PairData) -> None:
    """The prediction loss is the public code's BCEWithLogits pair (positive mean + negatives mean) per row."""
    x = torch.tensor([0.3, -1.2])
    assert torch.allclose(F.softplus(-x), F.binary_cross_entropy_with_logits(x, torch.ones(2), reduction="none"))
    assert torch.allclose(F.softplus(x), F.binary_cross_entropy_with_logits(x, torch.zeros(2), reduction="none"))
