"""Write an audio-shifted copy of a video: video packets copied untouched, only the audio re-encoded.

Sign convention (ARCHITECTURE.md): an offset of +k frames means the audio leads the video by k frames, so the
fix delays the audio by k frames (k * sr / fps samples of silence in front, the same amount trimmed at the end);
a negative offset advances it (samples dropped in front, silence appended). The output keeps the input's
duration, audio sample rate and channel layout.

Frame unit: offsets count 25 fps analysis frames (40 ms), the unit `sync` reports, whatever the video's own
frame rate; ``fps`` changes the unit and ``offset_ms`` gives the shift in milliseconds exactly.
"""

from __future__ import annotations

import errno
import io
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from mtdistill.core.errors import UserError
from mtdistill.core.outputs import check_output_file
from mtdistill.core.safeio import atomic_path
from mtdistill.core.timing import ANALYSIS_FPS
from mtdistill.media.decode import decode_error, open_media

# Containers that cannot hold AAC get a lossless codec they do support.
_AUDIO_CODEC_BY_FORMAT = {"wav": "pcm_s16le", "ogg": "libopus", "webm": "libopus", "flac": "flac"}
_ENCODE_BLOCK = 4096  # samples per audio frame handed to the encoder (it re-blocks to its own frame size)
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@dataclass(frozen=True)
class FixResult:
    """What `fix_video` wrote."""

    output: str
    offset_frames: float  # in frames of `fps` (25 fps analysis frames unless asked otherwise)
    shift_samples: int  # at the audio's own sample rate; > 0 = audio delayed
    sample_rate: int
    fps: float
    audio_codec: str
    video_packets: int
    offset_ms: float

    def to_json(self) -> dict:
        return dict(self.__dict__)


def shift_audio(samples: np.ndarray, shift: int) -> np.ndarray:
    """(C, S) -> (C, S): delay by ``shift`` samples (silence in front) or advance for shift < 0; length kept."""
    out = np.zeros_like(samples)
    n = samples.shape[1]
    if shift >= 0:
        out[:, shift:] = samples[:, : max(n - shift, 0)]
    else:
        out[:, : max(n + shift, 0)] = samples[:, -shift:]
    return out


def _decode_audio(container: av.container.InputContainer, stream: av.audio.stream.AudioStream, path) -> np.ndarray:
    """Whole audio stream as float32 planar (C, S) at its own rate and layout."""
    resampler = av.AudioResampler(format="fltp", layout=stream.layout.name, rate=stream.rate)
    chunks: list[np.ndarray] = []
    try:
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray())
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray())
    except av.error.FFmpegError as exc:
        raise decode_error(path, exc) from None
    if not chunks:
        raise UserError(f"{path}: the audio stream holds no samples; nothing to shift")
    return np.concatenate(chunks, axis=1).astype(np.float32)


