"""Our model files, for both systems: a module's weights and one JSON record in a single safetensors file.

The record sits under the safetensors metadata key ``mtdistill``. Each system puts its own fields in it
(``format``, ``config``, ...: `models.vocalist`, `models.mult.format`); this module adds ``provenance``
(package and torch versions, creation time, and what the caller adds) and writes atomically.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from mtdistill import __version__
from mtdistill.core.errors import UserError
from mtdistill.core.safeio import atomic_path

METADATA_KEY = "mtdistill"


def save_weights(
    model: nn.Module, path: str | Path, record: dict[str, Any], extra: dict[str, Any] | None = None
) -> Path:
    """``model``'s state_dict and ``record`` + {"provenance": versions, time, ``extra``} as one safetensors file."""
    provenance = {"mtdistill": __version__, "torch": torch.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    meta = {**record, "provenance": {**provenance, **(extra or {})}}
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(meta)})
    return path


def read_weights(path: str | Path) -> tuple[dict[str, Any] | None, dict[str, Tensor]]:
    """(the record or None when the file has none, tensors) of a safetensors file; one-line errors."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(METADATA_KEY)
            state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable safetensors file, or truncated ({exc})") from None
    try:
        meta = json.loads(raw) if raw else None
    except ValueError:
        raise UserError(f"{path}: its mtdistill metadata is not JSON") from None
    return (meta if isinstance(meta, dict) else None), state
