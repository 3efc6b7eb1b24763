"""What a sync analysis reports: `TrackResult` / `SyncResult` and the readout of an offset curve into offset,
confidence and verdict. Shared by the VocaLiST pipeline (`inference.sync`) and the SyncNet one
(`inference.syncnet_sync`).

Sign convention (ARCHITECTURE.md): offset_frames = video frame index - index of the best-matching audio window;
positive = the audio leads the video (the sound comes before the lips). offset_ms = offset_frames * 1000 / fps
with fps = 25, the analysis rate (40 ms per frame).

Confidence (VocaLiST models) = max(curve) - median(curve), in logit units: how far the best offset stands above
a typical wrong one, on the window-averaged logit curve. It mirrors syncnet_python's "conf" (median - min of the
mean distance curve, i.e. LSE-C) with the VocaLiST logit in place of the negative distance; being a difference
of logits, it ignores the model's overall bias. Verdict: in_sync when |offset| <= 1 frame (the protocol's
tolerance) and the estimate is significant; out_of_sync when |offset| > 1 and significant; undetermined otherwise
(no talking face, silence, dubbed audio...). Significant means p_value <= alpha (`inference.significance`, the
default), or confidence >= min_confidence when a threshold is given explicitly (the v1 rule). See docs/sync.md.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from mtdistill.core.errors import UserError
from mtdistill.core.timing import ANALYSIS_FPS, SEARCH_RANGE
from mtdistill.inference.segments import estimate_drift, find_segments
from mtdistill.inference.significance import (
    DEFAULT_ALPHA,
    check_alpha,
    overlap_lags,
    p_value,
)
from mtdistill.inference.standards import STANDARD_SIGN, STANDARDS, check_standards, judge_all
from mtdistill.inference.subframe import subframe_offset
from mtdistill.media.frames import MediaInfo

SIGN_CONVENTION = (
    "offset_frames = video frame index - index of the best-matching audio window; "
    "positive = audio leads video (sound before lips, sound ahead of picture as in the standards); "
    "offset_ms = offset_frames * 1000 / fps, refined below one frame"
)
IN_SYNC_TOLERANCE = 1
"""|offset| <= 1 frame (40 ms) counts as in sync, the evaluation protocol's tolerance (spec 4.4)."""
DEFAULT_MIN_CONFIDENCE = 1.8
"""Logit margin below which the verdict is undetermined (VocaLiST models). Calibrated with the committed trained
tiny model (`bench_inference.py calibrate`, 10 + 10 synthetic 4 s clips): clips with another clip's audio scored
0.33-1.39, clips with known offsets 2.25-3.38 (all 10 exact); 1.8 sits between the two (docs/sync.md)."""
SYNCNET_MIN_CONFIDENCE = 3.0
"""LSE-C below which a SyncNet verdict is undetermined: a conventional value (LRS2-like real talking faces score
~6-8, mismatched audio ~1-2 in the lip-sync literature); not calibrated here (no SyncNet weights offline)."""


@dataclass
class TrackResult:
    """Sync estimate for one face track (frame indices at the 25 fps analysis rate, inclusive)."""

    track: int
    start_frame: int
    end_frame: int
    n_windows: int
    offset_frames: int
    offset_ms: float
    confidence: float
    verdict: str
    curve: list[float]
    """Window-averaged score for the 31 candidates; entry j is offset vshift - j (index 15 = offset 0).
    VocaLiST: mean logit (higher = better). SyncNet: mean L2 distance (lower = better)."""
    window_offsets: list[int]
    """Offset of every scored window (its own argmax), in time order."""
    window_starts: list[int]
    """First frame of every scored window (same order as window_offsets)."""
    lse_c: float | None = None
    lse_d: float | None = None
    p_value: float | None = None
    """Probability of a curve peak at least this strong if audio and lips did not correspond (an upper bound,
    `inference.significance`); None when the audio is too short for a null."""
    offset_ms_interval: list[float] | None = None
    """[low, high] ms interval of the offset (the standards decide from it)."""
    standards: dict[str, str] = field(default_factory=dict)
    """Requested standard -> pass / fail / undetermined."""
    segments: list[dict] = field(default_factory=list)
    """Stretches of constant offset: start_s, end_s, offset_ms, p_value, verdict (and standards)."""
    drift_ms_per_min: float | None = None
    drift_ms_per_min_interval: list[float] | None = None


