"""CMU-MOSEI sentiment metrics: MulT's ``eval_mosei_senti`` plus the 7-class metrics of the seed paper.

Conventions (design.md §M2.2 / 2.3):
- sentiment scores live in [-3, 3]; a 7-class id is round_half_even(clip(y, -3, 3)) + 3 (0 = -3 ... 6 = +3);
- Acc2 / F1 (binary) compare (pred > 0) with (truth > 0) over the samples whose truth is non-zero;
- F1 for the 7 classes is reported both weighted (the MulT convention) and macro.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import f1_score

from mtdistill.core.errors import UserError

N_CLASSES = 7


def sentiment_to_class7(y: np.ndarray | Sequence[float] | float) -> np.ndarray:
    """Class id 0..6 = round_half_even(clip(y, -3, 3)) + 3 (NumPy rounds half to even: 0.5 -> 0, 2.5 -> 2)."""
    return (np.round(np.clip(np.asarray(y, dtype=np.float64), -3.0, 3.0)) + 3).astype(np.int64)


def class7_to_sentiment(c: np.ndarray | Sequence[int]) -> np.ndarray:
    """Inverse of the class mapping: the integer sentiment score of a class id."""
    return np.asarray(c, dtype=np.float64) - 3.0


def _flat(name: str, x: object) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise UserError(f"{name} is empty; evaluate on a split with at least one sample")
    return arr


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    # constant predictions (a collapsed model) have no correlation: report 0 rather than NaN
    if a.size < 2 or np.std(a) == 0 or np.std(b) == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def binary_nonzero(pred_score: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Acc2 and weighted F1 of (pred > 0) vs (truth > 0) over samples with truth != 0 (MulT, exclude_zero=True)."""
    keep = truth != 0
    if not keep.any():
        return float("nan"), float("nan")
    p, t = pred_score[keep] > 0, truth[keep] > 0
    return float(np.mean(p == t)), float(f1_score(t, p, average="weighted", zero_division=0))


def regression_metrics(pred: object, truth: object) -> dict[str, float]:
    """MulT's ``eval_mosei_senti`` for a scalar-regression model: MAE, Corr, Acc7, Acc5, Acc2, F1."""
    p, t = _flat("predictions", pred), _flat("labels", truth)
    if p.shape != t.shape:
        raise UserError(f"{p.size} predictions for {t.size} labels; pass one prediction per sample")
    acc2, f1 = binary_nonzero(p, t)
    return {
        "mae": float(np.mean(np.abs(p - t))),
        "corr": _pearson(p, t),
        "acc7": float(np.mean(np.round(np.clip(p, -3, 3)) == np.round(np.clip(t, -3, 3)))),
        "acc5": float(np.mean(np.round(np.clip(p, -2, 2)) == np.round(np.clip(t, -2, 2)))),
        "acc2": acc2,
        "f1_binary": f1,
    }


def majority_baseline(train_classes: object, test_classes: object) -> dict[str, float]:
    """Accuracy and F1 of always answering the most frequent training class (sanity check, design.md §M2.3)."""
    tr = np.asarray(train_classes, dtype=np.int64).reshape(-1)
    te = np.asarray(test_classes, dtype=np.int64).reshape(-1)
    if tr.size == 0 or te.size == 0:
        raise UserError("majority baseline needs non-empty train and test labels")
    majority = int(np.bincount(tr, minlength=N_CLASSES).argmax())
    pred = np.full_like(te, majority)
    return {
        "majority_class": majority,
        "acc7": float(np.mean(pred == te)),
        "f1_weighted": float(f1_score(te, pred, average="weighted", zero_division=0)),
        "f1_macro": float(f1_score(te, pred, average="macro", labels=list(range(N_CLASSES)), zero_division=0)),
    }


def classification_metrics(logits: object, truth: object) -> dict[str, float]:
    """7-class metrics of the seed paper from logits (N, 7) and continuous labels (N,).

    acc7 = top-1 accuracy; f1_weighted / f1_macro over the 7 classes; acc2 / f1_binary on non-zero labels using
    the predicted class's sign; mae / corr between the predicted class's score (class - 3) and the label.
    """
    z = np.asarray(logits, dtype=np.float64)
    t = _flat("labels", truth)
    if z.ndim != 2 or z.shape[1] != N_CLASSES or z.shape[0] != t.size:
        raise UserError(f"logits of shape {z.shape} for {t.size} labels; expected ({t.size}, {N_CLASSES})")
    pred_c = z.argmax(axis=1)
    true_c = sentiment_to_class7(t)
    pred_s = class7_to_sentiment(pred_c)
    acc2, f1b = binary_nonzero(pred_s, t)
    return {
        "acc7": float(np.mean(pred_c == true_c)),
        "f1_weighted": float(f1_score(true_c, pred_c, average="weighted", zero_division=0)),
        "f1_macro": float(f1_score(true_c, pred_c, average="macro", labels=list(range(N_CLASSES)), zero_division=0)),
        "acc2": acc2,
        "f1_binary": f1b,
        "mae": float(np.mean(np.abs(pred_s - t))),
        "corr": _pearson(pred_s, t),
        "n": int(t.size),
    }


def mosei_metrics(outputs: object, truth: object) -> dict[str, float]:
    """Dispatch on the model head: (N, 7) logits -> classification metrics, (N,) or (N, 1) scores -> regression."""
    z = np.asarray(outputs, dtype=np.float64)
    if z.ndim == 2 and z.shape[1] == N_CLASSES:
        return classification_metrics(z, truth)
    return regression_metrics(z.reshape(-1), truth)
