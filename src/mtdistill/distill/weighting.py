"""Loss weighting for the multi-term distillation objective: uniform and AW (Eq. 3), UW (Eq. 4).

Each function takes the task losses as one 1-D tensor ``losses`` (n,), in the official order
(BCE first, then the distillation terms), and returns ``(total, weights)`` where ``weights`` (n,) are the
effective multipliers of each task loss (for logging; the UW regulariser is not included in them).
"""

from __future__ import annotations

import torch
from torch import Tensor

WEIGHTINGS = ("uniform", "aw", "uw")


def uniform_weighting(losses: Tensor, alpha: float = 1.0) -> tuple[Tensor, Tensor]:
    """Eq. 3 with uniform weights: w_0 = 1 for BCE and w = alpha (= 1, design.md §2.5) for every distillation term."""
    weights = torch.full_like(losses, alpha)
    weights[0] = 1.0
    return (weights * losses).sum(), weights.detach()


def automatic_weighting(losses: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
    """Eq. 3 with AW: w = softmax(params) over all n tasks (design.md §2.4); total = sum_i w_i * L_i."""
    weights = torch.softmax(params.to(losses), dim=0)
    return (weights * losses).sum(), weights.detach()


def uncertainty_weighting(losses: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
    """Eq. 4, MTD uncertainty weighting: sum_i 0.5 * p_i^-2 * L_i + ln(1 + p_i^2)."""
    p2 = params.to(losses) ** 2
    weights = 0.5 / p2
    return (weights * losses + torch.log1p(p2)).sum(), weights.detach()
