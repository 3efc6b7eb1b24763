"""Per-model calibration of the `sync` verdict threshold on synthetic clips (docs/sync.md, "Confidence").

The confidence is a logit margin, so its scale depends on how a model was trained: the threshold that says
"confident" must sit above what the model scores on clips whose audio belongs to another clip (there is no
true offset to find) and is measured per model.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from torch import nn

from mtdistill.data.synthetic import talking_clip, write_mp4
from mtdistill.inference.sync import sync_video

CALIBRATION_MARGIN = 1.1
"""min_confidence = this x the highest confidence on swapped-audio clips."""


def swapped_audio_confidences(model: nn.Module, clips: int = 4, seed: int = 0, duration_s: float = 4.0) -> list[float]:
    """`sync` confidence of ``clips`` synthetic videos whose audio is another synthetic clip's (stride 1)."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(clips):
            face, voice = talking_clip(seed + 900 + i, duration_s), talking_clip(seed + 5000 + i, duration_s)
            path = Path(tmp) / f"swapped_{i}.mp4"
            write_mp4(path, face.frames, voice.audio)
            out.append(float(sync_video(path, model, stride=1).main_track().confidence))
    return out


def calibrate_min_confidence(model: nn.Module, clips: int = 4, seed: int = 0) -> tuple[float, list[float]]:
    """(min_confidence for ``model``, the swapped-audio confidences it was derived from)."""
    confs = swapped_audio_confidences(model, clips, seed)
    return round(CALIBRATION_MARGIN * max(confs), 3), confs
