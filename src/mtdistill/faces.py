"""Face detectors (pluggable) and face tracking; see ``mtdistill.video`` for the full media API."""

from mtdistill.media.detectors import (
    DETECTORS,
    FaceDetector,
    HaarDetector,
    MtcnnDetector,
    RegionFaceDetector,
    detect_near,
    get_detector,
)
from mtdistill.media.tracking import FaceTrack, IouTracker, TrackCrops, iou_matrix, nms, smooth_boxes, track_faces

__all__ = [
    "DETECTORS",
    "FaceDetector",
    "FaceTrack",
    "HaarDetector",
    "IouTracker",
    "MtcnnDetector",
    "RegionFaceDetector",
    "TrackCrops",
    "detect_near",
    "get_detector",
    "iou_matrix",
    "nms",
    "smooth_boxes",
    "track_faces",
]
