"""PPA (micrec_core.models.ppa): the prototype decoder's equations by hand, the mix-encoder, where gradients go, and
that it meets unseen users and items as UniCDR does. The interface's generic tests run from tests/test_registry.py."""

from __future__ import annotations

import math

import pytest
import torch

from micrec_core.config import Config
from micrec_core.data.dataset import PairData
from micrec_core.models.ppa import PPA, PrototypeDecoder
from micrec_core.models.setup import setup
from micrec_core.models.unicdr import UniCDR
from tests.test_unicdr import _draws, _hand_inference


def config(**kw: object) -> Config:
    """A small PPA config on the CPU."""
    values = {"model": "ppa", "dim": 8, "batches_per_epoch": 4, "device": "cpu", "max_epochs": 1}
    return Config(**(values | kw))  # type: ignore[arg-type]


def model_of(pair: PairData, **kw: object) -> PPA:
    """A freshly initialised PPA of the tiny pair."""
    m = setup(pair, config(**kw)).model
    assert isinstance(m, PPA)
    return m


def tiny_decoder() -> PrototypeDecoder:
    """Two prototypes per class in 2-d: class 0 at (0, 0) and (2, 0), class 1 at (0, 2) and (3, 3)."""
    decoder = PrototypeDecoder(2, 2, incorrect=-0.5, epsilon=1e-4, std=1.0, matcher=True)
    with torch.no_grad():
        decoder.prototypes.copy_(torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [3.0, 3.0]]))
    return decoder


@torch.no_grad()
def test_prototype_distances_logits_and_choice_by_hand() -> None:
    decoder = tiny_decoder()
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    distances = decoder.distances(h)
    torch.testing.assert_close(distances, torch.tensor([[1.0, 1.0, 5.0, 13.0], [1.0, 5.0, 1.0, 13.0]]))
    act = [[math.log((x + 1) / (x + 1e-4)) for x in row] for row in distances.tolist()]
    # W_c: +1 to a prototype's own class, -0.5 to the other
    expected = [[a[0] + a[1] - 0.5 * (a[2] + a[3]), -0.5 * (a[0] + a[1]) + a[2] + a[3]] for a in act]
    torch.testing.assert_close(decoder.logits(distances), torch.tensor(expected))
    # p*: the nearest prototype of the pair's class
    torch.testing.assert_close(decoder.chosen(distances, 1), torch.tensor([[0.0, 2.0], [0.0, 2.0]]))
    torch.testing.assert_close(decoder.chosen(distances, 0), torch.tensor([[0.0, 0.0], [0.0, 0.0]]))


@torch.no_grad()
def test_prototype_loss_rows_and_diversity_by_hand() -> None:
    decoder = tiny_decoder()
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    distances = decoder.distances(h)
    logits = decoder.logits(distances)
    rows = decoder.rows(distances, 1, cluster=0.1, separation=0.05)
    for b, (own, other) in enumerate(((5.0, 1.0), (1.0, 1.0))):  # nearest class-1 / class-0 distances
        ce = -torch.log_softmax(logits[b], 0)[1]
        assert float(rows[b]) == pytest.approx(float(ce) + (0.1 * own - 0.05 * other) / 2, rel=1e-6)
    # diversity: within class 0, cos((0,0),(2,0)) is 0 (a zero vector normalises to 0); within class 1,
    # cos((0,2),(3,3)) = 1/sqrt(2), over the margin 0.3 by 0.4071, counted for both ordered pairs
    assert float(decoder.diversity(0.3)) == pytest.approx(2 * (1 / math.sqrt(2) - 0.3), rel=1e-6)


@torch.no_grad()
def test_the_labelled_cross_entropy_equals_the_public_code_s_form_over_a_batch(tiny_pair: PairData) -> None:
    """Their code: CE against all-ones targets for the matched call, all-zeros (0) for the mismatched one; here
    the standard CE with labels 1 and 0. The mismatched set is a cyclic shift of the matched one, so the sums
    agree."""
    m = model_of(tiny_pair, params={"cluster_weight": 0.0, "separation_weight": 0.0, "diversity_weight": 0.0})
    h = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    decoder = m.domains[0].critic
    ours = m.critic_rows(0, h, torch.zeros(5, 8), shift=2)["proto"].sum()
    log_p = torch.log_softmax(decoder.logits(decoder.distances(h)), dim=1)
    theirs = -(log_p[:, 0] + log_p[:, 1]).sum()
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5)


