"""NeuMF (micrec_core.models.neumf): Eq. 12's score and Eq. 7's log loss against a hand computation, which parameters a
step reaches, unseen users and items met as the mean embeddings, and its own parameters checked. The interface's
generic tests (determinism, leakage, finite scores for everyone) run for it in test_registry.py."""

from __future__ import annotations

import math

import pytest
import torch

from micrec_core.config import Config
from micrec_core.data.dataset import PairData
from micrec_core.models.neumf import NeuMF, Towers
from micrec_core.models.setup import setup


def neumf(pair: PairData, **kw: object) -> NeuMF:
    """A small NeuMF (dim 4: GMF 4, MLP embeddings 8, layers 16 -> 8 -> 4) with parameters of a visible size."""
    values = {"model": "neumf", "dim": 4, "batches_per_epoch": 4, "device": "cpu"} | kw
    model = setup(pair, Config(**values)).model  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    assert isinstance(model, NeuMF)
    return model


def hand_logit(gmf_user: list[float], gmf_item: list[float], mlp_user: list[float], mlp_item: list[float],
               towers: Towers) -> float:
    """h^T [p^G ⊙ q^G; φ^MLP] with φ^MLP = ReLU layers over z_1 = [p^M; q^M], in plain Python (Eq. 10, 12)."""
    z = mlp_user + mlp_item
    for layer in towers.mlp:
        z = [max(0.0, sum(w * x for w, x in zip(row, z, strict=True)) + b)
             for row, b in zip(layer.weight.tolist(), layer.bias.tolist(), strict=True)]
    phi = [a * b for a, b in zip(gmf_user, gmf_item, strict=True)] + z
    return sum(h * f for h, f in zip(towers.h.tolist(), phi, strict=True))


def seen_logit(towers: Towers, user: int, item: int) -> float:
    """hand_logit of a seen user's and a seen item's rows."""
    return hand_logit(towers.gmf_users[user].tolist(), towers.gmf_items[item].tolist(),
                      towers.mlp_users[user].tolist(), towers.mlp_items[item].tolist(), towers)


