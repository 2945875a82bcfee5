"""AlphaRec (micrec_core.models.alpharec): its equations by hand, what its gradient reaches, how it meets unseen users
and items, and the recorded fallback for items and domains without text. The interface's generic tests (determinism,
finite scores, no leakage) run for it from tests/test_registry.py."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from micrec_core.config import Config
from micrec_core.data.dataset import PairData
from micrec_core.evaluation.inference import inference_scores, recommend_new
from micrec_core.models import alpharec
from micrec_core.models.alpharec import DomainAlpha, build_phase, cosine_factors, infonce_loss
from micrec_core.models.micrec import ItemModalities
from micrec_core.models.recommender import dense
from micrec_core.models.setup import setup
from micrec_core.training.train import domain_alphas, train, train_step
from tests.conftest import random_features


def quick(**kw: object) -> Config:
    """A small AlphaRec config for the tiny pair."""
    values = {"model": "alpharec", "dim": 8, "max_epochs": 2, "batches_per_epoch": 4, "device": "cpu",
              "patience": 100, "params": {"negatives": 16}}
    return Config(**(values | kw))  # type: ignore[arg-type]


def textless(feats: list[ItemModalities], d: int) -> list[ItemModalities]:
    """The features with domain d stripped of all text (as Electronics in the shared 2014 copy)."""
    out = list(feats)
    f = feats[d]
    out[d] = ItemModalities(torch.zeros_like(f.text), torch.zeros_like(f.text_mask), f.image, f.image_mask)
    return out


def full_text(feats: list[ItemModalities]) -> list[ItemModalities]:
    """The features with every item given text."""
    gen = torch.Generator().manual_seed(5)
    return [ItemModalities(torch.randn(f.text.shape, generator=gen), torch.ones_like(f.text_mask), f.image,
                           f.image_mask) for f in feats]


def mixed(pair: PairData) -> list[ItemModalities]:
    """Random text for every item except the first three seen and the first three unseen items of each domain."""
    out = []
    for data, f in zip(pair.domains, full_text(random_features(pair)), strict=True):
        mask = torch.ones(data.n_items, dtype=torch.bool)
        for seen in (True, False):
            mask[torch.nonzero(data.item_seen == seen).flatten()[:3]] = False
        out.append(ItemModalities(f.text * mask.unsqueeze(1), mask, f.image, f.image_mask))
    return out


def leaky(v: float) -> float:
    """LeakyReLU with PyTorch's default slope 0.01."""
    return v if v > 0 else 0.01 * v


def test_item_mlp_user_mean_and_one_propagation_layer_by_hand() -> None:
    # users 0 and 1; items 0, 1, 2; u0 - i0, u0 - i1, u1 - i1, u1 - i2.
    edges = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 2]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    phase = build_phase(edges, 2, 3, text, torch.ones(3, dtype=torch.bool), torch.full((3,), -1))
    model = DomainAlpha(lm_dim=2, hidden=2, dim=2, n_fallback=0, text_mean=text.mean(0))
    w1, b1 = [[1.0, -2.0], [0.5, 1.0]], [0.0, 0.1]
    w2, b2 = [[1.0, 1.0], [2.0, -1.0]], [0.5, 0.0]
    with torch.no_grad():
        model.mlp[0].weight.copy_(torch.tensor(w1))
        model.mlp[0].bias.copy_(torch.tensor(b1))
        model.mlp[2].weight.copy_(torch.tensor(w2))
        model.mlp[2].bias.copy_(torch.tensor(b2))

    def pre(z: list[float]) -> list[float]:  # W_1 z + b_1
        return [sum(w * x for w, x in zip(row, z, strict=True)) + b for row, b in zip(w1, b1, strict=True)]

    def mlp(z: list[float]) -> list[float]:  # eq-alpha-mlp: W_2 LeakyReLU(W_1 z + b_1) + b_2
        h = [leaky(v) for v in pre(z)]
        return [sum(w * x for w, x in zip(row, h, strict=True)) + b for row, b in zip(w2, b2, strict=True)]

    assert pre([0.0, 1.0])[0] < 0  # item 1 goes through LeakyReLU's negative slope

    z_users, z_items = model.inputs(phase)
    torch.testing.assert_close(z_users, torch.tensor([[0.5, 0.5], [0.5, 1.0]]))  # eq-alpha-user: item means
    torch.testing.assert_close(z_items, text)
    e_u = [mlp([0.5, 0.5]), mlp([0.5, 1.0])]
    e_i = [mlp([1.0, 0.0]), mlp([0.0, 1.0]), mlp([1.0, 1.0])]
    # one LightGCN layer, degrees u0: 2, u1: 2, i0: 1, i1: 2, i2: 1; final = (layer 0 + layer 1) / 2
    def add(*terms: tuple[float, list[float]]) -> list[float]:
        return [sum(c * v[k] for c, v in terms) for k in range(2)]

    s = math.sqrt
    layer1_u = [add((1 / s(2 * 1), e_i[0]), (1 / s(2 * 2), e_i[1])),
                add((1 / s(2 * 2), e_i[1]), (1 / s(2 * 1), e_i[2]))]
    layer1_i = [add((1 / s(1 * 2), e_u[0])), add((1 / s(2 * 2), e_u[0]), (1 / s(2 * 2), e_u[1])),
                add((1 / s(1 * 2), e_u[1]))]
    expected_u = torch.tensor([add((0.5, e), (0.5, x)) for e, x in zip(e_u, layer1_u, strict=True)])
    expected_i = torch.tensor([add((0.5, e), (0.5, x)) for e, x in zip(e_i, layer1_i, strict=True)])
    r_users, r_items = model(phase, layers=1)
    torch.testing.assert_close(r_users, expected_u)
    torch.testing.assert_close(r_items, expected_i)
    # eq-alpha-score: cosine
    scores = dense(cosine_factors(r_users, r_items))
    u, i = expected_u[1], expected_i[0]
    torch.testing.assert_close(scores[1, 0], (u @ i) / (u.norm() * i.norm()))


