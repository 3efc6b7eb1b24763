"""Harder scenes composed from real clips, with the true face boxes: small faces, turned faces, two speakers.

Used by ``benchmarks/bench_faces.py`` and the detector tests. A source clip (a real talking face) is scaled so
that its face is `face_width` pixels wide and pasted, through a soft elliptical mask, into a 640x360 frame whose
background is a face-free part of another real clip (moving, since it is taken from that clip's frames). The
face moves slowly along a smooth path (at most ~2.5 px per frame) and can be turned in the image plane.

The true box of frame k is the reference box of the source frame, found by a detector on the full-size source
(`reference_boxes`, faces of 100-400 px that every detector finds), mapped through the same scale, rotation and
shift as the pixels.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from mtdistill.core.errors import UserError
from mtdistill.data.synthetic import talking_clip, write_mp4
from mtdistill.media.audio import load_audio
from mtdistill.media.crops import square_box
from mtdistill.media.detectors import get_detector
from mtdistill.media.frames import iter_frames

SIZE = (640, 360)
"""Width and height of composed scenes."""


@dataclass
class Scene:
    """A composed clip: where it was written and where the faces truly are."""

    path: Path
    n_frames: int
    boxes: list[np.ndarray] = field(default_factory=list)
    """One (n_frames, 4) float array [x1, y1, x2, y2] per face, frame pixels."""
    face_widths: list[float] = field(default_factory=list)


def read_frames(path: str | os.PathLike, n: int | None = None, max_width: int | None = None) -> np.ndarray:
    """The first `n` (None = all) 25-fps RGB frames of a clip as one (n, H, W, 3) uint8 array."""
    out = []
    for k, rgb in iter_frames(path, max_width=max_width):
        if n is not None and k >= n:
            break
        out.append(rgb)
    if not out:
        raise UserError(f"{path}: no frames")
    return np.stack(out)


@lru_cache(maxsize=8)
def _source(path: str, n: int | None, detector: object) -> tuple[np.ndarray, np.ndarray]:
    frames = read_frames(path, n)
    return frames, reference_boxes(frames, detector)


def source_with_boxes(
    path: str | os.PathLike, n: int | None = None, detector: object = None
) -> tuple[np.ndarray, np.ndarray]:
    """A source clip's frames and reference boxes (`reference_boxes`), cached for the last few clips."""
    return _source(str(path), n, detector)


def reference_boxes(frames: np.ndarray, detector: object = None) -> np.ndarray:
    """(n, 4) box of the most confident face in each frame (big, easy faces); a frame where none is found takes
    its neighbour's box."""
    det = get_detector(detector)  # type: ignore[arg-type]
    boxes = np.full((len(frames), 4), np.nan)
    for i, f in enumerate(frames):
        d = det.detect(f)
        if len(d):
            boxes[i] = d[int(np.argmax(d[:, 4])), :4]
    ok = np.flatnonzero(~np.isnan(boxes[:, 0]))
    if len(ok) == 0:
        raise UserError("no face in the source frames")
    for c in range(4):
        boxes[:, c] = np.interp(np.arange(len(frames)), ok, boxes[ok, c])
    return boxes


@lru_cache(maxsize=2)
def _background(path: str, size: tuple[int, int], rows: float) -> np.ndarray:
    out = []
    for _k, rgb in iter_frames(path, max_width=1080):
        h, w = rgb.shape[:2]
        top = int(h * rows)
        cw = min(w, int(round(top * size[0] / size[1])))
        x0 = (w - cw) // 2
        out.append(cv2.resize(rgb[:top, x0 : x0 + cw], size, interpolation=cv2.INTER_AREA))
    return np.stack(out)


def background_frames(path: str | os.PathLike, n: int, size: tuple[int, int] = SIZE, rows: float = 0.28) -> np.ndarray:
    """`n` frames of a face-free background: the top `rows` of a portrait clip (sky, trees, a gazebo above the
    speaker's head), the middle columns cut to the scene's aspect and resized to `size`; the clip is played
    forward and backward as often as needed."""
    src = _background(str(path), tuple(size), rows)
    order = np.concatenate([np.arange(len(src)), np.arange(len(src))[::-1]])
    return src[order[np.arange(n) % len(order)]].copy()


def path_xy(k: int, size: tuple[int, int] = SIZE, phase: float = 0.0, span: tuple[float, float] = (100.0, 40.0)):
    """Centre of a slowly moving face at frame k: a Lissajous path around the frame centre (10 s and 7 s
    periods; peak speed 2.5 px per frame with the default span)."""
    t = k / 25.0
    return (
        size[0] / 2 + span[0] * math.sin(2 * math.pi * t / 10.0 + phase),
        size[1] / 2 + span[1] * math.sin(2 * math.pi * t / 7.0 + 1.3 * phase),
    )


