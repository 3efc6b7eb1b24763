"""`sync` on real synthetic mp4 files: JSON schema, exact streamed scoring, readout, stride, CLI and errors."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
import torch

from mtdistill.audio import load_audio, mel_window_start, utterance_mel
from mtdistill.cli import main
from mtdistill.core.devices import ACCELERATOR_BATCHES, CPU_BATCHES, batch_sizes
from mtdistill.core.errors import UserError
from mtdistill.data.synthetic import make_talking_video, write_mp4
from mtdistill.inference.readout import SIGN_CONVENTION, readout_logits, verdict_for
from mtdistill.inference.scoring import PairScorer, n_audio_windows, score_chunk
from mtdistill.inference.sync import TrackStream, sync_video
from mtdistill.models import VocaLiST
from mtdistill.models.presets import frames_to_input, windows_to_video

RESULT_KEYS = {
    "video", "duration_s", "fps", "source_fps", "n_frames", "model", "preset", "stride", "vshift",
    "min_confidence", "tracks", "timing", "sign_convention", "schema",
    "alpha", "verdict_rule", "standard_windows", "standard_sign",
    "warnings",
}  # fmt: skip
TRACK_KEYS = {
    "track", "start_frame", "end_frame", "n_windows", "offset_frames", "offset_ms", "confidence", "verdict",
    "curve", "window_offsets", "window_starts", "lse_c", "lse_d",
    "p_value", "offset_ms_interval", "standards", "segments", "drift_ms_per_min", "drift_ms_per_min_interval",
}  # fmt: skip


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("sync") / "talk.mp4"
    make_talking_video(path, seed=11, duration_s=2.4, offset_frames=2)
    return path


@pytest.fixture(scope="module")
def crops_wave(clip):
    from mtdistill.video import mouth_crops

    return mouth_crops(clip)[0].crops, load_audio(clip)


@pytest.fixture(scope="module")
def tiny() -> VocaLiST:
    torch.manual_seed(0)
    return VocaLiST.tiny(preset="mtd").eval()


@pytest.fixture(scope="module")
def tiny_ckpt(tiny, tmp_path_factory):
    return tiny.save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


def test_json_schema_is_stable(clip, tiny) -> None:
    res = sync_video(clip, tiny, stride=5)
    data = json.loads(res.to_json())
    assert set(data) == RESULT_KEYS
    assert data["fps"] == 25.0 and data["stride"] == 5 and data["vshift"] == 15
    assert data["sign_convention"] == SIGN_CONVENTION and "positive = audio leads video" in SIGN_CONVENTION
    assert data["schema"] == "mtdistill-sync/2"
    assert data["duration_s"] == pytest.approx(2.4, abs=0.05)
    assert len(data["tracks"]) == 1
    track = data["tracks"][0]
    assert set(track) == TRACK_KEYS
    assert len(track["curve"]) == 31 and all(np.isfinite(track["curve"]))
    assert abs(track["offset_ms"] - track["offset_frames"] * 40.0) <= 40.0  # sub-frame, within a frame
    lo, hi = track["offset_ms_interval"]
    assert lo <= track["offset_ms"] <= hi and track["segments"] and track["segments"][0]["verdict"]
    assert track["verdict"] in {"in_sync", "out_of_sync", "undetermined"}
    # stride 5: windows start every 5 frames from the track start, 5 frames inside the track
    starts = track["window_starts"]
    assert starts == list(range(track["start_frame"], track["end_frame"] - 3, 5))
    assert len(track["window_offsets"]) == len(starts) == track["n_windows"]
    assert all(-15 <= o <= 15 for o in track["window_offsets"])


def test_streamed_scores_equal_direct_model_calls(crops_wave, tiny) -> None:
    """score_chunk pairs window v with audio window v - 15 + j, on exact whole-file mel columns."""
    crops, wave = crops_wave
    mel = utterance_mel(wave)
    n_audio = n_audio_windows(len(wave))
    starts = np.array([0, 7, 30, crops.shape[0] - 5])
    frames = frames_to_input(crops, "mtd")
    windows = windows_to_video(frames, starts)
    rows, null = score_chunk(PairScorer(tiny), windows, starts, wave, n_audio)
    assert rows.shape == (4, 31) and null is None
    for w, v in enumerate(starts):
        for j in (0, 9, 15, 30):
            a = v - 15 + j
            if 0 <= a < n_audio:
                m = torch.from_numpy(mel[:, mel_window_start(a) : mel_window_start(a) + 16])[None, None]
                with torch.no_grad():
                    ref = tiny(windows[w : w + 1], m).item()
                assert rows[w, j] == pytest.approx(ref, abs=1e-4)
            else:
                assert np.isnan(rows[w, j])  # missing audio is not scored


def test_chunking_does_not_change_the_curve(crops_wave, tiny) -> None:
    crops, wave = crops_wave
    crops = crops[:16]  # 12 windows: enough for several chunks and pieces
    scorer = PairScorer(tiny)
    curves = []
    for chunk_windows, piece in ((5, 7), (64, 1000)):
        stream = TrackStream(scorer, 0, crops.shape[0] - 1, wave, "mtd", stride=1, chunk_windows=chunk_windows)
        for s in range(0, crops.shape[0], piece):
            stream.feed(s, crops[s : s + piece])
        acc = stream.finish()
        assert acc.starts == list(range(crops.shape[0] - 4))
        curves.append(acc.curve())
    np.testing.assert_allclose(curves[0], curves[1], atol=1e-5)


def test_batch_sizes_change_speed_not_scores(crops_wave, tiny) -> None:
    """The CPU's small batches, the GPU's large ones and odd sizes give the same rows and null band."""
    crops, wave = crops_wave
    n_audio = n_audio_windows(len(wave))
    starts = np.arange(0, crops.shape[0] - 4, 2)
    windows = windows_to_video(frames_to_input(crops, "mtd"), starts)
    cpu = PairScorer(tiny)
    assert (cpu.chunk_pairs, cpu.encode_chunk) == (CPU_BATCHES.pairs, CPU_BATCHES.windows)
    assert batch_sizes("cuda:0") == ACCELERATOR_BATCHES and batch_sizes("cpu") == CPU_BATCHES
    runs = [
        score_chunk(scorer, windows, starts, wave, n_audio, null_shift=n_audio // 2, null_width=33)
        for scorer in (cpu, PairScorer(tiny, chunk_pairs=1024, encode_chunk=32), PairScorer(tiny, 7, 3))
    ]
    assert np.isfinite(runs[0][1]).all() and runs[0][1].shape == (len(starts), 33)
    for rows, null in runs[1:]:
        np.testing.assert_allclose(rows, runs[0][0], atol=1e-5)
        np.testing.assert_allclose(null, runs[0][1], atol=1e-5)


def test_readout_sign_confidence_and_verdict() -> None:
    curve = -np.abs(np.arange(31) - 12.0)  # best candidate j = 12: audio window v - 3 -> offset +3
    curve[0] = np.nan  # never scored
    offset, conf, filled = readout_logits(curve)
    assert offset == 3
    assert conf == pytest.approx(0.0 - np.median(curve[1:]))
    assert np.isfinite(filled).all() and filled[0] == np.nanmin(curve)
    assert verdict_for(3, conf, 0.5) == "out_of_sync"
    assert verdict_for(1, 2.0, 0.5) == "in_sync" and verdict_for(-1, 2.0, 0.5) == "in_sync"
    assert verdict_for(0, 0.1, 0.5) == "undetermined"
    with pytest.raises(UserError):
        readout_logits(np.full(31, np.nan))


def test_cli_json_and_plot(clip, tiny_ckpt, tmp_path, capsys) -> None:
    png = tmp_path / "curve.png"
    code = main(["sync", str(clip), "--checkpoint", str(tiny_ckpt), "--json", "--stride", "5", "--plot", str(png)])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == RESULT_KEYS and data["preset"] == "mtd"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["sync", str(clip), "--checkpoint", str(tiny_ckpt), "--stride", "5"]) == 0
    assert "audio leads video" in capsys.readouterr().out
    # whole-frame face scans only: the same windows and offset as with region search
    assert (
        main(["sync", str(clip), "--checkpoint", str(tiny_ckpt), "--json", "--stride", "5", "--rescan-every", "0"]) == 0
    )
    whole = json.loads(capsys.readouterr().out)
    for a, b in zip(whole["tracks"], data["tracks"], strict=True):
        assert (a["n_windows"], a["offset_frames"]) == (b["n_windows"], b["offset_frames"])


def _cli_error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_cli_errors_are_one_line(clip, tiny, tiny_ckpt, tmp_path, capsys) -> None:
    # no checkpoint: how to get the official ones
    assert "mtdistill weights" in _cli_error(["sync", str(clip)], capsys)
    # an official-style file (no preset stored) needs --preset
    official = tmp_path / "official.pth"
    torch.save({"state_dict": VocaLiST.student(preset=None).state_dict()}, official)
    assert "--preset" in _cli_error(["sync", str(clip), "--checkpoint", str(official)], capsys)
    # unreadable file
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x01not a video" * 100)
    _cli_error(["sync", str(junk), "--checkpoint", str(tiny_ckpt)], capsys)
    # no audio stream
    frames = np.full((30, 64, 64, 3), 128, np.uint8)
    silent = tmp_path / "noaudio.mp4"
    write_mp4(silent, frames, None)
    assert "no audio" in _cli_error(["sync", str(silent), "--checkpoint", str(tiny_ckpt)], capsys)
    # no face: a grey picture with sound
    faceless = tmp_path / "noface.mp4"
    write_mp4(faceless, frames, np.random.default_rng(0).standard_normal(30 * 640).astype(np.float32) * 0.1)
    assert "no face" in _cli_error(["sync", str(faceless), "--checkpoint", str(tiny_ckpt)], capsys)
    # too short: 3 frames
    short = tmp_path / "short.mp4"
    write_mp4(short, frames[:3], np.zeros(3 * 640, np.float32))
    _cli_error(["sync", str(short), "--checkpoint", str(tiny_ckpt)], capsys)
    # bad options
    assert "--stride" in _cli_error(["sync", str(clip), "--checkpoint", str(tiny_ckpt), "--stride", "0"], capsys)
    bad_rescan = ["sync", str(clip), "--checkpoint", str(tiny_ckpt), "--rescan-every", "-1"]
    assert "--rescan-every must be >= 0" in _cli_error(bad_rescan, capsys)
    with av.open(str(clip)) as c:  # the input file is untouched by all of this
        assert c.streams.audio and c.streams.video
