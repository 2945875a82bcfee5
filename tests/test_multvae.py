"""Mult-VAE (micrec_core.models.multvae): the multinomial log-likelihood (Eq. 2), the KL and the annealed objective
(Eq. 6)
against hand computations, the β schedule and its counter across a checkpoint, which parameters a step reaches, and
unseen users (folded in from E_tr + E_new) and unseen items (the mean output row). The interface's generic tests
(determinism, leakage, finite scores for everyone) run for it in test_registry.py."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from micrec_core.config import Config
from micrec_core.data.dataset import PairData
from micrec_core.models.multvae import VAE, MultVAE, gaussian_kl, multinomial_nll
from micrec_core.models.setup import setup
from micrec_core.training.train import train


def multvae(pair: PairData, **kw: object) -> MultVAE:
    """A small Mult-VAE ([I -> 8 -> 3 -> 8 -> I]) on the tiny pair."""
    params = {"hidden": 8, "latent": 3} | kw.pop("params", {})  # type: ignore[operator]
    values = {"model": "multvae", "batches_per_epoch": 4, "device": "cpu", "params": params} | kw
    model = setup(pair, Config(**values)).model  # type: ignore[arg-type]
    assert isinstance(model, MultVAE)
    return model


def test_multinomial_nll_and_kl_by_hand() -> None:
    # π = softmax(0, ln 2, ln 3) = (1/6, 2/6, 3/6); x = (1, 0, 1): -log p = -(ln 1/6 + ln 1/2) = ln 12
    logits = torch.tensor([[0.0, math.log(2), math.log(3)]])
    assert multinomial_nll(logits, torch.tensor([[1.0, 0.0, 1.0]])).item() == pytest.approx(math.log(12))
    assert multinomial_nll(logits + 5.0, torch.tensor([[0.0, 2.0, 0.0]])).item() == pytest.approx(2 * math.log(3))
    # N((1, 0), diag(1, 4)) against N(0, I): ½(1 + 1 - 0 - 1) + ½(0 + 4 - ln 4 - 1)
    kl = gaussian_kl(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, math.log(4)]]))
    assert kl.item() == pytest.approx(0.5 + 0.5 * (3 - math.log(4)))
    assert gaussian_kl(torch.zeros(2, 5), torch.zeros(2, 5)).tolist() == [0.0, 0.0]


def hand_terms(vae: VAE, history: list[list[int]], keep: torch.Tensor, eps: torch.Tensor,
               dropout: float) -> tuple[float, float]:
    """The batch's summed -E_q log p(x|z) (one sample) and KL, from the weights, in float64."""
    w = [layer.weight.detach().double() for layer in (*vae.encoder, *vae.decoder)]
    b = [layer.bias.detach().double() for layer in (*vae.encoder, *vae.decoder)]
    nll = kl = 0.0
    for items, kept, e in zip(history, keep.double(), eps.double(), strict=True):
        x = torch.zeros(vae.n_units, dtype=torch.float64)
        x[items] = 1.0
        x_in = x / math.sqrt(len(items)) * kept / (1 - dropout)  # L2-normalised binary history, inverted dropout
        out = w[1] @ torch.tanh(w[0] @ x_in + b[0]) + b[1]
        mu, log_var = out[: len(e)], out[len(e) :]
        z = mu + e * torch.exp(log_var / 2)
        logits = w[3] @ torch.tanh(w[2] @ z + b[2]) + b[3]
        log_pi = logits - torch.logsumexp(logits, 0)
        nll -= float((x * log_pi).sum())
        kl += float(0.5 * (mu**2 + log_var.exp() - log_var - 1).sum())
    return nll, kl


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_loss_terms_are_eq_6_on_a_batch_by_hand(tiny_pair: PairData, reduction: str) -> None:
    model = multvae(tiny_pair, loss_reduction=reduction)
    draws = model.draw(torch.Generator().manual_seed(0))
    terms = model.loss_terms(draws, 0.5)
    for d, (data, vae) in enumerate(zip(tiny_pair.domains, model.domains, strict=True)):
        users = draws.users[d]
        assert len(users) == len(set(users.tolist())) == model.batch_sizes[d]
        assert bool(data.user_seen[users].all()) and 0 < draws.keep[d].float().mean() < 1
        train = data.edges["train"]
        history = [vae.columns[train[1][train[0] == u]].tolist() for u in users.tolist()]
        nll, kl = hand_terms(vae, history, draws.keep[d], draws.eps[d], 0.5)
        scale = 1 if reduction == "sum" else len(users)
        assert terms[d].item() == pytest.approx(nll / scale, rel=1e-4)
        assert terms[2 + d].item() == pytest.approx(kl / scale, rel=1e-4)


