"""IDCF: key users and items by training degree, the history summaries and the relation model's attention by hand,
which parameters each stage trains, the stage surviving a checkpoint, and unseen users and items expressed through
the keys over E_tr + E_new. The interface's generic tests (determinism, finite scores for everyone, no leakage at the
default stage) run on it from tests/test_registry.py; stage 2's leakage is checked here."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from micrec_core.config import Config
from micrec_core.data.dataset import DomainData, PairData
from micrec_core.evaluation.inference import evaluate_test
from micrec_core.models import idcf
from micrec_core.models.idcf import DomainIDCF, Params, Relation, build_phase
from micrec_core.models.losses import bpr_loss, reduce
from micrec_core.models.setup import setup
from micrec_core.training.train import CHECKPOINT, domain_alphas, train, train_step
from tests.test_training import _perturbed

# users 0-3 seen (degrees 3, 1, 2, 0), user 4 unseen; items 0-2 seen (degrees 3, 2, 1), item 3 unseen
EDGES = torch.tensor([[0, 0, 0, 1, 2, 2], [0, 1, 2, 0, 0, 1]])
NEW = torch.tensor([[4, 4, 3, 1], [0, 3, 3, 1]])


def small_domain(key_users: float = 0.5, key_items: float = 2 / 3) -> tuple[DomainIDCF, DomainData]:
    """Five users and four items (the last of each unseen), E_tr = EDGES, E_new = NEW; IDCF at dim 2, one head."""
    data = DomainData("T", list("abcde"), list("wxyz"), torch.tensor([True] * 4 + [False]),
                      torch.tensor([True] * 3 + [False]), {"train": EDGES, "new": NEW}, pd.DataFrame())
    config = Config(model="idcf", dim=2, device="cpu", params={"heads": 1})
    params = Params(key_users=key_users, key_items=key_items, heads=1)
    return DomainIDCF(data, config, params), data


def test_keys_are_the_seen_entities_with_the_most_training_interactions() -> None:
    domain, _ = small_domain(key_users=0.5, key_items=2 / 3)
    assert domain.user_key.tolist() == [0, -1, 1, -1, -1]  # degrees 3 and 2 of the four seen users
    assert domain.item_key.tolist() == [0, 1, -1, -1]  # degrees 3 and 2 of the three seen items
    assert domain.user_emb.shape[0] == 2 and domain.item_emb.shape[0] == 2  # no embedding for a query entity


def test_history_summaries_average_the_key_neighbours_only() -> None:
    domain, data = small_domain()
    with torch.no_grad():
        domain.user_emb.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        domain.item_emb.copy_(torch.tensor([[2.0, 2.0], [4.0, 0.0]]))
    phase = build_phase(EDGES, 5, 4, domain.user_key, domain.item_key, torch.device("cpu"))
    m_users = domain.summaries(phase, "user")
    q = domain.item_emb.detach()
    torch.testing.assert_close(m_users[0], (q[0] + q[1]) / 2)  # user 0's items 0, 1 (keys), 2 (not a key)
    torch.testing.assert_close(m_users[1], q[0])
    torch.testing.assert_close(m_users[3], torch.zeros(2))  # no key item in E_tr
    torch.testing.assert_close(m_users[4], torch.zeros(2))  # unseen: no E_tr at all
    m_items = domain.summaries(phase, "item")
    p = domain.user_emb.detach()
    torch.testing.assert_close(m_items[0], (p[0] + p[1]) / 2)  # item 0's users 0, 2 (keys) and 1 (not)
    torch.testing.assert_close(m_items[2], p[0])
    at_inference = build_phase(data.edges_of("train", "new"), 5, 4, domain.user_key, domain.item_key,
                               torch.device("cpu"))
    m_new = domain.summaries(at_inference, "user")
    torch.testing.assert_close(m_new[4], q[0])  # unseen user 4: items 0 (key) and 3 (unseen, not a key) in E_new
    torch.testing.assert_close(m_new[1], (q[0] + q[1]) / 2)  # E_tr's item 0 and E_new's item 1


def test_attention_weights_and_output_by_hand() -> None:
    relation = Relation(2, heads=1)
    with torch.no_grad():
        for weight in (relation.query, relation.key, relation.value):
            weight.copy_(torch.eye(2).unsqueeze(0))
        relation.key[0] = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
        relation.value[0] = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
        relation.out.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 3.0]]))
    m = torch.tensor([[1.0, 1.0]])
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # logits (W_q m)·(W_k e_k) = (1,1)·(2,0), (1,1)·(0,1), (1,1)·(2,1) = 2, 1, 3
    logits = torch.tensor([2.0, 1.0, 3.0])
    weights = logits.exp() / logits.exp().sum()
    torch.testing.assert_close(relation.attention(m, keys)[0, 0].detach(), weights)
    mixed = sum(w * torch.tensor([e[1], e[0]]) for w, e in zip(weights, keys, strict=True))  # W_v swaps
    torch.testing.assert_close(relation(m, keys)[0].detach(), torch.tensor([mixed[0], 3 * mixed[1]]))
    # the same row as key 2 itself: it attends to keys 0 and 1 only (logits 2, 1)
    without = torch.tensor([2.0, 1.0]).softmax(0)
    torch.testing.assert_close(relation.attention(m, keys, torch.tensor([2]))[0, 0].detach(),
                               torch.tensor([without[0], without[1], 0.0]))
    torch.testing.assert_close(relation.attention(m, keys, torch.tensor([-1])), relation.attention(m, keys))


def test_heads_are_concatenated_before_the_output_map() -> None:
    relation = Relation(2, heads=2)
    m, keys = torch.randn(3, 2), torch.randn(4, 2)
    per_head = [relation.attention(m, keys)[h] @ (keys @ relation.value[h].T) for h in range(2)]
    expected = torch.cat(per_head, dim=1) @ relation.out.weight.T
    torch.testing.assert_close(relation(m, keys), expected)


def test_the_fused_estimate_and_its_gradients_equal_the_explicit_attention_with_own_keys_left_out() -> None:
    torch.manual_seed(0)
    relation = Relation(8, heads=3)
    m, keys = torch.randn(40, 8, requires_grad=True), torch.randn(30, 8)
    own = torch.randint(-1, 30, (40,))
    explicit = torch.cat([relation.attention(m, keys, own)[h] @ (keys @ relation.value[h].T) for h in range(3)],
                         dim=1) @ relation.out.weight.T
    fused = relation(m, keys, own)
    torch.testing.assert_close(fused, explicit)
    weight = torch.randn(40, 8)
    grads = [torch.autograd.grad((out * weight).sum(), [m, relation.query, relation.key, relation.value])
             for out in (fused, explicit)]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)
    assert (relation.attention(m, keys, own)[:, own >= 0].gather(
        2, own[own >= 0].expand(3, -1).unsqueeze(2)) == 0).all()


def test_every_entity_is_the_relation_estimate_over_the_other_keys() -> None:
    domain, _ = small_domain()
    phase = build_phase(EDGES, 5, 4, domain.user_key, domain.item_key, torch.device("cpu"))
    with torch.no_grad():
        reps, items = domain.everyone(phase, "user"), domain.everyone(phase, "item")
        m = domain.summaries(phase, "user")
        keys = domain.user_emb
        for user, own in ((0, 0), (2, 1), (1, -1), (4, -1)):  # key users 0 and 2 (rows 0, 1), query users 1 and 4
            torch.testing.assert_close(reps[user], domain.user_relation(m[user : user + 1], keys,
                                                                        torch.tensor([own]))[0])
        torch.testing.assert_close(items[2], domain.item_relation(domain.summaries(phase, "item")[2:3],
                                                                  domain.item_emb, torch.tensor([-1]))[0])
        domain.user_emb[0] += 1.0  # key user 0's own embedding shapes the others' representations, not its own
        after = domain.everyone(phase, "user")
    torch.testing.assert_close(after[0], reps[0])
    assert not torch.allclose(after[2], reps[2])


def test_scoring_everyone_in_chunks_equals_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    domain, _ = small_domain()
    phase = build_phase(torch.cat([EDGES, NEW], 1), 5, 4, domain.user_key, domain.item_key, torch.device("cpu"))
    with torch.no_grad():
        whole = domain.factors(phase)
        monkeypatch.setattr(idcf, "CHUNK", 2)  # rows 0-1, 2-3, 4: key user 2 sits past a boundary
        chunked = domain.factors(phase)
    for one, other in zip(whole, chunked, strict=True):
        torch.testing.assert_close(one, other, rtol=0, atol=0)


def stage_config(**kw: object) -> Config:
    """One epoch of two steps of stage 1, then stage 2."""
    values = {"model": "idcf", "dim": 8, "device": "cpu", "batches_per_epoch": 2, "max_epochs": 3, "patience": 100,
              "params": {"pretrain_epochs": 1}}
    return Config(**(values | kw))  # type: ignore[arg-type]


def test_stage_one_trains_the_factorisation_and_stage_two_only_the_relation_models(tiny_pair: PairData) -> None:
    s = setup(tiny_pair, stage_config())
    optimizer = torch.optim.Adam(s.model.parameters())
    gen = torch.Generator().manual_seed(0)
    for step in range(4):
        assert s.model.stage(0) == s.model.stage(1) == (1 if step < 2 else 2)
        train_step(s, 0.5, gen, optimizer)
        grads = {name: p.grad for name, p in s.model.named_parameters()}
        for name, grad in grads.items():
            factorisation = name.endswith(("user_emb", "item_emb"))
            assert (grad is not None) == (factorisation == (step < 2)), (step, name)
            if grad is not None:
                assert bool(grad.any()), (step, name)
    assert [int(domain.steps) for domain in s.model.domains] == [4, 4]


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_stage_two_terms_equal_their_definition_with_every_row_estimated_on_its_own(tiny_pair: PairData,
                                                                                   reduction: str) -> None:
    model = setup(tiny_pair, stage_config(loss_reduction=reduction)).model
    draws = model.draw(torch.Generator().manual_seed(3))
    for d, domain in enumerate(model.domains):
        phase, users, items = model.train_phases[d], draws.contrast_users[d], draws.contrast_items[d]
        bpr, contrast, l2 = model._relation_terms(d, draws.relation[d], users, items)
        u, i, j = model.relation_samplers[d].triples(draws.relation[d])
        ru, ri, rj = (domain.representations(phase, side, rows) for side, rows in (("user", u), ("item", i),
                                                                                   ("item", j)))
        torch.testing.assert_close(bpr, bpr_loss(ru, ri, rj, reduction))
        torch.testing.assert_close(l2, reduce(ru.pow(2).sum(-1) + ri.pow(2).sum(-1) + rj.pow(2).sum(-1), reduction))
        expected = torch.zeros(())
        for side, picks, keys, own in (("user", users, model.key_users[d], domain.user_emb),
                                       ("item", items, model.key_items[d], domain.item_emb)):
            estimate = domain.estimates(domain.summaries(phase, side)[keys[picks]], side, picks)  # m_k, k left out
            logits = estimate @ own.T
            expected = expected + reduce(torch.logsumexp(logits, -1) - logits[torch.arange(len(picks)), picks],
                                         reduction)
        torch.testing.assert_close(contrast, expected)
        assert len(torch.unique(users)) < len(users)  # the draws repeat keys, which the terms count each time


def test_both_stages_are_recorded_from_the_first_epoch(tiny_pair: PairData) -> None:
    s = setup(tiny_pair, stage_config())
    state = train(s)
    first, last = state.history[0], state.history[-1]
    name = tiny_pair.domains[0].name
    for term in ("mf", "bpr", "contrast"):
        assert f"loss/{term}/{name}" in first and f"loss/{term}/{name}" in last
    assert first[f"loss/bpr/{name}"] > 0 and first[f"loss/contrast/{name}"] > 0


def test_a_resumed_run_continues_in_the_right_stage(tiny_pair: PairData, tmp_path: Path) -> None:
    class Killed(Exception):
        pass

    def kill(record: dict) -> None:
        if record["epoch"] == 0:
            raise Killed

    config = stage_config()
    full = setup(tiny_pair, config)
    full_state = train(full, run_dir=tmp_path / "full")
    with pytest.raises(Killed):
        train(setup(tiny_pair, config), run_dir=tmp_path / "killed", on_epoch=kill)
    assert int(torch.load(tmp_path / "killed" / CHECKPOINT, weights_only=True)["model"]["domains.0.steps"]) == 2
    resumed = setup(tiny_pair, config)
    resumed_state = train(resumed, run_dir=tmp_path / "killed", resume=True)
    assert resumed_state.history == full_state.history
    assert evaluate_test(resumed, domain_alphas(resumed, resumed_state)) == evaluate_test(
        full, domain_alphas(full, full_state))


def test_stage_two_learns_nothing_from_test_interactions_or_unseen_entities(tiny_pair: PairData,
                                                                          tmp_path: Path) -> None:
    config = stage_config(max_epochs=2)
    train(setup(tiny_pair, config), run_dir=tmp_path / "a")
    train(setup(_perturbed(tiny_pair), config), run_dir=tmp_path / "b")
    a, b = (torch.load(tmp_path / x / CHECKPOINT, weights_only=True) for x in ("a", "b"))
    assert [r["loss"] for r in a["state"]["history"]] == [r["loss"] for r in b["state"]["history"]]
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0, msg=key)


def test_unseen_users_and_items_are_query_entities_over_e_tr_and_e_new(tiny_pair: PairData) -> None:
    s = setup(tiny_pair, stage_config())
    data, domain = tiny_pair.domains[0], s.model.domains[0]
    assert (domain.user_key[~data.user_seen] == -1).all() and (domain.item_key[~data.item_seen] == -1).all()
    prepared = s.model.prepare_inference(0)
    with torch.no_grad():
        scores = s.model.inference_scores(0, 1.0, prepared)
        user = int(torch.nonzero(~data.user_seen)[0])
        observed = data.edges_of("train", "new")
        items = observed[1][observed[0] == user]
        keys = domain.item_key[items]
        m = domain.item_emb[keys[keys >= 0]].mean(0, keepdim=True)
        estimate = domain.estimates(m, "user", torch.tensor([-1]))[0]
        torch.testing.assert_close(scores[user], domain.everyone(prepared, "item") @ estimate)
    moved = replace(data, edges={**data.edges, "test": data.edges["test"][:, :5], "val": data.edges["val"][:, :3]})
    with torch.no_grad():
        torch.testing.assert_close(s.model.inference_scores(0, 1.0, s.model.prepare_inference(0, moved)), scores)


def test_own_parameters_are_checked() -> None:
    assert Params() == Params(key_users=0.5, key_items=1.0, heads=4, contrast_weight=1e-3, pretrain_epochs=30)
    assert Params(key_users=1.0).key_users == 1.0  # every seen user a key: the INMO authors' choice
    for bad in ({"key_users": 1.5}, {"key_users": 0}, {"key_items": 1.5}, {"heads": 0}, {"heads": 2.5},
                {"contrast_weight": -1}, {"pretrain_epochs": 0}, {"key_users": True}):
        with pytest.raises(ValueError, match=f"--param {next(iter(bad))}"):
            Config(model="idcf", params=bad)


def test_pretraining_must_end_before_patience_could(tiny_pair: PairData) -> None:
    with pytest.raises(ValueError, match="pretrain_epochs"):
        setup(tiny_pair, Config(model="idcf", device="cpu", patience=30, params={"pretrain_epochs": 30}))
