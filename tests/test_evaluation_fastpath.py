"""The factorised fast path gives the official loop's scores on a real VocaLiST (tiny), random and trained."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtdistill.evaluation import score_utterance, utterance_accuracy
from mtdistill.models import VocaLiST


def utterance(n_frames: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    g = np.random.default_rng(seed)
    frames = torch.from_numpy(g.integers(0, 256, size=(n_frames, 3, 48, 96)).astype(np.float32))  # mtd: RGB 0..255
    mel = g.uniform(-4, 4, size=(80, n_frames * 640 // 200 + 1)).astype(np.float32)
    return frames, mel


def trained_tiny() -> VocaLiST:
    """A few Adam steps in train mode: weights and BatchNorm running statistics move away from the init.

    The video convs stay frozen (their BatchNorm statistics still update): Conv3d backward is very slow on CPU.
    """
    torch.manual_seed(1)
    model = VocaLiST.tiny().train()
    model.vid_prenet.requires_grad_(False)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        video, mel = torch.rand(2, 15, 48, 96) * 255, torch.rand(2, 1, 80, 16) * 8 - 4
        labels = torch.tensor([1.0, 0.0])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(video, mel), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("which", ["random", "trained"])
def test_fast_scores_equal_the_official_loop(which):
    torch.manual_seed(0)
    model = VocaLiST.tiny() if which == "random" else trained_tiny()
    frames, mel = utterance(9, seed=3)
    n_samples = 9 * 640  # N = 9 - 5 = 4 windows: 4 plain forwards of 31 pairs
    plain = score_utterance(model, frames, mel, n_samples=n_samples, fast=False)
    fast = score_utterance(model, frames, mel, n_samples=n_samples, fast=True, chunk_pairs=40)
    assert plain.n_windows == fast.n_windows == 4
    np.testing.assert_allclose(fast.scores, plain.scores, rtol=0, atol=1e-4)
    assert fast.accuracy == plain.accuracy
    for k in plain.offsets:
        np.testing.assert_array_equal(fast.offsets[k], plain.offsets[k])
    # all-pairs variant (nothing skipped) also matches the raw logits, padding included
    full = score_utterance(model, frames, mel, n_samples=n_samples, fast=True, skip_masked=False)
    np.testing.assert_allclose(full.logits, plain.logits, rtol=0, atol=1e-4)
    # the public function picks the fast path for this model by itself and agrees
    assert utterance_accuracy(model, frames, mel, n_samples=n_samples) == plain.accuracy
