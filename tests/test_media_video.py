"""mtdistill.video decoding: probe, constant-25-fps resampling by timestamps, and bad input on real files."""

from __future__ import annotations

import math
import os
from fractions import Fraction

import av
import numpy as np
import pytest

from mtdistill.core.errors import UserError
from mtdistill.media.testmedia import face_frame_fn, tone, write_audio, write_video
from mtdistill.video import iter_frames, probe, track_faces

W, H, BITS = 128, 32, 8


def code_frame(i: int) -> np.ndarray:
    """Frame i carries its own index as 8 black/white blocks (survives H.264)."""
    img = np.zeros((H, W, 3), np.uint8)
    for b in range(BITS):
        if (i >> b) & 1:
            img[:, b * 16 : (b + 1) * 16] = 255
    return img


def read_code(img: np.ndarray) -> int:
    return sum(1 << b for b in range(BITS) if img[8:24, b * 16 + 4 : b * 16 + 12].mean() > 127)


def decoded_indices(path) -> list[int]:
    return [read_code(rgb) for _k, rgb in iter_frames(path)]


@pytest.mark.parametrize(
    "rate",
    [Fraction(25), Fraction(30), Fraction(30000, 1001), Fraction(50), Fraction(2213, 100)],
    ids=["25", "30", "29.97", "50", "22.13"],
)
def test_constant_rates_are_resampled_by_timestamps(tmp_path, rate: Fraction) -> None:
    n = int(2 * rate) + 1  # ~2 s
    write_video(tmp_path / "c.mp4", n, rate, (W, H), frame_fn=code_frame)
    got = decoded_indices(tmp_path / "c.mp4")
    duration = Fraction(n) / rate
    assert len(got) == math.ceil(duration * 25)  # frames while k / 25 < end of the last frame
    # frame k shows the last source frame with pts <= k / 25
    expected = [min(n - 1, math.floor(Fraction(k, 25) * rate)) for k in range(len(got))]
    assert got == expected


def test_unwanted_frames_are_skipped_without_shifting_the_timeline(tmp_path) -> None:
    # 30 fps source -> 25 fps: frames are dropped by timestamp; skipping conversion must not change which is which
    write_video(tmp_path / "w.mp4", 61, 30, (W, H), frame_fn=code_frame)
    every = decoded_indices(tmp_path / "w.mp4")
    got = list(iter_frames(tmp_path / "w.mp4", want=lambda k: k % 5 == 0))
    assert [k for k, _ in got] == list(range(len(every)))
    assert all((rgb is None) == (k % 5 != 0) for k, rgb in got)
    assert [read_code(rgb) for k, rgb in got if rgb is not None] == every[::5]


def test_variable_frame_rate_uses_pts(tmp_path) -> None:
    rng = np.random.default_rng(3)
    steps = rng.integers(15, 70, size=60)  # 15..70 ms between frames
    pts = np.concatenate([[0], np.cumsum(steps)[:-1]]).astype(int)
    write_video(
        tmp_path / "vfr.mkv",
        len(pts),
        25,
        (W, H),
        frame_fn=code_frame,
        pts_fn=lambda i: int(pts[i]),
        time_base=Fraction(1, 1000),
        container_format="matroska",
    )
    got = decoded_indices(tmp_path / "vfr.mkv")
    expected = [int(np.searchsorted(pts, 40 * k, side="right") - 1) for k in range(len(got))]
    assert got == expected
    assert abs(len(got) - math.ceil(pts[-1] / 40)) <= 2
    # repeated and skipped source frames both happen, but the timeline never shifts
    assert len(set(got)) < len(got) and max(got) == len(pts) - 1


def test_probe_reads_streams_and_counts_25fps_frames(tmp_path) -> None:
    audio = tone(int(44100 * 1.2), 44100, channels=2)
    write_video(tmp_path / "p.mp4", 36, 30, (96, 64), audio=audio, sr=44100)
    info = probe(tmp_path / "p.mp4")
    assert (info.width, info.height, info.fps) == (96, 64, 30.0)
    assert info.has_video and info.has_audio
    assert (info.audio_rate, info.audio_channels) == (44100, 2)
    assert info.n_frames == 30  # 1.2 s at 25 fps
    assert abs(info.duration_s - 1.2) < 0.1
    assert info.video_codec == "h264" and info.audio_codec == "aac"
    assert sum(1 for _ in iter_frames(tmp_path / "p.mp4")) == info.n_frames


def test_frames_are_generated_not_listed(tmp_path) -> None:
    write_video(tmp_path / "g.mp4", 10, 25, (W, H), frame_fn=code_frame)
    it = iter_frames(tmp_path / "g.mp4")
    k, rgb = next(it)
    assert k == 0 and rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
    it.close()  # closing early releases the file


