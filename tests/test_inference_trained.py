"""Offset recovery with a model trained on the synthetic corpus: |k| <= 10 within +-1 frame, right sign.

Training a VocaLiST model on CPU takes longer than the test budget, so these tests use the committed model of the
session fixture ``trained_tiny_model`` (tests/conftest.py; recipe configs/synthetic_tiny.yaml).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mtdistill.data.synthetic import make_talking_video
from mtdistill.inference.sync import sync_video

OFFSETS = (-10, -6, -3, -1, 0, 2, 4, 7, 10)
TRAINED_TINY = Path(__file__).parent / "data" / "trained_tiny.safetensors"


@pytest.fixture(scope="module")
def trained(request):
    try:
        model = request.getfixturevalue("trained_tiny_model")
    except pytest.FixtureLookupError:
        pytest.skip("needs the shared trained_tiny_model fixture (tests/conftest.py)")
    if isinstance(model, (str, Path)):
        from mtdistill.models import VocaLiST

        model = VocaLiST.from_checkpoint(model)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("k", OFFSETS)
def test_trained_model_recovers_offset_and_sign(trained, tmp_path, k: int) -> None:
    path = tmp_path / f"offset_{k}.mp4"
    make_talking_video(path, seed=500 + k, duration_s=3.0, offset_frames=k)
    track = sync_video(path, trained, stride=1).main_track()
    assert abs(track.offset_frames - k) <= 1, (k, track.offset_frames, track.curve)
    if abs(k) >= 2:
        assert (track.offset_frames > 0) == (k > 0)  # positive = audio leads video
        assert track.verdict in {"out_of_sync", "undetermined"}


@pytest.mark.slow
def test_bf16_autocast_gives_the_same_offset(trained, tmp_path) -> None:
    path = tmp_path / "offset_5.mp4"
    make_talking_video(path, seed=77, duration_s=3.0, offset_frames=5)
    fp32 = sync_video(path, trained, stride=1).main_track()
    bf16 = sync_video(path, trained, stride=1, bf16=True).main_track()
    assert fp32.offset_frames == bf16.offset_frames == 5
    assert abs(fp32.confidence - bf16.confidence) < 0.1 * max(1.0, fp32.confidence)


def test_confident_verdicts_on_shifted_and_mismatched_audio(trained, tmp_path) -> None:
    from mtdistill.data.synthetic import talking_clip, write_mp4

    shifted = tmp_path / "shifted.mp4"
    make_talking_video(shifted, seed=31, duration_s=4.0, offset_frames=6)
    assert sync_video(shifted, trained, stride=1).main_track().verdict == "out_of_sync"
    a, b = talking_clip(41, 4.0), talking_clip(4100, 4.0)  # another clip's audio: no true offset
    dubbed = tmp_path / "dubbed.mp4"
    write_mp4(dubbed, a.frames, b.audio)
    assert sync_video(dubbed, trained, stride=1).main_track().verdict == "undetermined"


@pytest.mark.slow
def test_fix_auto_puts_a_shifted_clip_back_in_sync(trained, tmp_path) -> None:
    from mtdistill.cli import main

    shifted, fixed = tmp_path / "shifted.mp4", tmp_path / "fixed.mp4"
    make_talking_video(shifted, seed=61, duration_s=4.0, offset_frames=-7)
    # Haar, explicitly: the committed tiny model was trained on a store prepared with Haar (the default until
    # RetinaFace), and its calibrated threshold (1.8) is measured on Haar crops. With the RetinaFace crops of
    # this clip it finds the same offset (-7) at confidence 1.29 (undetermined); a model trained on a store
    # prepared with the default sees the same crops in `sync` (docs/media.md).
    # --min-confidence 1.8 (the model's calibrated margin): on this 4 s clip at stride 1 the windows overlap, so the
    # p-value has few independent windows to go on (p 0.32 here) and would call the estimate undetermined; this test
    # is about fix applying the estimate, and the explicit margin rule is a documented way to ask for it
    cmd = ["fix", str(shifted), "-o", str(fixed), "--checkpoint", str(TRAINED_TINY), "--detector", "haar"]
    assert main([*cmd, "--min-confidence", "1.8"]) == 0  # --offset auto
    after = sync_video(fixed, trained, stride=1, detector="haar", min_confidence=1.8).main_track()
    assert abs(after.offset_frames) <= 1 and after.verdict == "in_sync", (after.offset_frames, after.confidence)


def test_a_phone_video_stored_sideways_gives_the_offset(trained, tmp_path) -> None:
    from mtdistill.data.synthetic import talking_clip
    from mtdistill.media.testmedia import write_video

    clip = talking_clip(88, 3.0, offset_frames=4)
    n, h, w = clip.frames.shape[:3]
    phone = tmp_path / "phone.mp4"
    write_video(phone, n, 25, (w, h), frame_fn=lambda i: clip.frames[i], audio=clip.audio, rotation=270)
    track = sync_video(phone, trained, stride=5).main_track()
    assert abs(track.offset_frames - 4) <= 1 and track.n_windows >= 10


FORMATS = [
    # (file, video codec, audio codec, container, frame rate, audio rate)
    ("vp9_opus.webm", "libvpx-vp9", "libopus", "webm", 25, 48000),
    ("hevc_pcm.mov", "libx265", "pcm_s16le", "mov", 25, 16000),
    ("mpeg4_mp3.avi", "mpeg4", "libmp3lame", "avi", 25, 44100),
    ("h264_flac_30fps.mkv", "libx264", "flac", "matroska", 30, 16000),
    ("av1_aac_50fps.mp4", "libsvtav1", "aac", "mp4", 50, 22050),
]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS, ids=[f[0] for f in FORMATS])
def test_offset_survives_other_containers_codecs_and_rates(trained, tmp_path, fmt) -> None:
    import av
    import numpy as np

    from mtdistill.data.synthetic import talking_clip
    from mtdistill.media.testmedia import write_video

    name, vcodec, acodec, container, fps, sr = fmt
    for codec in (vcodec, acodec):
        try:
            av.codec.Codec(codec, "w")
        except av.codec.codec.UnknownCodecError:
            pytest.skip(f"this PyAV build has no {codec} encoder")
    # the clip's own frames: 6 frames at 30 fps and 10 at 50 fps are the same 200 ms as 5 frames at 25 fps
    clip = talking_clip(90, 3.0, offset_frames=5 * fps // 25, fps=fps)
    n, h, w = clip.frames.shape[:3]
    t_out = np.arange(int(len(clip.audio) * sr / 16000)) / sr
    audio = np.interp(t_out, np.arange(len(clip.audio)) / 16000, clip.audio).astype(np.float32)
    path = tmp_path / name
    write_video(
        path, n, fps, (w, h), frame_fn=lambda i: clip.frames[i], audio=audio, sr=sr, codec=vcodec,
        audio_codec=acodec, container_format=container,
    )  # fmt: skip
    track = sync_video(path, trained, stride=5).main_track()
    assert abs(track.offset_frames - 5) <= 1, (name, track.offset_frames)
