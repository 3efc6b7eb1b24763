"""`--device` values: "auto", "cpu", "cuda", "cuda:N", "mps" (checked before any work starts)."""

from __future__ import annotations

import re

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
