"""XSimGCL: the noise keeps the sign and has norm ε per row, the noisy layers and the cross-layer contrast by hand,
no noise at inference, which parameters its loss reaches, and how it meets unseen users and items."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from micrec_core.data.dataset import PairData
from micrec_core.models.propagation import normalized_adjacency
from micrec_core.models.setup import setup
from micrec_core.models.xsimgcl import Params, perturb
from micrec_core.training.train import train_step
from tests.test_registry import tiny


def test_noise_keeps_the_sign_and_has_norm_eps_per_row() -> None:
    gen = torch.Generator().manual_seed(0)
    e = torch.randn(50, 16, generator=gen)
    noisy = perturb(e, torch.rand(50, 16, generator=gen), 0.2)
    assert torch.equal(torch.sign(noisy), torch.sign(e))
    torch.testing.assert_close((noisy - e).norm(dim=-1), torch.full((50,), 0.2))
    assert torch.equal(perturb(e, torch.rand(50, 16, generator=gen), 0.0), e)


def _hand_layers(x: torch.Tensor, graph: torch.Tensor, n: int, noise: torch.Tensor | None = None,
                 eps: float = 0.2) -> list[torch.Tensor]:
    """E^(l) = Â E^(l-1) + ε normalize(Δ̄) ⊙ sign(Â E^(l-1)) for l = 1..n, with a dense Â."""
    layers, e = [], x
    for layer in range(n):
        e = graph @ e
        if noise is not None:
            delta = noise[layer] / noise[layer].norm(dim=-1, keepdim=True)
            e = e + eps * delta * torch.where(e > 0, 1.0, torch.where(e < 0, -1.0, 0.0))
        layers.append(e)
    return layers


def test_noisy_layers_and_cross_layer_contrast_by_hand(tiny_pair: PairData) -> None:
    s = setup(tiny_pair, tiny("xsimgcl", dim=8, layers=3, params={"layer_cl": 2}))
    model, d, tau, eps = s.model, 0, 0.2, 0.2
    data = tiny_pair.domains[d]
    draws = model.draw(torch.Generator().manual_seed(3))
    terms = model.loss_terms(draws, 0.5)
    with torch.no_grad():
        domain = model.domains[d]
        mean_u, mean_i = domain.user_emb.mean(0), domain.item_emb.mean(0)
        x = torch.cat([
            torch.where(data.user_seen.unsqueeze(1), domain.user_emb[domain.user_map.clamp(min=0)], mean_u),
            torch.where(data.item_seen.unsqueeze(1), domain.item_emb[domain.item_map.clamp(min=0)], mean_i),
        ])
        graph = normalized_adjacency(data.edges["train"], data.n_users, data.n_items).to_dense()
        layers = _hand_layers(x, graph, 3, draws.noise[d], eps)
        final, cross = sum(layers) / 3, layers[1]  # layers 1..3 averaged (no layer 0); l* = 2
        users, positives, negatives = model.samplers[d].triples(draws.bpr[d])
        total = 0.0
        for nodes in (sorted(set(users.tolist())), sorted({data.n_users + i for i in positives.tolist()})):
            for a in nodes:  # -log softmax over the batch's distinct nodes of the side, cosine / tau
                sims = torch.stack([F.cosine_similarity(final[a], cross[b], dim=0) for b in nodes]) / tau
                total += float(torch.logsumexp(sims, 0) - F.cosine_similarity(final[a], cross[a], dim=0) / tau)
        r_users, r_items = final[: data.n_users], final[data.n_users :]
        bpr = -F.logsigmoid((r_users[users] * (r_items[positives] - r_items[negatives])).sum(-1)).sum()
    assert math.isclose(float(terms[2].detach()), total, rel_tol=1e-4)
    torch.testing.assert_close(terms[0].detach(), bpr)
    assert model.term_weights().tolist() == pytest.approx([1.0, 1.0, 0.2, 0.2, 0.0])
    assert model.auxiliary_terms() == [2, 3]


@pytest.mark.parametrize("unseen_init", ["mean", "random"])
def test_inference_has_no_noise_and_unseen_entities_start_from_the_mean_or_a_seeded_random_row(
        tiny_pair: PairData, unseen_init: str) -> None:
    s = setup(tiny_pair, tiny("xsimgcl", seed=6, params={"unseen_init": unseen_init}))
    data, domain, dim = tiny_pair.domains[1], s.model.domains[1], s.config.dim
    if unseen_init == "mean":
        user_rows = domain.user_emb.mean(0).expand(data.n_users, -1)
        item_rows = domain.item_emb.mean(0).expand(data.n_items, -1)
    else:  # N(0, σ²) rows with σ the Xavier scale of the table, users then items from one generator seeded by seed
        generator = torch.Generator().manual_seed(6)
        std_users, std_items = (math.sqrt(2 / (t.shape[0] + dim)) for t in (domain.user_emb, domain.item_emb))
        user_rows = torch.randn(data.n_users, dim, generator=generator) * std_users
        item_rows = torch.randn(data.n_items, dim, generator=generator) * std_items
    with torch.no_grad():
        x = torch.cat([
            torch.where(data.user_seen.unsqueeze(1), domain.user_emb[domain.user_map.clamp(min=0)], user_rows),
            torch.where(data.item_seen.unsqueeze(1), domain.item_emb[domain.item_map.clamp(min=0)], item_rows),
        ])
        graph = normalized_adjacency(data.edges_of("train", "new"), data.n_users, data.n_items).to_dense()
        final = sum(_hand_layers(x, graph, 3)) / 3
        r_users, r_items = s.model.representations(1, 0.5, s.model.prepare_inference(1))
    torch.testing.assert_close(torch.cat([r_users, r_items]), final)
    scores = s.model.inference_scores(1, 0.5, s.model.prepare_inference(1))
    torch.testing.assert_close(scores, r_users @ r_items.T, rtol=0, atol=0)


def test_gradients_reach_exactly_xsimgcl_s_parameters(tiny_pair: PairData) -> None:
    s = setup(tiny_pair, tiny("xsimgcl"))
    optimizer = torch.optim.Adam(s.model.parameters())
    train_step(s, 0.5, torch.Generator().manual_seed(0), optimizer)
    grads = {name: p.grad for name, p in s.model.named_parameters()}
    assert set(grads) == {f"domains.{d}.{t}" for d in range(2) for t in ("user_emb", "item_emb")}
    assert all(g is not None and bool(g.abs().sum() > 0) for g in grads.values())
    for data, domain in zip(tiny_pair.domains, s.model.domains, strict=True):  # no row for an unseen entity
        assert domain.user_emb.shape[0] == int(data.user_seen.sum()) < data.n_users
        assert domain.item_emb.shape[0] == int(data.item_seen.sum()) < data.n_items


def test_layer_cl_beyond_the_layers_is_refused(tiny_pair: PairData) -> None:
    with pytest.raises(ValueError, match="--param layer_cl"):
        setup(tiny_pair, tiny("xsimgcl", layers=2, params={"layer_cl": 3}))


@pytest.mark.parametrize(("key", "value"), [("eps", -0.1), ("cl_weight", -1.0), ("cl_temp", 0.0), ("layer_cl", 0),
                                            ("layer_cl", 1.5), ("unseen_init", "zeros")])
def test_params_out_of_their_domain_are_refused_by_name(key: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"--param {key}"):
        Params(**{key: value})  # type: ignore[arg-type]
