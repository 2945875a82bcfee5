"""IMC-GAE: its encoder layer, layer weights, node dropout and decoder by hand on a tiny graph; which parameters a
step trains; unseen users and items through the shared embeddings over E_tr + E_new. The interface's generic tests
(determinism, finite scores for everyone, no leakage) run on it from tests/test_registry.py."""

from __future__ import annotations

import math
from dataclasses import replace

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from micrec_core.config import Config
from micrec_core.data.dataset import DomainData, PairData
from micrec_core.models.imcgae import IMCGAE, DomainGAE, Params, build_graph, layer_dropouts
from micrec_core.models.recommender import dense
from micrec_core.models.setup import setup
from micrec_core.training.train import train_step

# users 0, 1 seen, user 2 unseen; items 0, 1 seen, item 2 unseen
EDGES = torch.tensor([[0, 0, 1], [0, 1, 1]])


def small_domain(layers: int = 1, unseen_personal: str = "mean") -> tuple[DomainGAE, DomainData]:
    """A domain of 3 users and 3 items (the last of each unseen) with E_tr = EDGES, its model at dim 2."""
    data = DomainData("T", ["a", "b", "c"], ["x", "y", "z"], torch.tensor([True, True, False]),
                      torch.tensor([True, True, False]), {"train": EDGES, "new": torch.tensor([[2, 0], [1, 2]])},
                      pd.DataFrame())
    config = Config(model="imcgae", dim=2, layers=layers, device="cpu")
    domain = DomainGAE(data, config, unseen_personal)
    with torch.no_grad():
        domain.identical.copy_(torch.tensor([1.0, 0.0]))
        domain.general.copy_(torch.tensor([[0.0, 1.0], [0.5, 0.5]]))
        domain.personal.copy_(torch.tensor([[1.0, 2.0], [3.0, -1.0], [-2.0, 1.0], [0.0, 1.0]]))
        for k, (conv, out) in enumerate(zip(domain.convs, domain.outs, strict=True)):
            conv.weight.copy_(torch.arange(conv.weight.numel()).view_as(conv.weight) * 0.1 - 0.2 * k)
            out.weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 2.0]]))
            out.bias.copy_(torch.tensor([0.1, -0.2]))
    return domain, data


def features_by_hand(domain: DomainGAE) -> list[torch.Tensor]:
    """x_v = [e_0; e_role; e_v] of users a, b, c then items x, y, z; c and z (unseen) get the mean personal row."""
    mean = domain.personal.mean(0)
    personal = [domain.personal[0], domain.personal[1], mean, domain.personal[2], domain.personal[3], mean]
    roles = [domain.general[0]] * 3 + [domain.general[1]] * 3
    return [torch.cat([domain.identical, role, own]) for role, own in zip(roles, personal, strict=True)]


def layer_by_hand(domain: DomainGAE, layer: int, h: list[torch.Tensor], keep: list[float] | None = None,
                  p: float = 0.0) -> list[torch.Tensor]:
    """One encoder layer node by node: W_o σ(Σ_{j in N(i)} (1/sqrt(|N_i||N_j|)) m_j/(1-p) W h_j) + b_o."""
    neighbours: dict[int, list[int]] = {v: [] for v in range(6)}
    for u, i in EDGES.T.tolist():
        neighbours[u].append(3 + i)
        neighbours[3 + i].append(u)
    conv, out = domain.convs[layer], domain.outs[layer]
    result = []
    for v in range(6):
        total = torch.zeros(2)
        for j in neighbours[v]:
            mask = 1.0 if keep is None else keep[j] / (1.0 - p)
            total = total + mask / math.sqrt(len(neighbours[v]) * len(neighbours[j])) * (conv.weight @ h[j])
        result.append(out.weight @ F.leaky_relu(total, 0.1) + out.bias)
    return result


def test_one_encoder_layer_by_hand() -> None:
    domain, _ = small_domain(layers=1)
    users, items = domain(build_graph(EDGES, 3, 3, torch.device("cpu")))
    expected = layer_by_hand(domain, 0, features_by_hand(domain))
    torch.testing.assert_close(torch.cat([users, items]), torch.stack(expected).detach())


def test_layer_outputs_are_summed_with_weights_one_over_l() -> None:
    domain, _ = small_domain(layers=2)
    users, items = domain(build_graph(EDGES, 3, 3, torch.device("cpu")))
    h1 = layer_by_hand(domain, 0, features_by_hand(domain))
    h2 = layer_by_hand(domain, 1, h1)
    expected = [a + b / 2 for a, b in zip(h1, h2, strict=True)]
    torch.testing.assert_close(torch.cat([users, items]), torch.stack(expected).detach())


