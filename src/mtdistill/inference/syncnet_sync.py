"""`sync --model syncnet`: SyncNet offsets and LSE-C / LSE-D per face track, as syncnet_python computes them.

Per track (as syncnet_python crops each track into its own clip): the track's frames become 224x224 BGR face
crops (syncnet_python's crop geometry, 0..255), the audio from the track's first frame on becomes 13 MFCCs at
100 Hz; with min_length = min(frames, samples // 640) there are N = min_length - 5 windows. Video embeddings of
windows 0, s, 2s, ... (stride s) are compared with the audio embeddings of windows i - vshift .. i + vshift,
audio embeddings outside 0..N-1 being zero vectors (upstream's zero padding). The mean distance curve gives
LSE-D (its minimum), LSE-C (median - minimum, the "confidence") and the offset vshift - argmin.

By default (quirk ``syncnet_jpeg_roundtrip``) the inputs are what syncnet_python's evaluate() reads: each crop
goes through ffmpeg's default JPEG and OpenCV's decoder (`JpegRoundTrip`, one encoder per track, fed in order),
and the audio is rounded to int16. ``detector="none"`` takes the video as a face-crop clip (what evaluate() is
given): one track over the whole clip, the frame itself as the crop (resized to 224x224 if it is not).

The p-value (`inference.significance`) ranks the distances (lower = better) and leaves out the zero-padded
candidates; its null band compares each video embedding with audio embeddings circularly shifted by about half
the track's audio, which costs only distances (the audio embeddings of the whole track exist already).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import cv2
import numpy as np
import torch

from mtdistill.core.errors import UserError
from mtdistill.core.quirks import FAITHFUL, Quirks
from mtdistill.core.timing import ANALYSIS_FPS, FRAME_MS, SEARCH_RANGE, WINDOW_FRAMES
from mtdistill.inference.face_tracks import find_tracks
from mtdistill.inference.readout import TrackResult, VerdictRule, file_result, judge_track
from mtdistill.inference.significance import null_band_width, null_shift
from mtdistill.media import DEFAULT_DETECTOR
from mtdistill.media.audio import load_audio
from mtdistill.media.decode import open_media
from mtdistill.media.frames import MAX_WIDTH, iter_frames, output_size, probe
from mtdistill.media.tracking import FaceTrack
from mtdistill.models.syncnet import (
    FACE_SIZE,
    JpegRoundTrip,
    SyncNet,
    candidate_distances,
    crop_face,
    face_crop_box,
    lse_metrics,
    mfcc,
    mfcc_windows,
)

CHUNK = 16  # windows per SyncNet forward (5 x 224 x 224 x 3 floats each)


WHOLE_FRAME = "none"
"""The ``detector`` value that takes every frame as the face crop (a face-crop clip, as syncnet_python's
evaluate() reads it)."""


class _SyncNetTrack:
    """Streams one track's face crops into video embeddings; audio embeddings are computed at the end."""

    def __init__(self, track, wave: np.ndarray, stride: int, quirks: Quirks = FAITHFUL) -> None:
        self.track = track
        self.lossy = quirks.syncnet_jpeg_roundtrip
        self.jpeg = JpegRoundTrip() if self.lossy else None
        seg = wave[track.start_frame * 640 : (track.end_frame + 1) * 640]
        self.min_length = min(track.n_frames, len(seg) // 640)
        self.n = self.min_length - WINDOW_FRAMES
        self.seg = seg
        self.starts = np.arange(0, max(self.n, 0), stride)
        self.frames: list[np.ndarray] = []
        self.buf_start = 0
        self.next_w = 0
        self.embeddings: list[torch.Tensor] = []

    def feed(self, net: SyncNet, crop: np.ndarray, device: torch.device, decoded: bool = False) -> None:
        """Add the next BGR crop (``decoded``: already through the JPEG round trip)."""
        self.frames.append(self.jpeg(crop) if self.jpeg is not None and not decoded else crop)
        self._flush(net, device, final=False)

    def _flush(self, net: SyncNet, device: torch.device, final: bool) -> None:
        have = self.buf_start + len(self.frames)
        ready = self.next_w
        while ready < len(self.starts) and self.starts[ready] + WINDOW_FRAMES <= have:
            ready += 1
        if ready == self.next_w or (not final and ready - self.next_w < CHUNK):
            return
        starts = self.starts[self.next_w : ready]
        buf = np.stack(self.frames)  # (F, 224, 224, 3) BGR uint8
        idx = (starts - self.buf_start)[:, None] + np.arange(WINDOW_FRAMES)[None, :]
        x = torch.from_numpy(buf[idx]).float().permute(0, 4, 1, 2, 3)  # (W, 3, 5, 224, 224)
        with torch.inference_mode():
            self.embeddings.append(net.forward_lip(x.to(device)).cpu())
        self.next_w = ready
        keep = int(self.starts[ready]) if ready < len(self.starts) else have
        self.frames = self.frames[keep - self.buf_start :]
        self.buf_start = keep

    def finish(self, net: SyncNet, device: torch.device, vshift: int):
        self._flush(net, device, final=True)
        if self.n < 1 or not self.embeddings:
            return None
        feat = mfcc(self.seg, int16=self.lossy)
        aud = []
        with torch.inference_mode():
            for s in range(0, self.n, 256):
                win = mfcc_windows(feat, np.arange(s, min(s + 256, self.n)))
                aud.append(net.forward_aud(win.to(device)).cpu())
        audio_emb, video_emb = torch.cat(aud), torch.cat(self.embeddings)
        d = candidate_distances(video_emb, audio_emb, vshift, self.starts)
        return lse_metrics(d, vshift), d, self._null(video_emb, audio_emb, vshift)

    def _null(self, video_emb: torch.Tensor, audio_emb: torch.Tensor, vshift: int) -> np.ndarray:
        """(windows, B) distances of each window to the null band of audio embeddings (empty if too short)."""
        width = null_band_width(self.n, vshift)
        shift = null_shift(self.n, width, vshift) if width else None
        if shift is None:
            return np.empty((0, 0), np.float32)
        idx = (torch.as_tensor(self.starts)[:, None] + shift + torch.arange(width)[None, :]) % self.n
        return torch.linalg.vector_norm(video_emb[:, None, :] - audio_emb[idx] + 1e-6, dim=-1).numpy()


def sync_video_syncnet(
    path: str | os.PathLike,
    net: SyncNet,
    *,
    stride: int = 1,
    vshift: int = SEARCH_RANGE,
    rule: VerdictRule | None = None,
    full_frame: bool | None = None,
    detector: str = DEFAULT_DETECTOR,
    device: str | None = None,
    progress: bool = False,
    detect_every: int | None = None,
    rescan_every: int = 25,
    quirks: Quirks | None = None,
):
    """SyncResult with SyncNet readouts; ``confidence`` is LSE-C, ``lse_d`` the minimum mean distance.

    ``detector="none"``: the video is a face-crop clip (see the module docstring). ``quirks``: default the
    net's own (``net.quirks``, else the faithful ones); ``Quirks(syncnet_jpeg_roundtrip=False)`` is lossless.
    """
    dev = torch.device(device or "cpu")
    net = net.to(dev).eval()
    rule = rule or VerdictRule()
    t0 = time.perf_counter()
    info = probe(path)
    if not info.has_audio:
        raise UserError(f"{path}: no audio stream; sync needs a video with a visible face and sound")
    quirks = quirks or getattr(net, "quirks", None) or FAITHFUL
    wave = load_audio(path)
    whole = detector == WHOLE_FRAME or full_frame is True
    # a 25 fps 224x224 crop clip with the JPEG quirk: its own decoded 4:2:0 frames, as ffmpeg hands them over
    square = (info.width, info.height) == (FACE_SIZE, FACE_SIZE) and abs(info.fps - ANALYSIS_FPS) < 0.01
    as_decoded = whole and quirks.syncnet_jpeg_roundtrip and square
    clip_yuv = list(_decoded_yuv420p(path)) if as_decoded else []
    if whole:
        n = len(clip_yuv) if as_decoded else int(info.n_frames)
        full = np.tile(np.array([0, 0, info.width, info.height], np.float32), (max(n, 1), 1))
        found = [FaceTrack(0, 0, n - 1, full, np.ones(max(n, 1), bool))] if n > 0 else []
    else:
        found = find_tracks(path, detector, detect_every or min(stride, 5), rescan_every, full_frame, progress)
    tracks = [t for t in found if t.n_frames >= WINDOW_FRAMES + 1]
    if not tracks:
        raise UserError(f"{path}: no face found for at least {WINDOW_FRAMES + 1} consecutive frames")
    t1 = time.perf_counter()
    dec_w, _ = output_size(info.width, info.height, MAX_WIDTH)
    scale = dec_w / info.width if info.width else 1.0
    states = [_SyncNetTrack(t, wave, stride, quirks) for t in tracks]
    last = max(t.end_frame for t in tracks)
    for yuv, full_range in clip_yuv[: states[0].min_length]:
        states[0].feed(net, states[0].jpeg.from_yuv420p(yuv, full_range), dev, decoded=True)
    for k, rgb in [] if as_decoded else iter_frames(path):
        if k > last:
            break
        bgr = None
        for st in states:
            t = st.track
            if t.start_frame <= k <= t.end_frame and k - t.start_frame < st.min_length:
                if bgr is None:
                    bgr = np.ascontiguousarray(rgb[:, :, ::-1])  # syncnet_python reads frames with OpenCV (BGR)
                if whole:
                    st.feed(net, whole_frame_crop(bgr), dev)
                    continue
                x1, y1, x2, y2 = (float(v) * scale for v in t.box_at(k)[:4])
                box = face_crop_box((x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1))
                st.feed(net, crop_face(bgr, box, FACE_SIZE), dev)
    results = []
    for st in states:
        out = st.finish(net, dev, vshift)
        if out is None:
            continue
        lse, d, null = out
        row_off = (vshift - torch.argmin(d, dim=1)).tolist()
        t = st.track
        # rank statistic: candidates outside the track's audio (upstream's zero padding) count as missing
        audio_at = torch.as_tensor(st.starts)[:, None] - vshift + torch.arange(2 * vshift + 1)[None, :]
        rows = torch.where((audio_at >= 0) & (audio_at < st.n), d, torch.nan).numpy()
        track = TrackResult(
            track=t.track_id,
            start_frame=t.start_frame,
            end_frame=t.end_frame,
            n_windows=len(st.starts),
            offset_frames=lse.offset_frames,
            offset_ms=lse.offset_frames * FRAME_MS,
            confidence=lse.lse_c,
            verdict="undetermined",
            curve=lse.curve,
            window_offsets=[int(x) for x in row_off],
            window_starts=[int(t.start_frame + s) for s in st.starts],
            lse_c=lse.lse_c,
            lse_d=lse.lse_d,
        )
        results.append(judge_track(track, rows, null, rule, stride, higher_is_better=False))
    if not results:
        raise UserError(f"{path}: every face track is shorter than 6 frames with audio; nothing to score")
    lossless = "" if quirks.syncnet_jpeg_roundtrip else ", lossless inputs"
    t2 = time.perf_counter()
    name = f"SyncNet ({sum(p.numel() for p in net.parameters()):,} params{lossless})"
    timing = {"faces_s": round(t1 - t0, 3), "crops_and_model_s": round(t2 - t1, 3), "total_s": round(t2 - t0, 3)}
    return file_result(path, info, rule, results, model=name, preset=None, stride=stride, vshift=vshift, timing=timing)


def _decoded_yuv420p(path: str | os.PathLike) -> Iterator[tuple[np.ndarray, bool]]:
    """Every decoded frame of the first video stream as (H * 3 / 2, W) planar 4:2:0 and whether it is full range,
    in decoding order with no frame-rate resampling (as ``ffmpeg -i CLIP %06d.jpg`` writes them)."""
    with open_media(path) as container:
        for frame in container.decode(container.streams.video[0]):
            if frame.format.name not in ("yuv420p", "yuvj420p"):
                frame = frame.reformat(format="yuv420p")
            full = frame.format.name == "yuvj420p" or frame.color_range == 2  # AVCOL_RANGE_JPEG
            yield frame.to_ndarray(), full


def whole_frame_crop(bgr: np.ndarray) -> np.ndarray:
    """A face-crop clip's frame as SyncNet's input: itself, resized to 224x224 (cv2 bilinear) if it is not."""
    if bgr.shape[:2] == (FACE_SIZE, FACE_SIZE):
        return bgr
    return cv2.resize(bgr, (FACE_SIZE, FACE_SIZE))
