"""How sure a sync estimate is: a p-value per track (or per segment) that does not depend on the score scale.

The question a p-value answers: if the audio and the lips did not correspond at all, how likely would a curve
peak at least this strong be? The answer comes from the same video (docs/sync.md, "p_value"):

* **Statistic.** Each scored window ranks its 31 audio candidates (best = 1, worst = 0, ties share the mean
  rank; missing candidates are left out and the others spread over [0, 1]). The ranks are averaged per
  candidate over the windows, and each candidate's mean is turned into a z score with the variance it would
  have if the ranks were random and the windows independent. The statistic is the largest z. Ranks make it
  invariant under any increasing rescaling of the scores (logits scaled by 4, probabilities, a bias) and,
  with ``higher_is_better=False``, under any decreasing one (SyncNet distances).
* **Null.** The same visual windows are scored against audio far outside the search range: a *band* of
  ``2 * vshift + 1 + extra`` consecutive audio windows, circularly shifted by about half the audio's length and
  never closer than ``vshift + NULL_GAP`` frames to the video (no candidate of the null shares a sample with an
  audio window the search could pick). The band holds ``extra + 1`` null curves (offsets s - vshift .. s +
  vshift for consecutive s share 2 * vshift candidates, so they cost one band instead of ``extra + 1`` full
  rows). They measure how much the windows' dependence (overlapping windows, the audio's own rhythm, a model
  that favours loud audio) widens the statistic beyond the independent-window value: the inflation lambda, the
  larger of ``sqrt(mean z_null^2)`` over the null curves' candidates and the lag estimate ``sqrt(1 + 2 sum
  rho(l))`` of the null ranks' correlation between windows l apart (l up to the first window that shares no
  frame), and at least sqrt(number of windows that share frames) (1 at stride 5, sqrt(5) at stride 1: overlapping
  windows count as one). The first alone, from ~35 distinct columns, is too noisy at stride 1 (it let one
  swapped-audio clip in eight through); the second pools every null rank; the floor keeps stride 1 from claiming
  more independent evidence than its non-overlapping windows hold (one swapped clip in five passed without it).
* **p-value.** ``min(1, n * P(N(0, 1) >= max z / lambda))`` over the n scored candidates: the union (Bonferroni)
  bound of the normal tail, valid whatever the correlation between candidates, and able to go below
  1 / (number of null curves). Being an upper bound, it errs towards "undetermined".

`p_value(rows, null_rows)` works on any subset of a track's windows (pass the same rows of both arrays), which
is how segments get their own p-values.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import ndtr

from mtdistill.core.errors import UserError
from mtdistill.core.timing import SEARCH_RANGE, WINDOW_FRAMES

NULL_GAP = WINDOW_FRAMES
"""Frames between the search range and the nearest null candidate: audio windows are WINDOW_FRAMES long, so no
null candidate overlaps any audio window at offsets -vshift..vshift."""
NULL_EXTRA = 4
"""Extra audio windows in the null band beyond the 2 * vshift + 1 of one curve: NULL_EXTRA + 1 null curves for
2 * vshift + 1 + NULL_EXTRA scored pairs per window (cost measured in benchmarks/RESULTS.md)."""
DEFAULT_ALPHA = 0.01
"""p_value <= alpha gives a confident verdict (in_sync / out_of_sync); docs/sync.md says why 0.01."""


def check_alpha(alpha: float) -> float:
    """alpha as a float strictly between 0 and 1, else a one-line error."""
    a = float(alpha)
    if not 0.0 < a < 1.0 or not math.isfinite(a):
        raise UserError(f"--alpha must be between 0 and 1 (exclusive), got {alpha}")
    return a


def null_shift(n_audio: int, band: int, vshift: int = SEARCH_RANGE) -> int | None:
    """Start s of the null band: window v is paired with audio windows (v + s + b) mod n_audio, b < band.

    The band is centred half-way round the audio; None when the audio is too short for every band member to stay
    at least vshift + NULL_GAP windows (circularly) from the video window.
    """
    near = vshift + NULL_GAP
    if n_audio - (band - 1) < 2 * near:
        return None
    return (n_audio - (band - 1)) // 2


def null_band_width(n_audio: int, vshift: int = SEARCH_RANGE, extra: int = NULL_EXTRA) -> int:
    """Band width that fits the audio: 2 * vshift + 1 + extra, fewer extras when the audio is short; 0 = none."""
    width = 2 * vshift + 1
    room = n_audio - 2 * (vshift + NULL_GAP) + 1 - width
    if room < 0:
        return 0
    return width + min(extra, room)


def normalized_ranks(rows: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """Per-row ranks scaled to [0, 1] (best = 1, ties share their mean rank), NaN where the score is missing;
    rows with fewer than two scores are all NaN."""
    x = np.asarray(rows, dtype=np.float64)
    if not higher_is_better:
        x = -x
    valid = np.isfinite(x)
    filled = np.where(valid, x, -np.inf)
    below = (filled[:, :, None] > filled[:, None, :]) & valid[:, None, :]
    ties = (filled[:, :, None] == filled[:, None, :]) & valid[:, None, :]
    rank = below.sum(-1) + 0.5 * (ties.sum(-1) - 1)  # 0-based mean rank among the valid scores
    n = valid.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = rank / (n - 1)
    return np.where(valid & (n >= 2), out, np.nan)


def column_z(rows: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """z score of each candidate's mean normalised rank over the windows (NaN where no window scored it)."""
    r = normalized_ranks(rows, higher_is_better)
    valid = np.isfinite(r)
    n = valid.sum(1)
    var_w = np.where(n >= 2, (n + 1) / (12.0 * np.maximum(n - 1, 1)), 0.0)  # a random rank among n, scaled
    count = valid.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(valid, r, 0.0).sum(0) / count
        sd = np.sqrt((valid * var_w[:, None]).sum(0)) / count
        return np.where(count > 0, (mean - 0.5) / sd, np.nan)


