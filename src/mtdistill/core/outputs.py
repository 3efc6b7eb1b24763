"""Checks of output paths, made before any long work starts (one clear line instead of a late failure).

Writability is tested by creating (and removing) a hidden empty file in the nearest existing folder: that is
what the later atomic write (`mtdistill.core.safeio.atomic_path`) needs, and it answers correctly where
``os.access`` does not (read-only mounts, ACLs, root).
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from mtdistill.core.errors import UserError


def _nearest_existing(path: Path) -> Path:
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    return probe


def _check_writable_folder(folder: Path, path: Path, option: str) -> None:
    """UserError unless a file can be created in ``folder`` (the folder that will hold ``path``)."""
    if not folder.is_dir():
        raise UserError(f"{option} {path}: {folder} is not a folder; choose another path")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".mtdistill-write-check.", dir=folder)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            reason = f"{reason}; no write permission in {folder}"
        raise UserError(f"{option} {path}: cannot write there ({reason}); choose another path") from None
    os.close(fd)
    os.unlink(tmp)


def check_output_file(path: str | os.PathLike, option: str = "output") -> Path:
    """Refuse an output file path that is a folder or lies where no file can be written; returns it as a Path."""
    p = Path(path)
    if str(path) == "" or p.name in ("", ".", ".."):
        raise UserError(f"{option} {str(path)!r} is not a file name; give a file path such as out/result.png")
    if p.is_dir():
        raise UserError(f"{option} {p} is a folder; give a file path inside it, e.g. {p / 'out'}")
    if p.exists() and not p.is_file():
        raise UserError(f"{option} {p} exists and is not a regular file; choose another path")
    _check_writable_folder(_nearest_existing(p.parent if str(p.parent) else Path(".")), p, option)
    return p


def check_output_folder(path: str | os.PathLike, option: str = "output folder") -> Path:
    """Refuse an output folder that is an existing file or cannot be created / written; returns it as a Path."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"{option} {p} is an existing file, not a folder; give a folder path")
    _check_writable_folder(_nearest_existing(p), p, option)
    return p
