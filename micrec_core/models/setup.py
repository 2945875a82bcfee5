"""A model ready to train or evaluate: the registered class of `config.model` built on a pair, on its device."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from micrec_core.config import Config
from micrec_core.data.dataset import PairData
from micrec_core.models.micrec import ItemModalities
from micrec_core.models.recommender import Recommender
from micrec_core.models.registry import model_class


def pick_device(name: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class Setup:
    """A model of one pair (`recommender.Recommender`) with its config and device, ready to train or evaluate."""

    config: Config
    pair: PairData
    device: torch.device
    model: Recommender


def setup(pair: PairData, config: Config, features: list[ItemModalities] | None = None) -> Setup:
    """Seed, then build the registered model of `config.model` (its parameters, and what it precomputes from E_tr).

    Item features are read from the dataset (`micrec features`) unless given, by the models that use them.
    """
    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    model = model_class(config.model)(pair, config, device, features)
    return Setup(config, pair, device, model.to(device))
