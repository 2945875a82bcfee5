"""The one typed configuration of a training run; serialised with every run and checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

MODELS = ("micrec", "inmo", "lightgcn")
ABLATIONS = ("no-mm", "no-cd", "no-vis", "no-txt")
FOOD_KITCHEN = {"Grocery_and_Gourmet_Food", "Home_and_Kitchen"}


@dataclass
class Config:
    """Hyperparameters (paper §5.1 implementation details; INMO's code where the paper is silent).

    se_weight: the SE loss's W; default the paper's full d x d matrix for MICRec, INMO's diagonal for INMO.
    tau: contrastive temperature; default the paper's 0.2 for Food&Kitchen and 0.1 for other pairs.
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
    se_weight: str | None = None
    l2: float = 0.0
    lr: float = 1e-3
    max_epochs: int = 1000
    batches_per_epoch: int = 100
    cl_users: int = 64
    patience: int = 50
    val_n: int = 20
    eval_ns: list[int] = field(default_factory=lambda: [5, 10, 20, 50, 100])
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"--model must be one of {', '.join(MODELS)}, got {self.model!r}")
        if self.ablation is not None and (self.model != "micrec" or self.ablation not in ABLATIONS):
            raise ValueError(
                f"--ablation must be one of {', '.join(ABLATIONS)} with --model micrec, got {self.ablation!r}"
            )
        if self.se_weight is None:
            self.se_weight = "diagonal" if self.model == "inmo" else "full"
        if self.se_weight not in ("full", "diagonal"):
            raise ValueError(f"se_weight must be 'full' or 'diagonal', got {self.se_weight!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

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
        """Rebuild from `to_dict` output, rejecting unknown keys by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**values)
