"""Input presets: how RGB mouth crops become model input (design.md §3.3).

Everything on disk is RGB uint8. A preset is applied when frames become a tensor:

* ``vocalist`` - the official VocaLiST weights: BGR channel order, values / 255 -> [0, 1];
* ``mtd``      - the MTDVocaLiST checkpoints: RGB channel order, values 0..255 as float.

The official pipelines also resize differently (cv2 bilinear vs torchvision with antialias); our crops are
resized once with cv2 bilinear (see mtdistill.video), which the docs list as a known, small difference.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mtdistill.core.errors import UserError
from mtdistill.core.timing import WINDOW_FRAMES

PRESETS = ("vocalist", "mtd")


def check_preset(preset: str | None) -> str:
    """Return the preset or stop with a one-line error that says how to choose one."""
    if preset is None:
        raise UserError(
            "this model has no input preset (an official checkpoint): pass --preset vocalist "
            "(vocalist_5f_lrs2.pth: BGR, [0,1]) or --preset mtd (pure_MTDVocaLiST.pth: RGB, 0..255)"
        )
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return preset


def frames_to_input(frames: np.ndarray | Tensor, preset: str | None) -> Tensor:
    """(N, 48, 96, 3) uint8 RGB lower-half crops -> float (N, 3, 48, 96) in the preset's order and range."""
    preset = check_preset(preset)
    x = torch.as_tensor(np.asarray(frames) if not isinstance(frames, Tensor) else frames)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise UserError(f"expected frames of shape (N, H, W, 3), got {tuple(x.shape)}")
    x = x.permute(0, 3, 1, 2).float()
    if preset == "vocalist":
        return x.flip(1) / 255.0
    return x


def windows_to_video(
    frames_chw: Tensor, starts: Tensor | list[int] | np.ndarray, window: int = WINDOW_FRAMES
) -> Tensor:
    """(N, 3, 48, 96) frames -> (W, 3*window, 48, 96) windows starting at ``starts``, channels frame-major."""
    starts_t = torch.as_tensor(np.asarray(starts), dtype=torch.long, device=frames_chw.device)
    idx = starts_t[:, None] + torch.arange(window, device=frames_chw.device)[None, :]
    w = frames_chw[idx]  # (W, window, 3, H, W)
    return w.reshape(w.shape[0], window * w.shape[2], *w.shape[3:])