@dataclass
class SyncResult:
    """Everything `sync_video` found; `to_json()` is what `mtdistill sync --json` prints."""

    video: str
    duration_s: float
    fps: float
    source_fps: float
    n_frames: int
    model: str
    preset: str | None
    stride: int
    vshift: int
    min_confidence: float | None
    tracks: list[TrackResult]
    timing: dict[str, float] = field(default_factory=dict)
    sign_convention: str = SIGN_CONVENTION
    schema: str = "mtdistill-sync/2"
    alpha: float = DEFAULT_ALPHA
    verdict_rule: str = "p_value <= alpha"
    standard_windows: dict[str, dict] = field(default_factory=dict)
    """The requested standards: lead_ms / lag_ms (sound ahead / behind the picture) and source."""
    standard_sign: str = STANDARD_SIGN
    warnings: list[str] = field(default_factory=list)
    """Damage met while reading the file (undecodable packets, a stream that ended early, a decoded span much
    shorter than the file): the numbers cover only what decoded. Empty for a clean file."""

    def main_track(self) -> TrackResult | None:
        """The most significant speaking face: smallest p_value (None counts as 1), ties -> most windows."""
        return min(
            self.tracks,
            key=lambda t: (1.0 if t.p_value is None else t.p_value, -t.n_windows),
            default=None,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)


# ---------------------------------------------------------------------------------------------- readout


@dataclass(frozen=True)
class VerdictRule:
    """How confident verdicts are decided: p_value <= alpha, or the v1 margin rule when ``min_confidence`` is
    given explicitly; ``standards`` are the requested standard names (checked)."""

    alpha: float = DEFAULT_ALPHA
    min_confidence: float | None = None
    standards: tuple[str, ...] = ()

    @classmethod
    def make(cls, alpha: float | None, min_confidence: float | None, standards=None) -> VerdictRule:
        """Checked values: a one-line error for alpha outside (0, 1) or an unknown standard."""
        a = DEFAULT_ALPHA if alpha is None else check_alpha(alpha)
        return cls(a, None if min_confidence is None else float(min_confidence), check_standards(standards))

    @property
    def text(self) -> str:
        return "p_value <= alpha" if self.min_confidence is None else "confidence >= min_confidence"

    def windows(self) -> dict[str, dict]:
        return {n: STANDARDS[n].describe() for n in self.standards}

    def significant(self, p: float | None, confidence: float) -> bool:
        if self.min_confidence is not None:
            return bool(np.isfinite(confidence) and confidence >= self.min_confidence)
        return p is not None and p <= self.alpha

    def verdict(self, offset_frames: int, p: float | None, confidence: float) -> str:
        if not self.significant(p, confidence):
            return "undetermined"
        return "in_sync" if abs(offset_frames) <= IN_SYNC_TOLERANCE else "out_of_sync"


def file_result(path: object, info: MediaInfo, rule: VerdictRule, tracks: list[TrackResult], **fields) -> SyncResult:
    """The `SyncResult` of the file ``path`` (probed as ``info``) whose ``tracks`` were judged by ``rule``;
    ``fields``: model, preset, stride, vshift, timing."""
    return SyncResult(
        video=str(path),
        duration_s=float(info.duration_s),
        fps=float(ANALYSIS_FPS),
        source_fps=float(info.fps),
        n_frames=int(info.n_frames),
        min_confidence=rule.min_confidence,
        tracks=tracks,
        alpha=rule.alpha,
        verdict_rule=rule.text,
        standard_windows=rule.windows(),
        **fields,
    )


def curve_margin(rows: np.ndarray, higher_is_better: bool = True) -> float:
    """`confidence` of a set of windows: best - median of their mean curve (max - median of logits; for
    distances median - min, i.e. LSE-C)."""
    r = np.asarray(rows, np.float64)
    valid = np.isfinite(r)
    with np.errstate(invalid="ignore", divide="ignore"):
        curve = np.where(valid, r, 0.0).sum(0) / valid.sum(0)
    curve = curve[np.isfinite(curve)]
    if curve.size == 0:
        return float("nan")
    best = np.max(curve) if higher_is_better else np.min(curve)
    return float(abs(best - np.median(curve)))


