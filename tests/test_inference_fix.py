"""`fix`: audio moved by exactly k * 640 samples, video packets byte-identical (real mp4 files via PyAV)."""

from __future__ import annotations

import av
import numpy as np
import pytest

from mtdistill.cli import main
from mtdistill.data.synthetic import make_talking_video
from mtdistill.inference.fix import fix_video, shift_audio
from mtdistill.media.testmedia import tone, write_video
from mtdistill.video import probe


def decoded_audio(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.concatenate([f.to_ndarray()[0] for f in c.decode(c.streams.audio[0])])


def video_packets(path) -> list[bytes]:
    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(c.streams.video[0]) if p.size]


def lag(moved: np.ndarray, original: np.ndarray, max_lag: int = 12000) -> tuple[int, float]:
    """Lag (samples) that best aligns `moved` with `original`, and the normalised correlation there."""
    n = min(len(moved), len(original)) - 2 * max_lag
    ref = original[max_lag : max_lag + n]
    best, best_c = 0, -1.0
    for d in range(-max_lag, max_lag + 1, 1):
        seg = moved[max_lag + d : max_lag + d + n]
        c = float(np.dot(seg, ref) / (np.linalg.norm(seg) * np.linalg.norm(ref) + 1e-12))
        if c > best_c:
            best, best_c = d, c
    return best, best_c


@pytest.fixture(scope="module")
def talking(tmp_path_factory):
    path = tmp_path_factory.mktemp("fix") / "talk.mp4"
    make_talking_video(path, seed=3, duration_s=2.0, offset_frames=4)
    return path


@pytest.mark.parametrize("k", [4, -3])
def test_fix_moves_audio_by_k_frames_and_copies_video(talking, tmp_path, k: int) -> None:
    out = tmp_path / "fixed.mp4"
    res = fix_video(talking, out, k)
    assert res.shift_samples == k * 640 and res.sample_rate == 16000
    before, after = decoded_audio(talking), decoded_audio(out)
    assert len(after) == len(before)  # duration kept: silence in, the same amount trimmed
    d, corr = lag(after, before, max_lag=3000)
    assert d == k * 640
    assert corr > 0.9  # the same sound (AAC re-encode), not just a coincidental peak
    if k > 0:
        assert np.abs(after[: k * 640 - 1100]).max() < 1e-3  # leading silence (minus AAC pre-echo)
    assert video_packets(out) == video_packets(talking)


def test_fix_cli_and_errors(talking, tmp_path, capsys) -> None:
    out = tmp_path / "cli.mkv"
    assert main(["fix", str(talking), "-o", str(out), "--offset", "2"]) == 0
    assert video_packets(out) == video_packets(talking)
    assert main(["fix", str(talking), "-o", str(tmp_path / "x.mp4"), "--offset", "two"]) == 2
    assert "--offset must be an integer" in capsys.readouterr().err
    assert main(["fix", str(tmp_path / "missing.mp4"), "-o", str(tmp_path / "y.mp4"), "--offset", "1"]) == 2
    assert "not found" in capsys.readouterr().err


def test_fix_keeps_a_phone_video_upright(tmp_path) -> None:
    phone = tmp_path / "phone.mp4"
    write_video(phone, 30, 25, (240, 320), audio=tone(30 * 640, 16000), rotation=90)
    for ext in ("mp4", "mkv"):
        out = tmp_path / f"fixed.{ext}"
        fix_video(phone, out, 2)
        assert probe(out).rotation == 90  # the display matrix travels with the copied video stream
        assert video_packets(out) == video_packets(phone)


def test_shift_audio_pads_and_trims() -> None:
    x = np.arange(1, 11, dtype=np.float32)[None]
    assert shift_audio(x, 3).tolist() == [[0, 0, 0, 1, 2, 3, 4, 5, 6, 7]]
    assert shift_audio(x, -2).tolist() == [[3, 4, 5, 6, 7, 8, 9, 10, 0, 0]]
