"""Face tracks over constant-25-fps frames, and mouth crops along them (bounded memory).

Tracking is IoU association of per-frame detections:

- detections run on every `detect_every`-th frame; overlapping boxes are reduced by NMS;
- a detection frame is scanned whole at least every `rescan_every` frames, and whenever a face was missed;
  in between, the detector only searches near the faces seen at the previous detection frame
  (`detectors.detect_near`), which is several times cheaper on large frames. A face that enters the picture
  is found at the next whole-frame scan (at most `rescan_every` frames late); 0 scans every frame whole, and
  so do detectors without a ``detect_region`` method (plug-ins; the built-ins have one);
- each track predicts where its face is now (its last box, the centre moved on at the velocity of its last
  two detections); each detection joins the live track whose prediction it overlaps most (greedy, IoU >=
  `iou_threshold`), or failing that one whose predicted centre is within `NEAR` x the face's size of it
  (`match_matrix`: small faces move by a large part of their size between detection frames); otherwise it
  starts a new track, so several faces give several tracks;
- a track not matched for more than `max_lost` frames is closed (the face left or was lost);
- inside a track, boxes between detections are linearly interpolated. Gaps of at most `max_gap` frames
  without a detection (plus the frames skipped by `detect_every`) are bridged and stay valid; longer gaps
  are kept on the timeline with ``valid = False`` (never silently removed or shifted);
- the detections of a track are smoothed over `smooth_detections` consecutive ones (median, then mean, over
  windows symmetric in time), and the valid per-frame boxes per contiguous valid run (centred moving median,
  then moving mean, `smooth` frames), so the mouth crop does not jitter;
- tracks spanning fewer than `min_track` frames, or with fewer than max(`min_detections`,
  ceil(min_track / detect_every)) detections, are dropped (false positives of cascade detectors rarely
  persist), and so are tracks whose mean detector score is below `min_relative_score` x the best track's
  (persistent cascade false positives on background texture score far lower than faces; 0 keeps every track).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from mtdistill.core.errors import UserError
from mtdistill.core.timing import ANALYSIS_FPS, WINDOW_FRAMES
from mtdistill.media import DEFAULT_DETECTOR
from mtdistill.media.crops import CROP_MARGIN, crop_mouth
from mtdistill.media.detectors import FaceDetector, detect_near, get_detector, supports_regions
from mtdistill.media.frames import MAX_WIDTH, iter_frames, output_size, probe

NEAR = 0.5
"""`match_matrix`: centres this close (x the face's size) continue a track even where the boxes overlap little."""
SMOOTH_DETECTIONS = 3
"""`track_faces`: detections smoothed over this many consecutive ones before interpolation (median, then mean)."""


@dataclass
class FaceTrack:
    """One face over consecutive 25-fps frames ``start_frame..end_frame`` (both inclusive).

    ``boxes[i]`` is the face box [x1, y1, x2, y2] (original-resolution pixels) at frame ``start_frame + i``;
    ``valid[i]`` is False inside long detection gaps, where the box is only an interpolation.
    """

    track_id: int
    start_frame: int
    end_frame: int
    boxes: np.ndarray
    valid: np.ndarray
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    """Detector score per frame (NaN where the frame had no detection of this face)."""

    @property
    def n_frames(self) -> int:
        return self.end_frame - self.start_frame + 1

    def box_at(self, frame: int) -> np.ndarray:
        return self.boxes[frame - self.start_frame]


@dataclass
class TrackCrops:
    """A track with its mouth crops: ``crops`` (n, 48, 96, 3) uint8 RGB and ``valid`` (n,), n = track.n_frames."""

    track: FaceTrack
    crops: np.ndarray
    valid: np.ndarray


# --------------------------------------------------------------------------------------------- geometry


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box in a (N, 4+) with every box in b (M, 4+) -> (N, M)."""
    a = np.asarray(a, np.float64)[:, None, :4]
    b = np.asarray(b, np.float64)[None, :, :4]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / np.maximum(area_a + area_b - inter, 1e-9)


def containment_matrix(a: np.ndarray) -> np.ndarray:
    """Intersection over the area of the smaller box, for every pair of boxes in a (N, 4+) -> (N, N)."""
    b = np.asarray(a, np.float64)
    iou = iou_matrix(b, b)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union_plus_inter = area[:, None] + area[None, :]
    inter = iou * union_plus_inter / (1.0 + iou)  # from iou = inter / (A + B - inter)
    return inter / np.maximum(np.minimum(area[:, None], area[None, :]), 1e-9)


def nms(dets: np.ndarray, threshold: float = 0.4, contain: float = 0.7) -> np.ndarray:
    """Keep the best-scoring of overlapping detections (K, 5); a box mostly inside a better one is dropped too
    (cascades fire on a face and on a part of it)."""
    if len(dets) <= 1:
        return dets
    order = np.argsort(-dets[:, 4], kind="stable")
    dets = dets[order]
    iou = iou_matrix(dets, dets)
    inside = containment_matrix(dets)
    keep: list[int] = []
    for i in range(len(dets)):
        if all(iou[i, j] < threshold and inside[i, j] < contain for j in keep):
            keep.append(i)
    return dets[keep]


def _moving(values: np.ndarray, window: int, reduce: str) -> np.ndarray:
    """Centred, edge-truncated moving median/mean along axis 0."""
    if window <= 1 or len(values) <= 1:
        return values
    half = window // 2
    out = np.empty_like(values)
    fn = np.median if reduce == "median" else np.mean
    for i in range(len(values)):
        out[i] = fn(values[max(0, i - half) : i + half + 1], axis=0)
    return out


def smooth_boxes(boxes: np.ndarray, valid: np.ndarray, window: int = 5) -> np.ndarray:
    """Smooth boxes within each contiguous valid run: moving median (outliers) then moving mean (jitter)."""
    out = boxes.copy()
    i = 0
    n = len(boxes)
    while i < n:
        if not valid[i]:
            i += 1
            continue
        j = i
        while j < n and valid[j]:
            j += 1
        out[i:j] = _moving(_moving(boxes[i:j], window, "median"), window, "mean")
        i = j
    return out


def smooth_detections_in_time(frames: np.ndarray, obs: np.ndarray, window: int = 3) -> np.ndarray:
    """Moving median, then moving mean, of detections (N, 4) at increasing `frames`, over windows of up to
    `window` detections that are symmetric in time around each one (shrunk at the ends of the track and next
    to missed detections), so a face moving at constant speed keeps its exact boxes and only the detector's
    frame-to-frame noise is removed."""
    frames = np.asarray(frames)
    n, half = len(obs), window // 2

    def reach(i: int) -> int:
        h = min(half, i, n - 1 - i)
        while h > 0 and frames[i] - frames[i - h] != frames[i + h] - frames[i]:
            h -= 1
        return h

    spans = [reach(i) for i in range(n)]
    med = np.stack([np.median(obs[i - h : i + h + 1], axis=0) for i, h in enumerate(spans)])
    return np.stack([med[i - h : i + h + 1].mean(axis=0) for i, h in enumerate(spans)])


# --------------------------------------------------------------------------------------------- tracker


def match_matrix(pred: np.ndarray, dets: np.ndarray, iou_threshold: float, near: float = NEAR) -> np.ndarray:
    """How well each detection (M, 4+) continues each track whose box is predicted at `pred` (N, 4+) -> (N, M).

    The IoU of the two boxes; a pair that overlaps less but whose centres lie within `near` x the face's size
    of each other, with sizes within a factor 1.5, scores `iou_threshold` (a match of the lowest rank): a small
    face moves by a large part of its size between two detection frames (2.5 px per frame x 5 frames is half of
    a 24 px face), so its boxes overlap little even where the motion prediction is a little off.
    """
    iou = iou_matrix(pred, dets)
    if near <= 0 or len(pred) == 0 or len(dets) == 0:
        return iou
    p = np.asarray(pred, np.float64)[:, None, :4]
    d = np.asarray(dets, np.float64)[None, :, :4]
    sp = np.maximum(p[..., 2] - p[..., 0], p[..., 3] - p[..., 1])
    sd = np.maximum(d[..., 2] - d[..., 0], d[..., 3] - d[..., 1])
    dist = np.hypot(
        (p[..., 0] + p[..., 2] - d[..., 0] - d[..., 2]) / 2, (p[..., 1] + p[..., 3] - d[..., 1] - d[..., 3]) / 2
    )
    ratio = np.maximum(sp, sd) / np.maximum(np.minimum(sp, sd), 1e-9)
    close = (dist <= near * np.sqrt(np.abs(sp * sd))) & (ratio <= 1.5)
    return np.where(close & (iou < iou_threshold), iou_threshold, iou)


@dataclass
class _Live:
    frames: list[int]
    boxes: list[np.ndarray]
    scores: list[float]

    def predict(self, k: int) -> np.ndarray:
        """The box expected at frame k: the last one, its centre moved on at the velocity between the last two
        detections (constant motion), by at most one face size; the size is kept."""
        last = self.boxes[-1]
        if len(self.frames) < 2 or k <= self.frames[-1]:
            return last
        prev = self.boxes[-2]
        dt = max(1, self.frames[-1] - self.frames[-2])
        step = np.array([(last[0] + last[2]) - (prev[0] + prev[2]), (last[1] + last[3]) - (prev[1] + prev[3])])
        step = step / (2 * dt) * (k - self.frames[-1])
        size = max(float(last[2] - last[0]), float(last[3] - last[1]), 1.0)
        shift = float(np.hypot(*step))
        if shift > size:
            step = step * (size / shift)
        return last + np.array([step[0], step[1], step[0], step[1]], last.dtype)


class IouTracker:
    """Frame-by-frame association; feed ``update(k, dets)`` in increasing k, then ``finish()``.

    A detection continues the live track whose predicted box (`_Live.predict`) it matches best
    (`match_matrix` >= `iou_threshold`, greedy); others start tracks.
    """

    def __init__(self, iou_threshold: float = 0.3, max_lost: int = 25, near: float = NEAR) -> None:
        self.iou_threshold = iou_threshold
        self.max_lost = max_lost
        self.near = near
        self.live: list[_Live] = []
        self.done: list[_Live] = []

    def predicted(self, k: int) -> np.ndarray:
        """(N, 4) predicted boxes of the live tracks at frame k."""
        return np.stack([t.predict(k) for t in self.live]) if self.live else np.zeros((0, 4), np.float32)

    def update(self, k: int, dets: np.ndarray) -> None:
        still = []
        for t in self.live:
            (still if k - t.frames[-1] <= self.max_lost else self.done).append(t)
        self.live = still
        dets = nms(np.asarray(dets, np.float32).reshape(-1, 5))
        unmatched = list(range(len(dets)))
        if self.live and len(dets):
            sim = match_matrix(self.predicted(k), dets, self.iou_threshold, self.near)
            while True:
                ti, di = np.unravel_index(np.argmax(sim), sim.shape)
                if sim[ti, di] < self.iou_threshold:
                    break
                t = self.live[ti]
                t.frames.append(k)
                t.boxes.append(dets[di, :4].copy())
                t.scores.append(float(dets[di, 4]))
                sim[ti, :] = -1.0
                sim[:, di] = -1.0
                unmatched.remove(di)
        for di in unmatched:
            self.live.append(_Live([k], [dets[di, :4].copy()], [float(dets[di, 4])]))

    def finish(self) -> list[_Live]:
        self.done.extend(self.live)
        self.live = []
        return self.done


def build_track(
    raw: _Live,
    track_id: int,
    max_gap: int,
    detect_every: int,
    smooth: int,
    n_frames: int | None = None,
    smooth_detections: int = 1,
) -> FaceTrack:
    """Interpolate, mark long gaps invalid and smooth one raw track (observations at increasing frames).

    `smooth_detections` > 1 first smooths the detections themselves (moving median, then mean, over that many
    consecutive detections, within runs without a long gap); `smooth` then smooths the per-frame boxes."""
    frames = np.asarray(raw.frames)
    obs = np.stack(raw.boxes).astype(np.float64)
    bridge = max_gap + detect_every - 1  # missing frames that still count as one continuous track
    if smooth_detections > 1 and len(obs) > 2:
        obs = smooth_detections_in_time(frames, obs, smooth_detections)
    start, end = int(frames[0]), int(frames[-1])
    # with sparse detection the track also covers the frames up to the next (missed) detection slot
    if detect_every > 1:
        end = end + detect_every - 1 if n_frames is None else min(n_frames - 1, end + detect_every - 1)
    idx = np.arange(start, end + 1)
    boxes = np.stack([np.interp(idx, frames, obs[:, c]) for c in range(4)], axis=1)
    valid = np.ones(len(idx), bool)
    for a, b in zip(frames[:-1], frames[1:], strict=True):
        if b - a - 1 > bridge:
            valid[a - start + 1 : b - start] = False
    scores = np.full(len(idx), np.nan, np.float32)
    scores[frames - start] = raw.scores
    boxes = smooth_boxes(boxes, valid, smooth)
    return FaceTrack(track_id, start, end, boxes.astype(np.float32), valid, scores)


def _worth_searching(live: list[_Live], min_relative_score: float, last_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Which live tracks to search near (those that score like faces: a cascade's false positives on
    background would gain detections if searched for), and which of them must be found again (those seen at
    the previous detection frame; one already missed, e.g. a lost face, is looked for but not waited for)."""
    if not live:
        return np.zeros(0, bool), np.zeros(0, bool)
    means = np.array([np.mean(t.scores) for t in live])
    near = means >= min_relative_score * means.max() if min_relative_score > 0 else np.ones(len(live), bool)
    return near, near & np.array([t.frames[-1] == last_k for t in live], bool)


def track_faces(
    path: str | os.PathLike,
    detector: str | FaceDetector = DEFAULT_DETECTOR,
    fps: float = ANALYSIS_FPS,
    detect_every: int = 1,
    min_track: int = WINDOW_FRAMES,
    progress: bool = False,
    *,
    max_gap: int = 6,
    max_lost: int = 25,
    iou_threshold: float = 0.3,
    smooth: int = 5,
    smooth_detections: int = SMOOTH_DETECTIONS,
    min_relative_score: float = 0.45,
    min_detections: int = 3,
    rescan_every: int = 25,
) -> list[FaceTrack]:
    """Detect and track every face of a video over its constant-`fps` frames (one decoding pass).

    Returns tracks sorted by start frame (then longest first, then left to right), ids 0..n-1; boxes in
    original-resolution pixels. Raises UserError when the file has no video, fewer than 5 frames, or no face
    track at all.
    `detector`: "retinaface" (`DEFAULT_DETECTOR`, offline), "haar", "mtcnn", "package.module:Class" or a
    FaceDetector instance.
    See the module docstring for the tracking rules and their parameters.
    """
    if detect_every < 1:
        raise UserError(f"detect_every must be >= 1, got {detect_every}")
    if rescan_every < 0:
        raise UserError(f"--rescan-every must be >= 0 (0 scans every detection frame whole), got {rescan_every}")
    det = get_detector(detector)
    info = probe(path, fps)
    if not info.has_video:
        raise UserError(f"{path}: no video stream; face tracking needs a video")
    max_width = MAX_WIDTH
    det_side = getattr(det, "detect_size", None)
    if det_side and info.width and info.height:
        # the detector shrinks frames to det_side anyway: decode at that size, which is far cheaper for HD video
        max_width = min(MAX_WIDTH, max(2, math.ceil(info.width * det_side / max(info.width, info.height))))
    dec_w, dec_h = output_size(info.width, info.height, max_width)
    sx, sy = (info.width / dec_w, info.height / dec_h) if dec_w and dec_h else (1.0, 1.0)
    tracker = IouTracker(iou_threshold=iou_threshold, max_lost=max(max_lost, detect_every))
    n = 0
    last_scan, last_k = -(10**9), -1
    regions = rescan_every > 0 and supports_regions(det)
    from tqdm import tqdm

    bar = tqdm(total=info.n_frames or None, desc="tracking faces", unit="frame", disable=not progress, leave=False)
    with bar:
        to_frame = np.array([sx, sy, sx, sy], np.float32)
        for k, rgb in iter_frames(path, fps=fps, max_width=max_width, want=lambda k: k % detect_every == 0):
            n = k + 1
            if rgb is not None:
                dets = None
                live = tracker.live
                near, seen = _worth_searching(live, min_relative_score, last_k)
                if regions and seen.any() and k - last_scan < rescan_every:
                    # search around where each face was (the 2.5x square covers half a face size of motion and
                    # more; centring it on the motion prediction let Haar's false positives on background
                    # texture drift and gain detections), then require each face near where it should be now
                    last = np.stack([t.boxes[-1] for t in live])
                    dets = np.asarray(detect_near(det, rgb, last[near] / to_frame), np.float32).reshape(-1, 5)
                    dets[:, :4] *= to_frame
                    expect = tracker.predicted(k)[seen]
                    found = match_matrix(expect, dets, iou_threshold, tracker.near) if len(dets) else None
                    if found is None or found.max(axis=1).min() < iou_threshold:
                        dets = None  # a face was not found near where it was: look at the whole frame
                if dets is None:
                    dets = np.asarray(det.detect(rgb), np.float32).reshape(-1, 5)
                    dets[:, :4] *= to_frame
                    last_scan = k
                tracker.update(k, dets)
                last_k = k
            bar.update(1)
    if n < WINDOW_FRAMES:
        raise UserError(
            f"{path}: only {n} frame(s) at {fps:g} fps ({n / fps:.2f} s); lip sync needs at least {WINDOW_FRAMES}"
        )
    min_obs = max(min_detections, math.ceil(min_track / detect_every))
    tracks = []
    for raw in tracker.finish():
        if len(raw.frames) < min_obs:
            continue
        t = build_track(raw, -1, max_gap, detect_every, smooth, n, smooth_detections)
        if t.n_frames >= min_track:
            tracks.append(t)
    if tracks and min_relative_score > 0:
        means = [float(np.nanmean(t.scores)) for t in tracks]
        best = max(means)
        if best > 0:
            tracks = [t for t, m in zip(tracks, means, strict=True) if m >= min_relative_score * best]
    if not tracks:
        name = getattr(det, "name", type(det).__name__)
        other = "mtcnn" if name == DEFAULT_DETECTOR else DEFAULT_DETECTOR
        raise UserError(
            f"{path}: no face found in {n} frames (detector {name}); use a clip with a visible face"
            f" or try another detector (--detector {other})"
        )
    tracks.sort(key=lambda t: (t.start_frame, -t.n_frames, float(np.median(t.boxes[:, 0] + t.boxes[:, 2]))))
    for i, t in enumerate(tracks):
        t.track_id = i
    return tracks


# --------------------------------------------------------------------------------------------- full frame

FACE_CROP_MAX_ASPECT = 1.34
"""A face-crop video is near square: width / height between 1 / 1.34 and 1.34 (4:3 either way at most)."""
FACE_CROP_MIN_SIDE = 0.85
"""... and its one detected face box is at least this fraction of the frame's shorter side: a tight crop, where
re-detection would change the crop (about 0.94 with Haar on a crop cut like `crops.crop_face`; a synthetic
160x160 clip whose face fills much of the frame gives 0.75 and is detected as usual). Looser crops (FFHQ-style,
hair and neck, box ~0.6) are left to detection; `--full-frame` still forces the whole frame."""
FACE_CROP_MAX_CENTRE_OFFSET = 0.2
"""... centred: the face box's centre within this fraction of the frame's shorter side from the frame's centre."""
FACE_CROP_MAX_MOTION = 0.1
"""... and still: over the probed frames the box centre moves by at most this fraction of the shorter side and
its size by at most this fraction of itself."""
FACE_CROP_PROBES = (0, 12, 24, 36, 48)
"""Frames (at 25 fps, within the first two seconds) the detector looks at."""
DETECT_PAD = 0.25
"""Each probe frame is padded by this fraction of its size on every side (flat mean colour) before detection: a
face that fills the frame leaves no room for a detector's window otherwise."""


def full_frame_box(width: int, height: int, margin: float = CROP_MARGIN) -> np.ndarray:
    """The face box [x1, y1, x2, y2] whose square crop (`crops.square_box`, side max(w, h) x (1 + margin)) is
    exactly the frame's square: a square face-crop video gives the same 96x96 face and mouth crop as a
    detected face whose square crop it was cut from. A non-square frame is padded to its longer side."""
    if width < 2 or height < 2:
        raise UserError(f"frame size {width}x{height} is too small for a face crop")
    side = max(width, height) / (1.0 + margin)
    cx, cy = width / 2.0, height / 2.0
    return np.array([cx - side / 2.0, cy - side / 2.0, cx + side / 2.0, cy + side / 2.0], np.float32)


def full_frame_tracks(path: str | os.PathLike, fps: float = ANALYSIS_FPS) -> list[FaceTrack]:
    """One track covering every frame with the full-frame box (`full_frame_box`): for videos that are already
    one aligned face crop (generated talking heads, SyncNet-style LSE evaluation). No detection; the length is
    the header's frame count (`probe`), and `iter_mouth_crops` stops early if the video is shorter."""
    info = probe(path, fps)
    if not info.has_video:
        raise UserError(f"{path}: no video stream; face tracking needs a video")
    n = info.n_frames
    if n < WINDOW_FRAMES:
        raise UserError(
            f"{path}: only {n} frame(s) at {fps:g} fps ({n / fps:.2f} s); lip sync needs at least {WINDOW_FRAMES}"
        )
    box = full_frame_box(info.width, info.height)
    return [
        FaceTrack(
            track_id=0,
            start_frame=0,
            end_frame=n - 1,
            boxes=np.repeat(box[None], n, axis=0),
            valid=np.ones(n, bool),
            scores=np.ones(n, np.float32),
        )
    ]


def _padded_detect(det: FaceDetector, rgb: np.ndarray, pad: float = DETECT_PAD) -> np.ndarray:
    """Detections (K, 5) in ``rgb`` coordinates, found on the frame padded by ``pad`` x its size per side."""
    h, w = rgb.shape[:2]
    py, px = int(round(pad * h)), int(round(pad * w))
    canvas = np.empty((h + 2 * py, w + 2 * px, 3), np.uint8)
    canvas[:] = rgb.reshape(-1, 3).mean(axis=0).astype(np.uint8)
    canvas[py : py + h, px : px + w] = rgb
    dets = np.asarray(det.detect(canvas), np.float32).reshape(-1, 5)
    dets[:, [0, 2]] -= px
    dets[:, [1, 3]] -= py
    return nms(dets)


def is_face_crop_video(
    path: str | os.PathLike, detector: str | FaceDetector = "haar", fps: float = ANALYSIS_FPS
) -> bool:
    """True when the video looks like one aligned face crop: near square (`FACE_CROP_MAX_ASPECT`), and on each of
    the probe frames (`FACE_CROP_PROBES`, the first two seconds) the detector finds exactly one face of at least
    `FACE_CROP_MIN_SIDE` of the frame, centred (`FACE_CROP_MAX_CENTRE_OFFSET`) and still across the probes
    (`FACE_CROP_MAX_MOTION`). Such a video is best scored with `full_frame_tracks`."""
    info = probe(path, fps)
    if not info.has_video or info.width < 2 or info.height < 2:
        return False
    if not 1.0 / FACE_CROP_MAX_ASPECT <= info.width / info.height <= FACE_CROP_MAX_ASPECT:
        return False
    det = get_detector(detector)
    probes = set(FACE_CROP_PROBES)
    last = max(FACE_CROP_PROBES)
    boxes = []
    short = 0.0
    for k, rgb in iter_frames(path, fps=fps, max_width=MAX_WIDTH, want=lambda k: k in probes):
        if k > last:
            break
        if rgb is None:
            continue
        short = float(min(rgb.shape[:2]))
        dets = _padded_detect(det, rgb)
        sides = np.maximum(dets[:, 2] - dets[:, 0], dets[:, 3] - dets[:, 1])
        big = dets[sides >= FACE_CROP_MIN_SIDE * short]
        if len(big) != 1:
            return False
        boxes.append(big[0, :4])
        centre = np.array(
            [(big[0, 0] + big[0, 2]) / 2.0 - rgb.shape[1] / 2.0, (big[0, 1] + big[0, 3]) / 2.0 - rgb.shape[0] / 2.0]
        )
        if np.abs(centre).max() > FACE_CROP_MAX_CENTRE_OFFSET * short:
            return False
    if not boxes:
        return False
    b = np.stack(boxes)
    centres = (b[:, :2] + b[:, 2:]) / 2.0
    sides = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
    moved = np.abs(centres - centres.mean(axis=0)).max() / short
    resized = (sides.max() - sides.min()) / sides.mean()
    return bool(moved <= FACE_CROP_MAX_MOTION and resized <= FACE_CROP_MAX_MOTION)


def iter_mouth_crops(
    path: str | os.PathLike, tracks: list[FaceTrack], chunk: int = 250, fps: float = ANALYSIS_FPS
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """Yield (track_id, start_frame, crops uint8 (n, 48, 96, 3) RGB, valid (n,)) chunk by chunk.

    A second decoding pass; every track's frames come in order, in pieces of at most `chunk` frames (the
    last piece of a track is shorter), so memory is bounded by len(tracks) x chunk crops whatever the video's
    length. Pieces of different tracks interleave. If the video ends before a track does (a file changed
    between passes), the track's last piece is shorter than expected.
    """
    if chunk < 1:
        raise UserError(f"chunk must be >= 1, got {chunk}")
    if not tracks:
        return
    info = probe(path, fps)
    dec_w, dec_h = output_size(info.width, info.height, MAX_WIDTH)
    scale = np.array([dec_w / info.width, dec_h / info.height] * 2) if info.width and info.height else 1.0
    buffers: dict[int, list[np.ndarray]] = {t.track_id: [] for t in tracks}
    starts: dict[int, int] = {t.track_id: t.start_frame for t in tracks}
    last = max(t.end_frame for t in tracks)

    def flush(t: FaceTrack) -> tuple[int, int, np.ndarray, np.ndarray]:
        crops = np.stack(buffers[t.track_id])
        s = starts[t.track_id]
        valid = t.valid[s - t.start_frame : s - t.start_frame + len(crops)].copy()
        buffers[t.track_id] = []
        starts[t.track_id] = s + len(crops)
        return t.track_id, s, crops, valid

    def in_a_track(k: int) -> bool:
        return any(t.start_frame <= k <= t.end_frame for t in tracks)

    for k, rgb in iter_frames(path, fps=fps, max_width=MAX_WIDTH, want=in_a_track):
        if k > last:
            break
        if rgb is None:
            continue
        for t in tracks:
            if t.start_frame <= k <= t.end_frame:
                buffers[t.track_id].append(crop_mouth(rgb, t.box_at(k) * scale))
                if len(buffers[t.track_id]) == chunk or k == t.end_frame:
                    yield flush(t)
    for t in tracks:  # the video ended early
        if buffers[t.track_id]:
            yield flush(t)


def mouth_crops(
    path: str | os.PathLike,
    detector: str | FaceDetector = DEFAULT_DETECTOR,
    fps: float = ANALYSIS_FPS,
    **track_options: object,
) -> list[TrackCrops]:
    """Convenience for short clips: ``track_faces`` + ``iter_mouth_crops`` with every crop in memory."""
    tracks = track_faces(path, detector=detector, fps=fps, **track_options)  # type: ignore[arg-type]
    pieces: dict[int, list[np.ndarray]] = {t.track_id: [] for t in tracks}
    valids: dict[int, list[np.ndarray]] = {t.track_id: [] for t in tracks}
    for tid, _start, crops, valid in iter_mouth_crops(path, tracks, fps=fps):
        pieces[tid].append(crops)
        valids[tid].append(valid)
    out = []
    for t in tracks:
        if not pieces[t.track_id]:
            continue
        out.append(TrackCrops(t, np.concatenate(pieces[t.track_id]), np.concatenate(valids[t.track_id])))
    return out
