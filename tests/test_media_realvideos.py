"""Optional: the four real talking-face clips in ../shared/realvideos (skipped when the folder is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mtdistill.audio import load_audio
from mtdistill.video import iter_mouth_crops, probe, track_faces

REAL = Path(__file__).resolve().parents[2] / "shared" / "realvideos"
CLIPS = [
    "pcavs_Audio_Source_00015.mp4",  # 224x224, 25 fps, h264
    "videoretalking_face_4.mp4",  # 700x700, 30 fps, 44.1 kHz stereo
    "sadtalker_WDA_KatieHill_000.mp4",  # 512x512, mpeg4
    "latentsync_demo1_video.mp4",  # 1080x1920 HEVC, half body
]

pytestmark = [pytest.mark.realvideo, pytest.mark.slow]


@pytest.mark.parametrize("name", CLIPS)
def test_real_clip_gives_a_face_track_over_most_frames(name: str) -> None:
    path = REAL / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    info = probe(path)
    tracks = track_faces(path, detect_every=5)
    best = max(tracks, key=lambda t: int(t.valid.sum()))
    assert best.valid.sum() >= 0.8 * info.n_frames
    assert len(tracks) <= 2  # cascade false positives are filtered
    # the face is big enough for a 96x96 crop to be meaningful
    width = float(np.median(best.boxes[:, 2] - best.boxes[:, 0]))
    assert width > 0.15 * min(info.width, info.height)
    pieces = list(iter_mouth_crops(path, [best], chunk=100))
    assert sum(len(c) for _, _, c, _ in pieces) == best.n_frames
    wave = load_audio(path)
    assert abs(len(wave) / 16000 - info.duration_s) < 0.2