def test_defaults_are_the_paper_s() -> None:
    assert Config(model="multvae").params == {"hidden": 600, "latent": 200, "dropout": 0.5, "anneal_cap": 0.2,
                                              "total_anneal_steps": 200_000}


def test_beta_schedule_counts_updates(tiny_pair: PairData) -> None:
    model = multvae(tiny_pair, params={"total_anneal_steps": 10, "anneal_cap": 0.25})
    gen = torch.Generator().manual_seed(0)
    assert model.term_weights()[2:4].tolist() == [0.0, 0.0]
    seen = []
    for _ in range(5):
        model.draw(gen)
        seen.append(model.term_weights().tolist())
    # the k-th step (k = 1, 2, ...) follows k - 1 updates: β = min(0.25, (k - 1) / 10)
    assert [w[2] for w in seen] == pytest.approx([0.0, 0.1, 0.2, 0.25, 0.25])
    assert all(w[3] == w[2] and w[:2] == [1.0, 1.0] and w[4] == 0.0 for w in seen)
    fixed = multvae(tiny_pair, params={"total_anneal_steps": 0, "anneal_cap": 0.2})
    assert fixed.term_weights()[2].item() == pytest.approx(0.2)


def test_the_anneal_counter_survives_a_checkpoint(tiny_pair: PairData, tmp_path: Path) -> None:
    def config(epochs: int) -> Config:
        return Config(model="multvae", batches_per_epoch=4, max_epochs=epochs, patience=100, device="cpu",
                      params={"hidden": 8, "latent": 3, "total_anneal_steps": 20})

    full = setup(tiny_pair, config(3))
    full_state = train(full)
    assert int(full.model.steps) == 12
    train(setup(tiny_pair, config(2)), run_dir=tmp_path)
    resumed = setup(tiny_pair, config(3))
    resumed_state = train(resumed, run_dir=tmp_path, resume=True)
    assert int(resumed.model.steps) == 12
    assert resumed_state.history == full_state.history
    assert full_state.history[-1]["loss"] != pytest.approx(
        full_state.history[-1]["loss/nll/A"] + full_state.history[-1]["loss/nll/B"])  # β > 0 weighs the KL in


def test_gradients_nll_reaches_its_domain_s_vae_kl_only_its_encoder(tiny_pair: PairData) -> None:
    model = multvae(tiny_pair)
    draws = model.draw(torch.Generator().manual_seed(2))

    def reached(module: torch.nn.Module) -> list[bool]:
        return [p.grad is not None and bool(p.grad.any()) for p in module.parameters()]

    for d in range(2):
        vae, other = model.domains[d], model.domains[1 - d]
        model.zero_grad(set_to_none=True)
        model.loss_terms(draws, 0.5)[d].backward()
        assert all(reached(vae)) and not any(reached(other))
        # the input layer learns only from the items in the batch's histories that dropout kept
        x = model.train_histories[d].rows(draws.users[d]) * draws.keep[d]
        columns = torch.nonzero(vae.encoder[0].weight.grad.abs().sum(0)).flatten()
        assert columns.tolist() == torch.nonzero(x.sum(0)).flatten().tolist()
        model.zero_grad(set_to_none=True)
        model.loss_terms(draws, 0.5)[2 + d].backward()
        assert all(reached(vae.encoder)) and not any(reached(vae.decoder)) and not any(reached(other))