def test_4k_frames_are_downscaled_and_tracked_in_original_coordinates(tmp_path) -> None:
    write_video(tmp_path / "4k.mp4", 10, 25, (3840, 2160))
    frames = list(iter_frames(tmp_path / "4k.mp4"))
    assert len(frames) == 10 and frames[0][1].shape == (1080, 1920, 3)
    assert next(iter_frames(tmp_path / "4k.mp4", max_width=None))[1].shape == (2160, 3840, 3)
    tracks = track_faces(tmp_path / "4k.mp4")
    assert len(tracks) == 1 and tracks[0].n_frames == 10
    cx = float(np.mean(tracks[0].boxes[:, [0, 2]]))
    assert abs(cx - 1920) < 250  # the face is drawn at the frame centre of the 3840-wide original


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_phone_videos_are_turned_as_a_player_shows_them(tmp_path, rotation: int) -> None:
    face = face_frame_fn(240, 320)

    def shown(i: int) -> np.ndarray:  # portrait, as the phone's owner saw it, with a white top-left corner
        img = face(i)
        img[:24, :24] = 255
        return img

    path = tmp_path / "phone.mp4"
    write_video(path, 30, 25, (240, 320), frame_fn=shown, audio=tone(30 * 640, 16000), rotation=rotation)
    with av.open(str(path)) as c:  # stored sideways or upside down, with a display matrix
        stored = c.streams.video[0].codec_context
        assert (stored.width, stored.height) == ((320, 240) if rotation != 180 else (240, 320))
    info = probe(path)
    assert (info.width, info.height, info.rotation) == (240, 320, rotation)
    _, rgb = next(iter(iter_frames(path)))
    assert rgb.shape == (320, 240, 3)
    assert rgb[:20, :20].mean() > 200 and rgb[-20:, -20:].mean() < 200  # the corner is where it was shown
    assert next(iter(iter_frames(path, max_width=120)))[1].shape == (160, 120, 3)  # max_width: as shown
    tracks = track_faces(path)
    assert len(tracks) == 1 and tracks[0].n_frames == 30
    cx, cy = float(np.mean(tracks[0].boxes[:, [0, 2]])), float(np.mean(tracks[0].boxes[:, [1, 3]]))
    assert abs(cx - 120) < 30 and abs(cy - 160) < 40  # shown coordinates: the face is drawn at the centre


# ------------------------------------------------------------------------------------------- bad input


@pytest.fixture
def good_mp4(tmp_path):
    path = tmp_path / "good.mp4"
    write_video(path, 50, 25, (W, H), frame_fn=code_frame, audio=tone(32000, 16000))
    return path


def test_zero_byte_file(tmp_path) -> None:
    (tmp_path / "z.mp4").write_bytes(b"")
    for fn in (probe, lambda p: list(iter_frames(p)), track_faces):
        with pytest.raises(UserError, match=r"empty \(0 bytes\)"):
            fn(tmp_path / "z.mp4")


def test_text_file_renamed_mp4(tmp_path) -> None:
    (tmp_path / "t.mp4").write_text("hello, I am a text file\n" * 50)
    with pytest.raises(UserError, match="cannot read it as audio/video"):
        probe(tmp_path / "t.mp4")
    with pytest.raises(UserError, match="cannot read it as audio/video"):
        list(iter_frames(tmp_path / "t.mp4"))


def test_truncated_mp4(tmp_path, good_mp4) -> None:
    data = good_mp4.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])  # moov atom (at the end) is lost
    with pytest.raises(UserError, match=r"cut\.mp4"):
        probe(tmp_path / "cut.mp4")
    with pytest.raises(UserError, match=r"cut\.mp4"):
        list(iter_frames(tmp_path / "cut.mp4"))


def test_truncated_faststart_mp4_keeps_the_decodable_frames(tmp_path) -> None:
    path = tmp_path / "fs.mp4"
    with av.open(str(path), "w", options={"movflags": "faststart"}) as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        vs.options = {"preset": "ultrafast", "g": "5"}
        for i in range(50):
            frame = av.VideoFrame.from_ndarray(code_frame(i), format="rgb24")
            frame.pts = i
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
    data = path.read_bytes()
    (tmp_path / "fs_cut.mp4").write_bytes(data[: int(len(data) * 0.6)])
    got = decoded_indices(tmp_path / "fs_cut.mp4")  # no exception: the tail is missing, the head decodes
    assert 0 < len(got) <= 50
    assert got == list(range(len(got)))


def test_audio_only_where_video_is_needed(tmp_path) -> None:
    write_audio(tmp_path / "a.m4a", tone(16000, 16000), 16000, codec="aac", container_format="mp4")
    info = probe(tmp_path / "a.m4a")
    assert info.has_audio and not info.has_video and info.n_frames == 0
    with pytest.raises(UserError, match="no video stream"):
        list(iter_frames(tmp_path / "a.m4a"))
    with pytest.raises(UserError, match="no video stream"):
        track_faces(tmp_path / "a.m4a")


def test_fifo_is_refused_instead_of_hanging(tmp_path) -> None:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this OS")
    os.mkfifo(tmp_path / "pipe.mp4")
    with pytest.raises(UserError, match="not a regular file"):
        probe(tmp_path / "pipe.mp4")


def test_missing_file(tmp_path) -> None:
    with pytest.raises(UserError, match="file not found"):
        probe(tmp_path / "nope.mp4")


def test_fewer_than_5_frames(tmp_path) -> None:
    write_video(tmp_path / "short.mp4", 3, 25, (160, 120))
    with pytest.raises(UserError, match=r"only 3 frame\(s\).*at least 5"):
        track_faces(tmp_path / "short.mp4")


def test_no_face_found(tmp_path) -> None:
    write_video(tmp_path / "wall.mp4", 20, 25, (160, 120), frame_fn=lambda i: np.full((120, 160, 3), 128, np.uint8))
    with pytest.raises(UserError, match="no face found in 20 frames"):
        track_faces(tmp_path / "wall.mp4")