def test_infonce_by_hand() -> None:
    tau = 0.5
    users = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    positives = torch.tensor([[3.0, 4.0], [0.0, 2.0]])  # cosines 0.6 and 1.0
    negatives = torch.tensor([[[0.0, 5.0], [-1.0, 0.0]], [[1.0, 0.0], [3.0, 4.0]]])  # cosines 0, -1 and 0, 0.8
    first = -math.log(math.exp(0.6 / tau) / (math.exp(0.6 / tau) + math.exp(0.0) + math.exp(-1.0 / tau)))
    second = -math.log(math.exp(1.0 / tau) / (math.exp(1.0 / tau) + math.exp(0.0) + math.exp(0.8 / tau)))
    assert infonce_loss(users, positives, negatives, tau).item() == pytest.approx((first + second) / 2, rel=1e-6)


def test_the_model_s_loss_is_infonce_on_its_sampled_pairs(tiny_pair: PairData) -> None:
    s = setup(tiny_pair, quick(), mixed(tiny_pair))
    model = s.model
    draws = model.draw(torch.Generator().manual_seed(3))
    terms = model.loss_terms(draws, 0.5)
    for d, (pick, u_pos, u_neg) in enumerate(draws.domains):
        sampler, k = model.samplers[d], u_neg.shape[1]
        users, positives, _ = sampler.triples((pick, u_pos, u_neg[:, 0]))
        _, _, negatives = sampler.triples((pick.unsqueeze(1).expand(-1, k), u_pos.unsqueeze(1).expand(-1, k), u_neg))
        train_items = set(map(tuple, tiny_pair.domains[d].edges["train"].T.tolist()))
        assert all((int(u), int(i)) in train_items for u, i in zip(users, positives, strict=True))
        assert not any((int(u), int(j)) in train_items for u, row in zip(users, negatives, strict=True) for j in row)
        r_users, r_items = model.domains[d](model.train_phases[d], s.config.layers)
        expected = infonce_loss(r_users[users], r_items[positives], r_items[negatives], model.params.tau)
        torch.testing.assert_close(terms[d], expected)
    assert terms[2].item() == 0.0  # l2 is off by default


def test_parameters_are_resolved_and_out_of_domain_values_refused() -> None:
    assert Config(model="alpharec").params == {"tau": 0.15, "negatives": 256, "hidden_ratio": 0.5}
    for key, value in (("tau", 0), ("tau", float("nan")), ("negatives", 0), ("negatives", 2.5), ("negatives", True),
                       ("hidden_ratio", -1.0)):
        with pytest.raises(ValueError, match=f"--param {key}"):
            Config(model="alpharec", params={key: value})


