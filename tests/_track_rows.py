"""Test helper: the per-window score rows of a clip's main face track, through the sync pipeline's own streaming
(`inference.sync.TrackStream`, `scoring.CurveAccumulator`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtdistill.inference.scoring import PairScorer
from mtdistill.inference.sync import TrackStream
from mtdistill.media.audio import load_audio
from mtdistill.media.tracking import FaceTrack, iter_mouth_crops, track_faces


def track_rows(
    path: str | Path, model, stride: int = 5, tracks: list[FaceTrack] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(starts (W,), rows (W, 31)) of the longest track of ``path`` (``tracks``: given instead of detected)."""
    tracks = tracks if tracks is not None else track_faces(path, detect_every=min(stride, 5))
    wave = load_audio(path)
    scorer = PairScorer(model)
    streams = {t.track_id: TrackStream(scorer, t.start_frame, t.end_frame, wave, model.preset, stride) for t in tracks}
    for tid, start, crops, valid in iter_mouth_crops(path, tracks):
        streams[tid].feed(start, crops, valid)
    accs = [streams[t.track_id].finish() for t in tracks]
    acc = max(accs, key=lambda a: a.n_windows)
    return np.asarray(acc.starts), acc.row_matrix()
