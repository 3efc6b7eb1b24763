"""Offsets below the 40 ms frame step: the peak of a score curve located between whole frames, with an interval.

Two routes, both measured on synthetic clips with the committed trained tiny model (benchmarks/RESULTS.md,
"Sub-frame offsets"):

* **Curve interpolation** (`interpolate_peak`, `subframe_offset`): a parabola through the window-averaged curve's
  best whole-frame candidate and its two neighbours; its vertex is the offset. Free: it reads the 31-candidate
  rows the track already has. The interval is a block bootstrap over the track's windows (resample 5-frame blocks of
  windows, recompute the mean curve and its vertex), so it widens when windows disagree or the peak is flat.
* **Audio shifted by a fraction of a frame** (`audio_shift_curve`, `refine_offset`): the 16 kHz waveform is moved
  by a few milliseconds, its mel columns recomputed (`mel_window`), and the same visual windows are scored again
  around the best frame; the vertex of a least-squares parabola through these finer points is the offset. It
  needs the visual windows' tokens again and costs one pair-scoring pass per extra point.

Both are invariant to an affine rescaling of the scores (a * s + b, a > 0): the parabola's vertex does not move.
Sign as everywhere (`inference.readout`): positive = the audio leads the video; entry j of a curve is the offset
vshift - j frames.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from mtdistill.core.errors import UserError
from mtdistill.core.timing import (
    FRAME_MS,
    MEL_HOP,
    MEL_WINDOW,
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    SEARCH_RANGE,
    WINDOW_FRAMES,
    mel_window_start,
)
from mtdistill.inference.scoring import PairScorer
from mtdistill.media.audio import N_FFT, utterance_mel

BOOTSTRAP_BLOCK_FRAMES = WINDOW_FRAMES
"""Windows are resampled in blocks of 5 frames of video: windows at a stride below 5 overlap and share frames;
a block keeps those together (at stride 5 and above every window is its own block)."""
N_BOOTSTRAP = 200
"""Bootstrap replicates for an interval (deterministic: a fixed seed)."""
INTERVAL_LEVEL = 0.95
"""Two-sided coverage of the interval."""
AUDIO_SHIFTS_MS = (-30.0, -20.0, -10.0, 10.0, 20.0, 30.0)
"""Sub-frame audio shifts scored by `refine_offset` around each of the best frame and its two neighbours."""


@dataclass(frozen=True)
class SubframeOffset:
    """A sub-frame offset (ms, positive = audio leads) with its interval [low_ms, high_ms] (INTERVAL_LEVEL)."""

    offset_ms: float
    low_ms: float
    high_ms: float
    method: str = "parabola"

    @property
    def offset_frames(self) -> int:
        """The nearest whole frame."""
        return int(round(self.offset_ms / FRAME_MS))

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------- route (b)


def audio_lag_ms(audio_windows: np.ndarray) -> np.ndarray:
    """How much earlier than its frame (ms, 0 to 10) audio window a's mel columns start.

    Audio window a starts at mel column `mel_window_start(a)` = floor(3.2 a) (the official ``int(80 a / 25)``),
    i.e. at sample 200 floor(3.2 a) instead of 640 a, while the models learned sync on chunks cut at exactly
    640 a samples (`data.pairs`). Audio that starts earlier plays content from earlier: the candidate really
    tests an offset larger by this lag. Averaged over windows the lag is 5 ms; at stride 5 every window of a
    candidate has the same lag, which differs from candidate to candidate.
    """
    a = np.asarray(audio_windows, np.int64)
    cols = np.array([mel_window_start(int(x)) for x in a.ravel()], np.int64).reshape(a.shape)
    return (a * SAMPLES_PER_FRAME - cols * MEL_HOP) * 1000.0 / SAMPLE_RATE


def candidate_positions_ms(
    starts: np.ndarray | None,
    vshift: int = SEARCH_RANGE,
    valid: np.ndarray | None = None,
    mel_rounding: bool = True,
) -> np.ndarray:
    """(2 * vshift + 1,) offset in ms that each candidate j really tests, averaged over the windows that scored it:
    (vshift - j) * FRAME_MS + the mean `audio_lag_ms` of their audio windows. ``starts``: the windows' first
    frames (None: the nominal whole-frame offsets); ``valid`` (W, C): which windows scored each candidate.
    ``mel_rounding=False`` for scorers whose audio windows start exactly on the frame (SyncNet's MFCC windows:
    4 columns per frame): the nominal offsets."""
    offsets = vshift - np.arange(2 * vshift + 1)
    nominal = offsets * FRAME_MS
    if starts is None or len(starts) == 0 or not mel_rounding:
        return nominal.astype(np.float64)
    s = np.asarray(starts, np.int64)
    a = s[:, None] - offsets[None, :]  # (W, C) audio window of every candidate
    lag = audio_lag_ms(np.maximum(a, 0))
    ok = (a >= 0) if valid is None else (np.asarray(valid, bool) & (a >= 0))
    n = ok.sum(axis=0)
    mean_lag = np.where(n > 0, np.where(ok, lag, 0.0).sum(axis=0) / np.maximum(n, 1), lag.mean(axis=0))
    return nominal + mean_lag


def vertex3(x: np.ndarray, y: np.ndarray) -> float:
    """Vertex of the parabola through three points (x ascending, the middle one highest), kept between the
    outer two; the middle x when the points are not concave or not finite."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return float(x[1])
    c2, c1, _ = np.polyfit(x - x[1], y, 2)
    if not c2 < 0:
        return float(x[1])
    return float(x[1] + np.clip(-c1 / (2.0 * c2), x[0] - x[1], x[2] - x[1]))


