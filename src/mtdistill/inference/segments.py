"""Offsets over time inside one face track: segments where the offset holds, and the drift of the offset.

Pure functions of what a track's scoring already produces: the scored windows' first frames ``starts`` (W,),
in time order, and their score rows ``rows`` (W, 2 * vshift + 1) (entry j = offset vshift - j frames, NaN =
candidate not scored), as `scoring.score_chunk` returns them and `scoring.CurveAccumulator` keeps them.

**Segments** (`find_segments`): the offset is modelled as piecewise constant over the windows. Each window's
row is turned into ranks (`window_ranks`: the best candidate +1, the worst -1, a missing one 0), so the model's
score scale does not matter (any monotone rescaling gives the same segments). Optimal partitioning by dynamic
programming (`change_points`, with PELT pruning) picks the segments and one whole-frame offset per segment that
maximise the summed ranks minus a penalty per extra segment (`SEGMENT_PENALTY`, growing as sqrt(W) on long
tracks, `SEGMENT_PENALTY_PER_ROOT`), every segment at least `MIN_SEGMENT_S` long. Neighbouring segments whose
offsets differ by at most one frame (the in-sync tolerance) are then merged: a slow drift shows as such
one-frame steps and is reported by the drift, not as segments; and so is a segment whose offset does not stand
out from chance (`SEGMENT_MIN_Z`), so a track without sync stays one segment. Each segment's
``offset_ms`` is the sub-frame peak of its own mean curve (`subframe.subframe_offset`), with an interval.
This finds an audio edit inside one continuous shot as well as a change at a cut: a cut that changes the
picture usually also ends the face track (the tracker needs the face box to overlap from one detection to the
next), so segments never span two tracks, and a cut inside a track where the offset changes is a change
point like any other.

**Drift** (`estimate_drift`): the track's windows are grouped in `DRIFT_BLOCK_S` (1 s) blocks; each block's
sub-frame offset is the peak of its mean curve; the slope is the median of the pairwise slopes between
blocks of the same segment (Theil-Sen, stratified by segment so a step is not mistaken for a drift), in ms of
offset per minute of video, with a bootstrap interval over blocks. None when the track is too short: the
blocks' time spans inside each segment add up to less than `DRIFT_MIN_SPAN_S`, or there are fewer than
`DRIFT_MIN_BLOCKS` blocks.

Sign as everywhere: positive offset = the audio leads; a positive drift = the audio gets further ahead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mtdistill.core.errors import UserError
from mtdistill.core.timing import ANALYSIS_FPS, FRAME_MS, SEARCH_RANGE, WINDOW_FRAMES
from mtdistill.inference.subframe import (
    INTERVAL_LEVEL,
    N_BOOTSTRAP,
    candidate_positions_ms,
    interpolate_peak,
    mean_curve,
    subframe_offset,
)

MIN_SEGMENT_S = 2.0
"""Shortest segment, in seconds of video: shorter stretches are too few windows to hold an offset of their own
(10 windows at stride 5)."""
SEGMENT_PENALTY = 6.0
"""Least cost of one extra segment, in summed-rank units (one window's best candidate is worth +1): a change
point must gain at least as much as six windows that fully agree."""
SEGMENT_PENALTY_PER_ROOT = 0.8
"""... and at least this times sqrt(number of windows): on a track whose windows carry no sync (the tiny model
on real faces, another clip's audio) the best split gains about 0.5-0.8 sqrt(W) by chance (measured on the
four real clips, benchmarks/RESULTS.md), while a real step gains about one per window of the shorter side."""
SEGMENT_MIN_Z = 2.5
"""A segment is kept apart only if its offset stands out: its best candidate's summed ranks reach this times
sqrt(its windows). Windows without sync give ranks uniform in [-1, 1]: the best of 31 candidates reaches about
1.4 sqrt(n) and exceeds 2.5 sqrt(n) with probability ~2e-4; windows in sync with the tiny model average 0.65 per
window, so a segment of 15 windows (3 s at stride 5) qualifies. A weaker segment joins a neighbour."""
MERGE_TOLERANCE_FRAMES = 1
"""Neighbouring segments whose whole-frame offsets differ by at most this are one segment."""
DRIFT_BLOCK_S = 1.0
"""Blocks of windows whose mean curve gives one offset for the drift fit."""
DRIFT_MIN_SPAN_S = 10.0
"""A drift needs block centres spanning at least this many seconds inside its segments (summed over segments;
a shorter track gives None)."""
DRIFT_MIN_BLOCKS = 5
"""... and at least this many blocks."""

MAX_DP_UNITS = 1000
"""Longer tracks are segmented over groups of consecutive windows (their ranks summed), at most this many
groups, so the dynamic programme stays well under a second (a 1 h track at stride 5 has 18,000 windows)."""
MAX_DRIFT_BLOCKS = 200
"""Longer tracks get longer drift blocks, so that the pairwise slopes and their bootstrap stay cheap."""

PValueOf = Callable[[np.ndarray], float]
"""p_value_of(mask): the p-value of the windows selected by a boolean mask over the track's scored windows."""
VerdictOf = Callable[[float, "float | None"], str]
"""verdict_of(offset_ms, p_value) -> "in_sync" | "out_of_sync" | "undetermined"."""


@dataclass
class Segment:
    """A stretch of one track with one offset. Windows ``first .. stop - 1`` of the track's scored windows."""

    start_s: float
    end_s: float
    offset_ms: float
    low_ms: float
    high_ms: float
    offset_frames: int
    n_windows: int
    first: int
    stop: int
    p_value: float | None = None
    verdict: str | None = None

    def mask(self, n_windows: int) -> np.ndarray:
        """Boolean mask of this segment's windows among the track's ``n_windows`` scored windows."""
        m = np.zeros(n_windows, bool)
        m[self.first : self.stop] = True
        return m

    def to_dict(self) -> dict:
        """The JSON keys: start_s, end_s, offset_ms, p_value, verdict (fixed names), then the details."""
        return {
            "start_s": round(self.start_s, 3),
            "end_s": round(self.end_s, 3),
            "offset_ms": round(self.offset_ms, 1),
            "p_value": self.p_value,
            "verdict": self.verdict,
            "offset_frames": self.offset_frames,
            "offset_low_ms": round(self.low_ms, 1),
            "offset_high_ms": round(self.high_ms, 1),
            "n_windows": self.n_windows,
        }


@dataclass(frozen=True)
class Drift:
    """Slope of the offset over a track: ms of offset per minute of video, with its interval."""

    ms_per_min: float
    low: float
    high: float
    n_blocks: int
    span_s: float

    def to_dict(self) -> dict:
        return {
            "drift_ms_per_min": round(self.ms_per_min, 2),
            "drift_low_ms_per_min": round(self.low, 2),
            "drift_high_ms_per_min": round(self.high, 2),
            "drift_blocks": self.n_blocks,
            "drift_span_s": round(self.span_s, 2),
        }


# ---------------------------------------------------------------------------------------------- segments


def _check(starts: np.ndarray, rows: np.ndarray, vshift: int) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(starts, np.int64)
    r = np.asarray(rows, np.float64)
    if r.ndim != 2 or r.shape[1] != 2 * vshift + 1 or len(s) != len(r):
        raise UserError(f"need starts (W,) and rows (W, {2 * vshift + 1}); got {s.shape} and {r.shape}")
    if len(s) > 1 and np.any(np.diff(s) <= 0):
        raise UserError("window starts must increase (windows in time order)")
    return s, r


def window_ranks(rows: np.ndarray, lower_is_better: bool = False) -> np.ndarray:
    """(W, C) ranks of each window's candidates scaled to [-1, 1] (its best +1, its worst -1); a candidate the
    window did not score counts 0, and so does every candidate of a window that scored fewer than two."""
    r = np.asarray(rows, np.float64)
    r = -r if lower_is_better else r
    valid = np.isfinite(r)
    order = np.argsort(np.argsort(np.where(valid, r, -np.inf), axis=1, kind="stable"), axis=1, kind="stable")
    n_valid = valid.sum(axis=1, keepdims=True)
    n_missing = r.shape[1] - n_valid
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = 2.0 * (order - n_missing) / (n_valid - 1) - 1.0  # valid entries rank n_missing .. C - 1
    return np.where(valid & (n_valid >= 2), scaled, 0.0)


def change_points(scores: np.ndarray, min_len: int, penalty: float) -> list[tuple[int, int, int]]:
    """Optimal partition of windows 0..W-1 into segments of at least ``min_len`` windows, each with the one
    candidate column that maximises its summed ``scores`` (W, C), the total minus ``penalty`` per segment as
    large as possible. Returns [(first, stop, column)] in order. Exact dynamic programming with PELT pruning
    (valid because a segment's best sum is at most the sum of its parts' best sums)."""
    scores = np.asarray(scores, np.float64)
    n = len(scores)
    min_len = max(1, int(min_len))
    if n == 0:
        return []
    cum = np.vstack([np.zeros((1, scores.shape[1])), np.cumsum(scores, axis=0)])
    if n < 2 * min_len:
        return [(0, n, int(np.argmax(cum[n])))]
    best = np.full(n + 1, -np.inf)
    best[0] = 0.0
    back = np.zeros(n + 1, np.int64)
    live = np.array([0], np.int64)  # possible last change points
    until = np.array([n + 1], np.int64)  # the step from which each may be dropped (PELT)
    for j in range(min_len, n + 1):
        i_new = j - min_len
        if i_new > 0 and np.isfinite(best[i_new]):
            live, until = np.append(live, i_new), np.append(until, n + 1)
        cand = live
        gains = (cum[j][None, :] - cum[cand]).max(axis=1)
        total = best[cand] + gains - penalty
        k = int(np.argmax(total))
        best[j], back[j] = total[k], cand[k]
        # PELT: a change point that cannot beat j as the last one now never will for any end at least
        # min_len after j (earlier ends cannot use j yet, so it stays until then)
        beaten = (best[cand] + gains <= best[j]) & (until == n + 1)
        until[beaten] = j + min_len
        keep = until > j + 1
        live, until = live[keep], until[keep]
    out: list[tuple[int, int, int]] = []
    j = n
    while j > 0:
        i = int(back[j])
        out.append((i, j, int(np.argmax(cum[j] - cum[i]))))
        j = i
    return out[::-1]


def find_segments(
    starts: np.ndarray,
    rows: np.ndarray,
    vshift: int = SEARCH_RANGE,
    *,
    min_segment_s: float = MIN_SEGMENT_S,
    penalty: float | None = None,
    lower_is_better: bool = False,
    mel_rounding: bool = True,
    p_value_of: PValueOf | None = None,
    verdict_of: VerdictOf | None = None,
    fps: float = ANALYSIS_FPS,
) -> list[Segment]:
    """Split one track's scored windows where the offset changes (module docstring); at least one segment.

    ``starts`` (W,) first frames in time order, ``rows`` (W, 2 * vshift + 1) their scores. ``p_value_of(mask)``
    fills each segment's ``p_value`` from a boolean mask over the W windows; ``verdict_of(offset_ms, p_value)``
    fills its ``verdict`` (both left None without them). ``penalty``: the cost of an extra segment (default
    max(`SEGMENT_PENALTY`, `SEGMENT_PENALTY_PER_ROOT` x sqrt(W))). SyncNet distances: ``lower_is_better=True,
    mel_rounding=False`` (see `subframe.subframe_offset`). Segments tile the track's scored time: a boundary
    lies half-way between the centres of the last window of one segment and the first of the next.
    """
    s, r = _check(starts, rows, vshift)
    if len(s) == 0:
        return []
    span = int(s[-1] - s[0]) + 1
    per_frame = len(s) / span  # windows per frame (1 / stride, gaps included)
    min_len = max(1, int(round(min_segment_s * fps * per_frame)))
    if penalty is None:
        penalty = max(SEGMENT_PENALTY, SEGMENT_PENALTY_PER_ROOT * float(np.sqrt(len(s))))
    ranks = window_ranks(r, lower_is_better)
    group = -(-len(s) // MAX_DP_UNITS)  # ceil: 1 up to MAX_DP_UNITS windows
    edges = np.arange(0, len(s), group)
    units = np.add.reduceat(ranks, edges, axis=0)
    parts = change_points(units, -(-min_len // group), penalty)
    bounds = np.append(edges, len(s))
    merged = _merge([[int(bounds[a]), int(bounds[b])] for a, b, _ in parts], ranks)
    centres = (s + WINDOW_FRAMES / 2.0) / fps
    out = []
    for k, (first, stop) in enumerate(merged):
        start_s = s[0] / fps if k == 0 else (centres[first - 1] + centres[first]) / 2.0
        end_s = (s[-1] + WINDOW_FRAMES) / fps if k == len(merged) - 1 else (centres[stop - 1] + centres[stop]) / 2.0
        sub = subframe_offset(
            r[first:stop], s[first:stop], vshift, lower_is_better=lower_is_better, mel_rounding=mel_rounding
        )
        seg = Segment(
            start_s=float(start_s),
            end_s=float(end_s),
            offset_ms=sub.offset_ms,
            low_ms=sub.low_ms,
            high_ms=sub.high_ms,
            offset_frames=sub.offset_frames,
            n_windows=stop - first,
            first=first,
            stop=stop,
        )
        if p_value_of is not None:
            seg.p_value = float(p_value_of(seg.mask(len(s))))
        if verdict_of is not None:
            seg.verdict = verdict_of(seg.offset_ms, seg.p_value)
        out.append(seg)
    return out


def _merge(parts: list[list[int]], ranks: np.ndarray) -> list[list[int]]:
    """Join neighbouring [first, stop) parts whose best columns differ by at most MERGE_TOLERANCE_FRAMES, and
    parts whose offset does not stand out (SEGMENT_MIN_Z) into the neighbour with the closer offset."""

    def column(p: list[int]) -> int:
        return int(np.argmax(ranks[p[0] : p[1]].sum(axis=0)))

    def z(p: list[int]) -> float:
        return float(ranks[p[0] : p[1]].sum(axis=0).max() / np.sqrt(p[1] - p[0]))

    parts = [list(p) for p in parts]
    while len(parts) > 1:
        cols = [column(p) for p in parts]
        close = [k for k in range(len(parts) - 1) if abs(cols[k] - cols[k + 1]) <= MERGE_TOLERANCE_FRAMES]
        if close:
            k = close[0]
        else:
            zs = [z(p) for p in parts]
            weak = int(np.argmin(zs))
            if zs[weak] >= SEGMENT_MIN_Z:
                break
            left = abs(cols[weak - 1] - cols[weak]) if weak > 0 else np.inf
            right = abs(cols[weak + 1] - cols[weak]) if weak < len(parts) - 1 else np.inf
            k = weak - 1 if left <= right else weak
        parts[k : k + 2] = [[parts[k][0], parts[k + 1][1]]]
    return parts


# ---------------------------------------------------------------------------------------------- drift


def block_offsets(
    starts: np.ndarray,
    rows: np.ndarray,
    vshift: int = SEARCH_RANGE,
    *,
    block_s: float = DRIFT_BLOCK_S,
    lower_is_better: bool = False,
    mel_rounding: bool = True,
    fps: float = ANALYSIS_FPS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centre times s, sub-frame offsets ms, first window index) of consecutive ``block_s`` blocks of windows
    (longer on long tracks: at most `MAX_DRIFT_BLOCKS` blocks); each offset is the interpolated peak of the
    block's mean curve."""
    s, r = _check(starts, rows, vshift)
    if len(s) == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0, np.int64)
    block_frames = max(1, int(round(block_s * fps)), -(-int(s[-1] - s[0] + 1) // MAX_DRIFT_BLOCKS))
    ids = (s - s[0]) // block_frames
    times, offsets, firsts = [], [], []
    for b in np.unique(ids):
        sel = np.nonzero(ids == b)[0]
        curve = mean_curve(r[sel])
        if not np.isfinite(curve).any():
            continue
        pos = candidate_positions_ms(s[sel], vshift, np.isfinite(r[sel]), mel_rounding)
        offsets.append(interpolate_peak(curve, vshift, positions_ms=pos, lower_is_better=lower_is_better))
        times.append(float(np.mean(s[sel] + WINDOW_FRAMES / 2.0)) / fps)
        firsts.append(int(sel[0]))
    return np.array(times), np.array(offsets), np.array(firsts, np.int64)


def _stratified_theil_sen(t: np.ndarray, y: np.ndarray, group: np.ndarray) -> float:
    """Median of the slopes between every two points of the same group (NaN when there is no such pair)."""
    i, j = np.triu_indices(len(t), k=1)
    ok = (group[i] == group[j]) & (t[j] != t[i])
    if not ok.any():
        return float("nan")
    return float(np.median((y[j][ok] - y[i][ok]) / (t[j][ok] - t[i][ok])))


def estimate_drift(
    starts: np.ndarray,
    rows: np.ndarray,
    segments: list[Segment] | None = None,
    vshift: int = SEARCH_RANGE,
    *,
    block_s: float = DRIFT_BLOCK_S,
    min_span_s: float = DRIFT_MIN_SPAN_S,
    min_blocks: int = DRIFT_MIN_BLOCKS,
    lower_is_better: bool = False,
    mel_rounding: bool = True,
    n_boot: int = N_BOOTSTRAP,
    level: float = INTERVAL_LEVEL,
    seed: int = 0,
    fps: float = ANALYSIS_FPS,
) -> Drift | None:
    """Drift of one track's offset in ms per minute with an interval (module docstring), or None when the
    track is too short (block spans inside the segments adding up to < ``min_span_s`` s, or fewer than
    ``min_blocks`` blocks).

    ``segments``: from `find_segments` (pairs of blocks are only compared inside one segment); None = one
    segment over the whole track.
    """
    times, offsets, firsts = block_offsets(
        starts, rows, vshift, block_s=block_s, lower_is_better=lower_is_better, mel_rounding=mel_rounding, fps=fps
    )
    group = np.zeros(len(times), np.int64)
    for k, seg in enumerate(segments or []):
        group[(firsts >= seg.first) & (firsts < seg.stop)] = k
    span = sum(float(np.ptp(times[group == g])) for g in np.unique(group)) if len(times) else 0.0
    if len(times) < min_blocks or span < min_span_s:
        return None
    slope = _stratified_theil_sen(times, offsets, group)
    if not np.isfinite(slope):
        return None
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        pick = np.sort(rng.integers(0, len(times), len(times)))
        b = _stratified_theil_sen(times[pick], offsets[pick], group[pick])
        if np.isfinite(b):
            boots.append(b)
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(boots, [tail, 100.0 - tail]) if boots else (slope, slope)
    per_min = 60.0
    return Drift(
        ms_per_min=slope * per_min,
        low=float(min(low, slope)) * per_min,
        high=float(max(high, slope)) * per_min,
        n_blocks=len(times),
        span_s=span,
    )


def offset_at(segments: list[Segment], time_s: float) -> float | None:
    """The offset (ms) of the segment covering ``time_s`` (None outside every segment); handy for plots."""
    for seg in segments:
        if seg.start_s <= time_s <= seg.end_s:
            return seg.offset_ms
    return None


__all__ = [
    "FRAME_MS",
    "Drift",
    "Segment",
    "block_offsets",
    "change_points",
    "estimate_drift",
    "find_segments",
    "offset_at",
    "window_ranks",
]
