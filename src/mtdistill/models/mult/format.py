"""The MulT / video-student file format: weights + {"format", "kind", "config", "provenance"} in one safetensors."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from mtdistill import __version__
from mtdistill.core.errors import UserError
from mtdistill.core.safeio import atomic_path

FORMAT = "mtdistill-mult/1"


def save_model(
    model: nn.Module, kind: str, config: dict[str, Any], path: str | Path, extra: dict[str, Any] | None = None
) -> Path:
    """Weights + {"format", "kind", "config", "provenance"} as one safetensors file, written atomically."""
    meta = {
        "format": FORMAT,
        "kind": kind,
        "config": config,
        "provenance": {
            "mtdistill": __version__,
            "torch": torch.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **(extra or {}),
        },
    }
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"mtdistill": json.dumps(meta)})
    return path


def read_model_file(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a file `save_model` wrote; metadata is {} when the file carries none."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get("mtdistill")
            state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        meta = json.loads(raw) if raw else {}
    except ValueError:
        raise UserError(f"{path}: its mtdistill metadata is not JSON") from None
    return (meta if isinstance(meta, dict) else {}), state