def interpolate_peak(
    curve: np.ndarray,
    vshift: int = SEARCH_RANGE,
    *,
    positions_ms: np.ndarray | None = None,
    lower_is_better: bool = False,
) -> float:
    """Sub-frame offset in ms of a candidate curve (entry j = offset vshift - j frames, NaN = not scored).

    The vertex of the parabola through the best entry and its two neighbours, placed at ``positions_ms``
    (`candidate_positions_ms`; default the nominal j -> (vshift - j) * 40 ms). At the ends of the search range
    or next to a NaN, the best entry's position. ``lower_is_better`` for distance curves (SyncNet).
    """
    y = -np.asarray(curve, np.float64) if lower_is_better else np.asarray(curve, np.float64)
    if y.ndim != 1 or len(y) != 2 * vshift + 1:
        raise UserError(f"a candidate curve has {2 * vshift + 1} entries, got shape {y.shape}")
    if not np.isfinite(y).any():
        raise UserError("the candidate curve has no scored entry")
    x = candidate_positions_ms(None, vshift) if positions_ms is None else np.asarray(positions_ms, np.float64)
    j = int(np.nanargmax(y))
    if not 0 < j < len(y) - 1:
        return float(x[j])
    three = [j + 1, j, j - 1]  # entries run from the largest offset to the smallest: x ascends this way
    return vertex3(x[three], y[three])


def _block_ids(starts: np.ndarray | None, n: int) -> np.ndarray:
    if starts is None:
        return np.arange(n)
    s = np.asarray(starts, np.int64)
    return (s - s.min()) // BOOTSTRAP_BLOCK_FRAMES


def bootstrap_curves(
    rows: np.ndarray, starts: np.ndarray | None = None, n_boot: int = N_BOOTSTRAP, seed: int = 0
) -> np.ndarray:
    """(n_boot, C) mean curves of the (W, C) rows, each over windows resampled in 5-frame blocks (NaN kept
    out of the means). ``starts``: the windows' first frames (None: every window is its own block)."""
    rows = np.asarray(rows, np.float64)
    valid = np.isfinite(rows)
    filled = np.where(valid, rows, 0.0)
    ids = _block_ids(starts, len(rows))
    _, block = np.unique(ids, return_inverse=True)
    n_blocks = int(block.max()) + 1
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_blocks, size=(n_boot, n_blocks))
    block_weights = np.stack([np.bincount(d, minlength=n_blocks) for d in draws]).astype(np.float64)
    weights = block_weights[:, block]  # (B, W): how often each window was drawn
    sums = weights @ filled
    counts = weights @ valid.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1e-12), np.nan)