def test_node_dropout_silences_a_node_and_rescales_the_others() -> None:
    domain, _ = small_domain(layers=1)
    keep = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]  # user b and item x dropped in this layer
    mask = torch.tensor(keep, dtype=torch.bool)
    users, items = domain(build_graph(EDGES, 3, 3, torch.device("cpu")), [0.25], [mask])
    expected = layer_by_hand(domain, 0, features_by_hand(domain), keep, 0.25)
    torch.testing.assert_close(torch.cat([users, items]), torch.stack(expected).detach())


def test_layer_wise_dropout_rates_step_down_by_a_tenth() -> None:
    assert layer_dropouts(0.3, 3) == pytest.approx([0.3, 0.2, 0.1])
    assert layer_dropouts(0.1, 3) == pytest.approx([0.1, 0.0, 0.0])
    assert layer_dropouts(0.0, 2) == [0.0, 0.0]


def test_the_decoder_is_bilinear() -> None:
    domain, _ = small_domain(layers=1)
    with torch.no_grad():
        domain.decoder.copy_(torch.tensor([[1.0, 2.0], [0.0, -1.0]]))
    graph = build_graph(EDGES, 3, 3, torch.device("cpu"))
    with torch.no_grad():
        users, items = domain(graph)
        expected = torch.tensor([[float(users[u] @ domain.decoder @ items[i]) for i in range(3)] for u in range(3)])
    torch.testing.assert_close(dense(domain.factors(graph)).detach(), expected)


def test_unseen_nodes_have_only_the_shared_embeddings_and_the_chosen_personal_part() -> None:
    domain, _ = small_domain()
    assert domain.personal.shape[0] == 4  # two seen users and two seen items, nothing for c or z
    x = domain.features(3, 3)
    torch.testing.assert_close(x[2], torch.cat([domain.identical, domain.general[0], domain.personal.mean(0)]))
    torch.testing.assert_close(x[5], torch.cat([domain.identical, domain.general[1], domain.personal.mean(0)]))
    zero, _ = small_domain(unseen_personal="zero")
    torch.testing.assert_close(zero.features(3, 3)[2], torch.cat([zero.identical, zero.general[0], torch.zeros(2)]))
    extended = domain.features(4, 3)  # a user added after training (recommend_new) is met the same way
    torch.testing.assert_close(extended[3], x[2])


def test_inference_reads_e_tr_and_e_new_and_nothing_else(tiny_pair: PairData) -> None:
    s = setup(tiny_pair, Config(model="imcgae", dim=8, device="cpu"))
    data = tiny_pair.domains[0]
    before = s.model.inference_scores(0, 1.0, s.model.prepare_inference(0))
    gen = torch.Generator().manual_seed(3)
    other_test = torch.stack([torch.randint(data.n_users, (50,), generator=gen),
                              torch.randint(data.n_items, (50,), generator=gen)])
    moved = replace(data, edges={**data.edges, "test": other_test, "val": other_test[:, :10]})
    torch.testing.assert_close(s.model.inference_scores(0, 1.0, s.model.prepare_inference(0, moved)), before)
    unseen = int(torch.nonzero(~data.user_seen)[0])
    new = data.edges["new"]
    fewer = replace(data, edges={**data.edges, "new": new[:, new[0] != unseen]})
    after = s.model.inference_scores(0, 1.0, s.model.prepare_inference(0, fewer))
    assert not torch.allclose(after[unseen], before[unseen])  # an unseen user is its E_new neighbourhood
    assert torch.isfinite(after).all()


def test_a_step_trains_every_parameter_and_only_the_seen_personal_rows(tiny_pair: PairData) -> None:
    s = setup(tiny_pair, Config(model="imcgae", dim=8, device="cpu", batches_per_epoch=2, dropout=0.3))
    train_step(s, 0.5, torch.Generator().manual_seed(0), torch.optim.Adam(s.model.parameters()))
    for name, p in s.model.named_parameters():
        assert p.grad is not None and bool(p.grad.any()), name
    for data, domain in zip(tiny_pair.domains, s.model.domains, strict=True):
        assert domain.personal.shape[0] == int(data.user_seen.sum() + data.item_seen.sum())
        assert (domain.user_map[~data.user_seen] == -1).all() and (domain.item_map[~data.item_seen] == -1).all()


def test_own_parameters_are_checked(tiny_pair: PairData) -> None:
    assert Params().unseen_personal == "mean"
    with pytest.raises(ValueError, match="unseen_personal"):
        Config(model="imcgae", params={"unseen_personal": "random"})
    with pytest.raises(ValueError, match="--layers"):
        IMCGAE(tiny_pair, Config(model="imcgae", layers=0, device="cpu"), torch.device("cpu"))
