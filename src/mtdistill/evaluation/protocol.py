"""The official retrieval protocol of VocaLiST / MTDVocaLiST (design.md §4.1-4.4).

For every 5-frame visual window i of an utterance, 31 audio windows (original windows i-15 .. i+15, zero-padded
at the ends) are scored; the best one gives the offset ``15 - argmax``, correct when ``|offset| <= 1``. Longer
contexts K = 7..15 average the 5-frame score rows over neighbouring windows before the argmax.

The scoring core (`window_scores` -> `mask_padding` -> `context_scores` -> `offsets` -> accuracy) works on plain
numpy score matrices, so it can be tested on designed logits. Scoring the pairs with a model has two paths that give
the same matrix: the plain official-style loop (31 full forwards per window) for any ``(video, mel) -> logits``
module, and a fast path for VocaLiST-family models that encodes every window once and batches only the backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from mtdistill.core.devices import batch_sizes
from mtdistill.core.errors import UserError
from mtdistill.core.quirks import FAITHFUL, Quirks, switched_off
from mtdistill.core.timing import (
    MEL_HOP,
    MEL_WINDOW,
    N_CANDIDATES,
    SAMPLES_PER_FRAME,
    SEARCH_RANGE,
    WINDOW_FRAMES,
    mel_window_start,
)
from mtdistill.models.vocalist import is_vocalist_family

MASK_SCORE = -1000.0
"""Score given to zero-padded candidates by the official code (design.md §4.2)."""
TOLERANCE = 1
"""A window is correct when its offset is within +-1 frame (design.md §4.4)."""
DEFAULT_LENGTHS = (5, 7, 9, 11, 13, 15)


# --------------------------------------------------------------------------------------------- windows (design.md §4.1)


def n_windows(n_frames: int, n_samples: int, n_mel: int | None = None, exclude_last: bool = True) -> int:
    """Number of scored windows N (design.md §4.1).

    ``min_length = min(n_frames, n_samples // 640)``; the official code uses ``N = min_length - 5``, dropping the
    last valid window (``Quirks.eval_exclude_last_window``). Without the quirk ``N = min_length - 4``, reduced so
    every audio window fits in the ``n_mel`` columns of the utterance mel. May return a value < 1.
    """
    min_length = min(int(n_frames), int(n_samples) // SAMPLES_PER_FRAME)
    n = min_length - WINDOW_FRAMES + (0 if exclude_last else 1)
    if n_mel is not None:
        while n > 0 and mel_window_start(n - 1) + MEL_WINDOW > n_mel:
            n -= 1
    return n


def video_windows(frames: torch.Tensor, n: int) -> torch.Tensor:
    """(F, 3, 48, 96) frames -> (n, 15, 48, 96) windows of frames i..i+4, channels frame-major (design.md §1.1)."""
    index = torch.arange(n)[:, None] + torch.arange(WINDOW_FRAMES)[None, :]
    win = frames[index.reshape(-1)]
    return win.reshape(n, WINDOW_FRAMES * frames.shape[1], *frames.shape[2:])


def audio_windows(mel: torch.Tensor, n: int) -> torch.Tensor:
    """(80, M) utterance mel -> (n, 1, 80, 16) windows starting at mel column int(80 i / 25) (design.md §4.1)."""
    starts = torch.tensor([mel_window_start(i) for i in range(n)], dtype=torch.long)
    cols = starts[:, None] + torch.arange(MEL_WINDOW)[None, :]
    return mel[:, cols].permute(1, 0, 2).unsqueeze(1)


def padded_index(n: int) -> np.ndarray:
    """(n, 31) index of the audio window behind each candidate; -1 marks zero padding (design.md §4.2).

    Candidate j of visual window i is padded audio window i + j, i.e. original audio window i - 15 + j.
    """
    idx = np.arange(n)[:, None] - SEARCH_RANGE + np.arange(N_CANDIDATES)[None, :]
    idx[(idx < 0) | (idx >= n)] = -1
    return idx


# ---------------------------------------------------------------------------------- scoring core (design.md §4.2-4.4)


def padding_mask(n: int, official_edges: bool = FAITHFUL.eval_ifelif_edges) -> np.ndarray:
    """(n, 31) bool, True for zero-padded candidates that get -1000 (design.md §4.2).

    The official code uses an if/elif: rows with i < 15 mask only the left padding (j < 15 - i), so when n < 30 a
    row that is also a right-edge row (i >= n - 15) keeps its right-padding candidates unmasked. ``official_edges``
    (``Quirks.eval_ifelif_edges``) reproduces that; False masks both sides.
    """
    mask = np.zeros((n, N_CANDIDATES), dtype=bool)
    j = np.arange(N_CANDIDATES)
    for i in range(n):
        left = i < SEARCH_RANGE
        right = i >= n - SEARCH_RANGE
        if left:
            mask[i] |= j < SEARCH_RANGE - i
        if right and (not left or not official_edges):
            mask[i] |= j >= SEARCH_RANGE + n - i
    return mask


def mask_padding(logits: np.ndarray, official_edges: bool = FAITHFUL.eval_ifelif_edges) -> np.ndarray:
    """Raw (N, 31) logits -> scores with padded candidates set to -1000 (design.md §4.2)."""
    scores = np.array(logits, dtype=np.float64, copy=True)
    scores[padding_mask(scores.shape[0], official_edges)] = MASK_SCORE
    return scores


def context_scores(scores: np.ndarray, k: int) -> np.ndarray:
    """K-frame scores: row i = mean of the 5-frame rows max(0, i-h) .. min(N-1, i+h), h = (K-5)/2 (design.md §4.3).

    An edge-truncated centred moving average over stride-1 windows; the -1000 masks take part, as in the official
    code. K = 5 returns the rows unchanged.
    """
    h = _half_context(k)
    scores = np.asarray(scores, dtype=np.float64)
    if h == 0:
        return scores.copy()
    n = scores.shape[0]
    csum = np.concatenate([np.zeros((1, scores.shape[1])), np.cumsum(scores, axis=0)], axis=0)
    rows = np.arange(n)
    lo = np.maximum(rows - h, 0)
    hi = np.minimum(rows + h, n - 1)
    return (csum[hi + 1] - csum[lo]) / (hi - lo + 1)[:, None]


def offsets(scores: np.ndarray) -> np.ndarray:
    """Offset per row = 15 - argmax_j (design.md §4.2) = video index - audio index; positive = audio leads video."""
    return SEARCH_RANGE - np.argmax(scores, axis=1)


def correct_rows(row_offsets: np.ndarray, tolerance: int = TOLERANCE) -> np.ndarray:
    """Rows whose offset is within +-tolerance frames (design.md §4.4)."""
    return np.abs(row_offsets) <= tolerance


def macro_average(per_utterance: Sequence[dict[int, float]]) -> dict[int, float]:
    """Unweighted mean of per-utterance accuracies per K (design.md §4.4: a macro average, not over windows)."""
    if not per_utterance:
        raise UserError("no utterance was evaluated; check the data (every utterance was skipped)")
    keys = list(per_utterance[0])
    return {k: float(np.mean([acc[k] for acc in per_utterance])) for k in keys}


def check_lengths(lengths: Sequence[int]) -> tuple[int, ...]:
    """Validate the context lengths: odd integers >= 5."""
    out = tuple(int(k) for k in lengths)
    if not out or any(k < WINDOW_FRAMES or k % 2 == 0 for k in out):
        raise UserError(f"context lengths must be odd integers >= 5, got {list(lengths)}; e.g. --lengths 5,7,9")
    return out


def _half_context(k: int) -> int:
    check_lengths([k])
    return (k - WINDOW_FRAMES) // 2


@dataclass
class UtteranceScores:
    """Everything the protocol computes for one utterance (reports and the sync tool read it).

    logits: raw (N, 31) model logits, candidate j = original audio window i - 15 + j; zero-padded candidates are
    scored on an all-zero mel window (one shared value per row), and the fast path leaves the ones the edge rule
    masks at -1000 unless skip_masked=False. scores: logits with padded candidates at -1000 per the edge rule
    (design.md §4.2). context / offsets / correct / accuracy: per context length K (design.md §4.3-4.4). min_length:
    min(n_frames, n_samples // 640).
    """

    logits: np.ndarray
    scores: np.ndarray
    offsets: dict[int, np.ndarray]
    correct: dict[int, np.ndarray]
    accuracy: dict[int, float]
    n_windows: int
    min_length: int
    official_edges: bool
    context: dict[int, np.ndarray] = field(default_factory=dict, repr=False)


def evaluate_logits(
    logits: np.ndarray,
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    official_edges: bool = FAITHFUL.eval_ifelif_edges,
    min_length: int | None = None,
) -> UtteranceScores:
    """Run the scoring core on a raw (N, 31) logit matrix (design.md §4.2-4.4)."""
    lengths = check_lengths(lengths)
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim != 2 or logits.shape[1] != N_CANDIDATES or logits.shape[0] < 1:
        raise UserError(f"expected an (N >= 1, 31) logit matrix, got shape {tuple(logits.shape)}")
    n = logits.shape[0]
    scores = mask_padding(logits, official_edges)
    ctx, offs, corr, acc = {}, {}, {}, {}
    for k in lengths:
        ctx[k] = context_scores(scores, k)
        offs[k] = offsets(ctx[k])
        corr[k] = correct_rows(offs[k])
        acc[k] = float(corr[k].mean())
    return UtteranceScores(
        logits=logits,
        scores=scores,
        offsets=offs,
        correct=corr,
        accuracy=acc,
        n_windows=n,
        min_length=n + WINDOW_FRAMES if min_length is None else min_length,
        official_edges=official_edges,
        context=ctx,
    )


# ------------------------------------------------------------------------------------------- pair scoring (model)


def _progress(total: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="win", leave=False, dynamic_ncols=True)


@torch.inference_mode()
def candidate_logits_plain(
    model: nn.Module, video: torch.Tensor, audio: torch.Tensor, progress: bool = False
) -> np.ndarray:
    """Official-style scoring: per visual window one forward of its 31 (window, candidate) pairs (design.md §4.2).

    video (N, 15, 48, 96), audio (N, 1, 80, 16) on the model's device -> (N, 31) float32 logits.
    """
    n = video.shape[0]
    pad = torch.zeros((SEARCH_RANGE, *audio.shape[1:]), dtype=audio.dtype, device=audio.device)
    padded = torch.cat([pad, audio, pad], dim=0)
    out = np.empty((n, N_CANDIDATES), dtype=np.float32)
    with _progress(n, progress, "windows (plain)") as bar:
        for i in range(n):
            vid = video[i : i + 1].expand(N_CANDIDATES, *video.shape[1:])
            out[i] = model(vid, padded[i : i + N_CANDIDATES]).reshape(-1).float().cpu().numpy()
            bar.update(1)
    return _tie_padding(out)


def _tie_padding(logits: np.ndarray) -> np.ndarray:
    """Give every zero-padded candidate of a row the logit of the row's first one.

    They are the same input (visual window i, all-zero mel), so in exact arithmetic they tie and argmax picks the
    first; batched float kernels can differ in the last bit by batch position, which would make that choice noise.
    """
    pads = padded_index(logits.shape[0]) < 0
    for i in np.flatnonzero(pads.any(axis=1)):
        logits[i, pads[i]] = logits[i, pads[i].argmax()]
    return logits


def _encode_chunked(encode, x: torch.Tensor, chunk: int) -> torch.Tensor:
    """Encode along the batch in chunks; tokens come back time-first (T, B, d)."""
    return torch.cat([encode(x[s : s + chunk]) for s in range(0, x.shape[0], chunk)], dim=1)


@torch.inference_mode()
def candidate_logits_fast(
    model: nn.Module,
    video: torch.Tensor,
    audio: torch.Tensor,
    chunk_pairs: int | None = None,
    encode_chunk: int | None = None,
    skip: np.ndarray | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Factorised scoring for VocaLiST-family models: identical logits to `candidate_logits_plain`.

    Each token depends only on its own window (eval-mode BatchNorm and the data-dependent positional embedding are
    per sample), so the N visual windows and the N audio windows (+ one zero window for all padding) are encoded
    once, and only the transformer backend runs on the 31 N (window, candidate) pairs, in chunks. ``skip`` (N, 31)
    bool marks pairs whose score is overwritten anyway (the -1000 padding): they are not run and hold -1000. The
    zero-padded candidates of a row are one input, scored once and shared (see `_tie_padding`).
    """
    n = video.shape[0]
    sizes = batch_sizes(video.device)
    chunk_pairs, encode_chunk = chunk_pairs or sizes.pairs, encode_chunk or sizes.windows
    vid_tok = _encode_chunked(model.encode_video, video, encode_chunk)  # (Tv, N, d)
    zero = torch.zeros((1, *audio.shape[1:]), dtype=audio.dtype, device=audio.device)
    aud_tok = _encode_chunked(model.encode_audio, torch.cat([audio, zero], dim=0), encode_chunk)  # (Ta, N+1, d)
    idx = padded_index(n)
    keep = np.ones(idx.shape, dtype=bool) if skip is None else ~np.asarray(skip, dtype=bool)
    pads = keep & (idx < 0)
    pad_rows = np.flatnonzero(pads.any(axis=1))
    first_pad = pads.argmax(axis=1)
    run_mask = keep & (idx >= 0)
    run_mask[pad_rows, first_pad[pad_rows]] = True  # one zero-window pair per row stands for all its padding
    cand = np.where(idx < 0, n, idx)  # n = the shared zero window
    rows = np.broadcast_to(np.arange(n)[:, None], idx.shape)
    flat = np.flatnonzero(run_mask)  # row-major, so chunks advance window by window
    rows_t = torch.from_numpy(rows.reshape(-1)[flat].copy()).to(video.device)
    cand_t = torch.from_numpy(cand.reshape(-1)[flat].copy()).to(video.device)
    out = np.full(n * N_CANDIDATES, MASK_SCORE, dtype=np.float32)
    with _progress(n, progress, "windows (fast)") as bar:
        for s in range(0, flat.size, chunk_pairs):
            r, c = rows_t[s : s + chunk_pairs], cand_t[s : s + chunk_pairs]
            out[flat[s : s + r.numel()]] = model.backend(vid_tok[:, r], aud_tok[:, c]).reshape(-1).float().cpu().numpy()
            bar.update(int(rows_t[s + r.numel() - 1]) + 1 - bar.n)
    out = out.reshape(n, N_CANDIDATES)
    for i in pad_rows:
        out[i, pads[i]] = out[i, first_pad[i]]
    return out


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _as_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise UserError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")
    return x.float()


def score_utterance(
    model: nn.Module,
    frames,
    mel,
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    official_edges: bool = True,
    n_samples: int | None = None,
    *,
    device: str | torch.device | None = None,
    fast: bool | None = None,
    quirks: Quirks | None = None,
    chunk_pairs: int | None = None,
    skip_masked: bool = True,
    progress: bool = False,
) -> UtteranceScores:
    """Score one utterance with the official protocol (design.md §4.1-4.4) and keep every intermediate.

    frames (F, 3, 48, 96) float, already in the model's input preset; mel (80, M) utterance mel; n_samples: length
    of the 16 kHz waveform (default (M - 1) * 200). fast=None picks the factorised path for VocaLiST-family models;
    device=None keeps the model where it is. skip_masked: the fast path does not score candidates that the edge rule
    sets to -1000 anyway (their raw logits then read -1000 too). Raises UserError when N < 1 (too short).

    ``quirks`` (default: faithful) gives ``eval_ifelif_edges`` and ``eval_exclude_last_window``;
    ``official_edges=False`` is a shortcut for ``quirks.replace(eval_ifelif_edges=False)`` (True keeps the quirks'
    own value).
    """
    quirks = switched_off(quirks, eval_ifelif_edges=official_edges)
    official_edges = quirks.eval_ifelif_edges
    frames_t = _as_tensor(frames, "frames")
    mel_t = _as_tensor(mel, "mel")
    if frames_t.ndim != 4 or frames_t.shape[1] != 3:
        raise UserError(f"frames must have shape (N, 3, 48, 96), got {tuple(frames_t.shape)}")
    if mel_t.ndim != 2 or mel_t.shape[0] != 80:
        raise UserError(f"mel must have shape (80, M), got {tuple(mel_t.shape)}")
    m = mel_t.shape[1]
    n_samples = (m - 1) * MEL_HOP if n_samples is None else int(n_samples)
    min_length = min(frames_t.shape[0], n_samples // SAMPLES_PER_FRAME)
    n = n_windows(frames_t.shape[0], n_samples, m, exclude_last=quirks.eval_exclude_last_window)
    if n < 1:
        raise UserError(
            f"utterance too short for the protocol: {frames_t.shape[0]} frames and {n_samples} samples give "
            f"{n} windows (needs at least {WINDOW_FRAMES + 1} frames and audio for them); skip it"
        )
    lengths = check_lengths(lengths)
    fast = is_vocalist_family(model) if fast is None else fast
    if fast and not is_vocalist_family(model):
        raise UserError("the fast path needs a VocaLiST-family model (encode_video/encode_audio/backend)")
    dev = torch.device(device) if device is not None else _model_device(model)
    was_training = model.training
    model.to(dev).eval()
    try:
        video = video_windows(frames_t[:min_length], n).to(dev)
        audio = audio_windows(mel_t, n).to(dev)
        if fast:
            skip = padding_mask(n, official_edges) if skip_masked else None
            logits = candidate_logits_fast(model, video, audio, chunk_pairs=chunk_pairs, skip=skip, progress=progress)
        else:
            logits = candidate_logits_plain(model, video, audio, progress=progress)
    finally:
        model.train(was_training)
    return evaluate_logits(logits, lengths, official_edges, min_length=min_length)


def utterance_accuracy(model: nn.Module, frames, mel, *args: Any, **options: Any) -> dict[int, float]:
    """Per-utterance accuracy per context length K, as a fraction in [0, 1] (design.md §4.4).

    The public API (ARCHITECTURE.md): any torch module mapping (video, mel) -> logits is accepted; every other
    argument (lengths, official_edges, n_samples, device, fast, quirks, progress, ...) is that of
    `score_utterance`. The protocol's quirks come from ``quirks`` (default: faithful); ``official_edges=False``
    is a shortcut for ``quirks.replace(eval_ifelif_edges=False)``.
    """
    return score_utterance(model, frames, mel, *args, **options).accuracy