def subframe_offset(
    rows: np.ndarray,
    starts: np.ndarray | None = None,
    vshift: int = SEARCH_RANGE,
    *,
    lower_is_better: bool = False,
    mel_rounding: bool = True,
    n_boot: int = N_BOOTSTRAP,
    level: float = INTERVAL_LEVEL,
    seed: int = 0,
) -> SubframeOffset:
    """Sub-frame offset of a track (or of any subset of its windows) from its per-window score rows.

    ``rows`` (W, 2 * vshift + 1): each window's scores (NaN = candidate not scored), as `score_chunk` returns
    them; ``starts`` (W,): the windows' first frames, for the 5-frame bootstrap blocks. The offset is
    `interpolate_peak` of the mean curve at the candidates' real positions (`candidate_positions_ms`;
    ``mel_rounding=False`` for SyncNet); the interval holds the central ``level`` of the bootstrap replicates'
    offsets, widened to contain the point estimate. SyncNet distances: ``lower_is_better=True``.
    """
    rows = np.asarray(rows, np.float64)
    if rows.ndim != 2 or rows.shape[1] != 2 * vshift + 1 or len(rows) == 0:
        raise UserError(f"score rows must be (windows, {2 * vshift + 1}) with at least one window, got {rows.shape}")
    pos = candidate_positions_ms(starts, vshift, np.isfinite(rows), mel_rounding)

    def peak(curve: np.ndarray) -> float:
        return interpolate_peak(curve, vshift, positions_ms=pos, lower_is_better=lower_is_better)

    point = peak(mean_curve(rows))
    boots = [peak(c) for c in bootstrap_curves(rows, starts, n_boot, seed) if np.isfinite(c).any()]
    if not boots:
        return SubframeOffset(point, point, point)
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(boots, [tail, 100.0 - tail])
    return SubframeOffset(point, float(min(low, point)), float(max(high, point)))


def mean_curve(rows: np.ndarray) -> np.ndarray:
    """Per-candidate mean of (W, C) rows over the windows that scored it (NaN where none did)."""
    rows = np.asarray(rows, np.float64)
    valid = np.isfinite(rows)
    counts = valid.sum(axis=0)
    sums = np.where(valid, rows, 0.0).sum(axis=0)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


# ---------------------------------------------------------------------------------------------- route (a)


def mel_window(wave: np.ndarray, c0: int, c1: int, shift_samples: int = 0) -> np.ndarray:
    """Columns [c0, c1) of ``utterance_mel`` of the wave advanced by ``shift_samples`` (column c is centred on
    sample c * MEL_HOP + shift_samples of ``wave``); samples outside the wave are silence. Equal to
    `scoring.mel_columns` for shift 0 away from the file's edges."""
    ctx = N_FFT // (2 * MEL_HOP)
    s0 = (c0 - ctx) * MEL_HOP + shift_samples
    s1 = (c1 - 1 + ctx) * MEL_HOP + shift_samples + 1
    seg = np.zeros(s1 - s0, np.float32)
    a, b = max(s0, 0), min(s1, len(wave))
    if b > a:
        seg[a - s0 : b - s0] = wave[a:b]
    return utterance_mel(seg)[:, ctx : ctx + (c1 - c0)]


def audio_shift_scores(
    scorer: PairScorer,
    vid: torch.Tensor,
    starts: np.ndarray,
    wave: np.ndarray,
    n_audio: int,
    offset_frames: int,
    shift_ms: float,
) -> np.ndarray:
    """(W,) scores of the visual windows (tokens ``vid`` from `PairScorer.video`, first frames ``starts``)
    against their audio at ``offset_frames`` moved by ``shift_ms`` (the candidate's offset is
    offset_frames * FRAME_MS - shift_ms, plus the windows' `audio_lag_ms`); NaN where that audio window does
    not exist."""
    starts = np.asarray(starts, np.int64)
    out = np.full(len(starts), np.nan, np.float32)
    a_idx = starts - offset_frames
    ok = (a_idx >= 0) & (a_idx < n_audio)
    if not ok.any():
        return out
    c0 = mel_window_start(int(a_idx[ok].min()))
    c1 = mel_window_start(int(a_idx[ok].max())) + MEL_WINDOW
    mel = mel_window(wave, c0, c1, int(round(shift_ms * SAMPLE_RATE / 1000.0)))
    cols = np.array([mel_window_start(a) - c0 for a in a_idx[ok]])[:, None] + np.arange(MEL_WINDOW)[None, :]
    mels = torch.from_numpy(np.ascontiguousarray(mel[:, cols].transpose(1, 0, 2)[:, None]))
    aud = scorer.audio(mels)
    out[ok] = scorer.pairs(vid, aud, np.nonzero(ok)[0], np.arange(int(ok.sum())))
    return out


