"""The MulT / video-student file format: weights + {"format", "kind", "config", "provenance"} in one safetensors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtdistill.models.weights import read_weights, save_weights

FORMAT = "mtdistill-mult/1"


def save_model(
    model: nn.Module, kind: str, config: dict[str, Any], path: str | Path, extra: dict[str, Any] | None = None
) -> Path:
    """Weights + {"format", "kind", "config", "provenance"} as one safetensors file, written atomically."""
    return save_weights(model, path, {"format": FORMAT, "kind": kind, "config": config}, extra)


def read_model_file(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a file `save_model` wrote; metadata is {} when the file carries none."""
    meta, state = read_weights(path)
    return meta or {}, state
