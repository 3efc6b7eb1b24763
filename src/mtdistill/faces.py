"""Face detectors (pluggable) and face tracking; see ``mtdistill.video`` for the full media API."""

from mtdistill.media.detectors import (
    DEFAULT_DETECTOR,
    DETECTORS,
    FaceDetector,
    HaarDetector,
    MtcnnDetector,
    RegionFaceDetector,
    RetinaFaceDetector,
    Search,
    detect_near,
    get_detector,
)
from mtdistill.media.tracking import FaceTrack, IouTracker, TrackCrops, iou_matrix, nms, smooth_boxes, track_faces

__all__ = [
    "DEFAULT_DETECTOR",
    "DETECTORS",
    "FaceDetector",
    "FaceTrack",
    "HaarDetector",
    "IouTracker",
    "MtcnnDetector",
    "RegionFaceDetector",
    "RetinaFaceDetector",
    "Search",
    "TrackCrops",
    "detect_near",
    "get_detector",
    "iou_matrix",
    "nms",
    "smooth_boxes",
    "track_faces",
]
