"""Opening media files with PyAV, guarded so that bad input becomes a one-line UserError, never a hang."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av

from mtdistill.core.errors import UserError

OPEN_TIMEOUT_S = 20.0
"""PyAV's interrupt callback aborts an open or a read that blocks longer than this (broken or endless input)."""


def check_media_path(path: str | os.PathLike) -> Path:
    """Reject what PyAV would choke or block on before opening it: missing, empty, or not a regular file."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise UserError(f"{p}: file not found; check the path") from None
    except OSError as exc:
        raise UserError(f"{p}: cannot access ({exc.strerror}); check the path and permissions") from None
    if not stat.S_ISREG(st.st_mode):
        # a FIFO or device would make the demuxer wait for data forever
        raise UserError(f"{p}: not a regular file; give a media file (mp4, mkv, wav, ...)")
    if st.st_size == 0:
        raise UserError(f"{p}: file is empty (0 bytes); re-export or re-download it")
    return p


@contextmanager
def open_media(path: str | os.PathLike) -> Iterator[av.container.InputContainer]:
    """Open a media file for reading; any FFmpeg failure to open it becomes a UserError."""
    p = check_media_path(path)
    try:
        container = av.open(str(p), mode="r", timeout=(OPEN_TIMEOUT_S, OPEN_TIMEOUT_S), metadata_errors="ignore")
    except av.error.FFmpegError as exc:
        raise UserError(f"{p}: cannot read it as audio/video ({_reason(exc)}); is it a complete media file?") from None
    try:
        yield container
    finally:
        container.close()


def container_origin(container: av.container.InputContainer) -> Fraction:
    """Presentation time (s) that counts as t = 0 for every stream: the container's start time.

    Using one origin for audio and video keeps them on the same timeline (a stream that starts later is
    padded, never shifted).
    """
    start = container.start_time
    if start is None:
        return Fraction(0)
    return Fraction(int(start), av.time_base)


def stream_start(stream: av.stream.Stream, default: Fraction) -> Fraction:
    """Start time (s) of one stream, or `default` where the container does not say."""
    if stream.start_time is None or stream.time_base is None:
        return default
    return Fraction(int(stream.start_time)) * Fraction(stream.time_base)


def decode_error(path: str | os.PathLike, exc: Exception) -> UserError:
    """The UserError for a stream that fails while decoding (truncated or corrupt data)."""
    return UserError(f"{path}: decoding failed ({_reason(exc)}); the file looks truncated or corrupt")


def _reason(exc: Exception) -> str:
    # FFmpegError's str() repeats the file name; keep only the library's reason, on one line
    msg = getattr(exc, "strerror", None) or str(exc)
    return " ".join(str(msg).split())


# ---------------------------------------------------------------------------------------------- damage report

SHORT_SPAN_FRACTION = 0.9
"""A stream that decodes to less than this fraction of the file's duration (and at least SHORT_SPAN_MIN_S
short of it) is reported as cut short: the analysis saw only its start."""
SHORT_SPAN_MIN_S = 0.5


@dataclass
class DecodeReport:
    """Decoding problems met in one analysis, per (file, stream kind "video" / "audio").

    Readers note into the report that `collect_decode_problems` made active (a context variable, so nested
    generators and worker processes need no extra argument); without one, nothing is recorded.
    """

    errors: dict[tuple[str, str], int] = field(default_factory=dict)
    """Packets that failed to decode (skipped; video frames hold the last good picture there)."""
    first: dict[tuple[str, str], tuple[float | None, str]] = field(default_factory=dict)
    """Time (s, or None when the packet had none) and reason of the first problem."""
    stopped: dict[tuple[str, str], float | None] = field(default_factory=dict)
    """Streams whose reading ended early at an error, and where (s)."""
    decoded_end: dict[tuple[str, str], float] = field(default_factory=dict)
    """End time (s) of what decoded, for streams read to their end."""

    def messages(self, path: str | os.PathLike, expected_end_s: dict[str, float] | None = None) -> list[str]:
        """One line per problem of ``path``; with ``expected_end_s`` (per stream kind, e.g. `stream_ends`), also
        the streams that decoded to much less than that."""
        out = []
        for kind in ("video", "audio"):
            key = (str(path), kind)
            duration_s = (expected_end_s or {}).get(kind)
            at, reason = self.first.get(key, (None, ""))
            where = f" (first at {at:.2f} s: {reason})" if at is not None else f" ({reason})" if reason else ""
            if self.errors.get(key):
                n = self.errors[key]
                what = "the picture is damaged there" if kind == "video" else "the sound is missing there"
                out.append(f"{kind}: {n} packet{'s' if n > 1 else ''} could not be decoded{where}; {what}")
            if key in self.stopped:
                stop = self.stopped[key]
                at_text = f" at {stop:.2f} s" if stop is not None else ""
                out.append(f"{kind}: decoding stopped{at_text} on a damaged part ({reason}); the rest was not read")
            end = self.decoded_end.get(key)
            if (
                duration_s
                and key not in self.stopped  # already said
                and end is not None
                and end < SHORT_SPAN_FRACTION * duration_s
                and duration_s - end >= SHORT_SPAN_MIN_S
            ):
                out.append(
                    f"{kind}: only {end:.2f} s of the stream's {duration_s:.2f} s decoded; the file looks truncated "
                    "or damaged, and the rest was not analysed"
                )
        return out

    def note_decoded_end(self, path: str | os.PathLike, kind: str, end_s: float) -> None:
        key = (str(path), kind)
        self.decoded_end[key] = max(self.decoded_end.get(key, 0.0), float(end_s))


_REPORT: ContextVar[DecodeReport | None] = ContextVar("mtdistill_decode_report", default=None)


@contextmanager
def collect_decode_problems() -> Iterator[DecodeReport]:
    """Record the decoding problems of everything read inside the block into a new `DecodeReport`."""
    report = DecodeReport()
    token = _REPORT.set(report)
    try:
        yield report
    finally:
        _REPORT.reset(token)


def stream_ends(path: str | os.PathLike) -> dict[str, float]:
    """End (s on the container timeline) of the first video and audio stream as the headers give it (the
    container's duration for a stream that states none): what a complete decode reaches."""
    with open_media(path) as container:
        origin = container_origin(container)
        total = container.duration / av.time_base if container.duration else None
        out: dict[str, float] = {}
        for kind, streams in (("video", container.streams.video), ("audio", container.streams.audio)):
            if not streams:
                continue
            s = streams[0]
            if s.duration is not None and s.time_base is not None:
                start = stream_start(s, origin)
                out[kind] = float(start - origin + Fraction(int(s.duration)) * Fraction(s.time_base))
            elif total:
                out[kind] = float(total)
        return out


def active_report() -> DecodeReport | None:
    """The report `collect_decode_problems` made active, or None."""
    return _REPORT.get()


def note_decode_error(
    path: str | os.PathLike, kind: str, exc: Exception, at_s: float | None = None, stopped: bool = False
) -> None:
    """Record one packet that failed to decode (or, with ``stopped``, a read that ended at the error)."""
    report = _REPORT.get()
    if report is None:
        return
    key = (str(path), kind)
    report.first.setdefault(key, (None if at_s is None else float(at_s), _reason(exc)))
    if stopped:
        report.stopped.setdefault(key, None if at_s is None else float(at_s))
    else:
        report.errors[key] = report.errors.get(key, 0) + 1


def note_decoded_end(path: str | os.PathLike, kind: str, end_s: float) -> None:
    """Record where a stream read to its end stopped decoding (s on the container timeline)."""
    report = _REPORT.get()
    if report is not None:
        report.note_decoded_end(path, kind, end_s)
