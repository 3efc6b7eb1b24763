"""Write a corpus in the Wav2Lip-preprocessed layout (for tests and the loader benchmark).

Mirrors what design.md §3.1 says Wav2Lip's preprocess.py does: every 25 fps frame, the FIRST detected face, box
clipped at 0 and cast to int, no padding and no smoothing, the tight crop saved as {frame_idx}.jpg; frames
without a detection are skipped (gaps in the numbering); the audio as audio.wav (16 kHz 16-bit mono).
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from mtdistill.data.layouts import VIDEO_SUFFIXES
from mtdistill.media import DEFAULT_DETECTOR
from mtdistill.media.audio import load_audio
from mtdistill.media.detectors import get_detector
from mtdistill.media.frames import iter_frames


def export_video(
    video: str | os.PathLike, folder: str | os.PathLike, detector: str = DEFAULT_DETECTOR, drop: set[int] | None = None
) -> int:
    """One video -> folder/{i}.jpg + folder/audio.wav; `drop` removes frames on purpose. Returns jpgs written."""
    import soundfile as sf

    det = get_detector(detector)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for k, rgb in iter_frames(video, max_width=None):
        if drop and k in drop:
            continue
        boxes = det.detect(rgb)
        if len(boxes) == 0:
            continue
        x1, y1, x2, y2 = (max(0, int(v)) for v in boxes[0, :4])
        crop = rgb[y1:y2, x1:x2, ::-1]
        if crop.size == 0:
            continue
        cv2.imwrite(str(out / f"{k}.jpg"), np.ascontiguousarray(crop))
        written += 1
    sf.write(str(out / "audio.wav"), load_audio(video), 16000, subtype="PCM_16")
    return written


def export_corpus(src: str | os.PathLike, out: str | os.PathLike, detector: str = DEFAULT_DETECTOR) -> int:
    """Every video below src (keeping main/ and pretrain/ and <speaker>/<utt>) -> Wav2Lip layout under out."""
    src_p, n = Path(src), 0
    for video in sorted(p for p in src_p.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES):
        export_video(video, Path(out) / video.relative_to(src_p).with_suffix(""), detector)
        n += 1
    return n
