"""Pre-cropped faces: one full-frame track per video (`--full-frame`), the crop it maps to, and the automatic
recognition of a video that is one aligned face crop. Face-crop videos are made here by cutting a synthetic clip
to its detected face's square crop and writing it back as a real mp4."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from _track_rows import track_rows
from mtdistill.core.errors import UserError
from mtdistill.data.synthetic import talking_clip, write_mp4
from mtdistill.inference.subframe import subframe_offset
from mtdistill.media.crops import crop_face, crop_mouth
from mtdistill.media.tracking import (
    full_frame_box,
    full_frame_tracks,
    is_face_crop_video,
    iter_mouth_crops,
    mouth_crops,
    track_faces,
)

OFFSET_FRAMES = 4
CROP_SIDE = 128


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """A wide two-face video, a 160x160 one-face video, and the face-crop video cut from the latter."""
    root = tmp_path_factory.mktemp("fullframe")
    clip = talking_clip(321, 3.0, offset_frames=OFFSET_FRAMES)
    square = root / "square.mp4"
    write_mp4(square, clip.frames, clip.audio)
    track = track_faces(square)[0]
    faces = np.stack(
        [crop_face(clip.frames[track.start_frame + i], track.boxes[i], size=CROP_SIDE) for i in range(track.n_frames)]
    )
    crop = root / "facecrop.mp4"
    write_mp4(crop, faces, clip.audio[track.start_frame * 640 :])
    wide_clip = talking_clip(322, 2.5, n_faces=2)
    wide = root / "wide.mp4"
    write_mp4(wide, wide_clip.frames, wide_clip.audio)
    return {"square": square, "crop": crop, "wide": wide}


def test_the_full_frame_box_maps_to_the_whole_frame() -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)
    box = full_frame_box(128, 128)
    # the face crop of that box is the frame itself, resized: the same as a detected face cut to its square
    face = crop_face(frame, box)
    assert np.array_equal(face, cv2.resize(frame, (96, 96), interpolation=cv2.INTER_LINEAR))
    assert np.array_equal(crop_mouth(frame, box), face[48:])
    wide = full_frame_box(200, 100)
    assert (wide[2] - wide[0]) == pytest.approx(200 / 1.1) and (wide[0] + wide[2]) / 2 == 100
    with pytest.raises(UserError):
        full_frame_box(1, 100)


def test_full_frame_tracks_cover_every_frame(clips) -> None:
    (track,) = full_frame_tracks(clips["crop"])
    assert track.start_frame == 0 and track.valid.all()
    assert track.n_frames == pytest.approx(75 - track_faces(clips["square"])[0].start_frame, abs=1)
    assert np.allclose(track.boxes, full_frame_box(CROP_SIDE, CROP_SIDE))


def test_a_face_crop_video_gives_the_crops_of_the_detected_face(clips) -> None:
    full = np.concatenate([c for _, _, c, _ in iter_mouth_crops(clips["crop"], full_frame_tracks(clips["crop"]))])
    detected = mouth_crops(clips["square"])[0].crops
    n = min(len(full), len(detected))
    # the same pixels up to two H.264 encodings and two resamplings
    assert np.abs(full[:n].astype(int) - detected[:n].astype(int)).mean() < 6.0


def test_auto_mode_recognises_the_face_crop_only(clips) -> None:
    assert is_face_crop_video(clips["crop"])
    assert not is_face_crop_video(clips["wide"])  # two faces, 2:1 frame
    assert not is_face_crop_video(clips["square"])  # a face inside a larger picture: detection as usual


def test_full_frame_mode_recovers_the_offset_of_a_face_crop_video(trained_tiny_model, clips) -> None:
    starts, rows = track_rows(clips["crop"], trained_tiny_model, stride=2, tracks=full_frame_tracks(clips["crop"]))
    est = subframe_offset(rows, starts)
    assert est.offset_frames == OFFSET_FRAMES, est
    assert est.low_ms <= OFFSET_FRAMES * 40.0 <= est.high_ms


REAL = Path(__file__).resolve().parents[2] / "shared" / "realvideos"


@pytest.mark.realvideo
@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    ["latentsync_demo1_video.mp4", "pcavs_Audio_Source_00015.mp4", "sadtalker_WDA_KatieHill_000.mp4",
     "videoretalking_face_4.mp4"],
)  # fmt: skip
def test_real_clips_are_not_tight_face_crops(name: str) -> None:
    # 1080x1920 portrait, and 224 / 512 / 700 square generated clips whose face is 0.4-0.65 of the frame:
    # detection inside them gives the crop the models were trained on (LRS2 is re-detected 160x160 crops too)
    path = REAL / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    assert not is_face_crop_video(path)
