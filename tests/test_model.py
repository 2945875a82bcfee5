"""Each equation of paper §4 against a hand-computed small case, and gradients reach what they should."""

from __future__ import annotations

import math

import pytest
import torch

from micrec_core.models.aggregation import aggregate
from micrec_core.models.losses import Projector, bpr_loss, contrastive_loss, se_loss
from micrec_core.models.micrec import alpha_at
from micrec_core.models.propagation import normalized_adjacency, propagate
from micrec_core.models.sparse import SparseMatrix
from micrec_core.models.templates import (
    connections,
    edge_keep,
    error_sort_scores,
    select_templates,
    template_representation,
)


def test_sparse_matmul_matches_dense_forward_and_backward() -> None:
    gen = torch.Generator().manual_seed(0)
    rows = torch.tensor([0, 0, 1, 2, 2, 2])
    cols = torch.tensor([1, 3, 0, 0, 2, 3])
    values = torch.rand(6, generator=gen)
    m = SparseMatrix.from_coo(rows, cols, values, (3, 4))
    x = torch.randn(4, 5, generator=gen, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    dense = torch.zeros(3, 4)
    dense[rows, cols] = values
    weights = torch.randn(3, 5, generator=gen)
    ((m @ x) * weights).sum().backward()
    ((dense @ x_ref) * weights).sum().backward()
    torch.testing.assert_close(m.to_dense(), dense)
    torch.testing.assert_close(x.grad, x_ref.grad)


def test_template_representation_eq1_by_hand() -> None:
    # user 0 interacted with items 0 and 2; user 1 with item 1 (not a template); user 2 with nothing.
    edges = torch.tensor([[0, 0, 1], [0, 2, 2]])
    item_map = torch.tensor([0, -1, 1])  # items 0 and 2 are templates 0 and 1
    conn = connections(edges[0], edges[1], 3, item_map)
    e = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([0.5, 0.5])
    alpha = 0.5
    x = template_representation(conn, e, b, alpha)
    expected_u0 = 3**-alpha * (e[0] + e[1] + b)  # two template items + the bias, once
    expected_u1 = 2**-alpha * (e[1] + b)
    expected_u2 = 1**-alpha * b  # no template neighbour: x = b
    torch.testing.assert_close(x, torch.stack([expected_u0, expected_u1, expected_u2]))


def test_template_dropout_rescales_survivors() -> None:
    conn = connections(torch.zeros(50, dtype=torch.long), torch.arange(50), 1, torch.arange(50))
    e = torch.ones(50, 1)
    gen = torch.Generator().manual_seed(3)
    keep = edge_keep(conn, 0.5, gen)
    assert keep is not None and keep.shape == conn.values.shape and edge_keep(conn, 0.0, gen) is None
    x = template_representation(conn, e, torch.ones(1), alpha=0.0, dropout=0.5, keep=keep)
    assert x.item() == 2.0 * int(keep.sum())  # survivors are scaled by 1 / (1 - p)
    assert 0 < int(keep.sum()) < 51


def test_error_sort_and_template_ratio() -> None:
    edges = torch.tensor([[0, 0, 1, 2], [0, 1, 1, 1]])
    user_score, item_score = error_sort_scores(edges, 3, 2)
    torch.testing.assert_close(user_score, torch.tensor([1 + 1 / 3, 1 / 3, 1 / 3], dtype=torch.double))
    torch.testing.assert_close(item_score, torch.tensor([0.5, 0.5 + 1 + 1], dtype=torch.double))
    t = select_templates(edges, torch.tensor([True, True, False]), torch.tensor([True, True]), ratio=0.5)
    assert t.user_map.tolist() == [0, -1, -1]  # highest score among the seen; unseen never a template
    assert t.item_map.tolist() == [-1, 0]
    with pytest.raises(ValueError, match="template_ratio"):
        select_templates(edges, torch.ones(3, dtype=torch.bool), torch.ones(2, dtype=torch.bool), ratio=0.0)


def test_aggregation_eq5_by_hand() -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    neighbours = torch.tensor([[1, 2], [0, 0], [0, 1]])
    valid = torch.tensor([[True, True], [True, False], [False, False]])
    out = aggregate(x, neighbours, valid)
    torch.testing.assert_close(out[0], x[0] + (x[1] + x[2]) / 2)
    torch.testing.assert_close(out[1], x[1] + x[0] / 2)  # divisor stays K
    torch.testing.assert_close(out[2], x[2])


def test_lightgcn_propagation_by_hand() -> None:
    # one user, two items: degrees u=2, i0=1, i1=1
    adj = normalized_adjacency(torch.tensor([[0, 0], [0, 1]]), 1, 2)
    s = 1 / math.sqrt(2)
    expected = torch.tensor([[0, s, s], [s, 0, 0], [s, 0, 0]])
    torch.testing.assert_close(adj.to_dense(), expected)
    x = torch.eye(3)
    out = propagate(x, adj, layers=2)
    torch.testing.assert_close(out, (x + expected + expected @ expected) / 3)


def test_isolated_nodes_end_with_their_input_over_layers_plus_one() -> None:
    adj = normalized_adjacency(torch.tensor([[0], [0]]), 2, 2)  # user 1 and item 1 isolated
    x = torch.randn(4, 3)
    out = propagate(x, adj, layers=3)
    torch.testing.assert_close(out[1], x[1] / 4)
    torch.testing.assert_close(out[3], x[3] / 4)


def test_bpr_and_se_by_hand() -> None:
    u = torch.tensor([[1.0, 2.0]])
    i = torch.tensor([[1.0, 0.0]])
    j = torch.tensor([[0.0, 1.0]])
    assert bpr_loss(u, i, j).item() == pytest.approx(-math.log(1 / (1 + math.exp(1.0))))
    w = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # W swaps coordinates: W i = (0, 1), W j = (1, 0)
    assert se_loss(u, i, j, w).item() == pytest.approx(-math.log(1 / (1 + math.exp(-1.0))))
    assert se_loss(u, i, j, torch.ones(2)).item() == pytest.approx(bpr_loss(u, i, j).item())


def test_contrastive_paper_denominator_by_hand() -> None:
    za = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]), dim=-1)
    zb = torch.nn.functional.normalize(torch.tensor([[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]]), dim=-1)
    tau = 0.5
    s = (za @ zb.T / tau).tolist()
    n = 3
    l1 = -sum(s[u][u] - math.log(sum(math.exp(s[u][v]) for v in range(n) if v != u)) for u in range(n)) / n
    l2 = -sum(s[u][u] - math.log(sum(math.exp(s[v][u]) for v in range(n) if v != u)) for u in range(n)) / n
    assert contrastive_loss(za, zb, tau).item() == pytest.approx(l1 + l2, rel=1e-6)
    i1 = -sum(s[u][u] - math.log(sum(math.exp(s[u][v]) for v in range(n))) for u in range(n)) / n
    i2 = -sum(s[u][u] - math.log(sum(math.exp(s[v][u]) for v in range(n))) for u in range(n)) / n
    assert contrastive_loss(za, zb, tau, "infonce").item() == pytest.approx(i1 + i2, rel=1e-6)
    with pytest.raises(ValueError, match="cl_loss"):
        contrastive_loss(za, zb, tau, "other")


