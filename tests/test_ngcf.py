"""NGCF: one propagation layer by hand (Eq. 3-4 message by message = Eq. 7), its dropouts, which parameters its
loss reaches, and how it meets unseen users and items."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from micrec_core.data.dataset import PairData
from micrec_core.models.micrec import id_rows
from micrec_core.models.ngcf import NGCFDomain, Params, _keep
from micrec_core.models.propagation import normalized_adjacency
from micrec_core.models.setup import setup
from micrec_core.training.train import train_step
from tests.test_registry import tiny

# 2 users, 3 items: u0-i0, u0-i1, u1-i1, u1-i2
EDGES = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 2]])
NEIGHBOURS = {0: [2, 3], 1: [3, 4], 2: [0], 3: [0, 1], 4: [1]}  # node ids: users 0-1, items 2-4


class _Data:
    """The part of a DomainData that NGCFDomain reads."""

    user_seen = torch.ones(2, dtype=torch.bool)
    item_seen = torch.ones(3, dtype=torch.bool)


def _domain(dim: int = 3, layers: int = 1) -> NGCFDomain:
    torch.manual_seed(0)
    domain = NGCFDomain(_Data(), tiny("ngcf", dim=dim, layers=layers))  # type: ignore[arg-type]
    with torch.no_grad():
        for layer in (*domain.w1, *domain.w2):
            layer.bias.normal_()  # non-zero biases, so the hand computation checks them too
    return domain


def _degree(node: int) -> int:
    return len(NEIGHBOURS[node])


def test_one_layer_is_eq_3_4_message_by_message() -> None:
    domain = _domain()
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    out = domain(x, normalized_adjacency(EDGES, 2, 3))
    w1, w2 = domain.w1[0], domain.w2[0]
    for u in range(5):
        # m_{u<-u} = W1 e_u; m_{u<-i} = p_ui (W1 e_i + W2 (e_i ⊙ e_u)), p_ui = 1/sqrt(|N_u||N_i|); the biases once
        total = x[u] @ w1.weight.T + w1.bias + w2.bias
        for i in NEIGHBOURS[u]:
            p = 1.0 / math.sqrt(_degree(u) * _degree(i))
            total = total + p * (x[i] @ w1.weight.T + (x[i] * x[u]) @ w2.weight.T)
        expected = torch.cat([x[u], F.normalize(F.leaky_relu(total, 0.2), dim=-1)])  # e* = e^(0) || e^(1) (Eq. 9)
        torch.testing.assert_close(out[u], expected)


def test_dropout_masks_keep_with_probability_1_minus_p_and_scale_survivors() -> None:
    keep = _keep((200, 100), 0.25, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert keep is not None
    torch.testing.assert_close(keep.unique(), torch.tensor([0.0, 1 / 0.75]))
    assert abs(float((keep > 0).float().mean()) - 0.75) < 0.01
    assert _keep((3, 4), 0.0, torch.Generator(), torch.device("cpu")) is None


def test_node_dropout_silences_a_node_s_messages_and_message_dropout_drops_outputs() -> None:
    domain = _domain()
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    laplacian = normalized_adjacency(EDGES, 2, 3)
    node_keep = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0]).view(1, 5, 1) / 0.8  # item 0 (node 2) blocked, p = 0.2
    out = domain(x, laplacian, node_keep=node_keep)
    w1, w2 = domain.w1[0], domain.w2[0]
    # user 0 hears only item 1 (scaled by 1/0.8) besides itself; item 0 still keeps its own self-connection
    p = 1.0 / math.sqrt(2 * 2)
    side = p * x[3] / 0.8
    total = w1(side + x[0]) + w2(side * x[0])
    torch.testing.assert_close(out[0, 3:], F.normalize(F.leaky_relu(total, 0.2), dim=-1))
    side = x[0] / math.sqrt(1 * 2) / 0.8  # item 0 itself still hears user 0 and keeps its self-connection
    torch.testing.assert_close(out[2, 3:], F.normalize(F.leaky_relu(w1(side + x[2]) + w2(side * x[2]), 0.2), dim=-1))
    message_keep = torch.ones(1, 5, 3)
    message_keep[0, 1, 0] = 0.0  # drop one coordinate of user 1's layer-1 output; the others are kept (scale 1)
    dropped = domain(x, laplacian, message_keep=message_keep)
    plain = domain(x, laplacian)
    before = F.leaky_relu(w1(laplacian.to_dense()[1] @ x + x[1]) + w2((laplacian.to_dense()[1] @ x) * x[1]), 0.2)
    torch.testing.assert_close(dropped[1, 3:], F.normalize(before * message_keep[0, 1], dim=-1))
    torch.testing.assert_close(dropped[0], plain[0])  # one layer: nothing propagates the dropped value further


def test_gradients_reach_exactly_ngcf_s_parameters(tiny_pair: PairData) -> None:
    s = setup(tiny_pair, tiny("ngcf", layers=2, params={"node_dropout": 0.1}))
    optimizer = torch.optim.Adam(s.model.parameters())
    train_step(s, 0.5, torch.Generator().manual_seed(0), optimizer)
    names = {name for name, _ in s.model.named_parameters()}
    expected = {f"domains.{d}.{p}" for d in range(2) for p in ("user_emb", "item_emb")}
    expected |= {f"domains.{d}.{w}.{layer}.{t}" for d in range(2) for w in ("w1", "w2") for layer in range(2)
                 for t in ("weight", "bias")}
    assert names == expected
    for name, param in s.model.named_parameters():
        assert param.grad is not None and bool(param.grad.abs().sum() > 0), name
    for data, domain in zip(tiny_pair.domains, s.model.domains, strict=True):  # no row for an unseen entity
        assert domain.user_emb.shape[0] == int(data.user_seen.sum()) < data.n_users
        assert domain.item_emb.shape[0] == int(data.item_seen.sum()) < data.n_items


def test_validation_has_no_dropout(tiny_pair: PairData) -> None:
    s = setup(tiny_pair, tiny("ngcf", params={"node_dropout": 0.5, "message_dropout": 0.5}))
    torch.testing.assert_close(s.model.validation_scores(0, 0.5), s.model.validation_scores(0, 0.5), rtol=0, atol=0)


@pytest.mark.parametrize("unseen_init", ["mean", "random"])
def test_unseen_users_and_items_start_from_the_mean_or_a_seeded_random_row(tiny_pair: PairData,
                                                                         unseen_init: str) -> None:
    s = setup(tiny_pair, tiny("ngcf", seed=3, params={"unseen_init": unseen_init}))
    data, domain = tiny_pair.domains[0], s.model.domains[0]
    phase = s.model.prepare_inference(0)
    r_users, r_items = s.model.representations(0, 0.5, phase)
    dim = s.config.dim
    torch.testing.assert_close(r_users[data.user_seen, :dim], domain.user_emb[domain.user_map[data.user_seen]])
    generator = torch.Generator().manual_seed(3)
    std_users, std_items = (math.sqrt(2.0 / (t.shape[0] + dim)) for t in (domain.user_emb, domain.item_emb))
    if unseen_init == "mean":
        user_rows = domain.user_emb.mean(0).expand(data.n_users, -1)
        item_rows = domain.item_emb.mean(0).expand(data.n_items, -1)
    else:  # N(0, σ²) rows with σ the Xavier scale of the table, users then items from one generator seeded by seed
        user_rows = torch.randn(data.n_users, dim, generator=generator) * std_users
        item_rows = torch.randn(data.n_items, dim, generator=generator) * std_items
    torch.testing.assert_close(r_users[~data.user_seen, :dim], user_rows[~data.user_seen])
    torch.testing.assert_close(r_items[~data.item_seen, :dim], item_rows[~data.item_seen])
    again = s.model.representations(0, 0.5, phase)
    torch.testing.assert_close(again[0], r_users, rtol=0, atol=0)  # the same rows at every call


def test_random_rows_have_the_requested_scale_and_leave_trained_rows_alone() -> None:
    table = torch.randn(4, 8)
    mapping = torch.tensor([0, -1, 1, 2, -1, 3])
    rows = id_rows(table, mapping, 2000, "random", 0.5, torch.Generator().manual_seed(0))
    torch.testing.assert_close(rows[[0, 2, 3, 5]], table)
    assert abs(float(rows[6:].std()) - 0.5) < 0.01


@pytest.mark.parametrize(("key", "value"), [("message_dropout", 1.0), ("node_dropout", -0.1),
                                            ("unseen_init", "zeros")])
def test_params_out_of_their_domain_are_refused_by_name(key: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"--param {key}"):
        Params(**{key: value})  # type: ignore[arg-type]
