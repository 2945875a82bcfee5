"""Every registered model meets the interface: it trains, it is deterministic, nothing it should not see shapes it,
and it scores every user for every item, seen or not, after E_new arrives. A new model gets these by its registry
line alone; its own test file checks its defining equations by hand."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from micrec_core.config import Config
from micrec_core.data.dataset import PairData
from micrec_core.evaluation import inference, metrics
from micrec_core.evaluation.inference import evaluate_test, inference_scores
from micrec_core.models.registry import REGISTRY, model_class
from micrec_core.models.setup import setup
from micrec_core.runs.sweep import param_types
from micrec_core.training.train import CHECKPOINT, domain_alphas, train, validate
from tests.conftest import random_features
from tests.test_training import _perturbed, _perturbed_unseen_features

NAMES = sorted(REGISTRY)


def tiny(model: str, **kw: object) -> Config:
    """A config of `model` small enough to train in a second on the tiny pair."""
    values = {"model": model, "dim": 16, "max_epochs": 2, "batches_per_epoch": 4, "device": "cpu", "cl_users": 16,
              "patience": 100}
    return Config(**(values | kw))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", NAMES)
def test_every_model_trains_deterministically_and_scores_everyone(tiny_pair: PairData, name: str) -> None:
    feats = random_features(tiny_pair)
    runs = []
    for _ in range(2):
        s = setup(tiny_pair, tiny(name), feats)
        state = train(s)
        runs.append((s, state, evaluate_test(s, domain_alphas(s, state))))
    (s, state, test), (_, state2, test2) = runs
    assert [r["loss"] for r in state.history] == [r["loss"] for r in state2.history] and test == test2
    assert all(math.isfinite(r["loss"]) for r in state.history)
    assert set(s.model.terms) and len(s.model.term_weights()) == len(s.model.terms) == len(s.model.used_terms())
    for data, scores in zip(tiny_pair.domains, inference_scores(s, domain_alphas(s, state)), strict=True):
        assert scores.shape == (data.n_users, data.n_items) and torch.isfinite(scores).all()


@pytest.mark.parametrize("name", NAMES)
def test_no_test_interaction_or_unseen_entity_shapes_a_trained_parameter(tiny_pair: PairData, tmp_path: Path,
                                                                        name: str) -> None:
    feats = random_features(tiny_pair)
    config = tiny(name)
    train(setup(tiny_pair, config, feats), run_dir=tmp_path / "a")
    train(setup(_perturbed(tiny_pair), config, _perturbed_unseen_features(tiny_pair, feats)), run_dir=tmp_path / "b")
    a, b = (torch.load(tmp_path / x / CHECKPOINT, weights_only=True) for x in ("a", "b"))
    assert [r["loss"] for r in a["state"]["history"]] == [r["loss"] for r in b["state"]["history"]]
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0, msg=key)


# A value other than the default for each parameter some model declares inference-only.
OTHER_VALUE = {"unseen_init": "random"}
INFERENCE_ONLY = [(name, key) for name in NAMES for key in sorted(model_class(name).inference_only)]


def test_every_inference_only_parameter_is_a_parameter_with_another_value_to_try() -> None:
    assert INFERENCE_ONLY and {name for name, _ in INFERENCE_ONLY} == {"ngcf", "sgl", "xsimgcl"}
    for name, key in INFERENCE_ONLY:
        assert key in param_types(name) and key in OTHER_VALUE, (name, key)
        assert OTHER_VALUE[key] != model_class(name).resolve_params({})[key]


@pytest.mark.parametrize(("name", "key"), INFERENCE_ONLY)
def test_an_inference_only_parameter_changes_what_training_produces_nowhere(tiny_pair: PairData, name: str,
                                                                           key: str) -> None:
    """Training never reads it (for unseen_init: never meets an unseen user's or item's row), so both values train
    exactly the same parameters and differ only in what the model scores after E_new (`experiment.reevaluate`)."""
    runs = []
    for params in ({}, {key: OTHER_VALUE[key]}):
        s = setup(tiny_pair, tiny(name, params=params))
        state = train(s)
        runs.append((s, state, inference_scores(s, domain_alphas(s, state))))
    (a, state_a, scores_a), (b, state_b, scores_b) = runs
    assert state_a.history == state_b.history and state_a.best_epoch == state_b.best_epoch
    trained_a, trained_b = a.model.state_dict(), b.model.state_dict()
    assert trained_a.keys() == trained_b.keys()
    for k in trained_a:
        torch.testing.assert_close(trained_a[k], trained_b[k], rtol=0, atol=0, msg=k)
    assert any(not torch.allclose(x, y) for x, y in zip(scores_a, scores_b, strict=True))


@pytest.mark.parametrize("name", NAMES)
def test_a_model_s_own_parameters_are_resolved_and_checked(name: str) -> None:
    cls = model_class(name)
    config = tiny(name)
    assert config.params == cls.resolve_params({})
    with pytest.raises(ValueError, match="--param"):
        tiny(name, params={"no_such_parameter": 1})


@pytest.mark.parametrize("name", NAMES)
def test_evaluation_in_blocks_of_users_ranks_as_the_dense_matrix_does(tiny_pair: PairData, name: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    s = setup(tiny_pair, tiny(name), random_features(tiny_pair))
    state = train(s)
    alphas = domain_alphas(s, state)
    whole = {data.name: inference.test_metrics(data, scores, s.config.eval_ns, data.n_users * data.n_items)
             for data, scores in zip(tiny_pair.domains, inference_scores(s, alphas), strict=True)}
    n_items = tiny_pair.domains[0].n_items
    for elements in (1, 7 * n_items, 10**9):  # one user per block, seven, all at once
        assert evaluate_test(s, alphas, block_elements=elements) == whole
    alpha = state.history[-1]["alpha"]
    at_once = validate(s, alpha)
    monkeypatch.setattr(metrics, "BLOCK_ELEMENTS", 1)
    assert validate(s, alpha) == at_once
