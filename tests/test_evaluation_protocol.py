"""The retrieval protocol (design.md §4.1-4.4) on designed logits: a fake model that knows which windows it sees."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mtdistill.core.errors import UserError
from mtdistill.core.quirks import Quirks
from mtdistill.evaluation import score_utterance, utterance_accuracy
from mtdistill.evaluation.protocol import (
    MASK_SCORE,
    audio_windows,
    context_scores,
    evaluate_logits,
    macro_average,
    mel_window_start,
    n_windows,
    padding_mask,
    video_windows,
)


def labelled_utterance(n_frames: int, n_audio_frames: int) -> tuple[torch.Tensor, np.ndarray, int]:
    """Frames whose pixel (0, 0, 0) holds frame index + 1, and a mel whose column int(3.2 i) row 0 holds i + 1.

    So a visual window's first pixel names its start frame and an audio window's first column names its index.
    """
    frames = torch.zeros(n_frames, 3, 48, 96)
    frames[:, 0, 0, 0] = torch.arange(n_frames) + 1.0
    n_samples = n_audio_frames * 640
    mel = np.zeros((80, n_samples // 200 + 1), dtype=np.float32)
    for i in range(n_audio_frames):
        if mel_window_start(i) < mel.shape[1]:
            mel[0, mel_window_start(i)] = i + 1
    return frames, mel, n_samples


def planted_logit(v: torch.Tensor, a: torch.Tensor, offset: int, pad_score: float) -> torch.Tensor:
    """High when audio window a == v - offset; zero-padded windows (a = -1) get pad_score."""
    return torch.where(a < 0, torch.full_like(v, pad_score), -(a - (v - offset)).abs())


class PlantedModel(nn.Module):
    """Any (video, mel) -> logits module: the plain path."""

    def __init__(self, offset: int = 0, pad_score: float = -50.0):
        super().__init__()
        self.offset, self.pad_score = offset, pad_score
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, video: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        return planted_logit(video[:, 0, 0, 0] - 1, mel[:, 0, 0, 0] - 1, self.offset, self.pad_score)


class PlantedFactorised(PlantedModel):
    """The same function split as encode_video / encode_audio / backend: the fast path."""

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        return (video[:, 0, 0, 0] - 1)[None, :, None]

    def encode_audio(self, mel: torch.Tensor) -> torch.Tensor:
        return (mel[:, 0, 0, 0] - 1)[None, :, None]

    def backend(self, vid: torch.Tensor, aud: torch.Tensor) -> torch.Tensor:
        return planted_logit(vid[0, :, 0], aud[0, :, 0], self.offset, self.pad_score)

    def forward(self, video: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        return self.backend(self.encode_video(video), self.encode_audio(mel))


def official_mask_loop(n: int) -> np.ndarray:
    """A literal transcription of the official if/elif (design.md §4.2)."""
    mask = np.zeros((n, 31), dtype=bool)
    for i in range(n):
        if i < 15:
            mask[i, : 15 - i] = True
        elif i >= n - 15:
            mask[i, 15 + n - i :] = True
    return mask


def test_window_count_and_truncation():
    assert n_windows(50, 50 * 640) == 45  # N = min_length - 5: the last valid window is excluded
    assert n_windows(50, 50 * 640, exclude_last=False) == 46
    assert n_windows(60, 40 * 640 + 639) == 35  # more images than audio: truncated to floor(len / 640)
    assert n_windows(30, 100 * 640) == 25
    assert n_windows(5, 10 * 640) == 0
    # the mel-column formula int(80 v / 25) == floor(3.2 v)
    assert [mel_window_start(v) for v in range(6)] == [0, 3, 6, 9, 12, 16]


def test_more_images_than_audio_is_truncated_not_a_crash():
    frames, mel, n_samples = labelled_utterance(60, 40)
    scored = score_utterance(PlantedModel(), frames, mel)
    assert scored.n_windows == 35 and scored.min_length == 40
    assert scored.logits.shape == (35, 31)
    # default n_samples = (M - 1) * 200 gives the same count
    assert score_utterance(PlantedModel(), frames, mel, n_samples=n_samples).n_windows == 35


def test_windows_slice_frames_and_mel_columns():
    frames, mel, _ = labelled_utterance(20, 20)
    vid = video_windows(frames, 15)
    assert vid.shape == (15, 15, 48, 96)
    assert vid[7, ::3, 0, 0].tolist() == [8, 9, 10, 11, 12]  # frames 7..11, channels frame-major
    aud = audio_windows(torch.from_numpy(mel), 15)
    assert aud.shape == (15, 1, 80, 16)
    assert aud[:, 0, 0, 0].tolist() == [i + 1 for i in range(15)]
    assert torch.equal(aud[9, 0], torch.from_numpy(mel)[:, 28:44])  # int(80 * 9 / 25) = 28


@pytest.mark.parametrize("offset,expected", [(0, 1.0), (1, 1.0), (-1, 1.0)])
def test_tolerance_of_one_frame(offset, expected):
    frames, mel, _ = labelled_utterance(45, 45)
    acc = utterance_accuracy(PlantedModel(offset), frames, mel, lengths=(5,))
    assert acc == {5: expected}


def test_offsets_sign_and_two_frames_is_wrong():
    frames, mel, _ = labelled_utterance(45, 45)
    scored = score_utterance(PlantedModel(offset=2), frames, mel, lengths=(5,))
    n = scored.n_windows
    rows = np.arange(n)
    # the best audio window is v - 2 where it exists, else the nearest real one (window 0)
    expected = rows - np.clip(rows - 2, 0, n - 1)
    np.testing.assert_array_equal(scored.offsets[5], expected)
    assert scored.accuracy[5] == pytest.approx(2 / n)  # rows 0 and 1 can only pick offsets 0 and 1
    # positive offset = video index - audio index: the audio leads
    assert score_utterance(PlantedModel(offset=3), frames, mel, lengths=(5,)).offsets[5][10] == 3


def test_padding_mask_if_elif_matches_the_official_loop_and_fixed_masks_both_sides():
    for n in (1, 5, 10, 16, 29, 30, 31, 45):
        np.testing.assert_array_equal(padding_mask(n, official_edges=True), official_mask_loop(n))
        fixed = padding_mask(n, official_edges=False)
        idx = np.arange(n)[:, None] - 15 + np.arange(31)[None, :]
        np.testing.assert_array_equal(fixed, (idx < 0) | (idx >= n))
    # for N >= 30 the two rules agree; for N < 30 the official one leaves right padding unmasked
    assert (padding_mask(30, True) == padding_mask(30, False)).all()
    assert padding_mask(20, True).sum() < padding_mask(20, False).sum()


def test_ifelif_bug_changes_accuracy_for_short_utterances():
    frames, mel, _ = labelled_utterance(15, 15)  # N = 10 < 30: every row is a left-edge row
    model = PlantedModel(offset=0, pad_score=5.0)  # zero-padded windows score above every real window
    official = score_utterance(model, frames, mel, lengths=(5,), official_edges=True)
    fixed = score_utterance(model, frames, mel, lengths=(5,), official_edges=False)
    assert official.n_windows == 10
    assert fixed.accuracy[5] == 1.0
    # officially the unmasked right padding wins: offset = i - N, only the last row (offset -1) is correct
    np.testing.assert_array_equal(official.offsets[5], np.arange(10) - 10)
    assert official.accuracy[5] == pytest.approx(0.1)
    # the masked scores are exactly -1000 and the raw logits are kept
    assert (official.scores[official.scores < -999] == MASK_SCORE).all()
    assert official.logits[0, 30] == 5.0
    via_quirk = score_utterance(model, frames, mel, lengths=(5,), quirks=Quirks(eval_ifelif_edges=False))
    assert via_quirk.accuracy == fixed.accuracy and not via_quirk.official_edges


def test_context_average_matches_a_direct_loop_at_the_edges():
    rng = np.random.default_rng(0)
    for n in (1, 3, 8, 12, 40):
        scores = rng.normal(size=(n, 31))
        scores[padding_mask(n)] = MASK_SCORE  # -1000 entries take part in the mean
        for k in (5, 7, 9, 11, 13, 15):
            h = (k - 5) // 2
            direct = np.stack([scores[max(0, i - h) : min(n - 1, i + h) + 1].mean(axis=0) for i in range(n)])
            got = context_scores(scores, k)
            assert got.shape == (n, 31)  # the row count stays N, even when N < K - 4
            np.testing.assert_allclose(got, direct, rtol=0, atol=1e-9)


def test_longer_context_fixes_noisy_rows():
    # one row points the wrong way; the 3-row average (K = 7) votes it back
    logits = np.zeros((20, 31), dtype=np.float32)
    logits[:, 15] = 1.0
    logits[5, 15] = 0.0
    logits[5, 25] = 1.5  # audio window 15: a real window, offset -10
    res = evaluate_logits(logits, lengths=(5, 7), official_edges=False)
    assert res.offsets[5][5] == -10 and res.offsets[7][5] == 0
    assert res.accuracy == {5: pytest.approx(19 / 20), 7: 1.0}


def test_macro_average_is_over_utterances_not_windows():
    assert macro_average([{5: 1.0, 7: 1.0}, {5: 0.0, 7: 0.5}]) == {5: 0.5, 7: 0.75}
    with pytest.raises(UserError, match="no utterance"):
        macro_average([])


def test_fast_path_equals_plain_path_on_designed_logits():
    frames, mel, _ = labelled_utterance(40, 38)
    model = PlantedFactorised(offset=2, pad_score=3.0)
    for official in (True, False):
        plain = score_utterance(model, frames, mel, fast=False, official_edges=official)
        full = score_utterance(
            model, frames, mel, fast=True, chunk_pairs=50, skip_masked=False, official_edges=official
        )
        np.testing.assert_array_equal(full.logits, plain.logits)  # chunks cut across windows
        fast = score_utterance(model, frames, mel, fast=True, chunk_pairs=64, official_edges=official)
        np.testing.assert_array_equal(fast.scores, plain.scores)  # masked pairs skipped, same scores
        assert fast.accuracy == plain.accuracy == full.accuracy


def test_too_short_and_bad_inputs_are_user_errors():
    frames, mel, _ = labelled_utterance(5, 5)
    with pytest.raises(UserError, match="too short"):
        utterance_accuracy(PlantedModel(), frames, mel)
    frames, mel, _ = labelled_utterance(20, 20)
    with pytest.raises(UserError, match="odd integers"):
        utterance_accuracy(PlantedModel(), frames, mel, lengths=(6,))
    with pytest.raises(UserError, match=r"\(80, M\)"):
        utterance_accuracy(PlantedModel(), frames, mel.T)


def test_clean_quirk_keeps_the_last_window():
    frames, mel, _ = labelled_utterance(30, 30)
    faithful = score_utterance(PlantedModel(), frames, mel)
    clean = score_utterance(PlantedModel(), frames, mel, quirks=Quirks(eval_exclude_last_window=False))
    assert (faithful.n_windows, clean.n_windows) == (25, 26)


def test_model_mode_is_restored():
    frames, mel, _ = labelled_utterance(20, 20)
    model = PlantedModel().train()
    utterance_accuracy(model, frames, mel)
    assert model.training
