"""Opening media files with PyAV, guarded so that bad input becomes a one-line UserError, never a hang."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
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
