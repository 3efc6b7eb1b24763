"""Optional: the four real talking-face clips in ../shared/realvideos (skipped when the folder is absent)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from mtdistill.audio import load_audio
from mtdistill.cli import main
from mtdistill.video import iter_mouth_crops, probe, track_faces
from test_inference_fix import lag, video_packets

REAL = Path(__file__).resolve().parents[2] / "shared" / "realvideos"
CLIPS = [
    "pcavs_Audio_Source_00015.mp4",  # 224x224, 25 fps, h264
    "videoretalking_face_4.mp4",  # 700x700, 30 fps, 44.1 kHz stereo
    "sadtalker_WDA_KatieHill_000.mp4",  # 512x512, mpeg4
    "latentsync_demo1_video.mp4",  # 1080x1920 HEVC, half body
]

pytestmark = [pytest.mark.realvideo, pytest.mark.slow]


@pytest.mark.parametrize("name", CLIPS)
def test_real_clip_gives_a_face_track_over_most_frames(name: str) -> None:
    path = REAL / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    info = probe(path)
    tracks = track_faces(path, detect_every=5)
    best = max(tracks, key=lambda t: int(t.valid.sum()))
    assert best.valid.sum() >= 0.8 * info.n_frames
    assert len(tracks) <= 2  # cascade false positives are filtered
    # the face is big enough for a 96x96 crop to be meaningful
    width = float(np.median(best.boxes[:, 2] - best.boxes[:, 0]))
    assert width > 0.15 * min(info.width, info.height)
    pieces = list(iter_mouth_crops(path, [best], chunk=100))
    assert sum(len(c) for _, _, c, _ in pieces) == best.n_frames
    wave = load_audio(path)
    assert abs(len(wave) / 16000 - info.duration_s) < 0.2


# ------------------------------------------------------------------------ the commands on real clips


@pytest.fixture(scope="module")
def trained_ckpt() -> Path:
    path = Path(__file__).parent / "data" / "trained_tiny.safetensors"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return path


def real(name: str) -> Path:
    path = REAL / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return path


def test_sync_json_on_the_hd_hevc_clip_torch_and_onnx(trained_ckpt, tmp_path, capsys) -> None:
    clip = real("latentsync_demo1_video.mp4")
    assert main(["sync", str(clip), "--checkpoint", str(trained_ckpt), "--stride", "5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["source_fps"] == 25 and abs(out["duration_s"] - 10.01) < 0.05 and len(out["tracks"]) == 1
    track = out["tracks"][0]
    assert (track["start_frame"], track["end_frame"], track["n_windows"]) == (0, 249, 50)
    assert len(track["curve"]) == 31 and track["offset_ms"] == 40.0 * track["offset_frames"]
    # the exported model gives the same answer through onnxruntime
    onnx = tmp_path / "tiny.onnx"
    assert main(["export", str(trained_ckpt), "-o", str(onnx)]) == 0
    capsys.readouterr()
    assert main(["sync", str(clip), "--onnx", str(onnx), "--stride", "5", "--json"]) == 0
    via_onnx = json.loads(capsys.readouterr().out)["tracks"][0]
    assert via_onnx["offset_frames"] == track["offset_frames"]
    assert np.allclose(via_onnx["curve"], track["curve"], atol=1e-3)


def test_score_a_folder_of_real_clips(trained_ckpt, tmp_path, capsys) -> None:
    folder = tmp_path / "clips"
    folder.mkdir()
    names = ["pcavs_Audio_Source_00015.mp4", "videoretalking_face_4.mp4"]
    for name in names:
        (folder / name).symlink_to(real(name))
    out = tmp_path / "scores.csv"
    args = ["score", str(folder), "--csv", str(out), "--checkpoint", str(trained_ckpt), "--stride", "5"]
    assert main(args) == 0
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(Path(r["video"]).name for r in rows) == names
    for r in rows:
        assert r["error"] == "" and r["verdict"] in {"in_sync", "out_of_sync", "undetermined"}
    by_name = {Path(r["video"]).name: r for r in rows}
    assert abs(float(by_name["videoretalking_face_4.mp4"]["duration_s"]) - 6.63) < 0.05


def test_fix_a_real_44k_stereo_clip_moves_its_audio_and_copies_its_video(tmp_path) -> None:
    clip = real("videoretalking_face_4.mp4")
    out = tmp_path / "fixed.mp4"
    # a 30 fps clip: --offset counts sync's 25 fps frames, 3 of them are 1,920 samples at 16 kHz; with --fps 30
    # it counts the clip's own frames, 3 of them are 1,600
    for fps, shift in ((None, 1920), (30, 1600)):
        args = ["fix", str(clip), "-o", str(out), "--offset", "3"] + (["--fps", str(fps)] if fps else [])
        assert main(args) == 0
        assert video_packets(out) == video_packets(clip)
        before, after = load_audio(clip), load_audio(out)  # both at 16 kHz mono
        assert abs(len(after) - len(before)) <= 640
        d, corr = lag(after, before, max_lag=2500)
        assert d == shift and corr > 0.9
