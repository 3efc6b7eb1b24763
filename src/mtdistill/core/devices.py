"""`--device` values: "auto", "cpu", "cuda", "cuda:N", "mps" (checked before any work starts)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from mtdistill.core.errors import UserError

_CUDA = re.compile(r"cuda(?::(\d+))?")
CHOICES = "auto, cpu, cuda, cuda:N or mps"


def pick_device(name: str | None) -> str:
    """The torch device string for a `--device` value; UserError for unknown names and absent hardware."""
    text = str(name).strip().lower() if name is not None else "auto"
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return "cpu"
    if text == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UserError("--device mps asked for, but no Apple GPU is available; use --device cpu")
        return "mps"
    match = _CUDA.fullmatch(text)
    if match is None:
        raise UserError(f"unknown --device {name!r}; choose {CHOICES}")
    if not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but no CUDA GPU is available; use --device cpu")
    index = match.group(1)
    if index is not None and int(index) >= torch.cuda.device_count():
        raise UserError(
            f"--device {name} asked for, but only {torch.cuda.device_count()} CUDA GPU(s) are visible; "
            "use cuda:0 .. cuda:N-1"
        )
    return text


@dataclass(frozen=True)
class BatchSizes:
    """How many items one model call takes when scoring many windows (speed only: every result is per item)."""

    pairs: int
    """(visual window, audio window) pairs per call of the transformer backend."""
    windows: int
    """Windows per call of the video / audio encoder."""


CPU_BATCHES = BatchSizes(pairs=128, windows=8)
"""On a CPU small batches stay in cache: against (1024, 32) the student's backend is ~25 % and its video encoder
~20 % faster per item, the teacher's backend ~18 % (benchmarks/RESULTS.md, "Batch sizes on the CPU")."""
ACCELERATOR_BATCHES = BatchSizes(pairs=1024, windows=32)
"""On a GPU large batches fill the device. The video prenet's first two layers hold (windows, 2 * width_0, 48, 96,
5) floats: 32 windows keep the student near 150 MB of activations (128 peaked at ~1 GB)."""


def batch_sizes(device: str | torch.device) -> BatchSizes:
    """The batch sizes for scoring on ``device``: `CPU_BATCHES` on a CPU, else `ACCELERATOR_BATCHES`."""
    return CPU_BATCHES if torch.device(device).type == "cpu" else ACCELERATOR_BATCHES
