"""Offset recovery with a model trained on the synthetic corpus: |k| <= 10 within +-1 frame, right sign.

Training a VocaLiST model on CPU takes minutes, more than the test budget, so this test uses the shared session
fixture ``trained_tiny_model`` (tests/conftest.py, published by the core area) when it exists, and skips otherwise.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mtdistill.data.synthetic import make_talking_video
from mtdistill.inference.sync import sync_video

OFFSETS = (-10, -6, -3, -1, 0, 2, 4, 7, 10)


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
