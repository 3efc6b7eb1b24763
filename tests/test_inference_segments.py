"""Offsets over time (`inference.segments`): change points inside one track, segment offsets, drift; on
hand-made score rows and on synthetic clips scored by the committed trained tiny model (an audio edit inside one
continuous shot, a slowly drifting sound track)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from _track_rows import track_rows
from mtdistill.core.errors import UserError
from mtdistill.core.timing import FRAME_MS, SEARCH_RANGE
from mtdistill.data.synthetic import make_talking_video, talking_clip, write_mp4
from mtdistill.inference.plot import draw_timeline
from mtdistill.inference.segments import (
    DRIFT_MIN_SPAN_S,
    change_points,
    estimate_drift,
    find_segments,
    window_ranks,
)
from mtdistill.inference.subframe import candidate_positions_ms

OFFSETS = SEARCH_RANGE - np.arange(2 * SEARCH_RANGE + 1)


def _rows(starts: np.ndarray, offset_ms: np.ndarray, noise: float, seed: int = 0) -> np.ndarray:
    """Rows whose peak follows ``offset_ms`` per window (a bump 50 ms wide) plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    pos = candidate_positions_ms(starts)
    return -(((pos[None, :] - offset_ms[:, None]) / 50.0) ** 2) + rng.normal(0, noise, (len(starts), len(pos)))


def _brute_force(scores: np.ndarray, min_len: int, penalty: float) -> float:
    n, best = len(scores), -np.inf
    for k in range(n):
        for cuts in itertools.combinations(range(1, n), k):
            b = [0, *cuts, n]
            if min(b[i + 1] - b[i] for i in range(len(b) - 1)) < min_len:
                continue
            total = sum(scores[b[i] : b[i + 1]].sum(0).max() for i in range(len(b) - 1)) - penalty * (len(b) - 1)
            best = max(best, total)
    return best


def test_change_points_is_the_optimal_partition() -> None:
    rng = np.random.default_rng(3)
    for _ in range(40):
        m, pen = int(rng.integers(1, 4)), float(rng.uniform(0, 3))
        n = int(rng.integers(m, 12))
        scores = rng.normal(size=(n, 4))
        scores[n // 2 :, 2] += rng.uniform(0, 2)
        parts = change_points(scores, m, pen)
        assert parts[0][0] == 0 and parts[-1][1] == n
        assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))
        total = sum(scores[a:b].sum(0).max() for a, b, _ in parts) - pen * len(parts)
        assert total == pytest.approx(_brute_force(scores, m, pen))


def test_ranks_ignore_the_score_scale() -> None:
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(30, 31))
    rows[0, :5] = np.nan
    ranks = window_ranks(rows)
    assert ranks.min() == -1.0 and ranks.max() == 1.0 and (ranks[0, :5] == 0).all()
    assert np.array_equal(window_ranks(np.exp(3 * rows) + 7), ranks)  # a monotone rescaling
    assert np.array_equal(window_ranks(-rows, lower_is_better=True), ranks)  # distances


def test_a_constant_offset_gives_one_segment_and_no_drift_on_a_short_track() -> None:
    starts = np.arange(0, 200, 5)  # 8 s at stride 5
    rows = _rows(starts, np.full(len(starts), 60.0), noise=0.3)
    segs = find_segments(starts, rows)
    assert len(segs) == 1
    assert segs[0].start_s == 0.0 and segs[0].end_s == pytest.approx((195 + 5) / 25)
    assert abs(segs[0].offset_ms - 60.0) < 10 and segs[0].low_ms <= 60.0 <= segs[0].high_ms
    assert segs[0].p_value is None and segs[0].verdict is None
    assert estimate_drift(starts[: int(DRIFT_MIN_SPAN_S * 5)], rows[: int(DRIFT_MIN_SPAN_S * 5)]) is None


def test_a_step_is_located_and_p_values_and_verdicts_come_from_the_callables() -> None:
    starts = np.arange(0, 500, 5)  # 20 s
    truth = np.where(starts < 300, 120.0, -80.0)  # the audio edit at frame 300 (12 s)
    rows = _rows(starts, truth, noise=0.5)
    masks = []

    def p_value_of(mask: np.ndarray) -> float:
        masks.append(mask.copy())
        return 0.001

    segs = find_segments(
        starts, rows, p_value_of=p_value_of, verdict_of=lambda off, p: "in_sync" if abs(off) <= 40 else "out_of_sync"
    )
    assert len(segs) == 2, [s.to_dict() for s in segs]
    assert abs(segs[0].end_s - 12.0) <= 0.5 and segs[0].end_s == segs[1].start_s
    assert abs(segs[0].offset_ms - 120.0) < 15 and abs(segs[1].offset_ms + 80.0) < 15
    assert [m.sum() for m in masks] == [s.n_windows for s in segs] and not (masks[0] & masks[1]).any()
    assert [s.verdict for s in segs] == ["out_of_sync", "out_of_sync"]
    d = segs[0].to_dict()
    assert list(d)[:5] == ["start_s", "end_s", "offset_ms", "p_value", "verdict"] and d["p_value"] == 0.001
    # the step is not a drift: the slope is fitted inside each segment
    drift = estimate_drift(starts, rows, segs)
    assert drift is not None and abs(drift.ms_per_min) < 60 and drift.low <= 0 <= drift.high