def _paste(canvas: np.ndarray, patch: np.ndarray, cx: float, cy: float) -> tuple[int, int]:
    """Blend `patch` centred at (cx, cy) through a soft ellipse; returns its top-left corner."""
    ph, pw = patch.shape[:2]
    x0, y0 = int(round(cx - pw / 2)), int(round(cy - ph / 2))
    H, W = canvas.shape[:2]
    ax0, ay0, ax1, ay1 = max(0, x0), max(0, y0), min(W, x0 + pw), min(H, y0 + ph)
    if ax1 <= ax0 or ay1 <= ay0:
        return x0, y0
    yy, xx = np.mgrid[0:ph, 0:pw]
    r = np.hypot((xx - (pw - 1) / 2) / (pw / 2), (yy - (ph - 1) / 2) / (ph / 2))
    mask = np.clip((1.0 - r) / 0.25, 0.0, 1.0)[..., None]  # opaque inside r <= 0.75, fading out to the edge
    sub = patch[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0].astype(np.float32)
    m = mask[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0]
    region = canvas[ay0:ay1, ax0:ax1].astype(np.float32)
    canvas[ay0:ay1, ax0:ax1] = (m * sub + (1 - m) * region + 0.5).astype(np.uint8)
    return x0, y0


def place_face(
    canvas: np.ndarray, frame: np.ndarray, box: np.ndarray, face_width: float, cx: float, cy: float, angle: float = 0.0
) -> np.ndarray:
    """Paste the part of `frame` around its face `box`, scaled so the face is `face_width` px wide, turned by
    `angle` degrees (counter-clockwise), its face centred at (cx, cy); returns the face's true box in `canvas`."""
    bw, bh = box[2] - box[0], box[3] - box[1]
    s = face_width / bw
    side = 2.0 * max(bw, bh)  # the head and some context around it
    fcx, fcy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    out = max(8, int(round(side * s)))
    # source -> patch: scale about the face centre, turn, put the face centre in the patch centre
    m = cv2.getRotationMatrix2D((float(fcx), float(fcy)), angle, s)
    m[:, 2] += np.array([out / 2 - fcx, out / 2 - fcy])
    patch = cv2.warpAffine(
        frame, m, (out, out), flags=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    x0, y0 = _paste(canvas, patch, cx, cy)
    corners = np.array([[box[0], box[1]], [box[2], box[1]], [box[0], box[3]], [box[2], box[3]]], np.float64)
    pts = corners @ m[:, :2].T + m[:, 2] + np.array([x0, y0])
    if angle == 0:
        return np.array([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()])
    # a turned face: the upright box of the same size around its centre (what detectors report), not the
    # larger box around the turned corners
    c = pts.mean(axis=0)
    return np.array([c[0] - bw * s / 2, c[1] - bh * s / 2, c[0] + bw * s / 2, c[1] + bh * s / 2])


def _write(path: Path, frames: np.ndarray, audio: np.ndarray | None) -> None:
    write_mp4(path, frames, audio, 25.0)


def _audio(path: str | os.PathLike, n_frames: int) -> np.ndarray | None:
    try:
        wave = load_audio(path)
    except UserError:
        return None
    n = n_frames * 640
    return np.pad(wave[:n], (0, max(0, n - len(wave)))).astype(np.float32)


def small_face_scene(
    source: str | os.PathLike,
    background: str | os.PathLike,
    face_width: float,
    out: str | os.PathLike,
    n_frames: int | None = None,
    angle: float | str = 0.0,
    ref_detector: object = None,
    phase: float = 0.0,
) -> Scene:
    """One source clip's face, `face_width` px wide, moving slowly over a real background (see the module
    docstring). `angle`: a fixed in-plane turn in degrees, or "sway" (-30..+30 degrees, 4 s period)."""
    frames, ref = source_with_boxes(source, n_frames, ref_detector)
    bg = background_frames(background, len(frames))
    video = bg.copy()
    boxes = np.empty((len(frames), 4))
    for k in range(len(frames)):
        a = 30.0 * math.sin(2 * math.pi * k / 100.0) if angle == "sway" else float(angle)
        cx, cy = path_xy(k, phase=phase)
        boxes[k] = place_face(video[k], frames[k], ref[k], face_width, cx, cy, a)
    out = Path(out)
    _write(out, video, _audio(source, len(frames)))
    return Scene(out, len(frames), [boxes], [float(face_width)])


def two_speaker_scene(
    left: str | os.PathLike,
    right: str | os.PathLike,
    background: str | os.PathLike,
    out: str | os.PathLike,
    face_width: float = 72.0,
    n_frames: int | None = None,
    ref_detector: object = None,
) -> Scene:
    """Two real speakers side by side, each `face_width` px wide and moving slowly in its half of the frame;
    the sound is the left clip's."""
    a, ra = source_with_boxes(left, n_frames, ref_detector)
    b, rb = source_with_boxes(right, n_frames, ref_detector)
    n = min(len(a), len(b))
    a, b, ra, rb = a[:n], b[:n], ra[:n], rb[:n]
    video = background_frames(background, n)
    boxes = [np.empty((n, 4)), np.empty((n, 4))]
    for k in range(n):
        for i, (fr, rf, x) in enumerate(((a, ra, SIZE[0] * 0.27), (b, rb, SIZE[0] * 0.73))):
            dx, dy = path_xy(k, phase=1.7 * i, span=(40.0, 40.0))
            boxes[i][k] = place_face(video[k], fr[k], rf[k], face_width, x + dx - SIZE[0] / 2, dy)
    out = Path(out)
    _write(out, video, _audio(left, n))
    return Scene(out, n, boxes, [float(face_width)] * 2)


def synthetic_small_scene(
    out: str | os.PathLike,
    seed: int,
    offset_frames: int,
    face_width: float,
    background: str | os.PathLike,
    duration_s: float = 3.0,
) -> Scene:
    """A synthetic talking face (`mtdistill.data.synthetic`, audio shifted by `offset_frames`) shrunk into the
    real background: what a sync model trained on the synthetic corpus can be tested on at small sizes."""
    clip = talking_clip(seed, duration_s, offset_frames)
    ref = reference_boxes(clip.frames)
    video = background_frames(background, len(clip.frames))
    boxes = np.empty((len(clip.frames), 4))
    for k in range(len(clip.frames)):
        cx, cy = path_xy(k, phase=0.1 * seed)
        boxes[k] = place_face(video[k], clip.frames[k], ref[k], face_width, cx, cy)
    out = Path(out)
    _write(out, video, clip.audio)
    return Scene(out, len(clip.frames), [boxes], [float(face_width)])


# ------------------------------------------------------------------------------------------------ metrics


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of two (n, 4) box arrays."""
    x1, y1 = np.maximum(a[:, 0], b[:, 0]), np.maximum(a[:, 1], b[:, 1])
    x2, y2 = np.minimum(a[:, 2], b[:, 2]), np.minimum(a[:, 3], b[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


def track_boxes(track: object, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """A FaceTrack's boxes on the clip timeline (n_frames, 4) (NaN outside it) and where they are valid."""
    boxes = np.full((n_frames, 4), np.nan)
    valid = np.zeros(n_frames, bool)
    s, e = track.start_frame, min(track.end_frame, n_frames - 1)  # type: ignore[attr-defined]
    boxes[s : e + 1] = track.boxes[: e - s + 1]  # type: ignore[attr-defined]
    valid[s : e + 1] = track.valid[: e - s + 1]  # type: ignore[attr-defined]
    return boxes, valid


@dataclass
class FaceScore:
    """How the tracks of one clip cover one true face."""

    coverage: float
    """frames where a valid track box overlaps the true box (IoU >= 0.3) / frames."""
    n_tracks: int
    """tracks that follow this face (median IoU >= 0.3 over their frames)."""
    jitter_centre: float
    """mean frame-to-frame change of the mouth crop's centre relative to the true face's, % of the crop side."""
    jitter_size: float
    """the same for the crop's side."""


def score_face(tracks: list, truth: np.ndarray, iou: float = 0.3) -> FaceScore:
    """Coverage, fragmentation and crop jitter of `tracks` (FaceTrack list) against one true face."""
    n = len(truth)
    hit = np.zeros(n, bool)
    mine = []
    for t in tracks:
        boxes, valid = track_boxes(t, n)
        ok = valid & ~np.isnan(boxes[:, 0])
        if not ok.any():
            continue
        ious = box_iou(boxes[ok], truth[ok])
        if float(np.median(ious)) >= iou:
            mine.append((boxes, ok))
        cover = np.zeros(n, bool)
        cover[ok] = ious >= iou
        hit |= cover
    jc, js = [], []
    if mine:
        # the longest track on this face: its crop square against the true box's square (truth smoothed over
        # 5 frames: the reference detector has its own frame-to-frame noise)
        boxes, ok = max(mine, key=lambda m: int(m[1].sum()))
        kernel = np.ones(5) / 5
        sm = np.stack([np.convolve(np.pad(truth[:, c], 2, mode="edge"), kernel, "valid") for c in range(4)], 1)
        sq_t = np.array([square_box(b) for b in sm])
        sq = np.full_like(sq_t, np.nan)
        sq[ok] = np.array([square_box(b) for b in boxes[ok]])
        err = (sq - sq_t) / sq_t[:, 2:3] * 100.0
        d = np.abs(np.diff(err, axis=0))
        d = d[~np.isnan(d).any(axis=1)]
        if len(d):
            jc.append(float(np.mean(np.hypot(d[:, 0], d[:, 1]))))
            js.append(float(np.mean(d[:, 2])))
    return FaceScore(float(hit.mean()), len(mine), jc[0] if jc else float("nan"), js[0] if js else float("nan"))