def null_z(null_rows: np.ndarray, width: int, higher_is_better: bool = True) -> np.ndarray:
    """(curves, width) z scores of the null curves held by a band (W, B): curve m uses band columns m..m+width-1."""
    band = np.asarray(null_rows)
    if band.ndim != 2 or band.shape[0] == 0 or band.shape[1] < width:
        return np.empty((0, width))
    return np.stack([column_z(band[:, m : m + width], higher_is_better) for m in range(band.shape[1] - width + 1)])


def overlap_lags(stride: int) -> int:
    """Window lags whose rows are dependent by construction: windows up to the first one that shares no frame
    (4 overlapping + 1 at stride 1, the next window at stride >= 5)."""
    return max(1, math.ceil(WINDOW_FRAMES / max(int(stride), 1)))


def _z_inflation(null_rows: np.ndarray, width: int, higher_is_better: bool) -> float | None:
    z = null_z(null_rows, width, higher_is_better)
    z = z[np.isfinite(z)]
    return None if z.size == 0 else float(np.sqrt(np.mean(z**2)))


def _lag_inflation(null_rows: np.ndarray, width: int, lags: int, higher_is_better: bool) -> float | None:
    """sqrt(1 + 2 sum_l rho(l)) with rho pooled over the null curves' candidates (lags 1..``lags``)."""
    band = np.asarray(null_rows)
    if band.ndim != 2 or band.shape[0] < 2 or band.shape[1] < width:
        return None
    r = np.stack(
        [normalized_ranks(band[:, m : m + width], higher_is_better) - 0.5 for m in range(band.shape[1] - width + 1)]
    )
    w = r.shape[1]
    g0 = float(np.nanmean(r * r))
    if not g0 > 0:
        return None
    total = g0
    for lag in range(1, min(lags, w - 1) + 1):
        total += 2.0 * float(np.nanmean(r[:, lag:] * r[:, :-lag])) * (w - lag) / w
    return float(np.sqrt(max(total, 0.0) / g0))


def inflation(null_rows: np.ndarray, width: int, higher_is_better: bool = True, lags: int = 1) -> float | None:
    """lambda: how much wider the null spreads the z scores than independent windows would; None without a
    null. The largest of two estimates from the null band and a floor: sqrt(mean z^2) over every null curve and
    candidate (direct, but only ~width + extra distinct columns); the lag estimate sqrt(1 + 2 sum rho(l)) over
    ``lags`` window lags with rho pooled over all null ranks (steadier); and sqrt(lags), ``lags`` being
    `overlap_lags` of the stride: windows that share frames count as one (1 at stride >= 5, sqrt(5) at stride 1)."""
    est = [x for x in (_z_inflation(null_rows, width, higher_is_better),
                       _lag_inflation(null_rows, width, lags, higher_is_better)) if x is not None]  # fmt: skip
    return max(math.sqrt(max(lags, 1)), *est) if est else None


def p_value(rows: np.ndarray, null_rows: np.ndarray, higher_is_better: bool = True, lags: int = 1) -> float | None:
    """p-value of the strongest candidate of ``rows`` (W, 2 * vshift + 1) against the null band ``null_rows``
    (W, >= 2 * vshift + 1) of the same windows; None when there is no null or fewer than two windows. ``lags``:
    `overlap_lags` of the windows' stride."""
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[0] < 2:
        return None
    lam = inflation(null_rows, rows.shape[1], higher_is_better, lags)
    if lam is None:
        return None
    z = column_z(rows, higher_is_better)
    ok = np.isfinite(z)
    if not ok.any():
        return None
    tail = float(ndtr(-float(z[ok].max()) / lam))
    return min(1.0, int(ok.sum()) * tail)
