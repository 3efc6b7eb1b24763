"""Audio for VocaLiST / MTDVocaLiST: the stable public import path (implementation: `mtdistill.media.audio`).

from mtdistill.audio import load_audio, utterance_mel, chunk_mel
mel = utterance_mel(load_audio("talk.mp4"))      # (80, M), the official recipe, values in [-4, 4]
"""

from mtdistill.core.timing import mel_window_start
from mtdistill.media.audio import (
    MEL_BASIS_FILE,
    chunk_mel,
    chunk_mel_torch,
    load_audio,
    mel_basis,
    mel_torch,
    mel_window,
    resample,
    utterance_mel,
)

__all__ = [
    "MEL_BASIS_FILE",
    "chunk_mel",
    "chunk_mel_torch",
    "load_audio",
    "mel_basis",
    "mel_torch",
    "mel_window",
    "mel_window_start",
    "resample",
    "utterance_mel",
]
