"""SyncNet inputs as syncnet_python's evaluate() reads them (JPEG round trip, int16 audio), and LSE against it.

The reference tests are optional: they need a system ``ffmpeg`` (what syncnet_python runs) and, for the LSE
comparison (benchmarks/syncnet_reference.py), the ``syncnet-python`` package from PyPI (MIT; ``pip install
--no-deps syncnet-python python-speech-features``) and the real clip of ../shared/realvideos. They skip when any
is missing. The weights are random, saved in the ``syncnet_v2.model`` format (a plain dict of tensors, legacy
serialisation).
"""

from __future__ import annotations

import glob
import importlib.util
import shutil
import subprocess
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

from mtdistill.core.quirks import Quirks
from mtdistill.inference.syncnet_sync import sync_video_syncnet
from mtdistill.media.testmedia import face_frame_fn, tone, write_video
from mtdistill.models.syncnet import JpegRoundTrip, SyncNet, full_range_yuv420p, int16_samples, mfcc

REAL_CLIP = Path(__file__).resolve().parents[2] / "shared" / "realvideos" / "pcavs_Audio_Source_00015.mp4"
FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="no system ffmpeg (syncnet_python's frame extractor)")


def _clip(path: Path, n_frames: int = 40) -> Path:
    """A 224x224 25 fps face-crop clip with speech-like audio."""
    sr = 16000
    t = np.arange(n_frames * 640) / sr
    audio = (tone(len(t), sr, 180.0) * (0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t))).astype(np.float32)
    write_video(path, n_frames, size=(224, 224), frame_fn=face_frame_fn(224, 224, face_frac=0.8), audio=audio)
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return _clip(tmp_path_factory.mktemp("clip") / "face.mp4")


def test_full_range_conversion_is_exact():
    h, w = 4, 4
    yuv = np.zeros((h * 3 // 2, w), np.uint8)
    yuv[:h] = np.array([16, 17, 126, 235]).reshape(1, 4).repeat(4, 0)
    yuv[h:] = np.array([16, 127, 128, 240]).reshape(1, 4).repeat(2, 0)
    out = full_range_yuv420p(yuv).astype(int)
    assert out[0].tolist() == [0, 1, 128, 255]  # (Y - 16) * 255 / 219, rounded
    assert out[h].tolist() == [0, 127, 128, 255]  # (C - 128) * 255 / 224 + 128, rounded


def test_int16_rounding_as_pcm_s16le():
    x = np.array([0.5 / 32768, 1.5 / 32768, -1.0, 1.0, 0.3])
    assert int16_samples(x).tolist() == [0.0, 2.0, -32768.0, 32767.0, float(np.rint(0.3 * 32768))]
    wave = np.random.default_rng(0).uniform(-0.5, 0.5, 16000)
    assert not np.array_equal(mfcc(wave, int16=True), mfcc(wave))  # the rounding reaches the MFCC


def test_jpeg_round_trip_is_lossy_deterministic_and_follows_the_rate_control():
    frames = [face_frame_fn(224, 224)(i)[:, :, ::-1].copy() for i in range(8)]
    a, b = JpegRoundTrip(), JpegRoundTrip()
    out_a, out_b = [a(f) for f in frames], [b(f) for f in frames]
    assert all(np.array_equal(x, y) for x, y in zip(out_a, out_b, strict=True))
    err = [np.abs(x.astype(int) - f.astype(int)).mean() for x, f in zip(out_a, frames, strict=True)]
    assert all(0 < e < 8 for e in err)
    # the quantiser of frame i depends on frames 0..i-1 (200 kb/s rate control): a fresh encoder differs
    assert not np.array_equal(JpegRoundTrip()(frames[5]), out_a[5])


def test_face_crop_clip_mode_and_the_lossless_quirk(clip):
    torch.manual_seed(0)
    net = SyncNet().eval()
    faithful = sync_video_syncnet(clip, net, detector="none")
    lossless = sync_video_syncnet(clip, net, detector="none", quirks=Quirks(syncnet_jpeg_roundtrip=False))
    for res in (faithful, lossless):
        assert len(res.tracks) == 1 and res.tracks[0].n_windows == 40 - 5
    assert faithful.tracks[0].lse_d != lossless.tracks[0].lse_d
    assert "lossless" in lossless.model and "lossless" not in faithful.model
    assert Quirks.clean().syncnet_jpeg_roundtrip is False


@needs_ffmpeg
def test_frames_equal_ffmpeg_image2_jpegs_read_by_opencv(clip, tmp_path):
    subprocess.run(
        [FFMPEG, "-v", "error", "-y", "-i", str(clip), "-threads", "1", "-f", "image2", str(tmp_path / "%06d.jpg")],
        check=True,
    )
    ref = [cv2.imread(f) for f in sorted(glob.glob(str(tmp_path / "*.jpg")))]
    rt = JpegRoundTrip()
    with av.open(str(clip)) as c:
        ours = [rt.from_yuv420p(f.to_ndarray()) for f in c.decode(video=0)]
        c.seek(0)
        lossless = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]
    assert len(ours) == len(ref) == 40

    def err(frames):
        return float(np.mean([np.abs(x.astype(int) - y.astype(int)).mean() for x, y in zip(frames, ref, strict=True)]))

    # FFmpeg 5.1 gives the same pictures (0.0); other builds move a little, a lossless read moves a lot more
    assert err(ours) < 0.3 < err(lossless)


# ------------------------------------------------------------------ LSE against syncnet-python (optional)
def _benchmark():
    """benchmarks/syncnet_reference.py (the measurement docs/sync.md reports), loaded by path."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "syncnet_reference.py"
    spec = importlib.util.spec_from_file_location("syncnet_reference_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_ffmpeg
@pytest.mark.skipif(not REAL_CLIP.is_file(), reason="the real clips of ../shared/realvideos are absent")
def test_lse_equals_syncnet_python_evaluate(tmp_path):
    bench = _benchmark()
    if bench.reference_modules() is None:
        pytest.skip("syncnet-python / python-speech-features not installed (pip install --no-deps ...)")
    clip = tmp_path / "crop.mp4"  # the first 3 s of a real 224x224 face-crop clip
    subprocess.run([FFMPEG, "-v", "error", "-i", str(REAL_CLIP), "-t", "3", "-c", "copy", str(clip)], check=True)
    (row,) = bench.compare([clip])
    ref, ours = row["reference"], row["default"]
    assert ours["offset"] == ref["offset"]
    assert ours["rel_c"] < 5e-3 and ours["rel_d"] < 5e-3, row
