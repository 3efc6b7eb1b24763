"""Which face tracks `sync` scores: detected and tracked faces, or the whole frame of a face-crop video."""

from __future__ import annotations

import os

from mtdistill.media.tracking import FaceTrack, full_frame_tracks, is_face_crop_video, track_faces


def find_tracks(
    path: str | os.PathLike,
    detector: str,
    detect_every: int,
    rescan_every: int,
    full_frame: bool | None,
    progress: bool = False,
) -> list[FaceTrack]:
    """One whole-frame track for a face-crop video (``full_frame`` True, or None and `is_face_crop_video`),
    else the detected and tracked faces (`media.tracking.track_faces`)."""
    if full_frame or (full_frame is None and is_face_crop_video(path, detector=detector)):
        return full_frame_tracks(path)
    return track_faces(path, detector=detector, detect_every=detect_every, progress=progress, rescan_every=rescan_every)