def judge_track(
    track: TrackResult,
    rows: np.ndarray,
    null_rows: np.ndarray,
    rule: VerdictRule,
    stride: int,
    higher_is_better: bool = True,
    fps: float = ANALYSIS_FPS,
) -> TrackResult:
    """Fill a track's p_value, verdict, sub-frame offset and interval, standards, segments and drift from its score
    rows (in the order of ``track.window_starts``) and null band."""
    rows = np.asarray(rows)
    starts = np.asarray(track.window_starts, np.int64)
    lags = overlap_lags(stride)
    lower = not higher_is_better
    vshift = (rows.shape[1] - 1) // 2 if rows.ndim == 2 else SEARCH_RANGE
    track.p_value = p_value(rows, null_rows, higher_is_better, lags)
    track.verdict = rule.verdict(track.offset_frames, track.p_value, track.confidence)
    if len(rows) == 0:
        return track
    sub = subframe_offset(rows, starts, vshift, lower_is_better=lower, mel_rounding=higher_is_better)
    track.offset_ms = round(sub.offset_ms, 1)
    track.offset_ms_interval = [round(sub.low_ms, 1), round(sub.high_ms, 1)]
    track.standards = judge_all(rule.standards, track.offset_ms_interval, track.verdict != "undetermined")
    null = np.asarray(null_rows)
    has_null = null.ndim == 2 and len(null) == len(rows)
    segments = find_segments(starts, rows, vshift, lower_is_better=lower, mel_rounding=higher_is_better, fps=fps)
    out = []
    for seg in segments:
        mask = seg.mask(len(rows))
        # the track's null restricted to the segment's windows (None when the track has no null)
        seg.p_value = p_value(rows[mask], null[mask] if has_null else np.empty((0, 0)), higher_is_better, lags)
        conf = curve_margin(rows[mask], higher_is_better)
        seg.verdict = rule.verdict(seg.offset_frames, seg.p_value, conf)
        d = seg.to_dict()
        d["standards"] = judge_all(rule.standards, [seg.low_ms, seg.high_ms], seg.verdict != "undetermined")
        out.append(d)
    track.segments = out
    drift = estimate_drift(
        starts, rows, segments, vshift, lower_is_better=lower, mel_rounding=higher_is_better, fps=fps
    )
    if drift is not None:
        track.drift_ms_per_min = round(drift.ms_per_min, 2)
        track.drift_ms_per_min_interval = [round(drift.low, 2), round(drift.high, 2)]
    return track


def verdict_for(offset_frames: int, confidence: float, min_confidence: float) -> str:
    """in_sync / out_of_sync when confident, else undetermined (thresholds in the module docstring)."""
    if not np.isfinite(confidence) or confidence < min_confidence:
        return "undetermined"
    return "in_sync" if abs(offset_frames) <= IN_SYNC_TOLERANCE else "out_of_sync"


def readout_logits(curve: np.ndarray, vshift: int = SEARCH_RANGE) -> tuple[int, float, np.ndarray]:
    """(offset, confidence, filled curve) from a window-averaged logit curve (NaN = candidate never scored).

    offset = vshift - argmax; confidence = max - median over the scored candidates; NaN entries are filled with
    the curve's minimum so that the JSON holds 31 finite floats and they never win.
    """
    ok = np.isfinite(curve)
    if not ok.any():
        raise UserError("no audio window could be paired with the video; is the audio shorter than 0.2 s?")
    j = int(np.nanargmax(curve))
    conf = float(curve[j] - np.median(curve[ok]))
    return vshift - j, conf, np.where(ok, curve, np.nanmin(curve))


def _p_text(p: float | None) -> str:
    return "-" if p is None else f"{p:.2g}"


def format_tracks(result: SyncResult) -> str:
    """The `sync` table: one line per track (and per segment when a track has several), then the sign note."""
    names = list(result.standard_windows)
    head = f"{'track':<6} {'frames':<13} {'offset':>6} {'ms':>8} {'interval ms':>17} {'confidence':>10} {'p_value':>8}"
    lines = [head + "  verdict" + "".join(f"  {n}" for n in names)]
    for t in result.tracks:
        lo, hi = t.offset_ms_interval or (float("nan"), float("nan"))
        std = "".join(f"  {t.standards.get(n, '-'):<{len(n)}}" for n in names)
        lines.append(
            f"{t.track:<6} {f'{t.start_frame}-{t.end_frame}':<13} {t.offset_frames:>+6d} {t.offset_ms:>+8.1f} "
            f"{f'[{lo:+.0f}, {hi:+.0f}]':>17} {t.confidence:>10.2f} {_p_text(t.p_value):>8}  {t.verdict}{std}"
        )
        if len(t.segments) > 1:
            for s in t.segments:
                seg_std = "".join(f"  {s.get('standards', {}).get(n, '-')}" for n in names)
                lines.append(
                    f"  segment {s['start_s']:.2f}-{s['end_s']:.2f} s: {s['offset_ms']:+.1f} ms, "
                    f"p {_p_text(s.get('p_value'))}, {s['verdict']}{seg_std}"
                )
        if t.drift_ms_per_min is not None:
            lines.append(f"  drift {t.drift_ms_per_min:+.1f} ms/min")
    rule = f"p_value <= {result.alpha:g}"
    if result.min_confidence is not None:
        rule = f"confidence >= {result.min_confidence:g}"
    lines.append(f"(positive offset = audio leads video = sound ahead of picture, as in the standards; {rule})")
    return "\n".join(lines)