@pytest.mark.parametrize("with_fallback", [True, False])
def test_gradients_reach_exactly_the_mlp_and_the_fallback_rows(tiny_pair: PairData, with_fallback: bool) -> None:
    feats = random_features(tiny_pair)  # about 10% of items without text
    feats = feats if with_fallback else full_text(feats)
    s = setup(tiny_pair, quick(), feats)
    train_step(s, 0.5, torch.Generator().manual_seed(0), torch.optim.Adam(s.model.parameters()))
    names = {name for name, _ in s.model.named_parameters()}
    mlp = {f"domains.{d}.mlp.{k}.{w}" for d in range(2) for k in (0, 2) for w in ("weight", "bias")}
    fallback = {f"domains.{d}.fallback" for d in range(2)} if with_fallback else set()
    assert names == mlp | fallback  # the language embeddings are frozen inputs, not parameters
    for name, p in s.model.named_parameters():
        assert p.grad is not None and bool(p.grad.any()), name
    if with_fallback:
        for data, f, domain in zip(tiny_pair.domains, feats, s.model.domains, strict=True):
            assert domain.fallback.shape[0] == int((data.item_seen & ~f.text_mask).sum())


def test_training_reads_e_tr_and_seen_items_text_only(tiny_pair: PairData) -> None:
    feats = mixed(tiny_pair)
    s = setup(tiny_pair, quick(), feats)
    for d, (data, f) in enumerate(zip(tiny_pair.domains, feats, strict=True)):
        domain = s.model.domains[d]
        z_users, z_items = domain.inputs(s.model.train_phases[d])
        assert not z_items[~data.item_seen].any()  # an unseen item's text is never read in training
        with_text = data.item_seen & f.text_mask
        torch.testing.assert_close(z_items[with_text], f.text[with_text])
        rows = s.model.learned[d][data.item_seen & ~f.text_mask]
        torch.testing.assert_close(z_items[data.item_seen & ~f.text_mask], domain.fallback[rows])
        train = data.edges["train"]
        for u in range(data.n_users):
            items = train[1][train[0] == u]
            expected = z_items[items].mean(0) if len(items) else torch.zeros(z_items.shape[1])
            torch.testing.assert_close(z_users[u], expected)