def audio_shift_curve(
    scorer: PairScorer,
    vid: torch.Tensor,
    starts: np.ndarray,
    wave: np.ndarray,
    n_audio: int,
    offset_frames: int,
    shifts_ms: tuple[float, ...] = AUDIO_SHIFTS_MS,
) -> tuple[np.ndarray, np.ndarray]:
    """(offsets_ms (P,), per-window scores (W, P)) at the sub-frame points around ``offset_frames``: each of
    offset_frames - 1, offset_frames, offset_frames + 1 with every shift of ``shifts_ms`` (positions include the
    mean `audio_lag_ms`). Add the whole-frame
    candidates the track already scored to complete the fine curve (`refine_offset` does)."""
    starts = np.asarray(starts, np.int64)
    offsets, cols = [], []
    for o in (offset_frames - 1, offset_frames, offset_frames + 1):
        a = starts - o
        lag = float(audio_lag_ms(a[a >= 0]).mean()) if (a >= 0).any() else 0.0
        for s in shifts_ms:
            offsets.append(o * FRAME_MS - s + lag)
            cols.append(audio_shift_scores(scorer, vid, starts, wave, n_audio, o, s))
    return np.array(offsets), np.stack(cols, axis=1)


def fit_vertex(x: np.ndarray, y: np.ndarray, half_width_ms: float = 40.0) -> float:
    """Vertex of the least-squares parabola through the points within ``half_width_ms`` of the best one
    (clipped to that range); the best point itself when fewer than 3 points or the fit is not concave."""
    ok = np.isfinite(y)
    x, y = np.asarray(x, np.float64)[ok], np.asarray(y, np.float64)[ok]
    k = int(np.argmax(y))
    sel = np.abs(x - x[k]) <= half_width_ms + 1e-9
    if sel.sum() < 3:
        return float(x[k])
    c2, c1, _ = np.polyfit(x[sel] - x[k], y[sel], 2)
    if c2 >= 0:
        return float(x[k])
    return float(x[k] + np.clip(-c1 / (2.0 * c2), -half_width_ms, half_width_ms))


def refine_offset(
    scorer: PairScorer,
    vid: torch.Tensor,
    starts: np.ndarray,
    wave: np.ndarray,
    n_audio: int,
    rows: np.ndarray,
    vshift: int = SEARCH_RANGE,
    *,
    shifts_ms: tuple[float, ...] = AUDIO_SHIFTS_MS,
    n_boot: int = N_BOOTSTRAP,
    level: float = INTERVAL_LEVEL,
    seed: int = 0,
) -> SubframeOffset:
    """Route (a): sub-frame offset from audio moved by fractions of a frame around the best whole frame.

    ``vid``: `PairScorer.video` tokens of the W windows starting at ``starts``; ``rows`` (W, 2 * vshift + 1):
    their whole-frame scores (as `score_chunk` returns them). The fine curve (whole frames plus
    `audio_shift_curve` points, averaged over windows) gets a least-squares parabola within 40 ms of its best
    point; the interval comes from a 5-frame block bootstrap over the windows. VocaLiST-family scores
    (higher = better).
    """
    rows = np.asarray(rows, np.float64)
    best = vshift - int(np.nanargmax(mean_curve(rows)))
    fine_x, fine = audio_shift_curve(scorer, vid, starts, wave, n_audio, best, shifts_ms)
    whole_x = candidate_positions_ms(starts, vshift, np.isfinite(rows))
    near = np.abs(vshift - np.arange(rows.shape[1]) - best) <= 2
    x = np.concatenate([fine_x, whole_x[near]])
    per_window = np.concatenate([fine, rows[:, near]], axis=1)
    point = fit_vertex(x, mean_curve(per_window))
    boots = [fit_vertex(x, c) for c in bootstrap_curves(per_window, starts, n_boot, seed) if np.isfinite(c).any()]
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(boots, [tail, 100.0 - tail]) if boots else (point, point)
    return SubframeOffset(point, float(min(low, point)), float(max(high, point)), method="audio-shift")