def test_l2_reaches_the_weights_only(tiny_pair: PairData) -> None:
    model = multvae(tiny_pair, l2=0.1)
    assert model.used_terms() == [True] * 5
    l2 = model.loss_terms(model.draw(torch.Generator().manual_seed(0)), 0.5)[4]
    assert l2.item() == pytest.approx(sum(p.pow(2).sum().item() for n, p in model.named_parameters()
                                          if n.endswith("weight")), rel=1e-5)
    l2.backward()
    assert all(bool(p.grad.any()) == n.endswith("weight") for n, p in model.named_parameters())


def test_unseen_items_take_the_mean_output_row_and_have_no_unit(tiny_pair: PairData) -> None:
    model = multvae(tiny_pair)
    model.eval()
    for d, (data, vae) in enumerate(zip(tiny_pair.domains, model.domains, strict=True)):
        n_seen = int(data.item_seen.sum())
        assert vae.encoder[0].in_features == vae.decoder[1].out_features == n_seen
        prepared = model.prepare_inference(d)
        scores = model.inference_scores(d, 0.5, prepared)
        assert scores.shape == (data.n_users, data.n_items) and torch.isfinite(scores).all()
        mu, _ = vae.encode(prepared[0].rows(torch.arange(data.n_users)))
        hidden = vae.hidden(mu)
        out = vae.decoder[1]
        expected = hidden @ out.weight.mean(0) + out.bias.mean()
        for j in torch.nonzero(~data.item_seen).flatten().tolist():
            torch.testing.assert_close(scores[:, j], expected)
        # a linear output layer: the mean row's logit is the mean of the seen items' logits
        torch.testing.assert_close(expected, scores[:, data.item_seen].mean(1))
        torch.testing.assert_close(scores[:, data.item_seen], hidden @ out.weight.T + out.bias)


def test_unseen_users_are_folded_in_from_e_new_without_retraining(tiny_pair: PairData) -> None:
    model = multvae(tiny_pair)
    model.eval()
    for d, (data, vae) in enumerate(zip(tiny_pair.domains, model.domains, strict=True)):
        scores = model.inference_scores(d, 0.5, model.prepare_inference(d))
        observed = data.edges_of("train", "new")
        unseen_users = torch.nonzero(~data.user_seen).flatten()
        for u in unseen_users[:5].tolist():
            items = observed[1][observed[0] == u]
            x = torch.zeros(1, vae.n_units)
            x[0, vae.columns[items[data.item_seen[items]]]] = 1.0  # its seen items only: unseen ones have no unit
            mu, _ = vae.encode(x)
            torch.testing.assert_close(scores[u, data.item_seen], vae.logits(mu)[0])
        # interactions with unseen items change nothing; interactions of unseen users change only their rows
        keep = data.item_seen[data.edges["new"][1]]
        only_seen = replace(data, edges={**data.edges, "new": data.edges["new"][:, keep]})
        torch.testing.assert_close(model.inference_scores(d, 0.5, model.prepare_inference(d, only_seen)), scores)
        from_unseen = ~data.user_seen[data.edges["new"][0]]
        without = replace(data, edges={**data.edges, "new": data.edges["new"][:, ~from_unseen]})
        changed = model.inference_scores(d, 0.5, model.prepare_inference(d, without)) != scores
        assert changed.any(1)[unseen_users].any() and not changed[data.user_seen].any()
        # validation reads E_tr only: a seen user's row is the same as at inference (E_new holds no seen x seen)
        torch.testing.assert_close(model.validation_scores(d, 0.5)[data.user_seen], scores[data.user_seen])


def test_params_are_checked_by_name() -> None:
    for key, value in (("hidden", 0), ("latent", 2.5), ("dropout", 1.0), ("anneal_cap", -0.1),
                       ("total_anneal_steps", -1), ("dropout", math.nan)):
        with pytest.raises(ValueError, match=f"--param {key}"):
            Config(model="multvae", params={key: value})
