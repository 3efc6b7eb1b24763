"""Validation F1 as the MTD code computes it for model selection (spec 4.5)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.metrics import f1_score

LOGIT_THRESHOLD = 0.5
"""The released code thresholds the raw *logit* at 0.5 (probability ~0.622), not the probability."""


def batch_weighted_f1(logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> float:
    """Spec 4.5: sklearn ``f1_score(y, logit > 0.5, average='weighted')`` of one validation batch."""
    logits = logits.detach().float().cpu().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits)
    labels = labels.detach().float().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    y_true = labels.reshape(-1).round().astype(np.int64)
    y_pred = (logits.reshape(-1) > LOGIT_THRESHOLD).astype(np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"logits and labels differ in size: {y_pred.shape} vs {y_true.shape}")
    return float(f1_score(y_true, y_pred, average="weighted", zero_division=0))


def epoch_f1(batch_f1s: Sequence[float]) -> float:
    """Spec 4.5: the epoch F1 is the unweighted mean of the batch F1s (a short last batch counts fully)."""
    if len(batch_f1s) == 0:
        return float("nan")
    return float(np.mean(np.asarray(batch_f1s, dtype=np.float64)))
