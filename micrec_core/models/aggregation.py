"""Modality-based aggregation (paper §4.2, Eq. 5):

    x~_u = x_u + (1/K) * sum_{u' in Ñ_u} x_{u'},     x~_i = x_i + (1/K) * sum_{i' in Ñ_i} x_{i'}

where Ñ are the top-K most similar users (items) by the multimodal similarity of `micrec_core.models.similarity`.
The divisor stays K as in the paper; an entity with fewer usable neighbours (missing modalities) adds fewer terms,
and one with none keeps x unchanged.
"""

from __future__ import annotations

import torch


def aggregate(x: torch.Tensor, neighbours: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Eq. 5: x + (1/K) * sum of the representations of each row's valid neighbours."""
    k = neighbours.shape[1]
    if k == 0:
        return x
    rows = x.index_select(0, neighbours.clamp(min=0).flatten()).view(*neighbours.shape, -1)
    return x + (rows * valid.unsqueeze(-1).to(x.dtype)).sum(dim=1) / k
