"""Small, real media files for tests and benchmarks, written with PyAV (H.264 + AAC by default).

Frames are generated one at a time, so a 10-minute video costs no more memory than a 1-second one. The face is
a plain drawing (skin ellipse, brows, eyes, nose shadow, mouth) that OpenCV's frontal Haar cascade detects.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from fractions import Fraction

import av
import cv2
import numpy as np

from mtdistill.core.timing import ANALYSIS_FPS, SAMPLE_RATE

FrameFn = Callable[[int], np.ndarray]


def draw_face(img: np.ndarray, cx: float, cy: float, size: float, mouth_open: float = 0.3) -> None:
    """Draw a frontal cartoon face (height ~ size) centred at (cx, cy) on an RGB uint8 image, in place."""

    def p(x: float, y: float) -> tuple[int, int]:
        return int(round(cx + x * size)), int(round(cy + y * size))

    def ax(a: float, b: float) -> tuple[int, int]:
        return max(1, int(round(a * size))), max(1, int(round(b * size)))

    cv2.ellipse(img, p(0, 0), ax(0.36, 0.48), 0, 0, 360, (222, 180, 150), -1, cv2.LINE_AA)
    cv2.ellipse(img, p(0, -0.42), ax(0.38, 0.18), 0, 180, 360, (60, 40, 30), -1, cv2.LINE_AA)  # hair
    for s in (-1, 1):  # thick brows and dark pupils: the cascade keys on the dark eye band
        cv2.line(img, p(s * 0.25, -0.21), p(s * 0.06, -0.2), (70, 50, 40), max(1, int(size * 0.045)), cv2.LINE_AA)
        cv2.ellipse(img, p(s * 0.15, -0.1), ax(0.08, 0.045), 0, 0, 360, (245, 245, 245), -1, cv2.LINE_AA)
        cv2.circle(img, p(s * 0.15, -0.1), max(1, int(size * 0.035)), (40, 30, 30), -1, cv2.LINE_AA)
    cv2.ellipse(img, p(0, 0.08), ax(0.05, 0.09), 0, 0, 360, (190, 145, 120), -1, cv2.LINE_AA)  # nose shadow
    # a wide-open dark mouth stops the cascade from firing: keep the opening moderate
    cv2.ellipse(img, p(0, 0.27), ax(0.14, 0.02 + 0.05 * mouth_open), 0, 0, 360, (170, 80, 80), -1, cv2.LINE_AA)
    cv2.ellipse(img, p(0, 0.27), ax(0.11, 0.005 + 0.0375 * mouth_open), 0, 0, 360, (60, 20, 25), -1, cv2.LINE_AA)


def face_frame_fn(
    width: int, height: int, fps: float = ANALYSIS_FPS, n_faces: int = 1, face_frac: float = 0.55, move: bool = True
) -> FrameFn:
    """A function frame index -> RGB frame with `n_faces` faces side by side, moving slowly, mouth opening at
    ~4 Hz (syllable rate)."""
    bg = np.zeros((height, width, 3), np.uint8)
    bg[:] = (90, 110, 140)
    bg[:, :, 1] += np.linspace(0, 40, width, dtype=np.float32).astype(np.uint8)[None, :]
    size = min(height * face_frac, width / n_faces * 0.9)

    def frame(i: int) -> np.ndarray:
        img = bg.copy()
        t = i / fps
        for f in range(n_faces):
            cx = width * (f + 0.5) / n_faces + (0.05 * size * math.sin(2 * math.pi * 0.2 * t + f) if move else 0)
            cy = height * 0.5 + (0.03 * size * math.cos(2 * math.pi * 0.15 * t + f) if move else 0)
            draw_face(img, cx, cy, size, mouth_open=0.5 + 0.5 * math.sin(2 * math.pi * 4.0 * t + f))
        return img

    return frame


def tone(n_samples: int, sr: int, freq: float = 440.0, channels: int = 1, amp: float = 0.3) -> np.ndarray:
    """Sines (channels, n_samples) float32: channel c at freq * (c + 1) with amplitude amp / (c + 1), so channel
    mixes can be checked and `freq` stays the dominant frequency of any mix."""
    t = np.arange(n_samples, dtype=np.float64) / sr
    rows = [amp / (c + 1) * np.sin(2 * np.pi * freq * (c + 1) * t) for c in range(channels)]
    return np.asarray(rows, np.float32)


def write_video(
    path: str | os.PathLike,
    n_frames: int,
    fps: float | Fraction = ANALYSIS_FPS,
    size: tuple[int, int] = (160, 120),
    frame_fn: FrameFn | None = None,
    audio: np.ndarray | None = None,
    sr: int = SAMPLE_RATE,
    codec: str = "libx264",
    audio_codec: str = "aac",
    container_format: str | None = None,
    pts_fn: Callable[[int], int] | None = None,
    time_base: Fraction | None = None,
    rotation: int = 0,
) -> None:
    """Write a video (and optional audio (channels, S) float32) with PyAV, streaming frame by frame.

    `pts_fn` gives frame i's pts in `time_base` units (default i / fps): variable frame rates for tests.
    `rotation` (counter-clockwise degrees, a multiple of 90): store the pictures turned back by it, with a
    display matrix that tells players to turn them, as phones do; `size` and `frame_fn` are as shown.
    """
    width, height = size
    turns = (rotation // 90) % 4
    frame_fn = frame_fn or face_frame_fn(width, height, float(fps))
    rate = Fraction(fps).limit_denominator(1001000)
    with av.open(str(path), "w", format=container_format) as out:
        vs = out.add_stream(codec, rate=rate)
        vs.width, vs.height = (height, width) if turns % 2 else (width, height)
        vs.pix_fmt = "yuv420p"
        if turns:
            vs.set_display_rotation(90 * turns)
        if codec == "libx264":
            vs.options = {"preset": "ultrafast", "crf": "23"}
        if time_base is not None:  # the encoder must keep our pts, not round them to 1 / fps
            vs.time_base = time_base
            vs.codec_context.time_base = time_base
        aus = None
        if audio is not None:
            audio = np.atleast_2d(np.asarray(audio, np.float32))
            layout = {1: "mono", 2: "stereo"}[audio.shape[0]]
            aus = out.add_stream(audio_codec, rate=sr, layout=layout)
        for i in range(n_frames):
            picture = np.rot90(frame_fn(i), -turns) if turns else frame_fn(i)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format="rgb24")
            if pts_fn is not None:
                frame.pts = pts_fn(i)
                frame.time_base = time_base
            else:
                frame.pts = i
                frame.time_base = 1 / rate
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
        if aus is not None and audio is not None:
            write_audio_stream(out, aus, audio, sr)


def write_audio_stream(out: av.container.OutputContainer, stream: av.AudioStream, audio: np.ndarray, sr: int) -> None:
    """Encode (channels, S) float32 audio into an open output stream."""
    chunk = stream.codec_context.frame_size or 1024
    layout = {1: "mono", 2: "stereo"}[audio.shape[0]]
    fmt = stream.codec_context.format.name if stream.codec_context.format else "fltp"
    for start in range(0, audio.shape[1], chunk):
        piece = np.ascontiguousarray(audio[:, start : start + chunk])
        frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout=layout)
        frame.sample_rate = sr
        frame.pts = start
        if fmt != "fltp":
            frame = av.AudioResampler(format=fmt, layout=layout, rate=sr).resample(frame)[0]
            frame.pts = start
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


def write_audio(
    path: str | os.PathLike, audio: np.ndarray, sr: int, codec: str = "pcm_s16le", container_format: str | None = None
) -> None:
    """Write an audio-only file (wav, flac, mp3, m4a, mkv/opus, ...) from (channels, S) float32."""
    audio = np.atleast_2d(np.asarray(audio, np.float32))
    layout = {1: "mono", 2: "stereo"}[audio.shape[0]]
    with av.open(str(path), "w", format=container_format) as out:
        stream = out.add_stream(codec, rate=sr, layout=layout)
        write_audio_stream(out, stream, audio, sr)
