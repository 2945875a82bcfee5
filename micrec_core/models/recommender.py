"""The model interface: what the trainer, the evaluation and the grid need from a recommender of a domain pair.

A model is one module with one class deriving from `Recommender`, registered under its command-line name in
`micrec_core.models.registry`. It owns its trainable parameters (per domain under `self.domains[d]`; anything shared
by the two domains elsewhere) and whatever it precomputes from the training data (graphs, samplers, features). It gives:

- `terms` and `term_weights()`: the names and factors of its loss terms (per-domain terms end in `/0` or `/1`);
  the trainer minimises `loss_terms(...) @ term_weights()` and records each term in the history;
- `draw(generator)` then `loss_terms(draws, alpha)`: one step's randomness, drawn first from the run's generator, and
  the unweighted terms on it (`alpha` is the epoch's value of INMO's normalisation schedule, `model.alpha_at`,
  which models without templates ignore);
- `validation_scores(d, alpha)`: scores of every user for every item of domain d as seen in training (E_tr), for
  model selection on E_val;
- `prepare_inference(d, data, features)` then `inference_scores(d, alpha, prepared)`: after training, E_new arrives,
  and the model scores every user, seen or not, for every item, seen or not, from E_tr + E_new without a gradient
  step. How an unseen user or item is met is the model's to say (its module docstring says how);
- a model whose score is a dot product (a bilinear form) gives `validation_factors` and `inference_factors` instead
  of the two score methods: `Factors` (left [U, k], right [I, k]) with scores left @ right.T. Evaluation then scores
  users in blocks (`metrics.topk_blocked`), so its memory is bounded by a block, not by |U| x |I|; a model without
  factors is scored through its dense [U, I] matrix;
- `notes()`: anything a reader of the results must know about how the model met the data (a fallback taken, e.g.
  for items without text), written into the run's metrics.json as `model_notes`.

`coupled` says whether a loss term ties the two domains (then by default they share one best epoch);
`shared_parameters` says whether the two domains share trained parameters (embeddings, modules) outside
`self.domains`, which then must keep one best epoch for both (`Config.best_epoch` defaults to "joint"). `union`
says whether `micrec_core.training.batched` can train several runs of it as one model on a GPU; a model that does not
opt in trains on the plain path. `inference_only` names the model's own parameters (`Params`) that training never
reads, only inference (how an unseen user or item is met): a run differing from a finished one only in those is that
run's trained model evaluated again (`micrec_core.runs.experiment.reevaluate`; tests/test_registry.py trains both
values and checks every parameter equal).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn

from micrec_core.config import Config
from micrec_core.data.dataset import DomainData, PairData

Factors = tuple[torch.Tensor, torch.Tensor]


def dense(factors: Factors | None) -> torch.Tensor:
    """The [U, I] scores left @ right.T of `factors` (a model that gives neither factors nor scores is incomplete)."""
    if factors is None:
        raise NotImplementedError("the model gives neither scores nor factors")
    left, right = factors
    return left @ right.T


class Recommender(nn.Module):
    """Base class of every registered model (see the module docstring for the contract)."""

    terms: ClassVar[tuple[str, ...]] = ()
    union: ClassVar[bool] = False
    shared_parameters: ClassVar[bool] = False
    Params: ClassVar[type | None] = None
    inference_only: ClassVar[frozenset[str]] = frozenset()
    domains: nn.ModuleList

    @classmethod
    def resolve_params(cls, given: dict[str, Any]) -> dict[str, Any]:
        """The model's hyperparameters (`Config.params`): `given` over the defaults of its `Params` dataclass,
        unknown names and values outside their domain refused (the dataclass's __post_init__ checks)."""
        if cls.Params is None:
            if given:
                raise ValueError(f"--param: this model has no parameters of its own, got {', '.join(given)}")
            return {}
        known = {f.name for f in dataclasses.fields(cls.Params)}
        unknown = sorted(set(given) - known)
        if unknown:
            raise ValueError(f"--param: unknown {', '.join(unknown)}; this model has {', '.join(sorted(known))}")
        return dataclasses.asdict(cls.Params(**given))

    @property
    def params(self) -> Any:
        """The config's model parameters as the model's `Params`."""
        return self.Params(**self.config.params) if self.Params is not None else None

    def __init__(self, pair: PairData, config: Config, device: torch.device,
                 features: list[Any] | None = None) -> None:
        """Build the model of `pair` for `config` on `device`; `features`: item features per domain when given
        (else a model that needs them reads the dataset's, written by `micrec features`)."""
        super().__init__()
        self.pair, self.config, self.device = pair, config, device

    @property
    def coupled(self) -> bool:
        """Whether a loss term ties the two domains' parameters."""
        return False

    def term_weights(self) -> torch.Tensor:
        """The factor of each of `terms` in the loss (on the model's device)."""
        raise NotImplementedError

    def used_terms(self) -> list[bool]:
        """Which of `terms` this run computes (a term it never computes is not recorded)."""
        return [bool(w > 0) for w in self.term_weights()]

    def auxiliary_terms(self) -> list[int]:
        """Indices of the terms whose gradient the history compares with the others' (e.g. a contrastive term)."""
        return []

    def bounded_terms(self) -> list[int]:
        """Indices of the terms whose growth is no sign of divergence (bounded, or growing by design); any other term
        stops the run once it grows past `train.EXPLOSION` times its first epoch's size (a non-finite one always)."""
        return []

    def draw(self, generator: torch.Generator) -> Any:
        """One optimizer step's randomness, from the run's generator, always in the same order."""
        raise NotImplementedError

    def loss_terms(self, draws: Any, alpha: float | torch.Tensor) -> torch.Tensor:
        """The unweighted loss terms ([len(terms)]) of one step's draws."""
        raise NotImplementedError

    def validation_factors(self, d: int, alpha: float) -> Factors | None:
        """(left, right) whose product left @ right.T is `validation_scores`; None when the score is no dot product."""
        return None

    def validation_scores(self, d: int, alpha: float) -> torch.Tensor:
        """[U, I] scores of domain d from the training graph (E_tr only), for validation."""
        return dense(self.validation_factors(d, alpha))

    def prepare_inference(self, d: int, data: DomainData | None = None, features: Any = None) -> Any:
        """What scoring domain d over E_tr + E_new needs (built once, reused by `inference_scores`); `data` and
        `features` replace the pair's domain and its item features (e.g. with a brand-new user added)."""
        return data or self.pair.domains[d]

    def inference_factors(self, d: int, alpha: float, prepared: Any) -> Factors | None:
        """(left, right) whose product left @ right.T is `inference_scores`; None when the score is no dot product."""
        return None

    def inference_scores(self, d: int, alpha: float, prepared: Any) -> torch.Tensor:
        """[U, I] scores of every user for every item of domain d after E_new arrived, without retraining."""
        return dense(self.inference_factors(d, alpha, prepared))

    def notes(self) -> dict[str, Any]:
        """What a reader of the run's results must know about how the model met its data (e.g. a fallback it took
        for missing item text), JSON-ready; written into metrics.json as `model_notes`. Empty by default."""
        return {}

    def domain_prefix(self, d: int) -> str:
        """The state_dict prefix of domain d's own parameters (what a per-domain best epoch keeps)."""
        return f"domains.{d}."


class GraphDotScores:
    """Scores of a graph model whose representations score by dot product (SGL, XSimGCL): validation over the
    training graph, inference over a graph of E_tr + E_new with every user and item (`_phase` builds it)."""

    def validation_factors(self, d: int, alpha: float) -> Factors:
        """r_u · r_i over E_tr."""
        return self.representations(d, alpha, self.train_phases[d])  # type: ignore[attr-defined]

    def prepare_inference(self, d: int, data: DomainData | None = None, features: Any = None) -> Any:
        """The graph over E_tr + E_new with every user and item."""
        data = data or self.pair.domains[d]  # type: ignore[attr-defined]
        return self._phase(data, data.edges_of("train", "new")).to(self.device)  # type: ignore[attr-defined]

    def inference_factors(self, d: int, alpha: float, prepared: Any) -> Factors:
        """r_u · r_i over E_tr + E_new."""
        return self.representations(d, alpha, prepared)  # type: ignore[attr-defined]