def test_one_frame_steps_of_a_drift_are_one_segment_and_the_slope_is_found() -> None:
    starts = np.arange(0, 1500, 5)  # 60 s
    truth = -60.0 + 2.0 * starts / 25.0  # +2 ms per second = 120 ms/min
    rows = _rows(starts, truth, noise=0.3, seed=2)
    segs = find_segments(starts, rows)
    assert len(segs) == 1
    drift = estimate_drift(starts, rows, segs)
    assert drift is not None and drift.low <= drift.ms_per_min <= drift.high
    assert abs(drift.ms_per_min - 120.0) < 15.0 and drift.low <= 120.0 <= drift.high
    assert drift.to_dict()["drift_ms_per_min"] == round(drift.ms_per_min, 2)


def test_a_track_without_sync_is_not_cut_into_pieces() -> None:
    # scores that carry no offset at all (another clip's audio, a model that does not work on these faces)
    for n, seed in ((60, 0), (300, 1), (1200, 2)):
        rows = np.random.default_rng(seed).normal(size=(n, 31))
        assert len(find_segments(np.arange(n) * 5, rows)) == 1, n


def test_the_timeline_draws_each_segment_with_its_interval(tmp_path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    starts = np.arange(0, 500, 5)
    segs = find_segments(starts, _rows(starts, np.where(starts < 300, 120.0, -80.0), noise=0.5))
    fig, ax = plt.subplots()
    draw_timeline(ax, segs)
    draw_timeline(ax, [s.to_dict() for s in segs])
    lines = [ln.get_ydata()[0] for ln in ax.get_lines()]
    assert len(lines) == 4 and lines[0] == pytest.approx(segs[0].offset_ms / FRAME_MS) and len(ax.collections) == 4
    fig.savefig(tmp_path / "timeline.png")
    plt.close(fig)


def test_bad_shapes_are_one_line_errors() -> None:
    with pytest.raises(UserError):
        find_segments(np.arange(3), np.zeros((3, 7)))
    with pytest.raises(UserError):
        find_segments(np.array([5, 0]), np.zeros((2, 31)))
    assert find_segments(np.zeros(0, int), np.zeros((0, 31))) == []


# ------------------------------------------------------------------------------------ trained tiny model


STEP_FROM_MS, STEP_TO_MS, STEP_AT_S = 120.0, -80.0, 6.0


@pytest.mark.slow
def test_an_audio_edit_inside_one_shot_is_found(trained_tiny_model, tmp_path) -> None:
    # one continuous shot (the same pictures); the sound is cut at 6 s from +120 ms to -80 ms
    before = talking_clip(11, 12.0, offset_ms=STEP_FROM_MS)
    after = talking_clip(11, 12.0, offset_ms=STEP_TO_MS)
    cut = int(STEP_AT_S * 16000)
    path = tmp_path / "edit.mp4"
    write_mp4(path, before.frames, np.concatenate([before.audio[:cut], after.audio[cut:]]))
    starts, rows = track_rows(path, trained_tiny_model, stride=2)
    segs = find_segments(starts, rows)
    assert len(segs) == 2, [s.to_dict() for s in segs]
    assert abs(segs[0].end_s - STEP_AT_S) <= 1.0
    assert abs(segs[0].offset_ms - STEP_FROM_MS) <= 20.0 and abs(segs[1].offset_ms - STEP_TO_MS) <= 20.0
    assert round(segs[0].offset_ms / FRAME_MS) == 3 and round(segs[1].offset_ms / FRAME_MS) == -2


@pytest.mark.slow
@pytest.mark.parametrize("drift", [0.004])
def test_a_drifting_sound_track_gives_its_slope(trained_tiny_model, tmp_path, drift: float) -> None:
    path = tmp_path / "drift.mp4"
    make_talking_video(path, seed=21, duration_s=20.0, offset_ms=-40.0, drift=drift)
    starts, rows = track_rows(path, trained_tiny_model, stride=2)
    segs = find_segments(starts, rows)
    est = estimate_drift(starts, rows, segs)
    truth = drift / (1 + drift) * 60_000.0  # ms of lead gained per minute of video
    assert est is not None and abs(est.ms_per_min - truth) <= 0.3 * truth, (est, truth)
