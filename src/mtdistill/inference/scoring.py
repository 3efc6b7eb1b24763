"""Streaming candidate scoring for the sync tool: windows at any stride, audio candidates at every frame.

The evaluation protocol's fast path (`mtdistill.evaluation.protocol.candidate_logits_fast`) scores one whole
utterance whose visual and audio windows are paired one to one. The sync tool needs the same factorisation on
streams of arbitrary length and at a stride: visual windows start every ``stride`` frames, while their 31
candidates are audio windows at every frame. This module does that chunk by chunk, so memory stays flat:

* visual tokens once per visual window, audio tokens once per audio window of the chunk (plus a 2 * vshift
  overlap), the transformer backend over the (window, candidate) pairs;
* the utterance mel is computed per chunk of columns with 2 columns (400 samples) of context on each side, so
  every column equals the column of a whole-file `utterance_mel` (the STFT window is 800 samples, centred).

Candidates that fall outside the audio are *missing* (NaN), not scored on zero mels as in the protocol: the sync
tool averages over real audio only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from mtdistill.core.devices import batch_sizes
from mtdistill.core.timing import MEL_HOP, MEL_WINDOW, SAMPLES_PER_FRAME, SEARCH_RANGE, WINDOW_FRAMES, mel_window_start
from mtdistill.media.audio import N_FFT, utterance_mel
from mtdistill.models.vocalist import is_vocalist_family


def n_mel_columns(n_samples: int) -> int:
    """Columns of the whole-file utterance mel: S // 200 + 1 (center=True STFT)."""
    return n_samples // MEL_HOP + 1


def n_audio_windows(n_samples: int) -> int:
    """Audio windows a = 0..A-1 that have 5 frames of audio and 16 mel columns."""
    m = n_mel_columns(n_samples)
    a = n_samples // SAMPLES_PER_FRAME - WINDOW_FRAMES + 1
    while a > 0 and mel_window_start(a - 1) + MEL_WINDOW > m:
        a -= 1
    return max(a, 0)


def mel_columns(wave: np.ndarray, c0: int, c1: int) -> np.ndarray:
    """Columns [c0, c1) of ``utterance_mel(wave)`` computed from a slice of the wave (exact, see module doc)."""
    n = wave.shape[0]
    ctx = N_FFT // (2 * MEL_HOP)  # 2 columns: a column's window reaches 400 samples either side of its centre
    s0 = max(c0 - ctx, 0) * MEL_HOP
    s1 = min((c1 - 1 + ctx) * MEL_HOP + 1, n)
    if s0 == 0 and s1 == n:
        return utterance_mel(wave)[:, c0:c1]
    seg = utterance_mel(wave[s0:s1])
    first = c0 - s0 // MEL_HOP
    return seg[:, first : first + (c1 - c0)]


