"""Every quirk of the official VocaLiST / MTDVocaLiST code, gathered in one place.

The faithful value is the default: the official checkpoints and published numbers depend on it.
Pass ``Quirks(flag=False)`` (or the matching config / CLI option) to get the clean behaviour.
See ../shared/spec/vocalist.md section 5 for where each quirk comes from.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from mtdistill.core.errors import UserError


@dataclass(frozen=True)
class Quirks:
    data_dependent_pe: bool = True
    """Positional embedding is zero where channel 0 of the raw token is exactly 0 (spec 1.6).
    False: every token at time t gets position t+1."""

    va_future_mask: bool = True
    """The VA transformer keeps the leftover 'future' mask: -inf where j - i >= 1 + |Tk - Tq| (spec 1.7)."""

    va_cad_clamp: bool = True
    """MTD loss clamps the VA attention *logits* at min 1e-5 before softmax (spec 2.3).
    False: a masked KL that ignores the -inf entries instead."""

    kl_reduction: str = "mean"
    """KLDivLoss reduction of the CAD/VR terms: 'mean' divides by B*H*Tq*Tk as released;
    'batchmean' gives the per-row KL averaged over B*H*Tq (spec 2.3)."""

    kd_softmax_over_batch: bool = True
    """KD baseline takes the softmax of the scalar logits over the batch dimension at T=5 (spec 2.5).
    False: a per-sample binary (sigmoid) KD."""

    eval_ifelif_edges: bool = True
    """Protocol masks zero-padded candidates with the official if/elif, so for N < 30 rows that are
    left-edge rows keep unmasked right-padding candidates (spec 4.2). False: mask both sides."""

    eval_exclude_last_window: bool = True
    """Protocol uses N = min_length - 5 windows, dropping the last valid one (spec 4.1)."""

    first_iteration_lr_zero: bool = True
    """The warm-up scheduler gives lr = 0 on the very first iteration (spec 2.6)."""

    negatives_anywhere: bool = True
    """Training negatives are drawn anywhere in the utterance except the positive (spec 3.4).
    False: negatives within +-15 frames."""

    train_chunk_drop_last_frame: bool = True
    """A 3,200-sample training chunk gives 17 STFT frames; the 17th is dropped (spec 3.2)."""

    syncnet_jpeg_roundtrip: bool = True
    """SyncNet (`sync --model syncnet`) reads its inputs as syncnet_python's evaluate() does: every face crop
    goes through ffmpeg's default image2 JPEG (mjpeg encoder defaults) and back through OpenCV, and the audio
    is rounded to int16 samples. False: lossless crops and float audio (LSE differs by up to ~5e-2 relative)."""

    @classmethod
    def clean(cls) -> Quirks:
        """Every quirk off: the behaviour the papers describe."""
        flags = {f.name: False for f in fields(cls) if f.name != "kl_reduction"}
        return cls(**flags, kl_reduction="batchmean")

    def replace(self, **changes: object) -> Quirks:
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise UserError(f"unknown quirk flag(s) {sorted(unknown)}; known: {[f.name for f in fields(self)]}")
        return Quirks(**{**self.__dict__, **changes})


FAITHFUL = Quirks()
