"""Video for lip sync: probing, constant-25-fps decoding, face detection and tracking, mouth crops.

Typical use::

    from mtdistill.video import probe, track_faces, iter_mouth_crops
    tracks = track_faces("talk.mp4")                     # list[FaceTrack], RetinaFace detector, every frame
    for track_id, start, crops, valid in iter_mouth_crops("talk.mp4", tracks):
        ...                                              # crops: (n, 48, 96, 3) uint8 RGB, n <= 250

The pieces live in ``mtdistill.media.*``; this module is the stable import path.
"""

from mtdistill.media.crops import CROP_MARGIN, crop_face, crop_mouth
from mtdistill.media.detectors import (
    DEFAULT_DETECTOR,
    DETECTORS,
    FaceDetector,
    HaarDetector,
    MtcnnDetector,
    RetinaFaceDetector,
    get_detector,
)
from mtdistill.media.frames import MAX_WIDTH, MediaInfo, iter_frames, probe
from mtdistill.media.tracking import FaceTrack, TrackCrops, iter_mouth_crops, mouth_crops, track_faces

__all__ = [
    "CROP_MARGIN",
    "DEFAULT_DETECTOR",
    "DETECTORS",
    "MAX_WIDTH",
    "FaceDetector",
    "FaceTrack",
    "HaarDetector",
    "MediaInfo",
    "MtcnnDetector",
    "RetinaFaceDetector",
    "TrackCrops",
    "crop_face",
    "crop_mouth",
    "get_detector",
    "iter_frames",
    "iter_mouth_crops",
    "mouth_crops",
    "probe",
    "track_faces",
]
