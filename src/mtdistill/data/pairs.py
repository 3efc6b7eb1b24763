"""Training / validation pairs sampled on the fly from a packed store (design.md §3.4).

The official rule (the default):

1. pick a random utterance with more than ``min_frames`` (25) frames;
2. ``pos = randint(0, n - 5)`` inclusive; if any frame of pos..pos+4 is a detection gap, start again;
3. fair coin for the label; positive: audio chunk at ``pos * 640``; negative: ``neg = randint(0, n - 5)``,
   ``neg != pos``, anywhere in the utterance (``Quirks(negatives_anywhere=False)``: within +-15 frames);
4. silence rule: if the positive chunk's RMS <= 0.01, the negative chunk must have RMS > 0.01; up to 11
   draws of ``neg``, then the whole sample starts again.

Here n = min(n_frames, n_samples // 640), so every 3,200-sample chunk lies inside the audio (the official
code would read a short chunk there). As in the official ``__getitem__``, the index is ignored in the
random mode: each DataLoader worker draws from its own generator seeded from (seed, worker id, epoch).
With ``fixed=True`` item i is a function of (seed, i) only: a seeded validation set.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from mtdistill.core.errors import UserError
from mtdistill.core.quirks import Quirks
from mtdistill.core.timing import SAMPLES_PER_FRAME, SEARCH_RANGE, WINDOW_FRAMES, WINDOW_SAMPLES
from mtdistill.data.store import Store
from mtdistill.media.audio import chunk_mel
from mtdistill.models.presets import check_preset

SILENCE_RMS = 0.01
NEGATIVE_TRIES = 11


def rms(chunk: np.ndarray) -> float:
    """Root mean square of an audio chunk (the silence test of design.md §3.4 compares it with 0.01)."""
    c = np.asarray(chunk, np.float64)
    return float(np.sqrt(np.mean(c * c))) if c.size else 0.0


def draw_start(rng: np.random.Generator, n: int) -> int:
    """Spec §3.4 step 2: a window start uniform in 0..n-5 inclusive."""
    return int(rng.integers(0, n - WINDOW_FRAMES + 1))


def draw_negative(rng: np.random.Generator, n: int, pos: int, anywhere: bool = True) -> int:
    """Spec §3.4 step 3: a negative audio start != pos, anywhere in 0..n-5 (official) or within +-15 frames."""
    lo, hi = (
        (0, n - WINDOW_FRAMES) if anywhere else (max(0, pos - SEARCH_RANGE), min(n - WINDOW_FRAMES, pos + SEARCH_RANGE))
    )
    if hi <= lo:
        raise ValueError(f"no negative start other than {pos} in [{lo}, {hi}]")
    while True:
        neg = int(rng.integers(lo, hi + 1))
        if neg != pos:
            return neg


def draw_pair(
    rng: np.random.Generator,
    n: int,
    valid: np.ndarray,
    chunk_rms: Callable[[int], float],
    quirks: Quirks,
) -> tuple[int, int, float] | None:
    """One attempt of design.md §3.4 steps 2-4 on an utterance of n usable frames.

    Returns (video start, audio start, label) or None when the attempt must restart (a gap in the window, or
    11 silent negatives for a silent positive). chunk_rms(start) gives the RMS of the chunk at start * 640.
    """
    pos = draw_start(rng, n)
    if not bool(np.all(valid[pos : pos + WINDOW_FRAMES])):
        return None
    if rng.random() < 0.5:
        return pos, pos, 1.0
    silent_pos = chunk_rms(pos) <= SILENCE_RMS
    for _ in range(NEGATIVE_TRIES):
        neg = draw_negative(rng, n, pos, quirks.negatives_anywhere)
        if not silent_pos or chunk_rms(neg) > SILENCE_RMS:
            return pos, neg, 0.0
    return None


class PairDataset(Dataset):
    """(video window, audio chunk mel, label) pairs for training and validation; see the module docstring.

    item = {"video": float (15, 48, 96), "mel": float (1, 80, 16), "label": float scalar tensor,
            "uid": str, "start": int, "audio_start": int}

    rank/world_size: use only that DDP rank's shards (``Store.ids``). return_wave=True: the item holds "wave"
    (3200,) float32 instead of "mel", for a trainer that computes ``chunk_mel_torch`` per batch (on the GPU),
    as the official training loops do; the mel of a batch is the same as the per-item one.
    """

    def __init__(
        self,
        store_path_or_store: str | os.PathLike | Store,
        split: str | None = "pretrain",
        preset: str = "mtd",
        seed: int = 0,
        length: int | None = None,
        quirks: Quirks = Quirks(),
        min_frames: int = 25,
        fixed: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        return_wave: bool = False,
    ) -> None:
        self.preset = check_preset(preset)
        if isinstance(store_path_or_store, Store):
            self.store = store_path_or_store
        else:
            try:
                self.store = Store.open(store_path_or_store)
            except FileNotFoundError as exc:
                raise UserError(f"{exc}") from None
        self.split = split
        self.seed = int(seed)
        self.quirks = quirks
        self.min_frames = int(min_frames)
        self.fixed = bool(fixed)
        self.return_wave = bool(return_wave)
        self.epoch = 0
        uids = self.store.ids(split, rank=rank, world_size=world_size)
        self.n_split = len(uids)
        self.uids: list[str] = []
        self.n_usable: list[int] = []
        for uid in uids:
            m = self.store.meta(uid)
            n = min(int(m["n_frames"]), int(m["n_samples"]) // SAMPLES_PER_FRAME)
            if n > self.min_frames and n >= WINDOW_FRAMES + 1 and m.get("n_valid", n) >= WINDOW_FRAMES:
                self.uids.append(uid)
                self.n_usable.append(n)
        if not self.uids:
            raise UserError(
                f"no utterance in split {split!r} of {self.store.root} has more than {self.min_frames} frames "
                f"with audio ({len(uids)} in the split); prepare longer videos or lower data.min_frames"
            )
        self.length = int(length) if length is not None else self.n_split
        self._valid: dict[str, np.ndarray] = {}
        self._rng: np.random.Generator | None = None
        self._rng_key: tuple[int, int] | None = None

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        """Random mode: a new stream of pairs per epoch (each worker re-seeds from (seed, worker, epoch))."""
        self.epoch = int(epoch)

    def _worker_rng(self) -> np.random.Generator:
        info = get_worker_info()
        key = (info.id if info is not None else 0, self.epoch)
        if self._rng is None or self._rng_key != key:
            self._rng = np.random.default_rng([self.seed, key[0], key[1], 0x9A1])
            self._rng_key = key
        return self._rng

    def _valid_of(self, uid: str) -> np.ndarray:
        v = self._valid.get(uid)
        if v is None:
            v = self.store.valid(uid)
            self._valid[uid] = v
        return v

    def sample(self, rng: np.random.Generator) -> tuple[str, int, int, float]:
        """Draw (uid, video start, audio start, label) by the rule of design.md §3.4."""
        for _ in range(100_000):
            k = int(rng.integers(len(self.uids)))
            uid, n = self.uids[k], self.n_usable[k]
            cache: dict[int, float] = {}

            def chunk_rms(start: int, uid: str = uid, cache: dict[int, float] = cache) -> float:
                if start not in cache:
                    cache[start] = rms(
                        self.store.audio(uid, start * SAMPLES_PER_FRAME, start * SAMPLES_PER_FRAME + WINDOW_SAMPLES)
                    )
                return cache[start]

            drawn = draw_pair(rng, n, self._valid_of(uid), chunk_rms, self.quirks)
            if drawn is not None:
                return (uid, *drawn)
        raise UserError(f"no valid pair found in split {self.split!r} after 100000 tries; check face detection")

    def __getitem__(self, idx: int) -> dict:
        if self.fixed:
            if not 0 <= idx < self.length:
                raise IndexError(idx)
            rng = np.random.default_rng([self.seed, int(idx), 0xF1D])
        else:
            rng = self._worker_rng()
        uid, start, audio_start, label = self.sample(rng)
        return self.item(uid, start, audio_start, label)

    def item(self, uid: str, start: int, audio_start: int, label: float) -> dict:
        """Model-ready tensors for one pair in this dataset's preset."""
        frames = self.store.frames(uid, start, start + WINDOW_FRAMES)
        a0 = audio_start * SAMPLES_PER_FRAME
        wave = self.store.audio(uid, a0, a0 + WINDOW_SAMPLES)
        out = {"video": window_to_input(frames, self.preset)}
        if self.return_wave:
            out["wave"] = torch.from_numpy(wave)
        else:
            out["mel"] = torch.from_numpy(chunk_mel(wave, self.quirks))[None]
        out.update(label=torch.tensor(label, dtype=torch.float32), uid=uid, start=int(start),
                   audio_start=int(audio_start))  # fmt: skip
        return out


def window_to_input(frames: np.ndarray, preset: str) -> torch.Tensor:
    """(5, 48, 96, 3) uint8 RGB -> (15, 48, 96) float, frame-major channels, in the preset's order and range.

    The same values as ``presets.frames_to_input(frames, preset).reshape(15, 48, 96)`` (a test checks it),
    computed in numpy: for one small window that is several times faster than the torch ops, and the
    per-sample cost of the loader is what the data benchmark is about.
    """
    x = frames[..., ::-1] if preset == "vocalist" else frames  # BGR for the official VocaLiST weights
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32).reshape(-1, *frames.shape[1:3])
    if preset == "vocalist":
        x /= np.float32(255.0)
    return torch.from_numpy(x)
