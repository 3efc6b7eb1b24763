"""Audio-visual offset of a video, per face track: `sync_video(path, model) -> SyncResult`.

Pipeline: decode at 25 fps (any container / codec / frame rate, `mtdistill.video`), detect and track faces, crop
the mouth of each track in the model's preset, load the audio at 16 kHz; then, per track, score every 5-frame
window at the chosen stride against the 2 * vshift + 1 audio offsets (`mtdistill.inference.scoring`, factorised
and streamed in chunks), average the score rows into one curve and read off offset, confidence and verdict.

The readout (offset, confidence, verdict) and the result types live in `mtdistill.inference.readout`.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mtdistill.core.errors import UserError
from mtdistill.core.timing import FRAME_MS, SAMPLE_RATE, SEARCH_RANGE, WINDOW_FRAMES
from mtdistill.inference.face_tracks import find_tracks
from mtdistill.inference.onnx_runtime import load_onnx_model
from mtdistill.inference.readout import SyncResult, TrackResult, VerdictRule, file_result, judge_track, readout_logits
from mtdistill.inference.scoring import CurveAccumulator, PairScorer, n_audio_windows, score_chunk
from mtdistill.inference.significance import null_band_width, null_shift
from mtdistill.inference.syncnet_sync import sync_video_syncnet
from mtdistill.inference.weights import NO_CHECKPOINT_MESSAGE
from mtdistill.media import DEFAULT_DETECTOR
from mtdistill.media.audio import load_audio
from mtdistill.media.decode import collect_decode_problems, stream_ends
from mtdistill.media.frames import probe
from mtdistill.media.tracking import iter_mouth_crops
from mtdistill.models.presets import check_preset, frames_to_input, windows_to_video
from mtdistill.models.syncnet import SyncNet
from mtdistill.models.vocalist import VocaLiST

CHUNK_WINDOWS = 64


# ---------------------------------------------------------------------------------------------- streaming


class TrackStream:
    """Scores one face track from mouth-crop pieces as they arrive (any piece sizes, in frame order).

    Windows start at start_frame, start_frame + stride, ... while their 5 frames lie inside the track; windows
    touching a frame whose face box is only an interpolation across a long detection gap (valid False) are
    skipped. The buffer holds at most about chunk_windows * stride + 4 crops plus one piece, so memory does not
    grow with the length of the video.
    """

    def __init__(
        self,
        scorer: PairScorer,
        start_frame: int,
        end_frame: int,
        wave: np.ndarray,
        preset: str,
        stride: int = 1,
        vshift: int = SEARCH_RANGE,
        chunk_windows: int = CHUNK_WINDOWS,
        progress=None,
    ) -> None:
        self.scorer, self.wave, self.preset = scorer, wave, preset
        self.vshift, self.chunk_windows, self.progress = vshift, chunk_windows, progress
        self.n_audio = n_audio_windows(len(wave))
        self.null_width = null_band_width(self.n_audio, vshift)
        self.null_shift = null_shift(self.n_audio, self.null_width, vshift) if self.null_width else None
        self.starts = np.arange(start_frame, end_frame - WINDOW_FRAMES + 2, stride)
        self.acc = CurveAccumulator(vshift)
        self.crops: list[np.ndarray] = []  # pieces, frames [buf_start, buf_start + n_buffered)
        self.valid: list[np.ndarray] = []
        self.buf_start = start_frame
        self.expected = start_frame
        self.next_w = 0

    def feed(self, start: int, crops: np.ndarray, valid: np.ndarray | None = None) -> None:
        if start != self.expected:  # a gap would misalign every later window
            raise UserError(f"mouth crops of a track jump from frame {self.expected} to {start}; internal error")
        self.crops.append(crops)
        self.valid.append(np.ones(len(crops), bool) if valid is None else np.asarray(valid, bool))
        self.expected += len(crops)
        self._flush(final=False)

    def finish(self) -> CurveAccumulator:
        self._flush(final=True)
        return self.acc

    def _flush(self, final: bool) -> None:
        while True:
            have_until = self.expected
            ready = self.next_w
            while ready < len(self.starts) and self.starts[ready] + WINDOW_FRAMES <= have_until:
                ready += 1
            if ready == self.next_w or (not final and ready - self.next_w < self.chunk_windows):
                return
            ready = min(ready, self.next_w + self.chunk_windows)
            self._score(self.starts[self.next_w : ready])
            self.next_w = ready

    def _score(self, starts: np.ndarray) -> None:
        frames = np.concatenate(self.crops) if len(self.crops) > 1 else self.crops[0]
        valid = np.concatenate(self.valid) if len(self.valid) > 1 else self.valid[0]
        rel = starts - self.buf_start
        ok = np.array([valid[r : r + WINDOW_FRAMES].all() for r in rel], bool)
        if ok.any():
            good = starts[ok]
            windows = _windows(frames, int(good[0]) - self.buf_start, good - good[0], self.preset)
            rows, null = score_chunk(
                self.scorer, windows, good, self.wave, self.n_audio, self.vshift, self.null_shift, self.null_width
            )
            self.acc.add(good, rows, null)
        if self.progress is not None:
            self.progress.update(len(starts))
        # drop frames no later window needs
        nxt = self.next_w + len(starts)
        keep_from = int(self.starts[nxt]) if nxt < len(self.starts) else self.expected
        drop = keep_from - self.buf_start
        self.crops, self.valid = [frames[drop:]], [valid[drop:]]
        self.buf_start = keep_from


def _windows(frames: np.ndarray, first: int, rel_starts: np.ndarray, preset: str) -> torch.Tensor:
    """(W, 15, 48, 96) model windows from buffered RGB crops; rel_starts relative to ``first``."""
    last = first + int(rel_starts[-1]) + WINDOW_FRAMES
    return windows_to_video(frames_to_input(frames[first:last], preset), rel_starts)


def check_model_options(
    stride: int, vshift: int, min_confidence: float | None, detect_every: int | None, rescan_every: int
) -> None:
    """Refuse bad analysis options before any work (sync, score, fix and the API share it): one line each."""
    if stride < 1:
        raise UserError(f"--stride must be >= 1 (1 scores every window, 5 every fifth), got {stride}")
    if not 1 <= vshift <= 50:
        raise UserError(f"--vshift must be between 1 and 50 frames, got {vshift}")
    if min_confidence is not None and not math.isfinite(min_confidence):
        raise UserError(f"--min-confidence must be a finite number (e.g. 1.8), got {min_confidence}")
    if detect_every is not None and detect_every < 1:
        raise UserError(f"--detect-every must be >= 1 (1 = detect on every frame), got {detect_every}")
    if rescan_every < 0:
        raise UserError(f"--rescan-every must be >= 0 (0 = scan every detection frame whole), got {rescan_every}")


def load_model(
    checkpoint: str | os.PathLike | None = None,
    preset: str | None = None,
    onnx: str | os.PathLike | None = None,
    kind: str = "vocalist",
) -> nn.Module:
    """The scoring model: an ONNX file, a SyncNet file, or a VocaLiST / MTDVocaLiST checkpoint."""
    if kind not in ("vocalist", "syncnet"):
        raise UserError(f"unknown --model {kind!r}; choose vocalist or syncnet")
    if onnx is not None:
        model = load_onnx_model(onnx)
        if preset:
            model.preset = preset
        return model
    if checkpoint is None:
        raise UserError(NO_CHECKPOINT_MESSAGE)
    if kind == "syncnet":
        return SyncNet.from_checkpoint(checkpoint)
    return VocaLiST.from_checkpoint(checkpoint, preset=preset)


def _model_name(model: nn.Module) -> str:
    if getattr(model, "path", None) is not None:  # ONNX
        return f"onnx:{Path(model.path).name}" + (" (int8)" if getattr(model, "int8", False) else "")
    config = getattr(model, "config", None)
    if config is not None:
        size = {512: "VocaLiST teacher", 200: "MTDVocaLiST student"}.get(config.d_model, f"VocaLiST d={config.d_model}")
        return f"{size} ({sum(p.numel() for p in model.parameters()):,} params)"
    return type(model).__name__


def sync_video(path: str | os.PathLike, model: nn.Module, **options: Any) -> SyncResult:
    """Estimate the audio-visual offset of every face track in ``path`` (options: `analyse_video`).

    Damage met while reading the file (packets that fail to decode, a stream cut short) is listed in the
    result's ``warnings``; the numbers then cover only what decoded.
    """
    with collect_decode_problems() as problems:
        result = analyse_video(path, model, **options)
    result.warnings = problems.messages(path, stream_ends(path))
    return result


def analyse_video(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    preset: str | None = None,
    stride: int = 1,
    vshift: int = SEARCH_RANGE,
    min_confidence: float | None = None,
    detector: str = DEFAULT_DETECTOR,
    device: str | None = None,
    progress: bool = False,
    chunk_windows: int = CHUNK_WINDOWS,
    detect_every: int | None = None,
    rescan_every: int = 25,
    bf16: bool = False,
    alpha: float | None = None,
    standards: list[str] | tuple[str, ...] | None = None,
    full_frame: bool | None = None,
) -> SyncResult:
    """Estimate the audio-visual offset of every face track in ``path`` (see the module docstring).

    ``model``: a VocaLiST-family module (incl. `load_onnx_model`), any (video, mel) -> logits module, or a
    `SyncNet` (LSE-C / LSE-D readout). ``preset`` overrides the model's own input preset. ``detect_every``:
    run the face detector on every n-th frame only (boxes in between are interpolated by the tracker); default
    min(stride, 5), since a stride already trades time resolution for speed and detection dominates the cost.
    ``rescan_every``: whole-frame face scans at least every n frames, region search near known faces in
    between (`track_faces`; 0 = whole frames only).
    ``bf16``: bfloat16 autocast for the model (VocaLiST family; fast on CPUs with AVX512-BF16 and on GPUs).
    ``alpha``: p_value at or below which a verdict is confident (default `significance.DEFAULT_ALPHA`);
    ``min_confidence``, when given, decides instead (the v1 margin rule). ``standards``: names from
    `inference.standards.STANDARDS`, judged per track.
    ``full_frame``: True scores the whole frame as one face track (no detection: videos that are one aligned face
    crop), False always detects faces, None (default) decides with `media.tracking.is_face_crop_video`.
    """
    if stride < 1:
        raise UserError(f"--stride must be >= 1, got {stride}")
    if not 1 <= vshift <= 50:
        raise UserError(f"--vshift must be between 1 and 50 frames, got {vshift}")
    rule = VerdictRule.make(alpha, min_confidence, standards)
    if isinstance(model, SyncNet):
        faces = {"detector": detector, "detect_every": detect_every, "rescan_every": rescan_every}
        run = {"stride": stride, "vshift": vshift, "device": device, "progress": progress}
        return sync_video_syncnet(path, model, rule=rule, full_frame=full_frame, **faces, **run)
    preset = check_preset(preset or getattr(model, "preset", None))
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    info = probe(path)
    if not info.has_video:
        raise UserError(f"{path}: no video stream; sync needs a video with a visible face and sound")
    if not info.has_audio:
        raise UserError(f"{path}: no audio stream; sync needs a video with a visible face and sound")
    wave = load_audio(path)
    timing["audio_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    found = find_tracks(path, detector, detect_every or min(stride, 5), rescan_every, full_frame, progress)
    tracks = [t for t in found if t.n_frames >= WINDOW_FRAMES + 1]
    timing["faces_s"] = time.perf_counter() - t1
    if not tracks:
        raise UserError(
            f"{path}: no face found for at least {WINDOW_FRAMES + 1} consecutive frames; sync needs a visible, "
            "roughly frontal face"
        )
    if n_audio_windows(len(wave)) < 1:
        raise UserError(
            f"{path}: audio too short ({len(wave) / SAMPLE_RATE:.2f} s); sync needs at least 0.2 s of sound"
        )
    scorer = PairScorer(model, device=device, bf16=bf16)
    t2 = time.perf_counter()
    total = sum(len(range(t.start_frame, t.end_frame - WINDOW_FRAMES + 2, stride)) for t in tracks)
    results: list[TrackResult] = []
    with tqdm(total=total, desc="sync", unit="win", disable=not progress, dynamic_ncols=True) as bar:
        streams = {
            t.track_id: TrackStream(
                scorer, t.start_frame, t.end_frame, wave, preset, stride, vshift, chunk_windows, progress=bar
            )
            for t in tracks
        }
        for track_id, start, crops, valid in iter_mouth_crops(path, tracks):
            streams[track_id].feed(start, crops, valid)
        for t in tracks:
            acc = streams[t.track_id].finish()
            if acc.n_windows == 0:
                continue
            offset, conf, curve = readout_logits(acc.curve(), vshift)
            track = TrackResult(
                track=t.track_id,
                start_frame=t.start_frame,
                end_frame=t.end_frame,
                n_windows=acc.n_windows,
                offset_frames=offset,
                offset_ms=offset * FRAME_MS,
                confidence=conf,
                verdict="undetermined",
                curve=[float(x) for x in curve],
                window_offsets=acc.offsets,
                window_starts=acc.starts,
            )
            results.append(judge_track(track, acc.row_matrix(), acc.null_rows(), rule, stride))
    timing["crops_and_model_s"] = time.perf_counter() - t2
    timing["total_s"] = time.perf_counter() - t0
    if not results:
        raise UserError(f"{path}: no face track overlaps the audio; nothing to score")
    rounded = {k: round(v, 3) for k, v in timing.items()}
    about = {"model": _model_name(model), "preset": preset, "stride": stride, "vshift": vshift}
    return file_result(path, info, rule, results, timing=rounded, **about)
