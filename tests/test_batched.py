"""The fast path: runs trained together as one union graph compute what each run computes alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from micrec_core.config import Config
from micrec_core.data.dataset import PairData
from micrec_core.evaluation.inference import evaluate_test, inference_scores
from micrec_core.models.micrec import alpha_at
from micrec_core.models.setup import setup
from micrec_core.training.batched import (
    LOSS_RTOL,
    RANKING_ATOL,
    SCORE_RTOL,
    Together,
    epoch_steps,
    train_together,
    union_key,
    union_phase,
    validate_together,
)
from micrec_core.training.train import CHECKPOINT, domain_alphas, start_run, train, train_step, validate
from tests.conftest import random_features
from tests.test_training import quick


def assert_same_run(alone: tuple, together: tuple) -> None:
    """Same epochs and best epochs; losses and scores within float tolerance, ranking metrics within a swap."""
    (_, state_a), (_, state_b) = alone, together
    assert state_a.best_epoch == state_b.best_epoch and state_a.epoch == state_b.epoch
    for rec_a, rec_b in zip(state_a.history, state_b.history, strict=True):
        assert rec_a.keys() == rec_b.keys()
        for key in rec_a:
            if key.startswith(("loss", "grad_ratio")):
                assert rec_b[key] == pytest.approx(rec_a[key], rel=LOSS_RTOL), key
            else:
                assert rec_b[key] == pytest.approx(rec_a[key], abs=RANKING_ATOL), key
    scores_a, scores_b = (inference_scores(s, domain_alphas(s, st)) for s, st in (alone, together))
    for a, b in zip(scores_a, scores_b, strict=True):
        assert (a - b).abs().max() <= SCORE_RTOL * a.abs().max()
    test_a, test_b = (evaluate_test(s, domain_alphas(s, st)) for s, st in (alone, together))
    for domain, groups in test_a.items():
        for group, values in groups.items():
            for metric, value in values.items():
                assert test_b[domain][group][metric] == pytest.approx(value, abs=RANKING_ATOL)


def assert_together_equals_alone(pair: PairData, configs: list[Config]) -> list[tuple]:
    """Train each config alone, then all as one union; every run must match. Returns the runs alone."""
    feats = random_features(pair)
    alone = []
    for config in configs:
        s = setup(pair, config, feats)
        alone.append((s, train(s)))
    setups = [setup(pair, config, feats) for config in configs]
    for s, state, reference in zip(setups, train_together(setups), alone, strict=True):
        assert_same_run(reference, (s, state))
    return alone


@pytest.mark.parametrize(("model", "ablation"), [("micrec", None), ("micrec", "no-mm"), ("inmo", None),
                                                 ("lightgcn", None)])
def test_runs_trained_together_equal_runs_trained_alone(tiny_pair: PairData, model: str, ablation: str | None) -> None:
    alone = assert_together_equals_alone(
        tiny_pair, [quick(model, ablation=ablation, seed=seed, max_epochs=4, patience=2) for seed in (0, 1, 2)]
    )
    assert alone[0][1].history != alone[1][1].history  # the seeds really differ


def test_variants_trained_together_equal_variants_trained_alone(tiny_pair: PairData) -> None:
    variants = [("micrec", None, 0), ("micrec", "no-mm", 0), ("micrec", "no-cd", 1), ("micrec", "no-vis", 0),
                ("inmo", None, 0), ("inmo", None, 1)]
    assert_together_equals_alone(
        tiny_pair, [quick(model, ablation=ablation, seed=seed, max_epochs=3) for model, ablation, seed in variants]
    )


@pytest.mark.parametrize("block", [None, 1, 2])
def test_runs_validated_together_score_as_each_run_alone(tiny_pair: PairData, monkeypatch: pytest.MonkeyPatch,
                                                         block: int | None) -> None:
    variants = [("micrec", None, 0), ("micrec", "no-mm", 1), ("inmo", None, 2)]
    feats = random_features(tiny_pair)
    setups = [setup(tiny_pair, quick(model, ablation=ablation, seed=seed), feats) for model, ablation, seed in variants]
    runs = [start_run(s, None, False, None) for s in setups]
    together = Together.of(runs)
    epoch_steps(together, alpha_at(0), 3)
    if block is not None:  # blocks of 1 and 2 runs' scores instead of all three at once
        n_scores = max(p.n_users * p.n_items for p in setups[0].model.train_phases)
        monkeypatch.setattr("micrec_core.training.batched.SCORE_BLOCK", block * n_scores)
    batched = validate_together(together, alpha_at(3))
    alone = [validate(s, alpha_at(3)) for s in setups]
    assert len(batched) == len(alone) == 3 and len({tuple(v) for v in alone}) == 3  # the runs score differently
    for ours, theirs in zip(batched, alone, strict=True):
        assert ours == pytest.approx(theirs, abs=RANKING_ATOL)
    assert all(s.model.training for s in setups)


def test_union_graph_holds_each_block_unchanged(tiny_pair: PairData) -> None:
    s = setup(tiny_pair, quick(), random_features(tiny_pair))
    phases = s.model.train_phases
    union = union_phase(phases)
    assert union.n_users == sum(p.n_users for p in phases) and union.n_items == sum(p.n_items for p in phases)
    dense = union.adjacency.to_dense()
    n0 = phases[0].n_users
    u1 = slice(n0, n0 + phases[1].n_users)
    i1 = slice(union.n_users + phases[0].n_items, None)
    torch.testing.assert_close(dense[u1, i1], phases[1].adjacency.to_dense()[: phases[1].n_users, phases[1].n_users :])
    assert dense[:n0, i1].abs().sum() == 0  # no edge between blocks
    torch.testing.assert_close(
        union.user_conn.to_dense(), torch.block_diag(phases[0].user_conn.to_dense(), phases[1].user_conn.to_dense())
    )


def test_a_lagging_run_catches_up_after_resume(tiny_pair: PairData, tmp_path: Path) -> None:
    feats = random_features(tiny_pair)
    configs = [quick(seed=seed, max_epochs=3) for seed in (0, 1)]
    reference = []
    for config in configs:
        s = setup(tiny_pair, config, feats)
        reference.append(train(s).history)
    train(setup(tiny_pair, quick(seed=0, max_epochs=1), feats), run_dir=tmp_path / "a")  # killed after one epoch
    states = train_together([setup(tiny_pair, c, feats) for c in configs], [tmp_path / "a", tmp_path / "b"],
                            resume=True)
    for state, history in zip(states, reference, strict=True):
        assert [h["epoch"] for h in state.history] == [0, 1, 2]
        assert [h["loss"] for h in state.history] == pytest.approx([h["loss"] for h in history], rel=LOSS_RTOL)


def test_only_seeds_and_template_variants_may_differ(tiny_pair: PairData) -> None:
    feats = random_features(tiny_pair)
    runs = [start_run(setup(tiny_pair, quick(lr=lr), feats), None, False, None) for lr in (1e-3, 1e-2)]
    with pytest.raises(ValueError, match=r"differ in \['lr'\]"):
        Together.of(runs)
    runs = [start_run(setup(tiny_pair, quick(model), feats), None, False, None) for model in ("micrec", "lightgcn")]
    with pytest.raises(ValueError, match="model family"):
        Together.of(runs)
    assert union_key(quick("inmo", seed=3)) == union_key(quick("micrec", ablation="no-txt"))
    assert union_key(quick("lightgcn")) != union_key(quick("micrec"))


def test_one_step_together_leaves_gradients_where_alone_would(tiny_pair: PairData) -> None:
    feats = random_features(tiny_pair)
    runs = [start_run(setup(tiny_pair, quick(seed=seed), feats), None, False, None) for seed in (0, 1)]
    Together.of(runs).step(alpha_at(0))
    for seed, run in zip((0, 1), runs, strict=True):
        s = setup(tiny_pair, quick(seed=seed), feats)
        alone = start_run(s, None, False, None)
        train_step(s, alpha_at(0), alone.generator, alone.optimizer)
        for (name, p), q in zip(s.model.named_parameters(), run.s.model.parameters(), strict=True):
            assert (p.grad is None) == (q.grad is None), name
            if p.grad is not None:
                torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6 * float(p.grad.abs().max()), msg=name)


def test_each_run_is_handed_over_when_it_stops(tiny_pair: PairData) -> None:
    feats = random_features(tiny_pair)
    setups = [setup(tiny_pair, quick(seed=seed, max_epochs=8, patience=1), feats) for seed in range(4)]
    handed: list[tuple[int, int]] = []
    states = train_together(setups, on_done=lambda k, state: handed.append((k, state.epoch)))
    assert sorted(k for k, _ in handed) == [0, 1, 2, 3]
    assert len({epoch for _, epoch in handed}) > 1  # some runs stopped while others went on
    assert [epoch for _, epoch in handed] == sorted(epoch for _, epoch in handed)  # in the order they stopped
    assert all(states[k].epoch == epoch for k, epoch in handed)


class Killed(Exception):
    """Raised from the epoch callback to simulate a killed run."""


def test_checkpoints_follow_the_interval_and_the_last_epoch(tiny_pair: PairData, tmp_path: Path) -> None:
    feats = random_features(tiny_pair)
    folders = [tmp_path / "a", tmp_path / "b"]

    def kill(k: int, record: dict) -> None:
        if record["epoch"] == 1:
            raise Killed

    with pytest.raises(Killed):
        train_together([setup(tiny_pair, quick(seed=k), feats) for k in (0, 1)], folders, on_epoch=kill,
                       checkpoint_every=3600)
    assert not any((f / CHECKPOINT).exists() for f in folders)  # the interval had not passed
    train_together([setup(tiny_pair, quick(seed=k), feats) for k in (0, 1)], folders, checkpoint_every=3600)
    assert [torch.load(f / CHECKPOINT, weights_only=True)["state"]["epoch"] for f in folders] == [3, 3]


def test_epoch_steps_without_a_graph_are_plain_union_steps(tiny_pair: PairData) -> None:
    feats = random_features(tiny_pair)
    runs = [[start_run(setup(tiny_pair, quick(seed=seed), feats), None, False, None) for seed in (0, 1)]
            for _ in range(2)]
    stepped = [Together.of(runs[0]).step(alpha_at(0)) for _ in range(3)]
    epoch = epoch_steps(Together.of(runs[1]), alpha_at(0), 3)
    assert [[x.tolist() for x in step] for step in epoch] == [[x.tolist() for x in step] for step in stepped]
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        epoch_steps(Together.of(runs[1]), alpha_at(0), 3, graph=True)


def test_a_union_step_reads_alpha_from_a_device_scalar_as_from_a_float(tiny_pair: PairData) -> None:
    """A captured graph is reused across epochs with alpha set in place: each step must see the value set."""
    feats = random_features(tiny_pair)
    runs = [[start_run(setup(tiny_pair, quick(seed=seed), feats), None, False, None) for seed in (0, 1)]
            for _ in range(2)]
    by_float, by_scalar = Together.of(runs[0]), Together.of(runs[1])
    scalar = torch.tensor(0.0)
    for epoch in (0, 30, 60):
        scalar.fill_(alpha_at(epoch))
        expected = torch.stack(by_float.step(alpha_at(epoch))).flatten().tolist()
        assert torch.stack(by_scalar.step(scalar)).flatten().tolist() == pytest.approx(expected, rel=1e-6)
