"""Probing media files and decoding video as constant-25-fps RGB frames, resampled by timestamps."""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from mtdistill.core.errors import UserError
from mtdistill.core.timing import ANALYSIS_FPS
from mtdistill.media.decode import (
    check_media_path,
    container_origin,
    decode_error,
    note_decode_error,
    note_decoded_end,
    open_media,
    stream_start,
)

MAX_WIDTH = 1920
"""Frames wider than this are downscaled while decoding (4K input): detection and 96x96 crops need no more."""


@dataclass(frozen=True)
class MediaInfo:
    """What ``probe`` reads from the container headers (and the first frame's rotation; no full decode)."""

    path: str
    duration_s: float
    fps: float
    """Native (average) frame rate of the video stream; 0.0 without video."""
    width: int
    height: int
    has_video: bool
    has_audio: bool
    audio_rate: int
    """Native sample rate of the first audio stream; 0 without audio."""
    audio_channels: int
    n_frames: int
    """Frames at 25 fps covering the video stream: ceil(video duration x 25). An estimate from the headers;
    ``iter_frames`` is the authority."""
    video_codec: str
    audio_codec: str
    rotation: int = 0
    """Counter-clockwise degrees (0, 90, 180, 270) the player turns the coded picture by (the stream's display
    matrix: phone videos filmed upright). ``width`` / ``height`` and every decoded frame are already turned."""


