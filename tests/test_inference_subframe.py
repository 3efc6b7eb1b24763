"""Sub-frame offsets (`inference.subframe`): the curve's peak between whole frames, its interval, and offsets
recovered at half-frame leads (-60 .. +100 ms) with the committed trained tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from _track_rows import track_rows
from mtdistill.core.errors import UserError
from mtdistill.core.timing import FRAME_MS, SEARCH_RANGE
from mtdistill.data.synthetic import make_talking_video, talking_clip
from mtdistill.inference.scoring import PairScorer, mel_columns, n_audio_windows, score_chunk
from mtdistill.inference.subframe import (
    audio_lag_ms,
    candidate_positions_ms,
    interpolate_peak,
    mel_window,
    refine_offset,
    subframe_offset,
)
from mtdistill.media.audio import load_audio
from mtdistill.media.tracking import mouth_crops
from mtdistill.models.presets import frames_to_input, windows_to_video

HALF_FRAME_LEADS_MS = (-60.0, -20.0, 20.0, 60.0, 100.0)
OFFSETS = SEARCH_RANGE - np.arange(2 * SEARCH_RANGE + 1)  # entry j of a curve is offset vshift - j


def _bump(centre_ms: float, positions_ms: np.ndarray | None = None) -> np.ndarray:
    x = OFFSETS * FRAME_MS if positions_ms is None else positions_ms
    return -(((x - centre_ms) / 50.0) ** 2)


@pytest.mark.parametrize("centre", [-60.0, -20.0, 0.0, 13.0, 100.0])
def test_a_parabola_peak_is_found_between_frames(centre: float) -> None:
    assert interpolate_peak(_bump(centre)) == pytest.approx(centre, abs=1e-6)
    assert interpolate_peak(-_bump(centre), lower_is_better=True) == pytest.approx(centre, abs=1e-6)
    # an affine rescaling of the scores moves nothing
    assert interpolate_peak(4.0 * _bump(centre) - 3.0) == pytest.approx(centre, abs=1e-6)


def test_peak_at_the_edge_or_next_to_a_gap_is_the_whole_frame() -> None:
    edge = _bump(15 * FRAME_MS + 25.0)
    assert interpolate_peak(edge) == 15 * FRAME_MS
    gap = _bump(20.0)
    gap[SEARCH_RANGE - 1] = np.nan  # the neighbour at +1 frame was not scored
    assert interpolate_peak(gap) == 0.0
    with pytest.raises(UserError):
        interpolate_peak(np.full(31, np.nan))
    with pytest.raises(UserError):
        interpolate_peak(np.zeros(7))


def test_audio_lag_is_the_mel_column_rounding() -> None:
    # window a starts at column floor(3.2 a): 0, 0.2, 0.4, 0.6, 0.8 columns (12.5 ms each) before 40 a ms
    assert audio_lag_ms(np.arange(10)).tolist() == [0.0, 2.5, 5.0, 7.5, 10.0] * 2
    # at stride 5 every window of a candidate has the same lag; at stride 1 they average 5 ms
    pos5 = candidate_positions_ms(np.arange(0, 200, 5))
    assert pos5[SEARCH_RANGE] == 0.0 and pos5[SEARCH_RANGE - 1] == pytest.approx(40.0 + 10.0)
    pos1 = candidate_positions_ms(np.arange(20, 220))
    assert np.allclose(pos1 - OFFSETS * FRAME_MS, 5.0)


def test_interval_covers_the_truth_on_noisy_rows_and_narrows_with_more_windows() -> None:
    rng = np.random.default_rng(0)
    widths = []
    for n in (20, 200):
        starts = np.arange(n) * 5
        pos = candidate_positions_ms(starts)
        rows = _bump(27.0, pos)[None, :] + rng.normal(0, 0.3, (n, 31))
        est = subframe_offset(rows, starts)
        assert est.low_ms <= 27.0 <= est.high_ms, est
        assert abs(est.offset_ms - 27.0) < 10.0
        assert est.offset_frames == 1
        widths.append(est.high_ms - est.low_ms)
    assert widths[1] < widths[0]


def test_shifted_mel_equals_the_utterance_mel_and_moves_with_the_shift() -> None:
    rng = np.random.default_rng(1)
    wave = rng.normal(0, 0.1, 16000).astype(np.float32)
    assert np.allclose(mel_window(wave, 20, 36), mel_columns(wave, 20, 36), atol=1e-4)
    # 200 samples = one column
    assert np.allclose(mel_window(wave, 20, 36, 200), mel_columns(wave, 21, 37), atol=1e-4)


@pytest.fixture(scope="module")
def half_frame_clips(tmp_path_factory) -> list[tuple[float, Path]]:
    root = tmp_path_factory.mktemp("subframe")
    out = []
    for lead in HALF_FRAME_LEADS_MS:
        path = root / f"lead_{lead:+.0f}ms.mp4"
        make_talking_video(path, seed=900 + int(lead), duration_s=4.0, offset_ms=lead)
        out.append((lead, path))
    return out


def test_sample_precise_lead_in_the_generator() -> None:
    base = talking_clip(5, 1.0, offset_ms=0.0)
    moved = talking_clip(5, 1.0, offset_ms=20.0)  # 320 samples earlier in the clean timeline
    assert moved.offset_frames == 0 or moved.offset_frames == 1
    assert np.allclose(moved.audio[:-320], base.audio[320:], atol=1e-6)
    assert np.array_equal(moved.frames, base.frames)


@pytest.mark.slow
def test_half_frame_leads_are_recovered_within_10_ms(trained_tiny_model, half_frame_clips) -> None:
    errors = []
    for lead, path in half_frame_clips:
        starts, rows = track_rows(path, trained_tiny_model, stride=2)
        est = subframe_offset(rows, starts)
        errors.append(est.offset_ms - lead)
        assert abs(est.offset_frames - lead / FRAME_MS) <= 1, (lead, est)
    mae = float(np.mean(np.abs(errors)))
    assert mae <= 10.0, (mae, errors)


@pytest.mark.slow
def test_audio_shift_route_recovers_a_half_frame_lead(trained_tiny_model, half_frame_clips) -> None:
    lead, path = half_frame_clips[3]  # +60 ms
    scorer = PairScorer(trained_tiny_model)
    tc = mouth_crops(path)[0]
    wave = load_audio(path)
    n_audio = n_audio_windows(len(wave))
    starts = np.arange(tc.track.start_frame, tc.track.end_frame - 3, 5)
    windows = windows_to_video(frames_to_input(tc.crops, trained_tiny_model.preset), starts - tc.track.start_frame)
    rows, _ = score_chunk(scorer, windows, starts, wave, n_audio)
    est = refine_offset(scorer, scorer.video(windows), starts, wave, n_audio, rows)
    assert est.method == "audio-shift" and est.low_ms <= est.offset_ms <= est.high_ms
    assert abs(est.offset_ms - lead) <= 15.0, est
