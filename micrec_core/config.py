"""The one typed configuration of a training run; serialised with every run and checkpoint."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from micrec_core.models.registry import REGISTRY, model_class

ABLATIONS = ("no-mm", "no-cd", "no-vis", "no-txt")
CL_LOSSES = ("paper", "infonce")
REDUCTIONS = ("sum", "mean")
BEST_EPOCHS = ("joint", "per-domain")
SE_WEIGHTS = ("full", "diagonal")
FOOD_KITCHEN = {"Grocery_and_Gourmet_Food", "Home_and_Kitchen"}
MAX_SEED = 2**63 - 1
# Fields added after runs had been trained, with the value that reproduces what those runs did. A saved config
# without such a field is read with it (`from_dict`), so a finished run stays the run of the config it records.
LEGACY: dict[str, Any] = {"loss_reduction": "mean", "cl_normalize": True, "best_epoch": None, "params": {}}


@dataclass
class Config:
    """Hyperparameters (paper §5.1 implementation details; INMO's code where the paper is silent).

    tau: contrastive temperature; default the paper's 0.2 for Food&Kitchen and 0.1 for other pairs.
    loss_reduction: "sum" is the paper's literal reading (eq-bpr and eq-se sum over triples, eq-cl averages over
        the sampled overlapping users); "mean" averages BPR and SE over the batch too, which weighs L_CL about one
        batch size more than the paper writes (the default before 2026-12; see the README's decisions).
    cl_normalize: L2-normalise the projector outputs f^A, f^B (without it the paper's L_CL is unbounded below).
    se_weight: the SE loss's W; default the paper's full d x d matrix for MICRec, INMO's diagonal for INMO.
    best_epoch: "joint" (one best epoch for both domains, by their mean validation NDCG) or "per-domain"; default
        joint when the contrastive loss couples the domains or the model's domains share parameters
        (`Recommender.shared_parameters`, e.g. UniCDR), per-domain otherwise.
    params: the model's own hyperparameters (its module's `Params`), every one filled in with its default when not
        given, so the saved config says what ran.
    """

    model: str = "micrec"
    ablation: str | None = None
    dataset: str = ""
    seed: int = 0
    dim: int = 64
    layers: int = 3
    template_ratio: float = 1.0
    dropout: float = 0.1
    k_neighbours: int = 3
    w_text: float = 0.9
    beta_se: float = 0.01
    gamma_cl: float = 1.0
    tau: float | None = None
    cl_loss: str = "paper"
    loss_reduction: str = "sum"
    cl_normalize: bool = True
    se_weight: str | None = None
    best_epoch: str | None = None
    l2: float = 0.0
    lr: float = 1e-3
    max_epochs: int = 1000
    batches_per_epoch: int = 100
    cl_users: int = 64
    patience: int = 50
    val_n: int = 20
    eval_ns: list[int] = field(default_factory=lambda: [5, 10, 20, 50, 100])
    device: str = "auto"
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.model not in REGISTRY:
            raise ValueError(f"--model must be one of {', '.join(REGISTRY)}, got {self.model!r}")
        if self.ablation is not None and (self.model != "micrec" or self.ablation not in ABLATIONS):
            raise ValueError(
                f"--ablation must be one of {', '.join(ABLATIONS)} with --model micrec, got {self.ablation!r}"
            )
        if self.se_weight is None:
            self.se_weight = "diagonal" if self.model == "inmo" else "full"
        if self.best_epoch is None:
            shared = model_class(self.model).shared_parameters
            self.best_epoch = "joint" if self.contrastive or shared else "per-domain"
        for name, allowed in (("cl_loss", CL_LOSSES), ("loss_reduction", REDUCTIONS), ("se_weight", SE_WEIGHTS),
                              ("best_epoch", BEST_EPOCHS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{_flag(name)} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        self._check_ranges()
        self.params = model_class(self.model).resolve_params(self.params)

    def _check_ranges(self) -> None:
        """Refuse every numeric option outside its domain, naming the option."""
        checks = [
            ("seed", 0 <= self.seed <= MAX_SEED, f"an integer in [0, {MAX_SEED}]"),
            ("dim", self.dim >= 1, ">= 1"),
            ("layers", self.layers >= 0, ">= 0"),
            ("template_ratio", 0.0 < self.template_ratio <= 1.0, "in (0, 1]"),
            ("dropout", 0.0 <= self.dropout < 1.0, "in [0, 1)"),
            ("k_neighbours", self.k_neighbours >= 0, ">= 0"),
            ("w_text", 0.0 <= self.w_text <= 1.0, "in [0, 1]"),
            ("beta_se", self.beta_se >= 0.0, ">= 0"),
            ("gamma_cl", self.gamma_cl >= 0.0, ">= 0"),
            ("tau", self.tau is None or self.tau > 0.0, "> 0"),
            ("l2", self.l2 >= 0.0, ">= 0"),
            ("lr", self.lr > 0.0, "> 0"),
            ("max_epochs", self.max_epochs >= 1, ">= 1"),
            ("batches_per_epoch", self.batches_per_epoch >= 1, ">= 1"),
            ("cl_users", self.cl_users >= 2, ">= 2 (a contrastive loss needs a user to contrast with)"),
            ("patience", self.patience >= 1, ">= 1"),
            ("val_n", self.val_n >= 1, ">= 1"),
            ("eval_ns", bool(self.eval_ns) and all(n >= 1 for n in self.eval_ns), "a non-empty list of N >= 1"),
        ]
        for name, ok, expected in checks:
            value = getattr(self, name)
            finite = all(math.isfinite(v) for v in (value if isinstance(value, list) else [value])
                         if isinstance(v, float))
            if not (ok and finite):
                raise ValueError(f"{_flag(name)} must be {expected}, got {value!r}")

    @property
    def aggregate(self) -> bool:
        """Whether modality-based aggregation (§4.2) is on."""
        return self.model == "micrec" and self.ablation != "no-mm"

    @property
    def contrastive(self) -> bool:
        """Whether the cross-domain contrastive loss (§4.3) is on."""
        return self.model == "micrec" and self.ablation != "no-cd" and self.gamma_cl > 0

    @property
    def use_text(self) -> bool:
        """Whether text enters the similarity (off for the no-txt ablation)."""
        return self.ablation != "no-txt"

    @property
    def use_image(self) -> bool:
        """Whether images enter the similarity (off for the no-vis ablation)."""
        return self.ablation != "no-vis"

    def temperature(self, domains: tuple[str, str]) -> float:
        """tau: as set, else the paper's 0.2 for Food&Kitchen and 0.1 for every other pair."""
        if self.tau is not None:
            return self.tau
        return 0.2 if set(domains) == FOOD_KITCHEN else 0.1

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        """Rebuild from `to_dict` output, rejecting unknown keys by name; fields a saved config predates take the
        value that reproduces its run (`LEGACY`)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**({k: v for k, v in LEGACY.items() if k not in values} | values))


def _flag(name: str) -> str:
    """The command-line spelling of a config field."""
    return "--" + name.replace("_", "-")