def test_ppa_is_unicdr_with_mean_encoders_and_prototype_decoders(tiny_pair: PairData) -> None:
    m = model_of(tiny_pair)
    assert isinstance(m, UniCDR) and m.config.best_epoch == "joint"
    for agg in [m.shared_aggregator, *(d.aggregator for d in m.domains)]:
        assert agg.kind == "mean" and agg.project is None and agg.key is None
    for domain in m.domains:
        decoder = domain.critic
        assert isinstance(decoder, PrototypeDecoder) and decoder.prototypes.shape == (48, 8)
        assert decoder.matcher is None  # λ = 1.0: the critic has no weight, so no matcher is built
    assert m.term_weights().tolist() == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    assert m.used_terms() == [True, True, False, False, True, True, False]


def _reached(m: PPA, term: str) -> set[str]:
    """Parameters the gradient of one unweighted term reaches on one step."""
    m.zero_grad(set_to_none=True)
    m.loss_terms(m.draw(torch.Generator().manual_seed(0)), 0.5)[m.terms.index(term)].backward()
    return {name for name, p in m.named_parameters() if p.grad is not None and bool(p.grad.any())}


def test_gradients_reach_exactly_the_right_parameters(tiny_pair: PairData) -> None:
    m = model_of(tiny_pair)
    names = {name for name, _ in m.named_parameters()}
    # the prototype loss of domain 0: its decoder (prototypes, classifier) and what its h depends on
    proto = _reached(m, "proto/0")
    assert proto == {"domains.0.critic.prototypes", "domains.0.critic.classifier.weight", "domains.0.users",
                     "domains.0.items"}
    # the prediction loss: no prototype
    pred = _reached(m, "pred/1")
    assert pred == {"domains.1.users", "domains.1.local_shared", "domains.1.items", "shared_users",
                    "domains.0.items"}
    m.zero_grad(set_to_none=True)
    (m.loss_terms(m.draw(torch.Generator().manual_seed(1)), 0.5) @ m.term_weights()).backward()
    assert {n for n, p in m.named_parameters() if p.grad is not None and bool(p.grad.any())} == names
    # with the critic weighted, the matcher and the chosen prototypes learn from it, h does not (p* replaces it)
    m = model_of(tiny_pair, params={"lambda_loss": 0.4})
    critic = _reached(m, "critic/0")
    assert {"domains.0.critic.matcher.weight", "domains.0.critic.prototypes", "shared_users"} <= critic
    assert "domains.0.users" not in critic and "domains.0.critic.classifier.weight" not in critic


def test_an_overlapping_user_s_shared_embedding_learns_from_both_domains(tiny_pair: PairData) -> None:
    m = model_of(tiny_pair, dropout=0.0)
    for d in range(2):
        user = int(tiny_pair.overlap[0, d])
        pick = int((m.samplers[d].users == user).nonzero())
        m.zero_grad(set_to_none=True)
        draws = [_draws(m, e, [pick if e == d else 0, pick if e == d else 1]) for e in range(2)]
        m.loss_terms(draws, 0.5)[m.terms.index(f"pred/{d}")].backward()
        assert bool(m.shared_users.grad[0].any())  # type: ignore[index]


@torch.no_grad()
def test_unseen_users_and_items_are_met_as_unicdr_meets_them(tiny_pair: PairData) -> None:
    m = model_of(tiny_pair)
    m.eval()
    d, data = 0, tiny_pair.domains[0]
    scores = m.inference_scores(d, 0.5, m.prepare_inference(d))
    for agg in [m.shared_aggregator, *(x.aggregator for x in m.domains)]:
        agg.project = torch.nn.Identity()  # the hand computation applies a projection; PPA's mix-encoder has none
    unseen_item = int((~data.item_seen).nonzero()[0])
    for u in (~data.user_seen).nonzero().flatten()[:4].tolist():
        r = _hand_inference(m, tiny_pair, d, u)
        assert float(scores[u, unseen_item]) == pytest.approx(float(r @ m.domains[d].items.mean(0)), rel=1e-4,
                                                             abs=1e-5)


def test_own_parameters_are_checked() -> None:
    for bad in ({"prototypes_per_class": 0}, {"lambda_pp": -1.0}, {"epsilon": 0.0}, {"mask_rate": -0.1},
                {"aggregator": "mean"}):
        with pytest.raises(ValueError, match=f"--param.*{next(iter(bad))}"):
            config(params=bad)
