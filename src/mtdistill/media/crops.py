"""Mouth crops: square face box (+ margin) -> 96x96 (cv2 INTER_LINEAR, as the official pipeline) -> rows 48:96."""

from __future__ import annotations

import cv2
import numpy as np

from mtdistill.core.errors import UserError

FACE_SIZE = 96
CROP_MARGIN = 0.10
"""The square crop's side is max(box w, box h) x (1 + CROP_MARGIN), centred on the box: a little context
around the detector's face box so the chin and mouth corners stay inside the 96x96 face."""


def square_box(box: np.ndarray, margin: float = CROP_MARGIN) -> tuple[float, float, float]:
    """(cx, cy, side) of the square crop for a face box [x1, y1, x2, y2]."""
    x1, y1, x2, y2 = (float(v) for v in np.asarray(box, dtype=np.float64)[:4])
    side = max(x2 - x1, y2 - y1) * (1.0 + margin)
    return (x1 + x2) / 2.0, (y1 + y2) / 2.0, side


def crop_face(frame_rgb: np.ndarray, box: np.ndarray, margin: float = CROP_MARGIN, size: int = FACE_SIZE) -> np.ndarray:
    """The (size, size, 3) uint8 face: the square around `box`, edge pixels repeated where it leaves the frame."""
    if frame_rgb.ndim != 3 or frame_rgb.shape[2] != 3:
        raise UserError(f"crop_mouth takes an RGB (H, W, 3) frame, got shape {frame_rgb.shape}")
    cx, cy, side = square_box(box, margin)
    if not np.isfinite(side) or side < 2:
        raise UserError(f"face box {np.asarray(box)[:4].tolist()} is empty; boxes are [x1, y1, x2, y2] pixels")
    x0 = int(round(cx - side / 2.0))
    y0 = int(round(cy - side / 2.0))
    s = max(2, int(round(side)))
    h, w = frame_rgb.shape[:2]
    # the part inside the frame, then replicate-pad the rest (no shift of the face inside the crop)
    ix0, iy0, ix1, iy1 = max(0, x0), max(0, y0), min(w, x0 + s), min(h, y0 + s)
    if ix1 <= ix0 or iy1 <= iy0:
        raise UserError(f"face box {np.asarray(box)[:4].tolist()} lies outside the {w}x{h} frame")
    region = frame_rgb[iy0:iy1, ix0:ix1]
    if (ix0, iy0, ix1, iy1) != (x0, y0, x0 + s, y0 + s):
        region = cv2.copyMakeBorder(
            region, iy0 - y0, y0 + s - iy1, ix0 - x0, x0 + s - ix1, borderType=cv2.BORDER_REPLICATE
        )
    return cv2.resize(np.ascontiguousarray(region), (size, size), interpolation=cv2.INTER_LINEAR)


def crop_mouth(frame_rgb: np.ndarray, box: np.ndarray, margin: float = CROP_MARGIN) -> np.ndarray:
    """Lower half of the 96x96 face crop of `box` in `frame_rgb`: (48, 96, 3) uint8 RGB (the model's input)."""
    face = crop_face(frame_rgb, box, margin)
    return np.ascontiguousarray(face[FACE_SIZE // 2 :])
