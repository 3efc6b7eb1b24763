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
tolerance) and confidence >= min_confidence; out_of_sync when |offset| > 1 and confidence >= min_confidence;
undetermined otherwise (no talking face, silence, dubbed audio...). See docs/sync.md for the calibration.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from mtdistill.core.errors import UserError
from mtdistill.core.timing import SEARCH_RANGE

SIGN_CONVENTION = (
    "offset_frames = video frame index - index of the best-matching audio window; "
    "positive = audio leads video (sound before lips); offset_ms = offset_frames * 1000 / fps"
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
    min_confidence: float
    tracks: list[TrackResult]
    timing: dict[str, float] = field(default_factory=dict)
    sign_convention: str = SIGN_CONVENTION
    schema: str = "mtdistill-sync/1"
    warnings: list[str] = field(default_factory=list)
    """Damage met while reading the file (undecodable packets, a stream that ended early, a decoded span much
    shorter than the file): the numbers cover only what decoded. Empty for a clean file."""

    def main_track(self) -> TrackResult | None:
        """The track with the most scored windows (the main speaker in a single-speaker video)."""
        return max(self.tracks, key=lambda t: t.n_windows, default=None)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)


# ---------------------------------------------------------------------------------------------- readout


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