def test_unseen_users_and_items_from_e_tr_plus_e_new_and_text_only(tiny_pair: PairData) -> None:
    feats = mixed(tiny_pair)
    s = setup(tiny_pair, quick(), feats)
    state = train(s)
    alphas = domain_alphas(s, state)
    for d, (data, f) in enumerate(zip(tiny_pair.domains, feats, strict=True)):
        domain = s.model.domains[d]
        with torch.no_grad():
            z_users, z_items = domain.inputs(s.model.prepare_inference(d))
            unseen_text = ~data.item_seen & f.text_mask
            unseen_none = ~data.item_seen & ~f.text_mask
            assert unseen_text.any() and int(unseen_none.sum()) == 3
            torch.testing.assert_close(z_items[unseen_text], f.text[unseen_text])  # from its text
            torch.testing.assert_close(z_items[unseen_none], domain.fallback.mean(0).expand(int(unseen_none.sum()), -1))
            observed = data.edges_of("train", "new")
            for u in torch.nonzero(~data.user_seen).flatten().tolist():
                items = observed[1][observed[0] == u]
                assert len(items) > 0
                torch.testing.assert_close(z_users[u], z_items[items].mean(0))
    base = inference_scores(s, alphas)
    # validation and test interactions are never read at inference ...
    gen = torch.Generator().manual_seed(1)
    domains = []
    for data in tiny_pair.domains:
        edges = dict(data.edges)
        for split in ("val", "test"):
            n = edges[split].shape[1]
            edges[split] = torch.stack([torch.randint(data.n_users, (n,), generator=gen),
                                        torch.randint(data.n_items, (n,), generator=gen)])
        domains.append(replace(data, edges=edges))
    s.pair = replace(tiny_pair, domains=tuple(domains))
    for a, b in zip(base, inference_scores(s, alphas), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    s.pair = tiny_pair
    # ... while an unseen item's text is: changing it moves that item's scores
    item = int(torch.nonzero(~tiny_pair.domains[0].item_seen & feats[0].text_mask)[0])
    text = s.model.text[0].clone()
    s.model.text[0][item] = torch.randn(text.shape[1], generator=gen)
    moved = inference_scores(s, alphas)[0]
    s.model.text[0].copy_(text)
    assert not torch.allclose(moved[:, item], base[0][:, item])


def test_a_domain_without_text_takes_the_fallback_and_says_so(tiny_pair: PairData,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    feats = textless(full_text(random_features(tiny_pair)), 1)
    name_a, name_b = (data.name for data in tiny_pair.domains)
    with caplog.at_level(logging.WARNING, logger="micrec.alpharec"):
        s = setup(tiny_pair, quick(), feats)
    warnings = [r.getMessage() for r in caplog.records if r.name == "micrec.alpharec"]
    assert len(warnings) == 1 and f"domain {name_b}:" in warnings[0] and "(100.00%)" in warnings[0]
    notes = s.model.notes()["text_fallback"]
    data_b = tiny_pair.domains[1]
    assert notes[name_a] == {"items": tiny_pair.domains[0].n_items, "items_without_text": 0,
                             "share_without_text": 0.0, "learned_rows": 0, "unseen_items_without_text": 0,
                             "fallback_used": False}
    assert notes[name_b]["fallback_used"] and notes[name_b]["share_without_text"] == 1.0
    assert notes[name_b]["learned_rows"] == int(data_b.item_seen.sum())
    assert notes[name_b]["unseen_items_without_text"] == int((~data_b.item_seen).sum())
    assert s.model.domains[0].fallback is None and s.model.domains[1].fallback.shape[0] == int(data_b.item_seen.sum())
    state = train(s)
    assert all(math.isfinite(r["loss"]) for r in state.history)
    for data, scores in zip(tiny_pair.domains, inference_scores(s, domain_alphas(s, state)), strict=True):
        assert scores.shape == (data.n_users, data.n_items) and torch.isfinite(scores).all()


def test_unseen_items_without_text_and_no_learned_rows_get_the_seen_text_mean(tiny_pair: PairData) -> None:
    feats = full_text(random_features(tiny_pair))
    data = tiny_pair.domains[0]
    mask = data.item_seen.clone()  # every seen item has text, no unseen item has
    feats[0] = ItemModalities(feats[0].text * mask.unsqueeze(1), mask, feats[0].image, feats[0].image_mask)
    s = setup(tiny_pair, quick(), feats)
    assert s.model.domains[0].fallback is None
    with torch.no_grad():
        _, z_items = s.model.domains[0].inputs(s.model.prepare_inference(0))
    expected = feats[0].text[data.item_seen].mean(0)
    torch.testing.assert_close(z_items[~data.item_seen], expected.expand(int((~data.item_seen).sum()), -1))


def test_brand_new_users_and_items_are_scored(tiny_pair: PairData) -> None:
    s = setup(tiny_pair, quick(), random_features(tiny_pair))
    alphas = domain_alphas(s, train(s))
    name = tiny_pair.domains[0].name
    history = tiny_pair.domains[0].item_ids[:3]
    picks = recommend_new(s, name, alphas, items=history, n=5)
    assert len(picks) == 5 and not set(history) & {item for item, _ in picks}
    targets = recommend_new(s, name, alphas, users=tiny_pair.domains[0].user_ids[:4], n=3)  # an item without text
    assert len(targets) == 3 and all(math.isfinite(score) for _, score in targets)


def test_a_run_s_metrics_report_the_fallback(tiny_dataset: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from micrec_core.cli import main
    from micrec_core.data.dataset import load_pair

    pair = load_pair(tiny_dataset)
    feats = {data.name: f for data, f in zip(pair.domains, textless(random_features(pair), 1), strict=True)}
    monkeypatch.setattr(alpharec, "item_modalities", lambda path, domain: feats[domain])
    out = tmp_path / "run"
    code = main(["train", "--dataset", str(tiny_dataset), "--model", "alpharec", "--max-epochs", "1", "--device",
                 "cpu", "--out", str(out), "--quiet", "--param", "negatives=8"])
    assert code == 0
    notes = json.loads((out / "metrics.json").read_text())["model_notes"]
    name_a, name_b = (data.name for data in pair.domains)
    assert notes["text_fallback"][name_b]["fallback_used"] and notes["text_fallback"][name_b]["share_without_text"] == 1
    assert notes["text_fallback"][name_a]["fallback_used"]  # random features leave ~10% without text
    assert "learned embedding" in notes["text_fallback_rule"]
