"""The audio-visual clock every model, data path and readout shares (docs/design.md, "Timing").

Audio is 16 kHz mono; video is analysed at 25 fps, so one video frame spans 640 samples (40 ms). A model
window is 5 consecutive frames (200 ms, 3,200 samples) paired with 16 mel columns (80 mel frames per second,
hop 200 samples). The official test protocol and `sync` compare each video window with audio windows shifted
by -15..+15 frames (31 candidates).
"""

from __future__ import annotations

from mtdistill.core.errors import UserError

SAMPLE_RATE = 16000
"""Hz: every model's audio input."""

ANALYSIS_FPS = 25
"""Frames per second at which video is decoded and offsets are counted (40 ms per frame)."""

SAMPLES_PER_FRAME = SAMPLE_RATE // ANALYSIS_FPS
"""640 audio samples per video frame."""

FRAME_MS = 1000.0 / ANALYSIS_FPS
"""40 ms: one analysis frame."""

WINDOW_FRAMES = 5
"""Video frames per model window (VocaLiST's and SyncNet's 5-frame context)."""

WINDOW_SAMPLES = WINDOW_FRAMES * SAMPLES_PER_FRAME
"""3,200 samples: the audio of one 5-frame window (a training chunk)."""

MEL_HOP = 200
"""STFT hop in samples: 80 mel columns per second."""

MEL_WINDOW = 16
"""Mel columns per 5-frame window."""

SEARCH_RANGE = 15
"""Audio offsets searched either side of each video window: -15..+15 frames (the official ``v_shift``)."""

N_CANDIDATES = 2 * SEARCH_RANGE + 1
"""31 candidate offsets per video window."""


def mel_window_start(v: int) -> int:
    """First mel column of video frame v's window: floor(3.2 v), the official ``int(80 v / 25)``, in integers.

    Exact for every v >= 0 (a non-integer 80 v / 25 is at least 1/25 from the next integer, far above float error).
    """
    v = int(v)
    if v < 0:
        raise UserError(f"video frame index must be >= 0, got {v}")
    return (80 * v) // 25