def _video_fps(stream: av.video.stream.VideoStream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        raise UserError(f"cannot tell the frame rate of video stream {stream.index}; pass a file with a known fps")
    return float(rate)


def fix_video(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    offset_frames: float = 0,
    audio_codec: str | None = None,
    fps: float = ANALYSIS_FPS,
    offset_ms: float | None = None,
) -> FixResult:
    """Copy ``src`` to ``dst`` with the audio moved so that a video with ``offset_frames`` becomes in sync.

    The first video stream's packets are remuxed unchanged (no re-encode); the first audio stream is decoded,
    shifted by ``offset_frames * 1000 / fps`` ms (``round(ms * sr / 1000)`` samples) and re-encoded (AAC by
    default, the input's codec family where the container needs another). ``fps``: the frame rate the offset
    counts in, 25 by default (the analysis rate of `mtdistill sync`, 40 ms per frame, whatever the video's own
    rate). ``offset_ms``, when given, is the shift in milliseconds and replaces ``offset_frames``.

    Everything that can be checked is checked before the audio is decoded: the output path, the container and
    the audio codec (a trial header with the real streams), the offset against the audio's length. A full disk
    ends in a UserError and leaves no partial output.
    """
    src, dst = Path(src), Path(dst)
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise UserError(f"--fps must be a positive number of frames per second (e.g. 25), got {fps}")
    if offset_ms is None:
        if not math.isfinite(offset_frames):
            raise UserError(f"--offset must be a finite number of frames, got {offset_frames}")
        offset_ms = float(offset_frames) * 1000.0 / float(fps)
    elif not math.isfinite(offset_ms):
        raise UserError(f"--offset-ms must be a finite number of milliseconds, got {offset_ms}")
    else:
        offset_frames = float(offset_ms) * float(fps) / 1000.0
    codec = check_fix_output(src, dst, audio_codec)
    with open_media(src) as probe:
        a_in = probe.streams.audio[0]
        sr, layout = a_in.rate, a_in.layout.name
        audio = _decode_audio(probe, a_in, src)
    shift = int(round(offset_ms * sr / 1000.0))
    if abs(shift) >= audio.shape[1]:
        raise UserError(
            f"an offset of {offset_ms:+.0f} ms is beyond the audio's length ({audio.shape[1] / sr * 1000:.0f} ms); "
            "check --offset (it counts 25 fps frames of 40 ms) or --offset-ms"
        )
    audio = shift_audio(audio, shift)
    try:
        with atomic_path(dst) as tmp, open_media(src) as inp:
            v_in, a_in = inp.streams.video[0], inp.streams.audio[0]
            out = av.open(str(tmp), mode="w", format=_muxer_name(dst))
            try:
                n_packets = _remux(inp, out, v_in, a_in, audio, codec, sr, layout, src)
            finally:
                out.close()
    except (OSError, av.error.FFmpegError) as exc:  # av's OSError is both
        if getattr(exc, "errno", None) in _DISK_FULL:
            raise UserError(
                f"cannot write {dst}: {exc.strerror or 'no space left on device'}; free some space or choose "
                "another -o (nothing was written)"
            ) from None
        hint = "try an .mkv output" if isinstance(exc, av.error.FFmpegError) else "check the -o path"
        raise UserError(f"cannot write {dst} ({_one_line(exc)}); {hint} (nothing was written)") from None
    n = int(round(offset_frames)) if float(offset_frames).is_integer() else float(offset_frames)
    return FixResult(str(dst), n, shift, sr, float(fps), codec, n_packets, float(offset_ms))


def check_fix_output(src: str | os.PathLike, dst: str | os.PathLike, audio_codec: str | None = None) -> str:
    """Refuse, before any work, an output that `fix_video` could not write; returns the audio codec to use.

    Checks: the input has video and audio; ``dst`` is not the input, not a folder, and writable; ``audio_codec``
    is an audio encoder this FFmpeg has; the output's container takes the copied video stream and that audio
    codec (a trial header written to memory).
    """
    src, dst = Path(src), Path(dst)
    check_output_file(dst, "-o")
    if dst.exists() and src.resolve() == dst.resolve():
        raise UserError(f"output {dst} is the input; choose another -o path")
    fmt = dst.suffix.lower().lstrip(".") or "mp4"
    codec = audio_codec or _AUDIO_CODEC_BY_FORMAT.get(fmt, "aac")
    try:
        encoder = av.codec.Codec(codec, "w")
    except (av.error.FFmpegError, ValueError) as exc:  # UnknownCodecError is a ValueError
        raise UserError(f"unknown --audio-codec {codec!r} ({_one_line(exc)}); e.g. aac, alac, flac, libopus") from None
    if encoder.type != "audio":
        raise UserError(f"--audio-codec {codec!r} is a {encoder.type} encoder; give an audio one (aac, alac, flac)")
    muxer = _muxer_name(dst)
    try:
        av.format.ContainerFormat(muxer, "w")
    except (av.error.FFmpegError, ValueError):
        raise UserError(f"-o {dst}: unknown output format {dst.suffix or '(none)'}; use .mp4, .mkv or .mov") from None
    with open_media(src) as inp:
        if not inp.streams.video:
            raise UserError(f"{src}: no video stream; `fix` shifts the audio of a video file")
        if not inp.streams.audio:
            raise UserError(f"{src}: no audio stream; nothing to shift")
        v_in, a_in = inp.streams.video[0], inp.streams.audio[0]
        _video_fps(v_in)
        try:
            with av.open(io.BytesIO(), mode="w", format=muxer) as trial:
                trial.add_stream_from_template(v_in)
                a_out = trial.add_stream(codec, rate=a_in.rate, layout=a_in.layout.name)
                a_out.time_base = Fraction(1, a_in.rate)
                trial.start_encoding()
        except (av.error.FFmpegError, ValueError, TypeError) as exc:
            raise UserError(
                f"-o {dst}: a {dst.suffix or muxer} file cannot hold the copied {v_in.codec_context.name} video "
                f"with {codec} audio ({_one_line(exc)}); use .mkv (it holds almost any pair) or .mp4 / .mov"
            ) from None
    return codec


def _one_line(exc: Exception) -> str:
    return " ".join(str(getattr(exc, "strerror", None) or exc).split())[:200]


def _muxer_name(dst: Path) -> str:
    ext = dst.suffix.lower()
    return {".mkv": "matroska", ".m4v": "mp4", ".mov": "mov", ".webm": "webm"}.get(ext, ext.lstrip(".") or "mp4")


def _remux(inp, out, v_in, a_in, audio: np.ndarray, codec: str, sr: int, layout: str, src) -> int:
    """Interleave copied video packets with freshly encoded audio, in presentation order."""
    v_out = out.add_stream_from_template(v_in)
    a_out = out.add_stream(codec, rate=sr, layout=layout)
    a_out.time_base = Fraction(1, sr)
    # audio starts where the input's audio started (relative to the video), so only the content moves
    a_start = a_in.start_time * a_in.time_base if a_in.start_time is not None else Fraction(0)
    fmt = a_out.codec_context.format.name if a_out.codec_context.format else "fltp"
    planar = fmt.endswith("p")
    total = audio.shape[1]
    cursor = 0  # samples already handed to the encoder

    def encode_until(t_seconds: float | None) -> None:
        nonlocal cursor
        stop = total if t_seconds is None else min(total, int((t_seconds - float(a_start)) * sr) + _ENCODE_BLOCK)
        while cursor < stop:
            n = min(_ENCODE_BLOCK, total - cursor)
            block = audio[:, cursor : cursor + n]
            frame = _audio_frame(block, fmt, planar, layout, sr)
            frame.pts = int(round(float(a_start) * sr)) + cursor
            frame.time_base = Fraction(1, sr)
            for pkt in a_out.encode(frame):
                out.mux(pkt)
            cursor += n

    n_packets = 0
    try:
        for packet in inp.demux(v_in):
            if packet.dts is None:  # the demuxer's flush packet
                continue
            if packet.pts is not None and packet.time_base is not None:
                encode_until(float(packet.pts * packet.time_base))
            packet.stream = v_out
            out.mux(packet)
            n_packets += 1
    except av.error.FFmpegError as exc:
        if isinstance(exc, av.error.InvalidDataError):
            raise decode_error(src, exc) from None
        raise
    encode_until(None)
    for pkt in a_out.encode(None):
        out.mux(pkt)
    return n_packets


def _audio_frame(block: np.ndarray, fmt: str, planar: bool, layout: str, sr: int) -> av.AudioFrame:
    """Float planar (C, n) block -> an AudioFrame in the encoder's sample format."""
    if fmt.startswith("s16"):
        data = np.clip(np.round(block * 32768.0), -32768, 32767).astype(np.int16)
    elif fmt.startswith("s32"):
        data = np.clip(np.round(block * 2147483648.0), -2147483648, 2147483647).astype(np.int32)
    else:
        data = block.astype(np.float32)
    if not planar:
        data = data.T.reshape(1, -1)  # packed: interleaved channels in one plane
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=fmt, layout=layout)
    frame.sample_rate = sr
    return frame
