"""Calibrated p-values (inference.significance): scale invariance, false-confident checks, main track, errors.

Real models on real mp4 files: the committed trained tiny model on synthetic clips with known offsets and with
another clip's audio, the same model with its final classifier scaled, random weights on the real clips
(../shared/realvideos, skipped when absent).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mtdistill.cli import main
from mtdistill.core.errors import UserError
from mtdistill.data.synthetic import make_talking_video, talking_clip, write_mp4
from mtdistill.inference.readout import SyncResult, TrackResult, VerdictRule
from mtdistill.inference.significance import (
    DEFAULT_ALPHA,
    check_alpha,
    inflation,
    null_band_width,
    null_shift,
    overlap_lags,
    p_value,
)
from mtdistill.inference.sync import sync_video
from mtdistill.models import VocaLiST

REALVIDEOS = Path(__file__).resolve().parents[2] / "shared" / "realvideos"
TRAINED_TINY = Path(__file__).parent / "data" / "trained_tiny.safetensors"


# ------------------------------------------------------------------------------------------------ statistic


def _rows(rng: np.random.Generator, windows: int, peak: int | None, strength: float = 3.0) -> np.ndarray:
    rows = rng.normal(size=(windows, 31))
    if peak is not None:
        rows[:, peak] += strength
    return rows


def test_p_value_is_invariant_under_monotone_rescaling() -> None:
    rng = np.random.default_rng(0)
    rows, null = _rows(rng, 12, 20, 1.0), _rows(rng, 12, None)[:, :31]
    null = np.concatenate([null, rng.normal(size=(12, 4))], axis=1)
    p = p_value(rows, null)
    assert p is not None and 0.0 < p < 1.0
    for f in (lambda x: 4 * x, lambda x: 0.25 * x - 7, np.exp, np.tanh, lambda x: x**3):
        assert p_value(f(rows), f(null)) == pytest.approx(p, rel=1e-12)
    # distances (lower = better): the same p with the order reversed
    assert p_value(-rows, -null, higher_is_better=False) == pytest.approx(p, rel=1e-12)
    assert p_value(np.exp(-rows), np.exp(-null), higher_is_better=False) == pytest.approx(p, rel=1e-12)


def test_consistent_peak_is_significant_and_noise_is_not() -> None:
    rng = np.random.default_rng(1)
    null = rng.normal(size=(20, 39))
    assert p_value(_rows(rng, 20, 7), null) < 1e-6
    ps = [p_value(_rows(rng, 20, None), rng.normal(size=(20, 39))) for _ in range(200)]
    assert np.mean(np.asarray(ps) <= 0.05) <= 0.05  # a union bound: at most alpha, usually far less


def test_correlated_windows_widen_the_null() -> None:
    """Windows that repeat each other (overlapping windows, a model driven by the audio) inflate the null; the
    same peak is then less significant than with independent windows."""
    rng = np.random.default_rng(2)
    base = rng.normal(size=(6, 39))
    repeated = np.repeat(base, 4, axis=0) + 0.05 * rng.normal(size=(24, 39))
    independent = rng.normal(size=(24, 39))
    assert inflation(repeated, 31) > 1.5 > inflation(independent, 31) >= 1.0
    rows = np.repeat(_rows(rng, 6, 11, 0.8), 4, axis=0) + 0.05 * rng.normal(size=(24, 31))
    assert p_value(rows, repeated) > p_value(rows, independent)
    # the lag estimate sees the repeats from the correlation of neighbouring windows (overlap_lags(1) = 5)
    assert overlap_lags(1) == 5 and overlap_lags(5) == 1 and overlap_lags(10) == 1
    assert inflation(repeated, 31, lags=overlap_lags(1)) >= inflation(repeated, 31) > 1.5


def test_null_band_keeps_clear_of_the_search_range() -> None:
    for n_audio in (70, 96, 250, 1000):
        width = null_band_width(n_audio)
        s = null_shift(n_audio, width)
        assert width >= 31 and s is not None
        rel = (s + np.arange(width)) % n_audio  # audio index - video index of every null candidate
        assert np.minimum(rel, n_audio - rel).min() >= 15 + 5  # no overlap with audio windows at -15..15
    assert null_band_width(60) == 0  # too short: no null, p_value None
    assert p_value(np.zeros((5, 31)), np.empty((0, 0))) is None


def test_main_track_is_the_most_significant_face() -> None:
    def track(i: int, n: int, p: float | None) -> TrackResult:
        return TrackResult(i, 0, 10, n, 0, 0.0, 1.0, "in_sync", [0.0] * 31, [], [], p_value=p)

    res = SyncResult("v.mp4", 1.0, 25.0, 25.0, 25, "m", "mtd", 5, 15, None, [])
    res.tracks = [track(0, 90, 0.3), track(1, 10, 1e-5), track(2, 40, None)]
    assert res.main_track().track == 1  # not the longest
    res.tracks = [track(0, 10, 1e-9), track(1, 30, 1e-9)]
    assert res.main_track().track == 1  # ties -> more windows


def test_alpha_and_rule_errors() -> None:
    for bad in (0, 1, -0.1, 1.5, float("nan")):
        with pytest.raises(UserError, match="--alpha"):
            check_alpha(bad)
    rule = VerdictRule.make(None, None)
    assert rule.alpha == DEFAULT_ALPHA and rule.verdict(4, 1e-4, 0.0) == "out_of_sync"
    assert rule.verdict(1, 1e-4, 0.0) == "in_sync" and rule.verdict(4, 0.2, 9.9) == "undetermined"
    margin = VerdictRule.make(0.01, 1.8)  # an explicit --min-confidence decides
    assert margin.verdict(4, 0.5, 2.0) == "out_of_sync" and margin.verdict(4, 1e-9, 1.0) == "undetermined"


@pytest.mark.parametrize("args", [["--alpha", "0"], ["--alpha", "1.5"], ["--standard", "ebu-r38"]])
def test_cli_bad_alpha_or_standard_is_one_line(tmp_path, capsys, args) -> None:
    clip = tmp_path / "c.mp4"
    make_talking_video(clip, seed=5, duration_s=1.0, offset_frames=0)
    assert main(["sync", str(clip), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert ("--alpha" in err) if args[0] == "--alpha" else ("ebu-r37" in err)


# -------------------------------------------------------------------------------------------- real models


@pytest.fixture(scope="module")
def trained():
    if not TRAINED_TINY.is_file():
        pytest.skip("tests/data/trained_tiny.safetensors not present")
    return VocaLiST.from_checkpoint(TRAINED_TINY)


def _scaled(model: VocaLiST, factor: float) -> VocaLiST:
    other = VocaLiST.from_checkpoint(TRAINED_TINY)
    with torch.no_grad():
        other.classifier.weight.mul_(factor)
        other.classifier.bias.mul_(factor)
    return other.eval()


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("signif")
    shifted = folder / "shifted.mp4"
    make_talking_video(shifted, seed=31, duration_s=4.0, offset_frames=6)
    a, b = talking_clip(41, 4.0), talking_clip(4100, 4.0)  # another clip's audio: no true offset
    dubbed = folder / "dubbed.mp4"
    write_mp4(dubbed, a.frames, b.audio)
    return shifted, dubbed


def test_known_offset_is_confident_and_other_audio_is_not(trained, clips) -> None:
    shifted, dubbed = clips
    t = sync_video(shifted, trained, stride=5).main_track()
    assert t.offset_frames == 6 and t.p_value is not None and t.p_value <= DEFAULT_ALPHA
    assert t.verdict == "out_of_sync"
    d = sync_video(dubbed, trained, stride=5).main_track()
    assert d.p_value is not None and d.p_value > DEFAULT_ALPHA and d.verdict == "undetermined"


def test_scaled_classifier_gives_the_same_verdicts_and_p_values(trained, clips) -> None:
    for clip in clips:
        ref = sync_video(clip, trained, stride=5).main_track()
        for factor in (0.25, 4.0):
            t = sync_video(clip, _scaled(trained, factor), stride=5).main_track()
            assert t.confidence == pytest.approx(factor * ref.confidence, rel=1e-4)  # the margin scales...
            assert t.p_value == pytest.approx(ref.p_value, rel=1e-9)  # ...the p-value does not
            assert (t.verdict, t.offset_frames) == (ref.verdict, ref.offset_frames)


@pytest.mark.parametrize(
    "name",
    [
        "pcavs_Audio_Source_00015.mp4",
        pytest.param("videoretalking_face_4.mp4", marks=pytest.mark.slow),
        pytest.param("sadtalker_WDA_KatieHill_000.mp4", marks=pytest.mark.slow),
        pytest.param("latentsync_demo1_video.mp4", marks=pytest.mark.slow),
    ],
)
def test_random_weights_are_undetermined_on_real_clips(name: str) -> None:
    clip = REALVIDEOS / name
    if not clip.is_file():
        pytest.skip(f"{clip} not present")
    torch.manual_seed(0)
    model = VocaLiST.tiny(preset="mtd").eval()
    res = sync_video(clip, model, stride=5)
    for t in res.tracks:
        assert t.p_value is not None and t.verdict == "undetermined", (t.track, t.p_value, t.confidence)


@pytest.mark.slow
def test_onnx_graphs_give_the_same_p_value(trained, clips, tmp_path) -> None:
    from mtdistill.inference.onnx_export import export_onnx
    from mtdistill.inference.onnx_runtime import load_onnx_model

    path = tmp_path / "trained.onnx"
    export_onnx(trained, path, split=True)
    shifted, _ = clips
    ref = sync_video(shifted, trained, stride=5).main_track()
    t = sync_video(shifted, load_onnx_model(path), stride=5).main_track()
    assert (t.offset_frames, t.verdict) == (ref.offset_frames, ref.verdict)
    assert t.p_value == pytest.approx(ref.p_value, rel=1e-3)


@pytest.mark.slow
def test_syncnet_distances_get_a_p_value(tmp_path) -> None:
    from mtdistill.models.syncnet import SyncNet

    torch.manual_seed(0)
    net = SyncNet().eval()
    clip = tmp_path / "talk.mp4"
    make_talking_video(clip, seed=4, duration_s=3.4, offset_frames=0)
    t = sync_video(clip, net, stride=5).main_track()
    assert t.p_value is not None and 0.0 < t.p_value <= 1.0
    assert t.verdict == "undetermined"  # random weights: no lip-sync signal


# ------------------------------------------------------------------------------- wiring: segments, full frame


def test_sync_json_gives_segments_with_p_values_verdicts_and_standards(trained, tmp_path, capsys) -> None:
    """An audio edit inside one shot (+120 ms -> -80 ms at 6 s) through the whole CLI: two segments, each with
    its own offset, p_value, verdict and standards; the track's standards are judged on its interval."""
    before, after = talking_clip(11, 12.0, offset_ms=120.0), talking_clip(11, 12.0, offset_ms=-80.0)
    cut = 6 * 16000
    path = tmp_path / "edit.mp4"
    write_mp4(path, before.frames, np.concatenate([before.audio[:cut], after.audio[cut:]]))
    # the committed tiny model was trained on Haar crops: with them its segment intervals are tight enough to clear
    # the +90 ms boundary 30 ms away (with RetinaFace crops the first segment's interval reaches it: undetermined)
    argv = ["sync", str(path), "--checkpoint", str(TRAINED_TINY), "--stride", "2", "--json", "--detector", "haar"]
    assert main([*argv, "--standard", "ebu-r37", "--standard", "itu-bt1359-accept"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["schema"] == "mtdistill-sync/2" and set(data["standard_windows"]) == {"ebu-r37", "itu-bt1359-accept"}
    track = data["tracks"][0]
    segs = track["segments"]
    assert len(segs) == 2 and abs(segs[0]["end_s"] - 6.0) <= 1.0, segs
    assert abs(segs[0]["offset_ms"] - 120.0) <= 20.0 and abs(segs[1]["offset_ms"] + 80.0) <= 20.0
    for seg in segs:
        assert seg["p_value"] is not None and seg["p_value"] <= DEFAULT_ALPHA and seg["verdict"] == "out_of_sync"
    # +120 ms (sound 120 ms early): beyond both leads (EBU R37 +40, ITU acceptability +90)
    assert segs[0]["standards"] == {"ebu-r37": "fail", "itu-bt1359-accept": "fail"}
    # -80 ms (sound 80 ms late): outside EBU R37 (-60), inside ITU acceptability (-185)
    assert segs[1]["standards"] == {"ebu-r37": "fail", "itu-bt1359-accept": "pass"}
    lo, hi = track["offset_ms_interval"]
    assert lo <= track["offset_ms"] <= hi
    assert track["drift_ms_per_min"] is None or isinstance(track["drift_ms_per_min"], float)


def test_full_frame_flag_scores_the_whole_frame(trained, tmp_path, capsys) -> None:
    clip = talking_clip(33, 3.4, offset_frames=4)
    path = tmp_path / "talk.mp4"
    write_mp4(path, clip.frames, clip.audio)
    assert main(["sync", str(path), "--checkpoint", str(TRAINED_TINY), "--stride", "5", "--json", "--full-frame"]) == 0
    track = json.loads(capsys.readouterr().out)["tracks"][0]
    assert (track["start_frame"], track["end_frame"]) == (0, 84)  # every frame, no detection
