"""Checks of input paths, made before any work starts (one clear line instead of a late failure)."""

from __future__ import annotations

import os
from pathlib import Path

from mtdistill.core.errors import UserError


def file_or_folder(path: str | os.PathLike, name: str, missing: str) -> Path:
    """``path`` itself, or ``path / name`` when ``path`` is a folder (a run folder, a data folder).

    ``missing`` is the error line when that is not a file; ``{path}`` in it is replaced by the path tried.
    """
    p = Path(path)
    if p.is_dir():
        p = p / name
    if not p.is_file():
        raise UserError(missing.format(path=p))
    return p
