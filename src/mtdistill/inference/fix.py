"""Write an audio-shifted copy of a video: video packets copied untouched, only the audio re-encoded.

Sign convention (ARCHITECTURE.md): an offset of +k frames means the audio leads the video by k frames, so the
fix delays the audio by k frames (k * sr / fps samples of silence in front, the same amount trimmed at the end);
a negative offset advances it (samples dropped in front, silence appended). The output keeps the input's
duration, audio sample rate and channel layout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from mtdistill.core.errors import UserError
from mtdistill.core.safeio import atomic_path
from mtdistill.media.decode import decode_error, open_media

# Containers that cannot hold AAC get a lossless codec they do support.
_AUDIO_CODEC_BY_FORMAT = {"wav": "pcm_s16le", "ogg": "libopus", "webm": "libopus", "flac": "flac"}
_ENCODE_BLOCK = 4096  # samples per audio frame handed to the encoder (it re-blocks to its own frame size)


@dataclass(frozen=True)
class FixResult:
    """What `fix_video` wrote."""

    output: str
    offset_frames: int
    shift_samples: int  # at the audio's own sample rate; > 0 = audio delayed
    sample_rate: int
    fps: float
    audio_codec: str
    video_packets: int

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
    offset_frames: int,
    audio_codec: str | None = None,
    fps: float | None = None,
) -> FixResult:
    """Copy ``src`` to ``dst`` with the audio moved so that a video with ``offset_frames`` becomes in sync.

    The first video stream's packets are remuxed unchanged (no re-encode); the first audio stream is decoded,
    shifted by ``offset_frames * sr / fps`` samples (rounded) and re-encoded (AAC by default, the input's codec
    family where the container needs another). ``fps``: the frame rate the offset counts in (the video's own
    by default; pass 25 for offsets from `mtdistill sync`, which analyses at 25 fps).
    """
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise UserError(f"output {dst} is the input; choose another -o path")
    with open_media(src) as probe:
        if not probe.streams.video:
            raise UserError(f"{src}: no video stream; `fix` shifts the audio of a video file")
        if not probe.streams.audio:
            raise UserError(f"{src}: no audio stream; nothing to shift")
        a_in = probe.streams.audio[0]
        sr, layout = a_in.rate, a_in.layout.name
        src_fps = _video_fps(probe.streams.video[0])
        audio = _decode_audio(probe, a_in, src)
    fps = float(fps) if fps else src_fps
    shift = int(round(offset_frames * sr / fps))
    audio = shift_audio(audio, shift)

    fmt = dst.suffix.lower().lstrip(".") or "mp4"
    codec = audio_codec or _AUDIO_CODEC_BY_FORMAT.get(fmt, "aac")
    with atomic_path(dst) as tmp, open_media(src) as inp:
        v_in, a_in = inp.streams.video[0], inp.streams.audio[0]
        try:
            out = av.open(str(tmp), mode="w", format=_muxer_name(dst))
        except (av.error.FFmpegError, ValueError) as exc:
            raise UserError(f"cannot write {dst} ({exc}); use an .mp4, .mkv or .mov output") from None
        try:
            n_packets = _remux(inp, out, v_in, a_in, audio, codec, sr, layout, src)
        except av.error.FFmpegError as exc:
            raise UserError(
                f"cannot write {dst} with copied {v_in.codec_context.name} video and {codec} audio ({exc}); "
                "try an .mkv output"
            ) from None
        finally:
            out.close()
    return FixResult(str(dst), int(offset_frames), shift, sr, fps, codec, n_packets)


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