def test_score_is_eq_12_by_hand(tiny_pair: PairData) -> None:
    model = neumf(tiny_pair)
    towers = model.domains[0]
    assert [layer.out_features for layer in towers.mlp] == [16, 8, 4] and towers.mlp_users.shape[1] == 8
    data = tiny_pair.domains[0]
    scores = model.validation_scores(0, 0.5)
    users, items = torch.nonzero(data.user_seen).flatten()[:3], torch.nonzero(data.item_seen).flatten()[:3]
    for u in users.tolist():
        for i in items.tolist():
            row_u, row_i = int(towers.user_rows[u]), int(towers.item_rows[i])
            expected = seen_logit(towers, row_u, row_i)
            assert scores[u, i].item() == pytest.approx(expected, rel=1e-5, abs=1e-5)
            got = towers.logits(torch.tensor([row_u]), torch.tensor([row_i])).item()
            assert got == pytest.approx(expected, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_log_loss_is_eq_7_by_hand_over_positives_and_four_negatives(tiny_pair: PairData, reduction: str) -> None:
    model = neumf(tiny_pair, loss_reduction=reduction)
    draws = model.draw(torch.Generator().manual_seed(0))
    terms = model.loss_terms(draws, 0.5)
    for d, (towers, sampler, (pick, u_pos, u_neg)) in enumerate(zip(model.domains, model.samplers, draws,
                                                                      strict=True)):
        assert u_neg.shape == (model.batch_sizes[d], 4)
        users, positives, negatives = sampler.triples((pick[:, None].expand(-1, 4), u_pos[:, None].expand(-1, 4),
                                                      u_neg))
        train = {tuple(e) for e in torch.stack([towers.user_rows[tiny_pair.domains[d].edges["train"][0]],
                                                 towers.item_rows[tiny_pair.domains[d].edges["train"][1]]]).T.tolist()}
        total, count = 0.0, 0
        for u, i, negs in zip(users[:, 0].tolist(), positives[:, 0].tolist(), negatives.tolist(), strict=True):
            assert (u, i) in train and not any((u, j) in train for j in negs)
            total -= math.log(1 / (1 + math.exp(-seen_logit(towers, u, i))))  # y = 1: -log ŷ
            for j in negs:
                total -= math.log(1 - 1 / (1 + math.exp(-seen_logit(towers, u, j))))  # y = 0: -log(1 - ŷ)
            count += 5
        expected = total if reduction == "sum" else total / count
        assert terms[d].item() == pytest.approx(expected, rel=1e-4)
    assert terms[2].item() == 0.0 and model.used_terms() == [True, True, False]


def test_gradients_reach_exactly_the_domain_s_sampled_rows_and_its_network(tiny_pair: PairData) -> None:
    model = neumf(tiny_pair)
    draws = model.draw(torch.Generator().manual_seed(1))
    for d in range(2):
        model.zero_grad(set_to_none=True)
        model.loss_terms(draws, 0.5)[d].backward()
        towers, other = model.domains[d], model.domains[1 - d]
        assert all(p.grad is None or not p.grad.any() for p in other.parameters())  # stacked terms: exact zeros
        assert all(p.grad is not None and bool(p.grad.any()) for p in towers.parameters())
        pick, u_pos, u_neg = draws[d]
        users, positives, negatives = model.samplers[d].triples(
            (pick[:, None].expand(-1, 4), u_pos[:, None].expand(-1, 4), u_neg))
        sampled_users, sampled_items = set(users.flatten().tolist()), set(positives.flatten().tolist()) | set(
            negatives.flatten().tolist())
        for table, rows in ((towers.gmf_users, sampled_users), (towers.mlp_users, sampled_users),
                            (towers.gmf_items, sampled_items), (towers.mlp_items, sampled_items)):
            assert set(torch.nonzero(table.grad.abs().sum(1)).flatten().tolist()) == rows


def test_l2_reaches_every_embedding_and_weight_but_no_bias(tiny_pair: PairData) -> None:
    model = neumf(tiny_pair, l2=0.1)
    assert model.used_terms() == [True, True, True]
    l2 = model.loss_terms(model.draw(torch.Generator().manual_seed(0)), 0.5)[2]
    expected = sum(p.pow(2).sum().item() for name, p in model.named_parameters() if not name.endswith("bias"))
    assert l2.item() == pytest.approx(expected, rel=1e-5)
    l2.backward()
    for name, p in model.named_parameters():
        assert (p.grad is None or not p.grad.any()) == name.endswith("bias"), name


def test_unseen_users_and_items_score_as_the_mean_embeddings(tiny_pair: PairData) -> None:
    model = neumf(tiny_pair)
    for d, (data, towers) in enumerate(zip(tiny_pair.domains, model.domains, strict=True)):
        assert towers.gmf_users.shape[0] == towers.mlp_users.shape[0] == int(data.user_seen.sum())
        assert towers.gmf_items.shape[0] == towers.mlp_items.shape[0] == int(data.item_seen.sum())
        scores = model.inference_scores(d, 0.5, model.prepare_inference(d))
        assert scores.shape == (data.n_users, data.n_items) and torch.isfinite(scores).all()
        mean = {name: getattr(towers, name).mean(0).tolist() for name in
                ("gmf_users", "gmf_items", "mlp_users", "mlp_items")}
        seen_u, unseen_u = (int(torch.nonzero(m).flatten()[0]) for m in (data.user_seen, ~data.user_seen))
        seen_i, unseen_i = (int(torch.nonzero(m).flatten()[0]) for m in (data.item_seen, ~data.item_seen))
        row_u, row_i = int(towers.user_rows[seen_u]), int(towers.item_rows[seen_i])
        expected = hand_logit(towers.gmf_users[row_u].tolist(), mean["gmf_items"], towers.mlp_users[row_u].tolist(),
                              mean["mlp_items"], towers)
        assert scores[seen_u, unseen_i].item() == pytest.approx(expected, rel=1e-5, abs=1e-5)
        expected = hand_logit(mean["gmf_users"], towers.gmf_items[row_i].tolist(), mean["mlp_users"],
                              towers.mlp_items[row_i].tolist(), towers)
        assert scores[unseen_u, seen_i].item() == pytest.approx(expected, rel=1e-5, abs=1e-5)
        # every unseen user scores as the mean user, every unseen item as the mean item; E_new is not read
        assert (scores[~data.user_seen] == scores[unseen_u]).all()
        assert (scores[:, ~data.item_seen] == scores[:, [unseen_i]]).all()
        torch.testing.assert_close(scores, model.validation_scores(d, 0.5), rtol=0, atol=0)


def test_params_are_checked_by_name(tiny_pair: PairData) -> None:
    for key, value in (("negatives", 0), ("mlp_layers", 1.5), ("init_std", 0.0), ("init_std", math.nan)):
        with pytest.raises(ValueError, match=f"--param {key}"):
            Config(model="neumf", params={key: value})
    model = neumf(tiny_pair, params={"negatives": 2, "mlp_layers": 1})
    assert [layer.out_features for layer in model.domains[0].mlp] == [4]
    assert model.draw(torch.Generator().manual_seed(0))[0][2].shape[1] == 2
