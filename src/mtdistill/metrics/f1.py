"""Validation F1 as the MTD training script computes it for model selection, with its two quirks as flags.

Released (the defaults): every validation batch gets sklearn's weighted F1 of ``logit > 0.5``
(``Quirks.f1_logit_threshold``), and the epoch's F1 is the unweighted mean of those batch F1s
(``Quirks.f1_mean_of_batches``). Clean: the prediction is ``probability > 0.5`` (logit > 0), and the epoch's F1
is one weighted F1 over every prediction of the epoch.

Each batch is summarised as ``F1_STATS`` = (batch F1, TP, FP, FN, TN), so that an epoch (even gathered from
several DDP ranks) can be reduced either way by ``epoch_f1_from_stats``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.metrics import f1_score

from mtdistill.core.quirks import Quirks, resolve_quirks

LOGIT_THRESHOLD = 0.5
"""The released code thresholds the raw *logit* at 0.5 (probability ~0.622), not the probability."""
PROBABILITY_THRESHOLD_LOGIT = 0.0
"""The clean threshold, probability > 0.5, as a logit."""
F1_STATS = ("f1", "tp", "fp", "fn", "tn")
"""Columns of ``batch_f1_stats``."""


def _numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def predictions(logits: torch.Tensor | np.ndarray, quirks: Quirks | None = None) -> np.ndarray:
    """0/1 'in sync' predictions: ``logit > 0.5`` as released (``Quirks.f1_logit_threshold``), else logit > 0."""
    threshold = LOGIT_THRESHOLD if resolve_quirks(quirks).f1_logit_threshold else PROBABILITY_THRESHOLD_LOGIT
    return (_numpy(logits).reshape(-1) > threshold).astype(np.int64)


def _labels(labels: torch.Tensor | np.ndarray) -> np.ndarray:
    return _numpy(labels).reshape(-1).round().astype(np.int64)


def batch_weighted_f1(
    logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, quirks: Quirks | None = None
) -> float:
    """sklearn ``f1_score(y, prediction, average='weighted')`` of one validation batch (see ``predictions``)."""
    y_true, y_pred = _labels(labels), predictions(logits, quirks)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"logits and labels differ in size: {y_pred.shape} vs {y_true.shape}")
    return float(f1_score(y_true, y_pred, average="weighted", zero_division=0))


def batch_f1_stats(
    logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, quirks: Quirks | None = None
) -> np.ndarray:
    """One batch as (batch weighted F1, TP, FP, FN, TN) (float64, ``F1_STATS``)."""
    y_true, y_pred = _labels(labels), predictions(logits, quirks)
    f1 = batch_weighted_f1(logits, labels, quirks)
    tp = int(np.sum((y_pred == 1) & (y_true == 1)))
    fp = int(np.sum((y_pred == 1) & (y_true == 0)))
    fn = int(np.sum((y_pred == 0) & (y_true == 1)))
    tn = int(np.sum((y_pred == 0) & (y_true == 0)))
    return np.array([f1, tp, fp, fn, tn], dtype=np.float64)


def _class_f1(tp: float, fp: float, fn: float) -> float:
    denominator = 2 * tp + fp + fn
    return 2 * tp / denominator if denominator > 0 else 0.0


def weighted_f1_from_counts(tp: float, fp: float, fn: float, tn: float) -> float:
    """sklearn's binary ``average='weighted'`` F1 from a confusion matrix: per-class F1 weighted by support."""
    support_pos, support_neg = tp + fn, tn + fp
    total = support_pos + support_neg
    if total == 0:
        return 0.0
    # class 0 sees the matrix mirrored: its TP are the TN, its FP the FN, its FN the FP
    return float((support_pos * _class_f1(tp, fp, fn) + support_neg * _class_f1(tn, fn, fp)) / total)


def epoch_f1(batch_f1s: Sequence[float]) -> float:
    """The released epoch F1: the unweighted mean of the batch F1s (a short last batch counts fully)."""
    if len(batch_f1s) == 0:
        return float("nan")
    return float(np.mean(np.asarray(batch_f1s, dtype=np.float64)))


def epoch_f1_from_stats(stats: np.ndarray | Sequence[Sequence[float]], quirks: Quirks | None = None) -> float:
    """The epoch's F1 from its per-batch ``batch_f1_stats`` rows (n_batches, 5).

    ``Quirks.f1_mean_of_batches`` (released): the mean of the batch F1s (``epoch_f1``). False: one weighted F1 over
    every prediction of the epoch, from the summed confusion counts.
    """
    rows = np.asarray(stats, dtype=np.float64).reshape(-1, len(F1_STATS))
    if rows.shape[0] == 0:
        return float("nan")
    if resolve_quirks(quirks).f1_mean_of_batches:
        return epoch_f1(rows[:, 0])
    tp, fp, fn, tn = rows[:, 1:].sum(axis=0)
    return weighted_f1_from_counts(tp, fp, fn, tn)