class PairScorer:
    """Scores (visual window, audio window) pairs with a VocaLiST-family model (factorised) or any
    (video, mel) -> logits module (plain: the pairs are gathered and run through the whole model)."""

    def __init__(
        self,
        model: nn.Module,
        chunk_pairs: int | None = None,
        encode_chunk: int | None = None,
        device: str | torch.device | None = None,
        bf16: bool = False,
    ) -> None:
        self.model = model
        self.bf16 = bool(bf16)
        self.fast = is_vocalist_family(model)
        params = list(model.parameters())
        # an onnxruntime model has no torch parameters: its tensors live on the CPU
        self.device = torch.device(device or (params[0].device if params else "cpu"))
        sizes = batch_sizes(self.device)
        self.chunk_pairs = chunk_pairs or sizes.pairs
        self.encode_chunk = encode_chunk or sizes.windows
        if params:
            model.to(self.device)
        model.eval()

    def _autocast(self) -> torch.autocast:
        # bf16 halves the cost of the Conv3d front end where the CPU has BF16 dot products (or on a GPU)
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16 and self.fast)

    def _encode(self, fn, x: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            parts = [fn(x[s : s + self.encode_chunk].to(self.device)) for s in range(0, x.shape[0], self.encode_chunk)]
        return torch.cat(parts, dim=1)

    @torch.inference_mode()
    def video(self, windows: torch.Tensor) -> torch.Tensor:
        """(W, 15, 48, 96) -> tokens (Tv, W, d) (fast) or the windows themselves (plain)."""
        return self._encode(self.model.encode_video, windows) if self.fast else windows

    @torch.inference_mode()
    def audio(self, mels: torch.Tensor) -> torch.Tensor:
        """(A, 1, 80, 16) -> tokens (Ta, A, d) (fast) or the mels themselves (plain)."""
        return self._encode(self.model.encode_audio, mels) if self.fast else mels

    @torch.inference_mode()
    def pairs(self, vid: torch.Tensor, aud: torch.Tensor, vi: np.ndarray, ai: np.ndarray) -> np.ndarray:
        """Logits of pairs (vid[vi[k]], aud[ai[k]]) as float32 (K,)."""
        out = np.empty(len(vi), np.float32)
        vi_t, ai_t = torch.as_tensor(vi, dtype=torch.long), torch.as_tensor(ai, dtype=torch.long)
        for s in range(0, len(vi), self.chunk_pairs):
            v, a = vi_t[s : s + self.chunk_pairs], ai_t[s : s + self.chunk_pairs]
            if self.fast:
                with self._autocast():
                    logits = self.model.backend(vid[:, v.to(vid.device)], aud[:, a.to(aud.device)])
            else:
                logits = self.model(vid[v].to(self.device), aud[a].to(self.device))
            out[s : s + len(v)] = logits.reshape(-1).float().cpu().numpy()
        return out


@dataclass
class CurveAccumulator:
    """Running per-candidate sums (for the window-averaged curve), per-window offsets and the per-window score
    rows (and null-band rows, `inference.significance`) of one track."""

    vshift: int = SEARCH_RANGE
    sums: np.ndarray = field(init=False)
    counts: np.ndarray = field(init=False)
    starts: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    best: list[float] = field(default_factory=list)
    rows: list[np.ndarray] = field(default_factory=list)
    """The (31,) score row of every window in ``starts`` (NaN = candidate missing): what `inference.subframe` and
    `inference.segments` read."""
    null_list: list[np.ndarray] = field(default_factory=list)
    """Null-band rows of the same windows, per chunk (`inference.significance`)."""

    def __post_init__(self) -> None:
        self.sums = np.zeros(2 * self.vshift + 1)
        self.counts = np.zeros(2 * self.vshift + 1, dtype=np.int64)

    def add(self, starts: np.ndarray, rows: np.ndarray, null_rows: np.ndarray | None = None) -> None:
        """rows (W, 31) logits with NaN for missing candidates; null_rows (W, B) the null band of the same
        windows (or None)."""
        valid = ~np.isnan(rows)
        self.sums += np.where(valid, rows, 0.0).sum(0)
        self.counts += valid.sum(0)
        keep = valid.any(1)
        for v, row, ok in zip(starts, rows, valid, strict=True):
            if ok.any():
                j = int(np.nanargmax(row))
                self.starts.append(int(v))
                self.offsets.append(self.vshift - j)
                self.best.append(float(row[j]))
                self.rows.append(np.array(row, np.float32))
        if null_rows is not None:
            self.null_list.append(np.asarray(null_rows, np.float32)[keep])

    @property
    def n_windows(self) -> int:
        return len(self.starts)

    def row_matrix(self) -> np.ndarray:
        """(n_windows, 31) rows in window order (empty (0, 31) before any window)."""
        return np.stack(self.rows) if self.rows else np.zeros((0, 2 * self.vshift + 1), np.float32)

    def null_rows(self) -> np.ndarray:
        """(n_windows, B) null-band rows (empty when no null was scored)."""
        if not self.null_list or sum(len(x) for x in self.null_list) != self.n_windows:
            return np.empty((0, 0), np.float32)
        widths = {x.shape[1] for x in self.null_list}
        if len(widths) != 1:
            return np.empty((0, 0), np.float32)
        return np.concatenate(self.null_list)

    def curve(self) -> np.ndarray:
        """Window-averaged score per candidate j (offset vshift - j); NaN where no window had that candidate."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.counts > 0, self.sums / np.maximum(self.counts, 1), np.nan)


def _audio_mels(wave: np.ndarray, idx: np.ndarray) -> torch.Tensor:
    """(len(idx), 1, 80, 16) mels of the audio windows ``idx`` (sorted, unique), one mel slice per contiguous run."""
    parts = []
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    for run in np.split(idx, breaks):
        c0 = mel_window_start(int(run[0]))
        mel = mel_columns(wave, c0, mel_window_start(int(run[-1])) + MEL_WINDOW)
        cols = np.array([mel_window_start(int(a)) - c0 for a in run])[:, None] + np.arange(MEL_WINDOW)[None, :]
        parts.append(mel[:, cols].transpose(1, 0, 2)[:, None])
    return torch.from_numpy(np.ascontiguousarray(np.concatenate(parts)))


def score_chunk(
    scorer: PairScorer,
    windows: torch.Tensor,
    starts: np.ndarray,
    wave: np.ndarray,
    n_audio: int,
    vshift: int = SEARCH_RANGE,
    null_shift: int | None = None,
    null_width: int = 0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(W, 31) logits of visual windows starting at absolute frames ``starts`` against audio windows
    starts - vshift .. starts + vshift; NaN where the audio window does not exist (before 0 or past the end).

    With ``null_shift`` s and ``null_width`` B > 0, also the (W, B) null band: each window against the audio
    windows (start + s + b) mod n_audio, b = 0..B-1 (`inference.significance`); else None.
    """
    w = len(starts)
    rows = np.full((w, 2 * vshift + 1), np.nan, dtype=np.float32)
    use_null = null_shift is not None and null_width > 0 and w > 0
    null = np.full((w, null_width), np.nan, dtype=np.float32) if use_null else None
    cand = starts[:, None] - vshift + np.arange(2 * vshift + 1)[None, :]  # absolute audio window per candidate
    ok = (cand >= 0) & (cand < n_audio)
    wi, ji = np.nonzero(ok)
    if len(wi) == 0:
        return rows, null
    needed = [cand[wi, ji]]
    if use_null:
        band = (starts[:, None] + null_shift + np.arange(null_width)[None, :]) % n_audio
        needed.append(band.ravel())
    audio_idx = np.unique(np.concatenate(needed))
    vid = scorer.video(windows)
    aud = scorer.audio(_audio_mels(wave, audio_idx))
    vi, ai = wi, np.searchsorted(audio_idx, cand[wi, ji])
    if use_null:
        bw, bb = np.nonzero(np.ones_like(band, dtype=bool))
        vi, ai = np.concatenate([vi, bw]), np.concatenate([ai, np.searchsorted(audio_idx, band[bw, bb])])
    logits = scorer.pairs(vid, aud, vi, ai)
    rows[wi, ji] = logits[: len(wi)]
    if use_null:
        null[bw, bb] = logits[len(wi) :]
    return rows, null
