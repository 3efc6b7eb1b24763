"""`--device` values: "auto", "cpu", "cuda", "cuda:N" (checked before any work starts)."""

from __future__ import annotations

import torch

from mtdistill.core.errors import UserError


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but no CUDA GPU is available; use --device cpu")
    return name