@pytest.mark.parametrize("weight_shape", [(4,), (4, 4)])
def test_losses_with_a_run_dimension_equal_each_run_alone(weight_shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(0)
    u, i, j = (torch.randn(3, 6, 4, generator=g) for _ in range(3))
    w = torch.randn(3, *weight_shape, generator=g)
    za, zb = (torch.nn.functional.normalize(torch.randn(3, 5, 4, generator=g), dim=-1) for _ in range(2))
    torch.testing.assert_close(bpr_loss(u, i, j), torch.stack([bpr_loss(u[k], i[k], j[k]) for k in range(3)]))
    torch.testing.assert_close(se_loss(u, i, j, w), torch.stack([se_loss(u[k], i[k], j[k], w[k]) for k in range(3)]))
    for variant in ("paper", "infonce"):
        alone = torch.stack([contrastive_loss(za[k], zb[k], 0.1, variant) for k in range(3)])
        torch.testing.assert_close(contrastive_loss(za, zb, 0.1, variant), alone)


def test_projector_outputs_unit_vectors() -> None:
    torch.manual_seed(0)
    z = Projector(8)(torch.randn(5, 8))
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(5))


def test_alpha_schedule_matches_inmo() -> None:
    assert alpha_at(0) == 0.5
    assert alpha_at(100) == pytest.approx(1 - 0.5 * 0.99**100)
    assert all(alpha_at(e) < alpha_at(e + 1) < 1.0 for e in range(0, 500, 50))


def test_sum_reduction_is_the_paper_s_sum_over_triples() -> None:
    g = torch.Generator().manual_seed(1)
    u, i, j = (torch.randn(7, 4, generator=g) for _ in range(3))
    by_triple = [bpr_loss(u[t : t + 1], i[t : t + 1], j[t : t + 1]).item() for t in range(7)]
    assert bpr_loss(u, i, j, "sum").item() == pytest.approx(sum(by_triple), rel=1e-6)
    assert bpr_loss(u, i, j, "mean").item() == pytest.approx(sum(by_triple) / 7, rel=1e-6)
    w = torch.randn(4, 4, generator=g)
    assert se_loss(u, i, j, w, "sum").item() == pytest.approx(7 * se_loss(u, i, j, w, "mean").item(), rel=1e-6)
    with pytest.raises(ValueError, match="loss_reduction"):
        bpr_loss(u, i, j, "max")


def test_projector_without_normalisation_keeps_the_norms() -> None:
    torch.manual_seed(0)
    projector = Projector(8, normalize=False)
    x = torch.randn(5, 8)
    torch.testing.assert_close(projector(x), projector.net(x))
    assert not torch.allclose(projector(x).norm(dim=-1), torch.ones(5))
