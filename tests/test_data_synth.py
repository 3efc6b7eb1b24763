"""Synthetic talking-face corpus: determinism, LRS2 layout, detectability, sign convention."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest

from mtdistill.cli import main
from mtdistill.core.errors import UserError
from mtdistill.data.synthetic import make_talking_video, parse_offsets, talking_clip


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def frame_rms(audio: np.ndarray, n: int) -> np.ndarray:
    return np.sqrt((audio[: n * 640].reshape(n, 640).astype(np.float64) ** 2).mean(1))


def best_lag(jaw: np.ndarray, rms: np.ndarray, max_lag: int = 8) -> int:
    """Lag L maximising corr(jaw[v], rms[v - L]): the audio event seen by the lips L frames later."""
    n = len(jaw)
    scores = {}
    for lag in range(-max_lag, max_lag + 1):
        v = np.arange(max(0, lag), min(n, n + lag))
        scores[lag] = np.corrcoef(jaw[v], rms[v - lag])[0, 1]
    return max(scores, key=scores.get)


def test_same_seed_same_content_other_seed_differs(tmp_path):
    """Same seed: bit-identical pictures and sound, and byte-identical mp4s that decode to them.

    (libx264's macroblock tree made encodes of the same frames differ run to run, by up to ~50 levels in about
    one run in four; `write_mp4` turns it off. Three encodes make a regression likely to show.)
    """
    import av

    a, b, c = talking_clip(seed=3, duration_s=1.0), talking_clip(seed=3, duration_s=1.0), talking_clip(4, 1.0)
    assert a.frames.tobytes() == b.frames.tobytes() and a.audio.tobytes() == b.audio.tobytes()
    assert a.frames.tobytes() != c.frames.tobytes() and a.audio.tobytes() != c.audio.tobytes()
    infos = [make_talking_video(tmp_path / f"{k}.mp4", seed=3, duration_s=1.0) for k in ("a", "b", "c")]
    assert len({(tmp_path / f"{k}.mp4").read_bytes() for k in ("a", "b", "c")}) == 1
    assert (infos[0]["n_frames"], infos[0]["n_samples"], infos[0]["size"]) == (25, 16000, [160, 160])
    decoded = []
    for k in ("a", "b"):
        with av.open(str(tmp_path / f"{k}.mp4")) as f:
            frames = np.stack([fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)])
        with av.open(str(tmp_path / f"{k}.mp4")) as f:
            audio = np.concatenate([fr.to_ndarray().ravel() for fr in f.decode(audio=0)])
        assert frames.shape == a.frames.shape
        assert np.abs(frames.astype(np.int16) - a.frames).mean() < 3.0  # H.264 at crf 18: close to the source
        decoded.append(audio)
    np.testing.assert_array_equal(decoded[0], decoded[1])


def test_mp4_is_h264_aac_25fps_16k_and_audio_is_aligned(tmp_path):
    from mtdistill.audio import load_audio
    from mtdistill.video import probe

    clip = talking_clip(seed=11, duration_s=2.0)
    make_talking_video(tmp_path / "v.mp4", seed=11, duration_s=2.0)
    info = probe(tmp_path / "v.mp4")
    assert (info.video_codec, info.audio_codec, info.fps, info.audio_rate) == ("h264", "aac", 25.0, 16000)
    assert info.n_frames == 50
    decoded = load_audio(tmp_path / "v.mp4")[: clip.audio.shape[0]]
    # AAC is lossy but the encoder delay is compensated: sample n of the file is sample n of the clip
    lags = range(-40, 41)
    xc = [np.dot(clip.audio[100:-100], decoded[100 + k : len(decoded) - 100 + k]) for k in lags]
    assert list(lags)[int(np.argmax(xc))] == 0
    assert np.corrcoef(clip.audio, decoded)[0, 1] > 0.99


def test_offset_sign_convention_audio_leads_for_positive_offsets():
    """offset_frames=k > 0: same pictures, and the sound comes k frames (k x 640 samples) earlier."""
    k = 4
    c0 = talking_clip(seed=21, duration_s=3.0, offset_frames=0)
    ck = talking_clip(seed=21, duration_s=3.0, offset_frames=k)
    cm = talking_clip(seed=21, duration_s=3.0, offset_frames=-k)
    np.testing.assert_array_equal(c0.frames, ck.frames)
    np.testing.assert_array_equal(ck.audio[: -k * 640], c0.audio[k * 640 :])  # audio leads: earlier in the file
    np.testing.assert_array_equal(cm.audio[k * 640 :], c0.audio[: -k * 640])
    # and the lips follow the sound: video frame v matches audio frame v - k (offset = video - audio = +k)
    n = c0.frames.shape[0]
    assert best_lag(c0.jaw, frame_rms(c0.audio, n)) == 0
    assert best_lag(ck.jaw, frame_rms(ck.audio, n)) == k
    assert best_lag(cm.jaw, frame_rms(cm.audio, n)) == -k


def test_mouth_follows_the_audio_envelope():
    clip = talking_clip(seed=5, duration_s=4.0)
    rms = frame_rms(clip.audio, clip.frames.shape[0])
    assert np.corrcoef(clip.jaw, rms)[0, 1] > 0.7
    assert 0.05 < np.mean(rms <= 0.01) < 0.6  # there are pauses (for the silence rule) and speech
    # the rendered lower face changes with the jaw: mean darkness of the mouth region tracks the opening
    lower = clip.frames[:, 100:140, 50:110].astype(np.float64).mean(axis=(1, 2, 3))
    assert abs(np.corrcoef(clip.jaw, lower)[0, 1]) > 0.5


def test_faces_are_detected_by_the_default_detector(tmp_path):
    """>= 95% of frames of decoded synthetic videos have a Haar detection (the default detector)."""
    from mtdistill.video import get_detector, iter_frames

    det = get_detector("haar")
    hits = total = 0
    for seed in range(6):
        path = tmp_path / f"{seed}.mp4"
        make_talking_video(path, seed=100 + seed, duration_s=0.6)
        for _k, rgb in iter_frames(path):
            total += 1
            hits += len(det.detect(rgb)) > 0
    assert total == 6 * 15
    assert hits / total >= 0.95


def test_two_faces_side_by_side(tmp_path):
    from mtdistill.video import track_faces

    info = make_talking_video(tmp_path / "two.mp4", seed=8, duration_s=1.0, n_faces=2)
    assert info["size"] == [320, 160]
    tracks = track_faces(tmp_path / "two.mp4")
    assert len(tracks) == 2
    centres = sorted(float(t.boxes[:, [0, 2]].mean()) for t in tracks)
    assert centres[0] < 160 < centres[1]


def test_synth_cli_layout_filelists_and_ground_truth(tmp_path, capsys):
    out = tmp_path / "corpus"
    args = [
        "synth",
        str(out),
        "--n-speakers",
        "2",
        "--n-utterances",
        "4",
        "--seed",
        "2",
        "--duration",
        "0.8",
        "--offsets=-5,0,3",
        "--offset-splits",
        "test",
        "--workers",
        "1",
        "--quiet",
    ]
    assert main(args) == 0
    assert '"utterances": 8' in capsys.readouterr().out
    lists = {s: (out / "filelists" / f"{s}.txt").read_text().splitlines() for s in ("pretrain", "train", "val", "test")}
    assert sum(len(v) for v in lists.values()) == 8 and all(lists.values())
    assert all(line.endswith(" NF") for line in lists["test"])
    assert not any(" " in line for s in ("pretrain", "train", "val") for line in lists[s])
    for line in lists["pretrain"]:
        assert (out / "pretrain" / f"{line}.mp4").is_file()
    for s in ("train", "val", "test"):
        for line in lists[s]:
            assert (out / "main" / f"{line.split()[0]}.mp4").is_file()
    rows = list(csv.DictReader((out / "ground_truth.csv").read_text().splitlines()))
    assert len(rows) == 8
    for r in rows:
        assert int(r["offset_frames"]) in (-5, 0, 3)
        if r["split"] != "test":
            assert int(r["offset_frames"]) == 0
        assert float(r["offset_ms"]) == int(r["offset_frames"]) * 40.0
    # same seed again: nothing rewritten, same ground truth
    before = sha(out / "ground_truth.csv")
    assert main(args) == 0
    assert sha(out / "ground_truth.csv") == before


def test_bad_arguments_are_user_errors(tmp_path, capsys):
    with pytest.raises(UserError, match="offsets"):
        parse_offsets("3:-3")
    assert main(["synth", str(tmp_path / "x"), "--size", "161x160"]) == 2
    assert "even" in capsys.readouterr().err
    assert parse_offsets("-15:15") == ("range", [-15, 15])
    assert parse_offsets("-5,0,3") == ("choice", [-5, 0, 3])