def probe(path: str | os.PathLike, fps: float = ANALYSIS_FPS) -> MediaInfo:
    """Read duration, frame rate, size and streams of a media file; UserError if it is not readable media.

    Cached per (path, size, modification time): one `sync` probes its file in several stages, and reading the
    rotation decodes a frame (~30 ms for 1080p HEVC)."""
    st = check_media_path(path).stat()
    return _probe(str(path), fps, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _probe(path: str, fps: float, _size: int, _mtime_ns: int) -> MediaInfo:
    with open_media(path) as container:
        v = container.streams.video[0] if container.streams.video else None
        a = container.streams.audio[0] if container.streams.audio else None
        origin = container_origin(container)
        duration = container.duration / av.time_base if container.duration is not None else 0.0
        video_duration = duration
        native_fps = 0.0
        if v is not None:
            if v.duration is not None and v.time_base is not None:
                end = stream_start(v, origin) + Fraction(int(v.duration)) * Fraction(v.time_base)
                video_duration = float(end - origin)
            rate = v.average_rate or v.guessed_rate or v.base_rate
            native_fps = float(rate) if rate else 0.0
            if video_duration <= 0 and v.frames and native_fps:
                video_duration = v.frames / native_fps
        turns = _first_frame_turns(container, v) if v is not None else 0
        width = int(v.codec_context.width) if v is not None else 0
        height = int(v.codec_context.height) if v is not None else 0
        if turns % 2:
            width, height = height, width
        return MediaInfo(
            path=str(path),
            duration_s=float(max(duration, video_duration if v is not None else 0.0)),
            fps=native_fps,
            width=width,
            height=height,
            has_video=v is not None,
            has_audio=a is not None,
            audio_rate=int(a.rate or 0) if a is not None else 0,
            audio_channels=int(a.channels or 0) if a is not None else 0,
            n_frames=int(math.ceil(video_duration * fps - 1e-6)) if v is not None else 0,
            video_codec=v.codec_context.name if v is not None else "",
            audio_codec=a.codec_context.name if a is not None else "",
            rotation=90 * turns,
        )


def quarter_turns(frame: av.VideoFrame) -> int:
    """Counter-clockwise quarter turns (0-3) that the frame's display matrix asks for (nearest multiple of 90
    degrees; 0 where the file has none or PyAV cannot read it)."""
    degrees = getattr(frame, "rotation", 0) or 0
    return int(round(float(degrees) / 90.0)) % 4


def _first_frame_turns(container: av.container.InputContainer, stream: av.VideoStream) -> int:
    """The display rotation, read from the first decodable frame (PyAV exposes it per frame only)."""
    try:
        for frame in container.decode(stream):
            return quarter_turns(frame)
    except av.error.FFmpegError:
        pass  # an undecodable stream is reported by whoever decodes it
    return 0


def output_size(width: int, height: int, max_width: int | None) -> tuple[int, int]:
    """Decoded frame size after the optional downscale (even sizes, aspect kept)."""
    if not max_width or width <= max_width:
        return width, height
    scale = max_width / width
    return int(max_width) // 2 * 2, max(2, int(round(height * scale / 2)) * 2)


def iter_frames(
    path: str | os.PathLike,
    fps: float = ANALYSIS_FPS,
    max_width: int | None = MAX_WIDTH,
    want: Callable[[int], bool] | None = None,
) -> Iterator[tuple[int, np.ndarray | None]]:
    """Yield (k, rgb uint8 HxWx3) at a constant `fps`, resampled by presentation timestamps.

    Output frame k shows time t_k = k / fps on the container timeline (t = 0 is the container start, the same
    origin ``load_audio`` uses) and is the last decoded frame whose pts <= t_k: frames are repeated (e.g.
    22.13 fps input) or skipped (29.97, 30, 50 fps, VFR) but never shifted. Before the first decoded frame the
    first frame is shown (streams that start late). Frames continue while t_k is before the end of the last
    decoded frame (its pts + duration). A generator holding one decoded frame: memory does not grow with the
    length of the video. Frames are turned as the stream's display matrix asks (phone videos filmed upright
    are stored sideways), so they look as a player shows them. Frames wider than `max_width` (as shown) are
    downscaled (aspect kept); None keeps full size.
    ``want(k) -> False`` yields (k, None) instead of a picture: the frame is never converted to RGB, which is
    most of the per-frame cost of large videos (e.g. face detection on every 5th frame only).

    Raises UserError when the file has no video stream or no frame decodes. A packet that fails to decode in the
    middle of a file is skipped (the previous picture is held over its time) and a stream that breaks after some
    frames (truncated file) ends there; both are noted in the active `DecodeReport`
    (`mtdistill.media.decode.collect_decode_problems`), with how far the stream decoded.
    """
    if fps <= 0:
        raise UserError(f"fps must be positive, got {fps}")
    step = Fraction(fps).limit_denominator(1001000)
    with open_media(path) as container:
        if not container.streams.video:
            raise UserError(f"{path}: no video stream; this step needs a video with a visible face")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame threading: faster decode, same frames
        origin = container_origin(container)
        rate = stream.average_rate or stream.guessed_rate
        default_duration = Fraction(1) / Fraction(rate) if rate else Fraction(1) / step
        coded_w, coded_h = stream.codec_context.width, stream.codec_context.height
        turns = 0
        width, height = output_size(coded_w, coded_h, max_width)
        k = 0
        held: av.VideoFrame | None = None  # converted to RGB only when shown: skipped frames cost no conversion
        held_end = Fraction(0)
        for decoded, frame in enumerate(_decoded_frames(container, stream, path, origin), start=1):
            if frame.pts is not None and frame.time_base is not None:
                t = Fraction(frame.pts) * Fraction(frame.time_base) - origin
            else:  # no timestamps: assume constant rate
                t = (decoded - 1) * default_duration
            duration = default_duration
            if getattr(frame, "duration", None) and frame.time_base is not None:
                duration = Fraction(int(frame.duration)) * Fraction(frame.time_base)
            if held is None:
                held = frame  # before the first decoded frame: show the first frame
                turns = quarter_turns(frame)
                if turns % 2:  # `max_width` applies to the picture as shown: size it turned, decode it coded
                    height, width = output_size(coded_h, coded_w, max_width)
            # output frames whose time is before this frame's pts (k / fps < t) show the held (previous) frame
            k_end = max(k, math.ceil(t * step))
            yield from _show(held, range(k, k_end), want, width, height, turns)
            k = k_end
            held = frame
            held_end = max(held_end, t + duration)
        if held is None:
            raise UserError(f"{path}: the video stream holds no decodable frames; check the file")
        note_decoded_end(path, "video", float(held_end))
        yield from _show(held, range(k, max(k, math.ceil(held_end * step))), want, width, height, turns)


def _decoded_frames(
    container: av.container.InputContainer, stream: av.VideoStream, path: str | os.PathLike, origin: Fraction
) -> Iterator[av.VideoFrame]:
    """Every frame of ``stream`` that decodes, packet by packet.

    A packet that fails to decode (damage in the middle of a file) is skipped and noted in the active
    `DecodeReport` (`mtdistill.media.decode.collect_decode_problems`); the frames after it still come, at their
    own timestamps, so nothing shifts. A demuxer failure ends the stream there (also noted). If nothing decodes at
    all, the first error is raised as a UserError.
    """
    decoded = 0
    first_error: Exception | None = None
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            break
        except av.error.FFmpegError as exc:
            if decoded == 0:
                raise decode_error(path, exc) from None
            note_decode_error(path, "video", exc, None, stopped=True)
            break  # truncated or broken container: keep what decoded
        try:
            frames = packet.decode()
        except av.error.FFmpegError as exc:
            first_error = first_error or exc
            at = None
            if packet.pts is not None and packet.time_base is not None:
                at = float(Fraction(packet.pts) * Fraction(packet.time_base) - origin)
            note_decode_error(path, "video", exc, at)
            continue
        for frame in frames:
            decoded += 1
            yield frame
    if decoded == 0 and first_error is not None:
        raise decode_error(path, first_error)


def _show(
    frame: av.VideoFrame, ks: range, want: Callable[[int], bool] | None, width: int, height: int, turns: int = 0
) -> Iterator[tuple[int, np.ndarray | None]]:
    """Output frames ``ks`` all showing ``frame``, converted to RGB once and only if some k is wanted."""
    rgb = None
    for k in ks:
        if want is not None and not want(k):
            yield k, None
            continue
        if rgb is None:
            rgb = _to_rgb(frame, width, height, turns)
        yield k, rgb


def _to_rgb(frame: av.VideoFrame, width: int, height: int, turns: int = 0) -> np.ndarray:
    """The frame at (width, height) coded size, turned `turns` quarter turns counter-clockwise (as shown)."""
    if frame.width != width or frame.height != height:
        frame = frame.reformat(width=width, height=height, interpolation="AREA")
    rgb = frame.to_ndarray(format="rgb24")
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb
